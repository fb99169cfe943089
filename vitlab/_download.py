"""Downloads that are atomic (a `.part` file renamed into place only when complete), resumable (HTTP Range) and,
when a checksum is known (sha256 or md5, the latter because the dataset hosts publish md5), verified."""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["download", "md5sum", "file_digests", "cache_dir", "ChecksumError", "DownloadError", "sha256sum"]

_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's checksum (sha256 or md5) differs from the expected one."""


class DownloadError(OSError):
    """A download failed (no network, HTTP error, connection dropped); the message names the URL and where to put
    the file by hand."""


def _failed(url: str, dest: Path, reason: object, expected: dict[str, str], resumable: bool = False) -> DownloadError:
    check = f" (it is checked against {', '.join(f'{k} {v}' for k, v in expected.items())})" if expected else ""
    again = f"; run again to resume from {dest.name}.part" if resumable else ""
    return DownloadError(f"download of {url} failed: {reason}{again}. Without network access here, fetch that URL on "
                         f"a machine that has it and copy the file to {dest}{check}; vitlab uses it from there")


def cache_dir() -> Path:
    """`$VITLAB_CACHE`, else `$XDG_CACHE_HOME/vitlab`, else `~/.cache/vitlab`."""
    if os.environ.get("VITLAB_CACHE"):
        return Path(os.environ["VITLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitlab"


def file_digests(path: str | os.PathLike, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of one file for several `hashlib` algorithms, computed in a single read."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def md5sum(path: str | os.PathLike) -> str:
    return file_digests(path, ("md5",))["md5"]


def sha256sum(path: str | os.PathLike) -> str:
    return file_digests(path, ("sha256",))["sha256"]


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    return {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value is not None}


def _mismatch(path: Path, expected: dict[str, str]) -> str | None:
    """None when every expected digest matches, else "<algorithm> <actual> does not match the expected <value>"."""
    if not expected:
        return None
    actual = file_digests(path, tuple(expected))
    for name, value in expected.items():
        if actual[name] != value:
            return f"{name} {actual[name]} does not match the expected {value}"
    return None


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0,
             progress: bool | None = None, md5: str | None = None) -> Path:
    """Fetches `url` to `dest` unless `dest` already exists (and matches `sha256` / `md5`). An interrupted download
    resumes from `dest.part`; a corrupt result (fresh or already present) is deleted and raises `ChecksumError`
    naming the URL, the file, the actual and the expected hash."""
    dest = Path(dest)
    expected = _expected(sha256, md5)
    if dest.is_file():
        if (problem := _mismatch(dest, expected)) is not None:
            dest.unlink()
            raise ChecksumError(f"{dest} (from {url}) is present, but its {problem}; the corrupt file was removed, "
                                "try again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the part file is already complete
            raise _failed(url, dest, f"HTTP {err.code} {err.reason}", expected) from None
        response = None
    except (urllib.error.URLError, OSError) as err:  # no network, DNS failure, refused, timed out
        raise _failed(url, dest, getattr(err, "reason", None) or err, expected) from None
    if response is not None:
        with response:
            resumed = response.status == 206
            total = response.length + (offset if resumed else 0) if response.length is not None else None
            try:
                _stream(response, part, "ab" if resumed else "wb", offset if resumed else 0, total, dest.name,
                        progress)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:  # dropped mid-way: .part stays
                raise _failed(url, dest, getattr(err, "reason", None) or err, expected, resumable=True) from None
    if (problem := _mismatch(part, expected)) is not None:
        part.unlink()
        raise ChecksumError(f"downloaded {url} to {dest}, but its {problem}; the corrupt file was removed, try again")
    os.replace(part, dest)
    return dest


def _stream(response, part: Path, mode: str, offset: int, total: int | None, name: str, progress: bool | None):
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name,
                                     disable=not show) as bar:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            f.write(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
