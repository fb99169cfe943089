"""One index for the three kinds of WebDataset shard vitlab reads and writes: classification (`shards.py`),
segmentation (`_seg_shards.py`) and image–caption (`image_text.py`).

A shard is a POSIX tar whose members `<key>.<ext>` share a key per sample (webdataset's `base_plus_ext`: the key is
the member name up to the first dot of its base name). A `ShardKind` declares the `Column`s of its samples, each
filled by the members of some extensions, and what the index keeps of the member: its place in the tar (read later
by offset: images, masks), its value (read while indexing: labels, captions) or its name. One scanner,
`index_tar(path, kind)`, reads the tar headers once (`scan_tar_members`, no image data) into a `ShardIndex`, by one
rule for every kind:

- the samples are the keys in the order of their first members (only the keys with a member of a column when the
  kind says `other_keys_are_samples=False`: image–caption shards, whose other members, `<key>.json` say, are
  ignored); the first member of a column wins;
- a sample without a member of every column, or whose value cannot be read, is an error naming the shard and key
  (`on_error='raise'`) or is left out with a warning ('skip');
- a truncated tar is an error ('raise': the message ends with the kind's `cut_hint`), or ('skip') its samples
  complete before the cut are kept with a warning (the last one only if it has every column).

`index.npz` (`save_offsets` / `load_offsets`) stores the indexes of a set of shards beside its `index.json`, with
each shard's size and mtime_ns: a shard whose fingerprint differs (edited in place) is indexed again from its tar.
`ShardedDataset` is what the three shard datasets share: the shards' indexes, a global index shard by shard,
`shard_sizes` (what `EncodedLoader` streams by) and `subset` (`_subset.py`).
"""
from __future__ import annotations

import os
import tarfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, NamedTuple

import numpy as np
from webdataset.tariterators import base_plus_ext

from ._locate import DatasetFormatError, MissingFileError
from ._subset import Subset, leading

__all__ = ["ShardKind", "Column", "PLACE", "VALUE", "NAME", "ShardIndex", "TarMember", "ShardFiles", "ShardedDataset",
           "scan_tar_members", "index_tar", "save_offsets", "load_offsets", "image_extension", "SHARD_IMAGE_EXTENSIONS",
           "OFFSETS_FILE"]

SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
OFFSETS_FILE = "index.npz"
PLACE, VALUE, NAME = "place", "value", "name"  # what a column keeps of its member


class TarMember(NamedTuple):
    key: str  # the sample key (the member name without its extension, webdataset's `base_plus_ext`)
    ext: str  # the extension, lower case
    offset: int  # where the member's data starts in the file
    size: int
    name: str  # the member name as stored


def scan_tar_members(path: str | os.PathLike) -> tuple[list[TarMember], str | None]:
    """The regular-file members of a WebDataset tar, in order, from its headers only (no data is read), and the
    message of the error that ended the scan early (a truncated or corrupt tar, or one without its end-of-archive
    blocks), else None."""
    path = str(path)
    size = os.path.getsize(path)
    members: list[TarMember] = []
    last = "(none)"
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    raise tarfile.ReadError(f"member {member.name} extends past the end of the file")
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                members.append(TarMember(key, ext.lower(), member.offset_data, member.size, member.name))
                last = member.name
            with open(path, "rb") as handle:  # a complete tar ends with two zero blocks after its last member
                handle.seek(tar.offset)
                if handle.read(1024) != bytes(1024):
                    raise tarfile.ReadError("no end-of-archive blocks: the file was cut short")
    except (tarfile.TarError, EOFError) as err:
        return members, f"{path}: truncated or corrupt tar after member {last} ({err})"
    return members, None


def image_extension(data: bytes) -> str:
    """The shard extension of encoded image bytes, from their signature: png, webp, else jpg."""
    if data[:4] == b"\x89PNG":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


# ---------------------------------------------------------------------------------------------------------------
# the declared kinds

@dataclass(frozen=True)
class Column:
    """One field of a sample: filled by its first member `<key>.<ext>` with `ext` in `extensions`; `keep` says what
    the index holds of it: PLACE, the member's (offset, size) ((n, 2) int64), VALUE, `read(member, data, path)`
    (a `dtype` array, or a list when None; `read` raises `DatasetFormatError` naming the member), or NAME, the
    member name as stored. `description` names it in the error of a sample without it; `stored_as`: its arrays
    in index.npz (PLACE: offsets, sizes)."""
    name: str
    extensions: tuple[str, ...]
    description: str = ""
    keep: str = PLACE
    read: Callable[[TarMember, bytes, str], object] | None = None
    dtype: type | None = None
    stored_as: tuple[str, ...] = ()

    def take(self, member: TarMember, handle: BinaryIO, path: str):
        if self.keep == PLACE:
            return member.offset, member.size
        if self.keep == NAME:
            return member.name
        handle.seek(member.offset)
        return self.read(member, handle.read(member.size), path)


def _no_column(kind: "ShardKind", path: str, key: str, found: dict[str, TarMember]) -> str:
    missing = [c.description for c in kind.columns if c.name not in found]
    return f"{path}: sample {key!r} has no {' and no '.join(missing)}"


@dataclass(frozen=True)
class ShardKind:
    """A kind of shard: its sample columns, whether a key without a member of any column is a sample (which then
    lacks every column: an error) or is ignored (`other_keys_are_samples`), and the words of its errors
    (`shards_noun`, `missing_hint`: a missing shard; `cut_hint`: a truncated tar in 'raise' mode; `no_samples`: no
    sample at all, formatted with `name` and `urls`; `missing_member(kind, path, key, found)`: a sample without
    some column)."""
    name: str
    columns: tuple[Column, ...]
    cut_hint: str
    missing_hint: str
    no_samples: str
    shards_noun: str = "shards"
    other_keys_are_samples: bool = True
    missing_member: Callable[["ShardKind", str, str, dict[str, TarMember]], str] = _no_column


# ---------------------------------------------------------------------------------------------------------------
# the index of one shard

@dataclass
class ShardIndex:
    """Where each sample of one shard is: `keys[i]` and, for each column of its kind, `columns[name][i]`, also
    read as an attribute (`index.image[i]` = (offset, size), `index.labels[i]`, `index.captions[i]`)."""
    path: str
    keys: list[str]
    columns: dict[str, np.ndarray | list]

    def __len__(self) -> int:
        return len(self.keys)

    def __getattr__(self, name: str):
        columns = self.__dict__.get("columns", {})
        if name not in columns:
            raise AttributeError(f"{type(self).__name__} has no attribute or column {name!r}")
        return columns[name]

    def rows(self, rows: np.ndarray) -> "ShardIndex":
        """The index of the samples `rows` ((n,) increasing) of this shard."""
        index = leading(rows)

        def pick(values):
            return values[index] if isinstance(index, slice) or isinstance(values, np.ndarray) else \
                [values[i] for i in index.tolist()]
        return ShardIndex(self.path, pick(self.keys), {name: pick(v) for name, v in self.columns.items()})


def index_tar(path: str | os.PathLike, kind: ShardKind, on_error: str = "raise") -> ShardIndex:
    """Scans one tar's headers (and its VALUE members) into a `ShardIndex` of `kind`, by the rule of the module
    docstring: a truncated tar or a bad sample raises `DatasetFormatError` naming the shard and key ('raise'), or is
    left out with a warning ('skip')."""
    path = str(path)
    members, cut = scan_tar_members(path)
    if cut and on_error == "raise":
        raise DatasetFormatError(cut + kind.cut_hint)
    found: dict[str, dict[str, TarMember]] = {}  # key → column name → its first member, keys in first-seen order
    for member in members:
        if kind.other_keys_are_samples:
            found.setdefault(member.key, {})
        for column in kind.columns:
            if member.ext in column.extensions:
                found.setdefault(member.key, {}).setdefault(column.name, member)
    problems = [cut] if cut else []
    if cut and found and len(found[last := next(reversed(found))]) < len(kind.columns):
        del found[last]  # the sample being read when the tar ended: a member of it was cut off
    keys, values = [], {column.name: [] for column in kind.columns}
    with open(path, "rb") as handle:
        for key, members_of in found.items():
            try:
                if len(members_of) < len(kind.columns):
                    raise DatasetFormatError(kind.missing_member(kind, path, key, members_of))
                row = [column.take(members_of[column.name], handle, path) for column in kind.columns]
            except DatasetFormatError as err:
                if on_error == "raise":
                    raise DatasetFormatError(str(err)) from None
                problems.append(str(err))
                continue
            keys.append(key)
            for column, value in zip(kind.columns, row):
                values[column.name].append(value)
    for message in problems:
        warnings.warn(f"skipped: {message}", stacklevel=2)
    return ShardIndex(path, keys, {column.name: _as_column(column, values[column.name]) for column in kind.columns})


def _as_column(column: Column, values: list):
    if column.keep == PLACE:
        return np.array(values, np.int64).reshape(-1, 2)  # (n, 2): offset, size
    return np.array(values, column.dtype) if column.dtype is not None else values


# ---------------------------------------------------------------------------------------------------------------
# index.npz: the indexes of a shard set, with each shard's fingerprint

def _stored_names(kind: ShardKind) -> tuple[str, ...]:
    return ("shard", *(name for column in kind.columns for name in column.stored_as), "key")


def save_offsets(path: str | os.PathLike, kind: ShardKind, shards: list[tuple[ShardIndex, os.stat_result]]) -> None:
    """Writes the indexes of `shards` (with the `os.stat` of each file) as int64 / str arrays: `shard` (each row's
    shard), each column's `stored_as` arrays (every column of `kind` has them), `key`, and the fingerprints
    `shard_bytes`, `shard_mtime_ns`."""
    arrays = {"shard": np.array([s for s, (index, _) in enumerate(shards) for _ in range(len(index))], np.int64)}
    for column in kind.columns:
        parts = [index.columns[column.name] for index, _ in shards]
        if column.keep == PLACE:
            places = np.concatenate([np.zeros((0, 2), np.int64), *parts]).astype(np.int64)  # (N, 2)
            for part, name in enumerate(column.stored_as):  # offsets, sizes
                arrays[name] = np.ascontiguousarray(places[:, part])
        else:
            arrays[column.stored_as[0]] = np.concatenate([np.zeros(0, column.dtype), *parts]).astype(column.dtype)
    arrays["key"] = np.array([key for index, _ in shards for key in index.keys], dtype=str)
    arrays["shard_bytes"] = np.array([stat.st_size for _, stat in shards], np.int64)
    arrays["shard_mtime_ns"] = np.array([stat.st_mtime_ns for _, stat in shards], np.int64)
    np.savez(path, **arrays)


def load_offsets(folder: Path, kind: ShardKind, urls: list[str], index: Callable[[str, str], ShardIndex],
                 on_error: str = "raise") -> list[ShardIndex]:
    """The shard indexes stored in `folder/index.npz` for every shard whose size and modification time (ns) are
    still those recorded there (what make and ninja trust: an in-place edit changes the mtime); any other shard, or
    all of them when `index.npz` is missing or older than these fingerprints (written before them, or for other
    columns), is indexed again from its tar (`index(url, on_error)`)."""
    path = folder / OFFSETS_FILE
    names, table = _stored_names(kind), {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                table = {k: npz[k] for k in (*names, "shard_bytes", "shard_mtime_ns")}
        except KeyError:
            table = {}  # written before the fingerprints: index the shards again
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a corrupt .npz (a zip)
            raise DatasetFormatError(f"{path}: unreadable shard offsets ({type(err).__name__}: {err}); delete it "
                                     "or re-run `vitlab shards`") from None
    if table and not (len(table["shard_bytes"]) == len(table["shard_mtime_ns"]) == len(urls) and
                      len({len(table[k]) for k in names}) == 1):
        raise DatasetFormatError(f"{path}: its arrays do not match the {len(urls)} shards of {folder / 'index.json'}")
    out = []
    for s, url in enumerate(urls):
        stat = os.stat(url)
        if not table or (stat.st_size, stat.st_mtime_ns) != (int(table["shard_bytes"][s]),
                                                             int(table["shard_mtime_ns"][s])):
            out.append(index(url, on_error))  # changed since it was written (or no fingerprint): rescan
            continue
        rows = table["shard"] == s
        columns = {}
        for column in kind.columns:
            stored = [table[name][rows] for name in column.stored_as]
            if column.keep == PLACE:
                offsets, sizes = stored
                if len(offsets) and (offsets.min() < 0 or sizes.min() < 0 or (offsets + sizes).max() > stat.st_size):
                    raise DatasetFormatError(f"{path}: offsets of shard {url} outside its {stat.st_size} bytes; "
                                             "delete it or re-run `vitlab shards`")
                columns[column.name] = np.stack([offsets, sizes], axis=1)  # (n, 2)
            else:
                columns[column.name] = stored[0]
        out.append(ShardIndex(url, [str(k) for k in table["key"][rows]], columns))
    return out


# ---------------------------------------------------------------------------------------------------------------
# reading samples

class ShardFiles:
    """Reads byte ranges of shard files through a small per-process cache of open descriptors (`os.pread`, no seek
    state); pickling (DataLoader workers) drops the descriptors, so each process opens its own."""

    MAX_OPEN = 64  # descriptors kept open per process

    def __init__(self):
        self._fds: dict[str, int] = {}  # path → open file descriptor

    def read(self, path: str, offset: int, size: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= self.MAX_OPEN:
                self.close()
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return os.pread(fd, size, offset)

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def __getstate__(self) -> dict:
        return {"_fds": {}}  # descriptors are per process

    def __del__(self) -> None:
        self.close()


class ShardedDataset(Subset):
    """What the three shard datasets share: `shards` (the non-empty `ShardIndex`es, in the given shard order), a
    global index shard by shard (`_locate`), `shard_sizes` and `subset` (the first n, shard by shard). A subclass
    sets `KIND` and gives `_with_shards(indexes)`, a copy of itself over those shard indexes."""

    KIND: ShardKind

    def _open_shards(self, urls: list[str], on_error: str, indexes: list[ShardIndex] | None, name: str) -> None:
        """Indexes the shards `urls` (unless `indexes` are given); a missing shard is `MissingFileError` ('raise')
        or left out with a warning ('skip'); no sample at all is `DatasetFormatError`."""
        kind = self.KIND
        missing = [u for u in urls if not os.path.isfile(u)]
        if missing and on_error == "raise":
            raise MissingFileError(f"{len(missing)} of {len(urls)} {kind.shards_noun} are missing: "
                                   f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                                   f"({kind.missing_hint})")
        if missing:
            warnings.warn(f"skipped {len(missing)} missing shard(s): {', '.join(missing[:5])}", stacklevel=3)
        if indexes is None:
            indexes = [index_tar(u, kind, on_error) for u in urls if u not in missing]
        self.shards = [ix for ix in indexes if ix.path not in missing and len(ix)]
        if not self.shards:
            raise DatasetFormatError(kind.no_samples.format(name=name, urls=f"{urls[:3]}"
                                                            f"{' ...' if len(urls) > 3 else ''}"))
        self.shard_sizes = [len(ix) for ix in self.shards]
        self._starts = np.cumsum([0] + self.shard_sizes)  # (S + 1,)
        self._files = ShardFiles()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[ShardIndex, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} outside 0 … {len(self) - 1}")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.shards[shard], index - int(self._starts[shard])

    def _read(self, shard: ShardIndex, column: str, row: int) -> bytes:
        offset, size = shard.columns[column][row]
        return self._files.read(shard.path, int(offset), int(size))

    def _select(self, rows: np.ndarray):
        kept = []
        bounds = np.searchsorted(rows, self._starts)  # rows[bounds[s]:bounds[s + 1]] lie in shard s
        for s, shard in enumerate(self.shards):
            if bounds[s + 1] > bounds[s]:
                kept.append(shard.rows(rows[bounds[s]:bounds[s + 1]] - self._starts[s]))
        return self._with_shards(kept)

    def _with_shards(self, indexes: list[ShardIndex]):
        raise NotImplementedError
