"""Finding a dataset on disk, verifying its files, and downloading what is missing.

Search order for a dataset's folder (`DatasetInfo.folders`, e.g. `cifar-10-batches-py`):
`data_dir` (the folder itself may also be the dataset's folder), `$VITLAB_DATA`, `./data`, `../shared/data` (both
relative to the current directory and to the repository root), `/usr/share/datasets` (Debian's
`dataset-fashion-mnist` installs `/usr/share/datasets/fashion-mnist/`). An explicit `data_dir` is never silently
replaced: when it lacks the dataset, `DataDirMismatchError` says what was expected there and where the dataset was
found instead (pass that), or `DatasetNotFoundError` lists every place when it is nowhere.

Files with a registered checksum are verified on every load (hashed once per process for a given path, size and
mtime); `dataset_files` gives (path, verified digest) of the files a split used, for the run log."""
from __future__ import annotations

import os
from pathlib import Path

from .._download import ChecksumError, download, file_digests
from ._archive import extract_archive
from ._sources import DATASETS, Checksum, DatasetInfo

__all__ = ["UnknownDatasetError", "all_dataset_names", "DatasetNotFoundError", "MissingFileError", "DatasetFormatError", "find_data_root", "locate_file",
           "verify_file", "ensure_downloaded", "dataset_info", "resolve_split", "search_places", "download_dir",
           "DataDirMismatchError", "not_in_data_dir", "dataset_files"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_SYSTEM_DATA = Path("/usr/share/datasets")  # Debian's dataset-* packages
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of files whose checksum matched
_DIGESTS: dict[tuple[str, int, int], str] = {}  # the same key -> "md5 <hex>" / "sha256 <hex>" that matched


class UnknownDatasetError(KeyError):
    """A dataset name vitlab does not know; the message lists every name it does (image, text, segmentation, CLIP)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def all_dataset_names() -> list[str]:
    """Every dataset name `vitlab train dataset=...` takes, by kind: image classification, language modelling,
    semantic segmentation, image-text (CLIP); `textfile:PATH` and `image_text:ROOT` are patterns."""
    from ..text._registry import TEXT_DATASETS
    from .image_text import CLASS_CAPTIONED_DATASETS, IMAGE_TEXT_PREFIX
    from .segmentation import SEGMENTATION_DATASETS

    text = [n for n in TEXT_DATASETS if n != "textfile"] + ["textfile:PATH"]
    return [*sorted(DATASETS), *text, *SEGMENTATION_DATASETS, *CLASS_CAPTIONED_DATASETS, f"{IMAGE_TEXT_PREFIX}ROOT"]


def _unknown_dataset(name: str) -> UnknownDatasetError:
    import difflib

    names = all_dataset_names()
    if name in names:  # a known name asked of the image-classification registry: say so, not "did you mean" itself
        return UnknownDatasetError(f"dataset {name!r} is not an image-classification dataset; this needs one of: "
                                   f"{', '.join(sorted(DATASETS))}")
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownDatasetError(f"unknown dataset {name!r}.{hint} Known: {', '.join(names)}")


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


class MissingFileError(FileNotFoundError):
    """The dataset's folder was found but a file a split needs is missing."""


class DatasetFormatError(ValueError):
    """A file is not in the official format (wrong magic number, key, shape, dtype or value)."""


def dataset_info(name: str) -> DatasetInfo:
    """`DATASETS[name]` (the image-classification datasets); any other name raises `UnknownDatasetError` listing
    every dataset name vitlab knows."""
    if name not in DATASETS:
        raise _unknown_dataset(name)
    return DATASETS[name]


def resolve_split(info: DatasetInfo, split: str) -> str:
    """The dataset's own name for `split`: 'test' means 'val' where the dataset has no 'test' split, 'val' means
    'test' where it has no 'val' split, and 'train' means 'trainval' for Oxford-IIIT Pets."""
    aliases = {"test": "val", "val": "test", "train": "trainval"}
    if split not in info.splits and aliases.get(split) in info.splits:
        return aliases[split]
    if split not in info.splits:
        raise ValueError(f"{info.name} has no split {split!r}; valid: {', '.join(info.splits)}")
    return split


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


def _looks_like(folder: Path, info: DatasetInfo) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in info.markers)


def find_data_root(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding dataset `name`'s files (e.g. `.../cifar-10-batches-py`); see the module docstring for
    the search order. For 'imagefolder' and 'shards' it is `data_dir` itself. Raises `DatasetNotFoundError` listing
    every place looked in and how to get the files."""
    info = dataset_info(name)
    if name in ("imagefolder", "shards"):
        if data_dir is None or not Path(data_dir).is_dir():
            raise DatasetNotFoundError(f"{name}: data_dir {data_dir!r} is not a folder. {info.how_to_get}")
        return Path(data_dir)
    places = search_places(data_dir)
    found = []
    for folder, why in places:
        if folder is None:
            continue
        match = next((folder / f for f in info.folders if _looks_like(folder / f, info)), None)
        if match is None and why == "data_dir" and _looks_like(folder, info):
            match = folder
        if match is not None and (not data_dir or why == "data_dir"):
            return match
        if match is not None:
            found.append(match)
    if found:  # an explicit data_dir without the dataset: never fall back silently
        wanted = f"a folder named {' or '.join(repr(f) for f in info.folders)} holding {' or '.join(info.markers[:2])}"
        raise not_in_data_dir(info.name, data_dir, wanted, found)
    raise DatasetNotFoundError(_not_found_message(info, places, data_dir))


def _not_found_message(info: DatasetInfo, places: list[tuple[Path | None, str]], data_dir) -> str:
    folders = " or ".join(repr(f) for f in info.folders)
    markers = " or ".join(info.markers[:2])
    lines = [f"{info.name}: dataset not found. Looked for a folder named {folders} (holding {markers}) in:"]
    lines += [f"  {folder}  ({why})" if folder is not None else f"  {why}" for folder, why in places]
    if info.remote is not None:
        urls = ", ".join(f.url for f in info.remote)
        lines.append(f"To get it: add download=true (vitlab train / eval ... download=true, vitlab shards ... "
                     f"--download; in Python load_dataset({info.name!r}, download=True)); it downloads {urls} into "
                     f"{download_dir(data_dir)} (md5-verified).")
    if info.how_to_get:
        lines.append(info.how_to_get)
    return "\n".join(lines)


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


def locate_file(root: Path, relative: str, info: DatasetInfo) -> Path:
    """`root / relative`, verified against the official checksum when one is known; an entry ending in `.gz` is also
    found uncompressed. Raises `MissingFileError` naming the file and its expected checksum."""
    candidates = [relative] + ([relative.removesuffix(".gz")] if relative.endswith(".gz") else [])
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            if path.is_file():
                verify_file(path, info.checksums.get(candidate))
            return path
    expected = info.checksums.get(relative)
    alternative = f" (or {root / candidates[1]})" if len(candidates) > 1 else ""
    message = f"{info.name}: missing file {root / relative}{alternative}"
    if expected is not None:
        message += f"; expected {expected.describe()}"
    hint = "download=True fetches it" if info.remote is not None else info.how_to_get
    raise MissingFileError(f"{message}. {hint}")


def dataset_files(root: Path, info: DatasetInfo, split: str) -> list[tuple[str, str]]:
    """(path, digest) of the files split `split` reads from `root`: the verified registered checksum ("md5 <hex>" /
    "sha256 <hex>", cached, so free after loading), or "no registered checksum" (e.g. an ImageFolder tree: the
    folder is listed, its images are not hashed)."""
    files = []
    for rel in info.required.get(split, ()) or ("",):
        for candidate in [rel] + ([rel.removesuffix(".gz")] if rel.endswith(".gz") else []):
            path = root / candidate
            if path.exists():
                digest = verify_file(path, info.checksums.get(candidate)) if path.is_file() else None
                files.append((str(path.resolve()), digest or "no registered checksum"))
                break
    return files


def _complete(root: Path, info: DatasetInfo, split: str) -> bool:
    return all((root / rel).exists() or (rel.endswith(".gz") and (root / rel.removesuffix(".gz")).exists())
               for rel in info.required.get(split, ()))


def ensure_downloaded(name: str, split: str, data_dir: str | os.PathLike | None = None,
                      progress: bool | None = None) -> Path:
    """The dataset's folder, downloading (md5-verified, resumable) and extracting (safely, atomically) the official
    files `split` needs into `download_dir(data_dir)` when they are not found anywhere."""
    info = dataset_info(name)
    split = resolve_split(info, split)
    try:
        root = find_data_root(name, data_dir)
        if _complete(root, info, split):
            return root
    except DatasetNotFoundError:
        if info.remote is None:
            raise
    if info.remote is None:
        raise MissingFileError(f"{name} cannot be downloaded. {info.how_to_get}")
    base = download_dir(data_dir)
    for remote in info.files_for(split):
        path = download(remote.url, base / remote.path, md5=remote.md5, progress=progress)
        if remote.extract_to is not None:
            extract_archive(path, base / remote.extract_to)
    root = base / info.folders[0]
    if not _complete(root, info, split):
        missing = [rel for rel in info.required[split] if not (root / rel).exists()]
        raise MissingFileError(f"{name}: downloaded the official files, but {root} still lacks {', '.join(missing)}")
    return root
