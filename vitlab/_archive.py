"""Safe, atomic extraction of .tar / .tar.gz / .tgz / .zip archives.

Archives are untrusted input: every member is checked before anything is written, and members with absolute paths,
'..' components, links or device files are refused, as are members whose path under the destination passes through a
symlink already there (e.g. `dest/sub -> /elsewhere` and a member `sub/file`): extraction never writes through a link. Extraction goes into a temporary folder inside the destination,
and each top-level entry is then renamed into place, so a failed or interrupted extraction leaves no half-written
folder behind. Shared by vitlab.data (extracting downloads) and vitlab.text (reading tar members in memory)."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["UnsafeArchiveError", "check_member_name", "extract_archive"]


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination, or is a link or special file."""


def check_member_name(archive: Path, name: str) -> None:
    """Refuses an archive member named with an absolute path or a '..' component (raises `UnsafeArchiveError`)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")


def _check_no_symlink(archive: Path, dest: Path, name: str) -> None:
    """Refuses a member whose path under `dest` passes through (or ends at) a symlink already present there: moving
    it into place would write wherever the link points. `dest` itself may be a link (the caller chose it)."""
    parts = [part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", ".")]
    for depth in range(1, len(parts) + 1):
        path = dest.joinpath(*parts[:depth])
        if path.is_symlink():
            raise UnsafeArchiveError(f"{archive}: member {name!r} would be written through {path}, a symlink "
                                     f"already in the destination (-> {os.readlink(path)}); refusing to extract")


def _extract_tar(archive: Path, into: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            check_member_name(archive, member.name)
            _check_no_symlink(archive, dest, member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or special file; refusing to "
                                         "extract")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, members=members, **kwargs)


def _extract_zip(archive: Path, into: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            check_member_name(archive, info.filename)
            _check_no_symlink(archive, dest, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink stored by a Unix zip
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink; refusing to extract")
        zf.extractall(into)


def _move_into(source: Path, target: Path, archive: Path) -> None:
    """Renames `source` to `target`; where `target` is an existing folder, merges file by file (files from the
    archive replace files of the same name). A symlink at `target` (appeared since the check) is refused."""
    if target.is_symlink():
        raise UnsafeArchiveError(f"{archive}: {target} is a symlink already in the destination (-> "
                                 f"{os.readlink(target)}); refusing to extract through it")
    if not target.exists():
        os.replace(source, target)
    elif source.is_dir() and target.is_dir():
        for child in source.iterdir():
            _move_into(child, target / child.name, archive)
    else:
        os.replace(source, target)


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extracts `archive` (.tar, .tar.gz, .tgz or .zip) into the folder `dest` safely and atomically; returns `dest`.
    Raises `UnsafeArchiveError` (naming the archive and member) before writing anything if a member is unsafe,
    including one whose path under `dest` passes through a symlink already there (the error names that path)."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, tmp, dest)
            else:
                _extract_tar(archive, tmp, dest)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{archive}: not a readable archive ({type(err).__name__}: {err})") from None
        for child in sorted(tmp.iterdir()):
            _move_into(child, dest / child.name, archive)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
