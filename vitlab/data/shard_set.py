"""Writing shard sets, all or nothing: the one writer of the three shard kinds (classification `write_shards`,
segmentation `write_segmentation_shards`, caption `write_caption_shards`), and the completeness check their readers
make.

`write_tar_shards` writes samples (each a dict of tar members, as webdataset's `TarWriter` takes it: `__key__` and
one bytes value per extension; the per-kind part is only how a sample becomes these members) into numbered tar
files, `shard_size` samples (or `max_bytes`) each, all with the same whole-second mtime (the start of the write),
and indexes each shard once it is closed; `write_shard_list` writes the `index.json` beside them (wids' shard-index
format: `shardlist` of `{url, nsamples, filesize}`, plus a `vitlab` entry of the kind's metadata).

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
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from ._locate import DatasetFormatError
from .shard_index import ShardIndex

__all__ = ["staged_shard_set", "check_complete", "write_tar_shards", "write_shard_list", "WrittenShard",
           "IncompleteShardSetError", "ShardWriteError", "STAGING_FOLDER", "TEMP_SUFFIX", "INDEX_FILE", "INDEX_KIND"]

INDEX_FILE = "index.json"  # the index vitlab writes beside classification and segmentation shards
INDEX_KIND = "wids-shard-index-v1"  # wids' shard-index format, so its tools can read ours

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


class WrittenShard(NamedTuple):
    path: Path
    index: ShardIndex | None  # None: written without indexing
    stat: os.stat_result  # size and mtime_ns, which a rename into the destination keeps (what index.npz records)


def write_tar_shards(folder: Path, samples: Iterable[tuple[dict, int]], shard_name: Callable[[int], str],
                     shard_size: int, max_bytes: int = 0,
                     index: Callable[[Path], ShardIndex] | None = None) -> list[WrittenShard]:
    """Writes `samples` ((tar members, bytes counted against `max_bytes`) pairs) in order into
    `folder/shard_name(0)`, `shard_name(1)` ...: a shard closes at `shard_size` samples or `max_bytes` (0: no
    limit), and is then read back by `index` (the offsets readers will use; None: not indexed)."""
    from webdataset import TarWriter

    started = int(time.time())  # a whole-second mtime: a float one costs every member an extra 1 KiB PAX header
    shards: list[WrittenShard] = []
    writer, path, count, written = None, None, 0, 0
    for members, size in samples:
        if writer is None:
            path = folder / shard_name(len(shards))
            writer, count, written = TarWriter(str(path), encoder=False, mtime=started), 0, 0
        writer.write(members)
        count, written = count + 1, written + size
        if count >= shard_size or (max_bytes and written >= max_bytes):
            writer.close()
            writer = None
            shards.append(WrittenShard(path, index(path) if index else None, path.stat()))
    if writer is not None:
        writer.close()
        shards.append(WrittenShard(path, index(path) if index else None, path.stat()))
    return shards


def write_shard_list(folder: Path, name: str, shards: list[WrittenShard], meta: dict) -> None:
    """`folder/index.json` listing `shards` (each indexed), with the kind's metadata `meta` as its `vitlab` entry."""
    shardlist = [{"url": s.path.name, "nsamples": len(s.index), "filesize": s.stat.st_size} for s in shards]
    index = {"__kind__": INDEX_KIND, "wids_version": 1, "name": name, "shardlist": shardlist, "vitlab": meta}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1))
