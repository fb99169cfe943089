"""Data files, shared by vitlab.data (image datasets) and vitlab.text (text datasets, GPT-2's vocabulary): the
places a dataset is searched for, where downloads go, checksum verification, and the not-found errors.

Search order (`search_places`): `data_dir`, `$VITLAB_DATA`, `./data`, `../shared/data` (both relative to the current
directory and to the repository root), `/usr/share/datasets` (Debian's `dataset-*` packages, e.g.
`dataset-fashion-mnist`). Files with a registered checksum are verified on every load, hashed once per process for a
given path, size and mtime (`verify_file`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._download import ChecksumError, file_digests

__all__ = ["Checksum", "DatasetNotFoundError", "DataDirMismatchError", "not_in_data_dir", "search_places",
           "download_dir", "verify_file"]

_REPO_ROOT = Path(__file__).resolve().parents[1]
_SYSTEM_DATA = Path("/usr/share/datasets")  # Debian's dataset-* packages
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of files whose checksum matched
_DIGESTS: dict[tuple[str, int, int], str] = {}  # the same key -> "md5 <hex>" / "sha256 <hex>" that matched


@dataclass(frozen=True)
class Checksum:
    """The digests a file may have. Several are accepted where the same content ships in several packagings
    (Fashion-MNIST: upstream gzip files and Debian's re-gzipped ones)."""
    md5: tuple[str, ...] = ()
    sha256: tuple[str, ...] = ()
    source: str = ""

    def describe(self) -> str:
        """"md5 <a> or sha256 <b> (source)" — the wording used in every error message."""
        parts = [f"md5 {value}" for value in self.md5] + [f"sha256 {value}" for value in self.sha256]
        return " or ".join(parts) + (f" ({self.source})" if self.source else "")


class DatasetNotFoundError(FileNotFoundError):
    """No folder holding the dataset was found; the message lists every place looked in and how to get it."""


class DataDirMismatchError(DatasetNotFoundError):
    """An explicit data_dir lacks the dataset, which was found elsewhere: the message names both (pass the other)."""


def not_in_data_dir(name: str, data_dir, wanted: str, found: list[Path]) -> DataDirMismatchError:
    """The error for an explicit `data_dir` without dataset `name` that was found at `found`."""
    where = "\n".join(f"  {path}" for path in found)
    return DataDirMismatchError(f"{name}: not in data_dir {data_dir}: expected {wanted} there (or data_dir to be "
                                f"that folder itself). The dataset was found at:\n{where}\nPass data_dir={found[0]} "
                                "to use it (an explicit data_dir is never replaced by another place silently), or "
                                "leave data_dir unset to search every place.")


def search_places(data_dir: str | os.PathLike | None = None) -> list[tuple[Path | None, str]]:
    """(folder, why) in search order; folder None where an environment variable is unset."""
    cwd = Path.cwd()
    env = os.environ.get("VITLAB_DATA")
    places: list[tuple[Path | None, str]] = [(Path(data_dir).expanduser(), "data_dir")] if data_dir else []
    places += [(Path(env).expanduser() if env else None, "$VITLAB_DATA" + ("" if env else " (not set)")),
               (cwd / "data", "./data"), (cwd.parent / "shared" / "data", "../shared/data"),
               (_REPO_ROOT / "data", "<repository>/data"),
               (_REPO_ROOT.parent / "shared" / "data", "<repository>/../shared/data"),
               (_SYSTEM_DATA, "Debian's dataset packages")]
    seen: set[Path] = set()
    unique = []
    for folder, why in places:
        key = folder.resolve() if folder is not None else None
        if key is None or key not in seen:
            unique.append((folder, why))
            seen.add(key)
    return unique


def download_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads go: `data_dir`, else `$VITLAB_DATA`, else `./data`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("VITLAB_DATA"):
        return Path(os.environ["VITLAB_DATA"]).expanduser()
    return Path.cwd() / "data"


def verify_file(path: Path, checksum: Checksum | None) -> str | None:
    """Raises `ChecksumError` naming `path`, its digest and the expected one(s) unless one accepted digest matches.
    A file verified once (same size and modification time) is not hashed again in this process. Returns the digest
    that matched ("md5 <hex>" or "sha256 <hex>"), None where no checksum is registered."""
    if checksum is None or not (checksum.md5 or checksum.sha256):
        return None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED and key in _DIGESTS:
        return _DIGESTS[key]
    algorithms = tuple(name for name, values in (("md5", checksum.md5), ("sha256", checksum.sha256)) if values)
    actual = file_digests(path, algorithms)
    for name, accepted in (("sha256", checksum.sha256), ("md5", checksum.md5)):
        if actual.get(name) in accepted:
            _VERIFIED.add(key)
            _DIGESTS[key] = f"{name} {actual[name]}"
            return _DIGESTS[key]
    got = ", ".join(f"{name} {value}" for name, value in actual.items())
    raise ChecksumError(f"{path}: corrupt or not the official file: {got}; expected {checksum.describe()}. "
                        "Delete it and fetch it again (download=True).")
