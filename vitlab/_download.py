"""Downloads that are atomic (a `.part` file renamed into place only when complete), resumable (HTTP Range) and,
when a checksum is known, verified."""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["download", "sha256sum", "cache_dir", "ChecksumError"]

_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's sha256 differs from the expected one."""


def cache_dir() -> Path:
    """`$VITLAB_CACHE`, else `$XDG_CACHE_HOME/vitlab`, else `~/.cache/vitlab`."""
    if os.environ.get("VITLAB_CACHE"):
        return Path(os.environ["VITLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitlab"


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, sha256: str | None) -> None:
    if sha256 is not None and (actual := sha256sum(path)) != sha256.lower():
        raise ChecksumError(f"{path}: sha256 {actual} does not match the expected {sha256.lower()}")


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, timeout: float = 60.0,
             progress: bool | None = None) -> Path:
    """Fetches `url` to `dest` unless `dest` already exists (and matches `sha256`). An interrupted download resumes
    from `dest.part`; a corrupt result is deleted and raises `ChecksumError` naming the file and the expected hash."""
    dest = Path(dest)
    if dest.is_file():
        _verify(dest, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the part file is already complete
            raise OSError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
        response = None
    except urllib.error.URLError as err:
        raise OSError(f"download of {url} failed: {err.reason}") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            total = response.length + (offset if resumed else 0) if response.length is not None else None
            _stream(response, part, "ab" if resumed else "wb", offset if resumed else 0, total, dest.name, progress)
    try:
        _verify(part, sha256)
    except ChecksumError:
        part.unlink()
        raise ChecksumError(f"downloaded {url} to {dest}, but its sha256 does not match the expected "
                            f"{sha256.lower()}; the corrupt file was removed, try again") from None
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
