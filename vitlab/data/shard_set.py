"""All-or-nothing shard sets, for the three shard writers (classification `write_shards`, segmentation
`write_segmentation_shards`, caption `write_caption_shards`) and their readers.

A writer writes every file of a set into a staging folder inside the destination, `<out_dir>/.vitlab-writing/`
(`staged_shard_set`); only when all of them are complete are they moved into `<out_dir>` (renames on one file
system), the files of the set they replace having first been moved into the staging folder, which is deleted last.
So the old set stays whole and readable until the new one is complete, and at no point does `<out_dir>` hold a mix
that a reader accepts: while the staging folder (or an older writer's `*.tar.tmp`) is there, `check_complete`
refuses the folder with a one-line `IncompleteShardSetError` that says to re-run `vitlab shards` (unless the
old set is still whole there: an `--overwrite` killed before its commit leaves the old set readable). An `OSError`
while writing (a full disk) removes the staging folder and is raised as one line naming the folder and errno.
"""
from __future__ import annotations

import contextlib
import errno as errno_names
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from ._locate import DatasetFormatError

__all__ = ["staged_shard_set", "check_complete", "IncompleteShardSetError", "ShardWriteError", "STAGING_FOLDER",
           "TEMP_SUFFIX", "INDEX_FILE"]

INDEX_FILE = "index.json"  # the index vitlab writes beside classification and segmentation shards

STAGING_FOLDER = ".vitlab-writing"  # hidden: a `*.tar` glob of the destination never sees it
TEMP_SUFFIX = ".tar.tmp"  # what writers before the staging folder left behind when interrupted


class IncompleteShardSetError(DatasetFormatError):
    """A shard folder whose write did not finish (its staging folder or `*.tar.tmp` files are there)."""


class ShardWriteError(OSError):
    """Writing a shard set failed on the file system (disk full, permissions); nothing of it was left behind."""


def check_complete(folder: str | os.PathLike) -> None:
    """Raises `IncompleteShardSetError` naming `folder` when a vitlab shard write into it did not finish and left
    no complete set there: `*.tar.tmp` files (writers before the staging folder), a staging folder whose commit had
    begun (`old/`), or a staging folder beside no set at all (an interrupted first write). A staging folder beside
    a complete set (an interrupted `--overwrite` that had not begun its commit) leaves that set readable."""
    folder = Path(folder)
    staging = folder / STAGING_FOLDER
    leftovers = sorted(p.name for p in folder.glob("*" + TEMP_SUFFIX))
    if (staging / "old").exists() or (staging.exists() and not (folder / INDEX_FILE).exists()
                                      and not any(folder.glob("*.tar"))):
        leftovers.insert(0, STAGING_FOLDER)
    if leftovers:
        raise IncompleteShardSetError(
            f"{folder}: an interrupted shard write left {', '.join(leftovers[:3])}"
            f"{' ...' if len(leftovers) > 3 else ''}: the set is incomplete; re-run `vitlab shards` (with "
            "--overwrite) to write it again")


@contextlib.contextmanager
def staged_shard_set(out_dir: str | os.PathLike, replaces: Iterable[str]) -> Iterator[Path]:
    """Yields the staging folder to write a whole shard set into (file names as they will be in `out_dir`); on
    normal exit moves the files matching the glob patterns `replaces` (the old set) out of `out_dir`, moves the new
    files in, and deletes the staging folder. On an exception the staging folder is deleted and `out_dir` is left
    as it was; an `OSError` becomes a one-line `ShardWriteError` naming `out_dir` and the errno."""
    out_dir = Path(out_dir)
    staging, committing = out_dir / STAGING_FOLDER, False
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)  # a write of ours that was interrupted: its files are incomplete
        for leftover in out_dir.glob("*" + TEMP_SUFFIX):
            leftover.unlink()
        (staging / "new").mkdir(parents=True)
        yield staging / "new"
        committing = True  # from here on the staging folder may hold the old set: never delete it on failure
        old = staging / "old"
        old.mkdir()
        for pattern in replaces:
            for path in out_dir.glob(pattern):
                if path.is_file():
                    os.replace(path, old / path.name)
        for path in sorted((staging / "new").iterdir()):
            os.replace(path, out_dir / path.name)
        shutil.rmtree(staging)
    except BaseException as err:
        if not committing:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, ShardWriteError) and err.errno is not None:
            name = errno_names.errorcode.get(err.errno, str(err.errno))
            outcome = ("the set is incomplete, re-run `vitlab shards`" if committing
                       else "nothing was kept, the previous set (if any) is unchanged")
            raise ShardWriteError(err.errno, f"{out_dir}: writing the shard set failed ({name}: "
                                             f"{os.strerror(err.errno)}); {outcome}") from None
        raise
