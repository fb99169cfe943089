"""Safe, atomic extraction of .tar / .tar.gz / .tgz / .zip archives.

Archives are untrusted input: every member is checked before anything is written, and members with absolute paths,
'..' components, links or device files are refused. Extraction goes into a temporary folder inside the destination,
and each top-level entry is then renamed into place, so a failed or interrupted extraction leaves no half-written
folder behind."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["UnsafeArchiveError", "extract_archive"]


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination, or is a link or special file."""


def _check_member_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member_name(archive, member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or special file; refusing to "
                                         "extract")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, members=members, **kwargs)


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(archive, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored by a Unix zip
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink; refusing to extract")
        zf.extractall(into)


def _move_into(source: Path, target: Path) -> None:
    """Renames `source` to `target`; where `target` is an existing folder, merges file by file (files from the
    archive replace files of the same name)."""
    if not target.exists():
        os.replace(source, target)
    elif source.is_dir() and target.is_dir():
        for child in source.iterdir():
            _move_into(child, target / child.name)
    else:
        os.replace(source, target)


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extracts `archive` (.tar, .tar.gz, .tgz or .zip) into the folder `dest` safely and atomically; returns `dest`.
    Raises `UnsafeArchiveError` (naming the archive and member) before writing anything if a member is unsafe."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{archive}: not a readable archive ({type(err).__name__}: {err})") from None
        for child in sorted(tmp.iterdir()):
            _move_into(child, dest / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
