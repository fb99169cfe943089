"""WebDataset shards: reading them for training with exact resume, and writing them from any dataset vitlab reads.

The format is WebDataset's (img2dataset, timm's `wds` reader, open_clip): POSIX tar files in which the members of
one sample share a key, `<key>.<ext>`, the key being the member name up to the first dot of its base name. An image
is `<key>.jpg|jpeg|png|webp`, its label `<key>.cls` (a decimal integer) or `<key>.json` (`{"label": int}` or
`{"cls": int}`). Shards are named by a brace pattern, `train-{000000..000146}.tar`, or listed in an `index.json`.

Reading (`ShardDataset`): each shard is indexed once (member offsets from the tar headers, with `tarfile`, labels
read on the way; or from the `index.npz` that `write_shards` leaves beside the shards, for each shard whose size and
mtime_ns are those recorded there; a shard edited in place is indexed again), and a sample's image bytes are then read by offset. That index is what makes an exact mid-epoch resume
possible: the training order (shard permutation + shuffle buffer, :func:`buffered_order`) is computed from sample
counts alone, so after a kill the loader skips to its position without reading anything it already trained on.
Shards are local files (or any mounted file system): remote URLs are refused, because resuming needs seekable files.

Errors (`on_error`): a missing shard, a truncated tar, a sample without image or label, or an undecodable image stop
the run with the file and member named ('raise'), or are counted and logged and left out ('skip').

Writing (`write_shards`, `vitlab shards SRC OUT`): samples in a seeded random order, `shard_size` samples (or
`max_bytes`) per shard, the whole set written into a staging folder and moved in only when complete
(`vitlab.data.shard_set`: a reader refuses a folder whose write did not finish), with `index.json` (a wids
shard index: `shardlist` of `{url, nsamples, filesize}`, plus the classes and statistics vitlab needs) and
`index.npz` (the member offsets: int64 arrays, loaded with `allow_pickle=False`).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from ._locate import DatasetFormatError, MissingFileError
from ._sources import IMAGENET_MEAN, IMAGENET_STD
from .decode import DecodeCrop
from .encoded import EncodedImageDataset
from .shard_set import INDEX_FILE, check_complete, staged_shard_set

__all__ = ["ShardDataset", "ShardIndex", "ShardFiles", "write_shards", "expand_shard_urls", "index_shard", "scan_tar_members",
           "TarMember", "buffered_order", "shard_url_in", "SHARD_IMAGE_EXTENSIONS", "INDEX_FILE", "MAX_LABEL"]

SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
OFFSETS_FILE = "index.npz"
_INDEX_KIND = "wids-shard-index-v1"  # wids' shard-index format, so its tools can read ours
MAX_LABEL = 10**7  # a larger label is a corrupt file, not a class count (it would build a class list that long)


# ---------------------------------------------------------------------------------------------------------------
# indexing

@dataclass
class ShardIndex:
    """Where each sample of one shard is: `offsets[i]`, `sizes[i]` (bytes of the image member), `labels[i]`,
    `keys[i]`."""
    path: str
    offsets: np.ndarray  # (n,) int64
    sizes: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) int64
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def _label(ext: str, data: bytes, where: str) -> int:
    try:
        if ext == "cls":
            label = int(data.decode("ascii").strip())
        else:
            value = json.loads(data)
            label = value.get("label", value.get("cls")) if isinstance(value, dict) else None
            if isinstance(label, bool) or not isinstance(label, int):
                raise ValueError("no integer 'label' or 'cls' field")
        if abs(label) >= MAX_LABEL:
            raise ValueError(f"label {label} is beyond {MAX_LABEL - 1}, the largest vitlab accepts")
        return label
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise DatasetFormatError(f"{where}: unreadable label ({err}); expected <key>.cls holding a decimal "
                                 "integer or <key>.json with an integer 'label'") from None


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


class TarMember(NamedTuple):
    key: str  # the sample key (the member name without its extension, webdataset's `base_plus_ext`)
    ext: str  # the extension, lower case
    offset: int  # where the member's data starts in the file
    size: int
    name: str  # the member name as stored


def scan_tar_members(path: str | os.PathLike) -> tuple[list[TarMember], str | None]:
    """The regular-file members of a WebDataset tar, in order, from its headers only (no data is read), and the
    message of the error that ended the scan early (a truncated or corrupt tar, or one without its end-of-archive
    blocks), else None. Both shard readers (classification here, segmentation in `_seg_shards.py`) index with it."""
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


def index_shard(path: str | os.PathLike, on_error: str = "raise") -> ShardIndex:
    """Scans one tar's headers (not its image data) into a `ShardIndex`; reads the small label members.

    A truncated tar raises `DatasetFormatError` naming the file and the last complete member ('raise'), or keeps the
    complete samples before the cut with a warning ('skip'). A sample without an image or a label is an error
    ('raise') or left out with a warning ('skip')."""
    path = str(path)
    members, error = scan_tar_members(path)
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    problems = []
    with open(path, "rb") as handle:
        for member in members:
            if member.key not in images and member.key not in labels:
                order.append(member.key)
            if member.ext in SHARD_IMAGE_EXTENSIONS:
                images[member.key] = (member.offset, member.size)
            elif member.ext in ("cls", "json") and member.key not in labels:
                handle.seek(member.offset)
                labels[member.key] = _label(member.ext, handle.read(member.size), f"{path}: {member.name}")
    if error is not None:
        if on_error == "raise":
            raise DatasetFormatError(error + "; set data_errors=skip to train on its complete samples")
        problems.append(error)
        order = order[:-1]  # the sample being read when the tar ended may be incomplete
    keep = []
    for key in order:
        missing = [what for what, table in (("an image (.jpg|.png|.webp)", images), ("a label (.cls|.json)", labels))
                   if key not in table]
        if missing:
            message = f"{path}: sample {key!r} has no {' and no '.join(missing)}"
            if on_error == "raise":
                raise DatasetFormatError(message)
            problems.append(message)
            continue
        keep.append(key)
    for message in problems:
        warnings.warn(f"skipped: {message}", stacklevel=2)
    return ShardIndex(path, np.array([images[k][0] for k in keep], dtype=np.int64),
                      np.array([images[k][1] for k in keep], dtype=np.int64),
                      np.array([labels[k] for k in keep], dtype=np.int64), keep)


def expand_shard_urls(pattern: str, base: str | os.PathLike | None = None) -> list[str]:
    """Brace expansion (`shards-{000000..000999}.tar`, also `{a,b}` and several patterns joined by `::`), relative
    to `base` when not absolute. Remote URLs are refused: exact resume needs seekable local files."""
    urls = []
    for part in pattern.split("::"):
        for url in braceexpand(part):
            if "://" in url or url.startswith("pipe:"):
                raise ValueError(f"shard {url!r}: only local paths are supported (exact resume reads samples by "
                                 "offset); copy or mount the shards locally")
            url = os.path.expanduser(url)
            urls.append(url if base is None or os.path.isabs(url) else os.path.join(base, url))
    return urls


# ---------------------------------------------------------------------------------------------------------------
# the training order

def buffered_order(shard_sizes: list[int], buffer: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's order of the samples of sharded data, as a streaming reader with a shuffle buffer makes it:
    the shards in a random order, read one after another; each sample enters a buffer of `buffer` samples and,
    once it is full, a uniformly drawn buffer slot is emitted and takes the incoming sample's place; at the end the
    rest of the buffer comes out shuffled. `buffer` ≤ 1: shard order only. Returns (N,) int64 global indices
    (shard s holds indices offset[s] … offset[s] + size[s] − 1). A pure function of the counts and `rng`."""
    starts = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]]).astype(np.int64)
    stream = np.concatenate([np.arange(starts[s], starts[s] + shard_sizes[s], dtype=np.int64)
                             for s in rng.permutation(len(shard_sizes))] or [np.zeros(0, np.int64)])
    if buffer <= 1 or len(stream) <= 1:
        return stream
    buffer = min(buffer, len(stream))
    slots = stream[:buffer].copy()
    picks = rng.integers(0, buffer, size=len(stream) - buffer)  # one draw per emitted sample while streaming
    out = np.empty_like(stream)
    for i, (incoming, k) in enumerate(zip(stream[buffer:].tolist(), picks.tolist())):
        out[i] = slots[k]
        slots[k] = incoming
    out[len(stream) - buffer:] = rng.permutation(slots)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the dataset

def _read_index_file(folder: Path) -> tuple[list[str], dict]:
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text())
        urls = [shard_url_in(folder, entry["url"], path) for entry in index["shardlist"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:  # RecursionError: nested too deep
        if isinstance(err, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{path}: not a shard index ({type(err).__name__}: {err}); expected JSON with a "
                                 "'shardlist' of {{'url', 'nsamples'}} entries") from None
    return urls, index


def shard_url_in(folder: Path, url, index_path: Path) -> str:
    """`folder/url` for a shard listed in an index.json; a URL that is not a plain file name inside `folder`
    (absolute, `..`, a sub-path) is a `DatasetFormatError` naming the index and the URL."""
    if not isinstance(url, str) or not url or os.path.isabs(url) or os.path.basename(url) != url or url in (".", ".."):
        raise DatasetFormatError(f"{index_path}: shard url {url!r} is not a file name inside {folder} (an index "
                                 "lists the shards beside it)")
    return str(folder / url)


def _offsets_from_file(folder: Path, index: dict, urls: list[str], on_error: str) -> list[ShardIndex]:
    """The shard indexes stored by `write_shards` for every shard whose size and modification time (ns) are still
    those recorded there (what make and ninja trust: an in-place edit changes the mtime); any other shard, or all of
    them when `index.npz` is missing or older than these fingerprints, is indexed again from its tar headers."""
    path = folder / OFFSETS_FILE
    table = {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                table = {k: npz[k] for k in ("shard", "offset", "size", "label", "key", "shard_bytes",
                                             "shard_mtime_ns")}
        except KeyError:
            table = {}  # written before the fingerprints: index the shards again
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a corrupt .npz (a zip)
            raise DatasetFormatError(f"{path}: unreadable shard offsets ({type(err).__name__}: {err}); delete it "
                                     "or re-run `vitlab shards`") from None
    if table and not (len(table["shard_bytes"]) == len(table["shard_mtime_ns"]) == len(urls) and
                      len({len(table[k]) for k in ("shard", "offset", "size", "label", "key")}) == 1):
        raise DatasetFormatError(f"{path}: its arrays do not match the {len(urls)} shards of {folder / INDEX_FILE}")
    out = []
    for s, url in enumerate(urls):
        stat = os.stat(url)
        if not table or (stat.st_size, stat.st_mtime_ns) != (int(table["shard_bytes"][s]),
                                                             int(table["shard_mtime_ns"][s])):
            out.append(index_shard(url, on_error))  # changed since it was written (or no fingerprint): rescan
            continue
        rows = table["shard"] == s
        offsets, sizes = table["offset"][rows], table["size"][rows]
        if len(offsets) and (offsets.min() < 0 or sizes.min() < 0 or (offsets + sizes).max() > stat.st_size):
            raise DatasetFormatError(f"{path}: offsets of shard {url} outside its {stat.st_size} bytes; delete it "
                                     "or re-run `vitlab shards`")
        out.append(ShardIndex(url, offsets, sizes, table["label"][rows], [str(k) for k in table["key"][rows]]))
    return out


class ShardDataset(EncodedImageDataset):
    """The samples of a set of WebDataset shards, addressable by a global index (shard by shard, in the given
    shard order). `shard_sizes` tells the loader how to stream them (:func:`buffered_order`).

    Args:
        urls: the shard files (see :func:`expand_shard_urls`).
        classes: class names (from `index.json`); None: `class_0 … class_{K-1}` with K = the largest label + 1.
        crop, on_error, mean, std: see `EncodedImageDataset`.
        indexes: precomputed `ShardIndex`es (else each shard is indexed now).
    """

    def __init__(self, urls: list[str], crop: DecodeCrop, classes: list[str] | None = None, name: str = "shards",
                 on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, indexes: list[ShardIndex] | None = None):
        missing = [u for u in urls if not os.path.isfile(u)]
        if missing and on_error == "raise":
            raise MissingFileError(f"{len(missing)} of {len(urls)} shards are missing: {', '.join(missing[:5])}"
                                   f"{' ...' if len(missing) > 5 else ''} (set data_errors=skip to train without them)")
        if missing:
            warnings.warn(f"skipped {len(missing)} missing shard(s): {', '.join(missing[:5])}", stacklevel=2)
        if indexes is None:
            indexes = [index_shard(u, on_error) for u in urls if u not in missing]
        indexes = [ix for ix in indexes if ix.path not in missing]
        self.shards = [ix for ix in indexes if len(ix)]
        if not self.shards:
            raise DatasetFormatError(f"no samples in the shards {urls[:3]}{' ...' if len(urls) > 3 else ''}")
        labels = np.concatenate([ix.labels for ix in self.shards])  # (N,)
        limit = MAX_LABEL if classes is None else len(classes)
        for ix in self.shards:
            bad = np.flatnonzero((ix.labels < 0) | (ix.labels >= limit))
            if len(bad):
                raise DatasetFormatError(f"{name}: {ix.path}: sample {ix.keys[bad[0]]!r} has label "
                                         f"{int(ix.labels[bad[0]])}, outside 0 … {limit - 1}"
                                         + (f" ({limit} classes in the index)" if classes is not None else ""))
        if classes is None:
            classes = [f"class_{i}" for i in range(int(labels.max()) + 1)]
        super().__init__(classes, name, crop, on_error, mean, std)
        self._labels = labels
        self.shard_sizes = [len(ix) for ix in self.shards]
        self._starts = np.cumsum([0] + self.shard_sizes)  # (S + 1,)
        self._files = ShardFiles()

    @classmethod
    def from_spec(cls, spec: str, base: str | os.PathLike | None, crop: DecodeCrop, on_error: str = "raise",
                  name: str = "shards") -> "ShardDataset":
        """`spec`: a folder (or a split name under `base`) holding `index.json`, or a brace pattern of tar files."""
        folder = Path(base or ".") / spec if not os.path.isabs(spec) else Path(spec)
        if folder.is_dir():
            check_complete(folder)
        if (folder / INDEX_FILE).is_file():
            urls, index = _read_index_file(folder)
            meta = index.get("vitlab", {})
            mean, std = tuple(meta.get("mean", IMAGENET_MEAN)), tuple(meta.get("std", IMAGENET_STD))
            indexes = _offsets_from_file(folder, index, urls, on_error) \
                if not any(not os.path.isfile(u) for u in urls) else None
            return cls(urls, crop, meta.get("classes"), name, on_error, mean, std, indexes)
        if folder.is_dir():
            urls = sorted(str(p) for p in folder.glob("*.tar"))
            if not urls:
                raise MissingFileError(f"{folder}: no {INDEX_FILE} and no .tar shards")
        elif ".tar" in spec:
            urls = expand_shard_urls(spec, base)
        else:
            raise MissingFileError(f"shards {spec!r}: not a folder under {base} with {INDEX_FILE} or .tar files, "
                                   "nor a brace pattern of .tar files (e.g. 'train-{000000..000099}.tar')")
        return cls(urls, crop, None, name, on_error)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return (f"ShardDataset({self.name}: {len(self)} images in {len(self.shards)} shards, {self.num_classes} "
                f"classes, {self.crop})")

    @property
    def targets(self) -> list[int]:
        return self._labels.tolist()

    def _locate(self, index: int) -> tuple[ShardIndex, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} outside 0 … {len(self) - 1}")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.shards[shard], index - int(self._starts[shard])

    def source(self, index: int) -> tuple[bytes, int, str]:
        shard, row = self._locate(index)
        data = self._files.read(shard.path, int(shard.offsets[row]), int(shard.sizes[row]))
        return data, int(shard.labels[row]), f"{shard.path}: sample {shard.keys[row]!r}"

    def subset(self, n: int) -> "ShardDataset":
        """The first `n` samples in shard order (the shards `write_shards` makes are in a random order)."""
        if not n or n >= len(self):
            return self
        kept, left = [], n
        for ix in self.shards:
            take = min(left, len(ix))
            kept.append(ShardIndex(ix.path, ix.offsets[:take], ix.sizes[:take], ix.labels[:take], ix.keys[:take]))
            left -= take
            if not left:
                break
        return ShardDataset([ix.path for ix in kept], self.crop, self.classes, self.name, self.on_error, self.mean,
                            self.std, kept)


# ---------------------------------------------------------------------------------------------------------------
# writing

def _encoded_sample(dataset, index: int) -> tuple[bytes, str, int]:
    """(image bytes, extension, label): an ImageFolder's file as it is when it is JPEG / PNG / WebP (no re-encoding),
    anything else (in-memory uint8 tensors, other formats) encoded losslessly as PNG."""
    from PIL import Image

    if isinstance(dataset, EncodedImageDataset):
        data, label, name = dataset.source(index)
        if isinstance(data, str):
            ext = os.path.splitext(data)[1].lower().lstrip(".")
            if ext in SHARD_IMAGE_EXTENSIONS:
                return Path(data).read_bytes(), "jpg" if ext == "jpeg" else ext, label
            with Image.open(data) as img:
                image = img.convert("RGB")
        else:
            return bytes(data), _sniff_extension(data), label  # shard members keep their bytes (re-sharding)
    else:
        tensor, label = dataset[index]  # (C, H, W) uint8
        array = tensor.numpy()
        image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), "png", int(label)


def write_shards(dataset, out_dir: str | os.PathLike, prefix: str = "shard", shard_size: int = 10000,
                 max_bytes: int = 0, seed: int | None = 0, progress: bool | None = None,
                 overwrite: bool = False, description: str = "") -> Path:
    """Writes `dataset` (any vitlab image dataset) as WebDataset shards `<out_dir>/<prefix>-000000.tar ...` with
    `index.json` and `index.npz`; returns `out_dir`. Each sample is `<key>.<jpg|png|webp>`, `<key>.cls` and
    `<key>.json` (`{"label", "class", "source"}`); keys are the dataset indices, zero-padded. `seed`: the order of
    the samples (None: the dataset's order). A shard closes at `shard_size` samples or `max_bytes` (0: no limit)."""
    from tqdm import tqdm
    from webdataset import TarWriter

    out_dir = Path(out_dir)
    if (out_dir / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir / INDEX_FILE} exists: shards were already written there (overwrite=True / "
                              "--overwrite replaces them)")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    with staged_shard_set(out_dir, [f"{prefix}-*.tar", INDEX_FILE, OFFSETS_FILE]) as staging:
        order = np.arange(len(dataset)) if seed is None else np.random.default_rng(seed).permutation(len(dataset))
        digits = max(9, len(str(len(dataset))))
        shards: list[dict] = []
        rows: dict[str, list] = {"shard": [], "offset": [], "size": [], "label": [], "key": [], "shard_mtime_ns": []}
        writer, tmp, count, written = None, None, 0, 0
        started = int(time.time())

        def close() -> None:
            nonlocal writer
            writer.close()
            index = index_shard(tmp)  # read the headers back: the offsets readers will use
            stat = tmp.stat()  # renaming into out_dir keeps size and mtime: what readers check the index against
            rows["shard"] += [len(shards)] * len(index)
            rows["offset"] += index.offsets.tolist()
            rows["size"] += index.sizes.tolist()
            rows["label"] += index.labels.tolist()
            rows["key"] += index.keys
            rows["shard_mtime_ns"].append(stat.st_mtime_ns)
            shards.append({"url": tmp.name, "nsamples": len(index), "filesize": stat.st_size})
            writer = None

        bar = tqdm(order.tolist(), desc=f"shards → {out_dir}", unit="img", disable=not progress if progress is not None
                   else None)
        for i in bar:
            if writer is None:
                tmp = staging / f"{prefix}-{len(shards):06d}.tar"
                # a whole-second mtime: a float one costs every member an extra 1 KiB PAX header
                writer, count, written = TarWriter(str(tmp), encoder=False, mtime=started), 0, 0
            data, ext, label = _encoded_sample(dataset, i)
            key = f"{i:0{digits}d}"
            name = dataset.classes[label] if 0 <= label < len(dataset.classes) else str(label)
            meta = {"label": label, "class": name}
            if isinstance(dataset, EncodedImageDataset):
                meta["source"] = dataset.source(i)[2]
            writer.write({"__key__": key, ext: data, "cls": str(label).encode(), "json": json.dumps(meta).encode()})
            count, written = count + 1, written + len(data)
            if count >= shard_size or (max_bytes and written >= max_bytes):
                close()
        if writer is not None:
            close()
        np.savez(staging / OFFSETS_FILE, shard=np.array(rows["shard"], np.int64),
                 offset=np.array(rows["offset"], np.int64), size=np.array(rows["size"], np.int64),
                 label=np.array(rows["label"], np.int64), key=np.array(rows["key"], dtype=str),
                 shard_bytes=np.array([e["filesize"] for e in shards], np.int64),
                 shard_mtime_ns=np.array(rows["shard_mtime_ns"], np.int64))
        index = {"__kind__": _INDEX_KIND, "wids_version": 1, "name": description or prefix, "shardlist": shards,
                 "vitlab": {"classes": list(dataset.classes), "num_samples": len(order), "mean": _rgb(dataset.mean),
                            "std": _rgb(dataset.std), "seed": seed, "source": description}}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return out_dir


def _sniff_extension(data: bytes) -> str:
    """The extension of encoded image bytes from their signature (JPEG, PNG, WebP)."""
    if data[:4] == b"\x89PNG":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _rgb(values: Iterable[float]) -> list[float]:
    """Shards decode to RGB: a one-channel dataset's statistic is repeated over the three channels."""
    values = [float(v) for v in values]
    return values * 3 if len(values) == 1 else values
