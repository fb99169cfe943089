"""WebDataset shards: reading them for training with exact resume, and writing them from any dataset vitlab reads.

The format is WebDataset's (img2dataset, timm's `wds` reader, open_clip): POSIX tar files in which the members of
one sample share a key, `<key>.<ext>`, the key being the member name up to the first dot of its base name. An image
is `<key>.jpg|jpeg|png|webp`, its label `<key>.cls` (a decimal integer) or `<key>.json` (`{"label": int}` or
`{"cls": int}`). Shards are named by a brace pattern, `train-{000000..000146}.tar`, or listed in an `index.json`.

Reading (`ShardDataset`): each shard is indexed once (`vitlab.data.shard_index`, the index of the three shard kinds:
member offsets from the tar headers, labels read on the way; or from the `index.npz` that `write_shards` leaves
beside the shards, for each shard whose size and mtime_ns are those recorded there; a shard edited in place is
indexed again), and a sample's image bytes are then read by offset. That index is what makes an exact mid-epoch
resume possible: the training order (shard permutation + shuffle buffer, :func:`buffered_order`) is computed from sample
counts alone, so after a kill the loader skips to its position without reading anything it already trained on.
Shards are local files (or any mounted file system): remote URLs are refused, because resuming needs seekable files.

Errors (`on_error`): a missing shard, a truncated tar, a sample without image or label, or an undecodable image stop
the run with the file and member named ('raise'), or are counted and logged and left out ('skip').

Writing (`write_shards`, `vitlab shards SRC OUT`): samples in a seeded random order, `shard_size` samples (or
`max_bytes`) per shard, the whole set written into a staging folder and moved in only when complete
(`vitlab.data.shard_set`, the one shard writer: a reader refuses a folder whose write did not finish), with
`index.json` (a wids shard index: `shardlist` of `{url, nsamples, filesize}`, plus the classes and statistics
vitlab needs) and `index.npz` (the member offsets: int64 arrays, loaded with `allow_pickle=False`).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from braceexpand import braceexpand

from ._locate import DatasetFormatError, MissingFileError
from ._sources import IMAGENET_MEAN, IMAGENET_STD
from .decode import DecodeCrop
from .encoded import EncodedImageDataset
from .shard_index import (OFFSETS_FILE, SHARD_IMAGE_EXTENSIONS, VALUE, Column, ShardedDataset, ShardFiles, ShardIndex,
                          ShardKind, TarMember, image_extension, index_tar, load_offsets, save_offsets,
                          scan_tar_members)
from .shard_set import INDEX_FILE, check_complete, staged_shard_set, write_shard_list, write_tar_shards

__all__ = ["ShardDataset", "ShardIndex", "ShardFiles", "write_shards", "expand_shard_urls", "index_shard",
           "scan_tar_members", "TarMember", "buffered_order", "shard_url_in", "SHARD_IMAGE_EXTENSIONS", "INDEX_FILE",
           "MAX_LABEL", "CLASSIFICATION"]

MAX_LABEL = 10**7  # a larger label is a corrupt file, not a class count (it would build a class list that long)


# ---------------------------------------------------------------------------------------------------------------
# indexing

def _label(member: TarMember, data: bytes, path: str) -> int:
    """The label of `<key>.cls` (a decimal integer) or `<key>.json` (`{"label": int}` or `{"cls": int}`)."""
    try:
        if member.ext == "cls":
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
        raise DatasetFormatError(f"{path}: {member.name}: unreadable label ({err}); expected <key>.cls holding a "
                                 "decimal integer or <key>.json with an integer 'label'") from None


CLASSIFICATION = ShardKind(
    "classification",
    (Column("image", SHARD_IMAGE_EXTENSIONS, "an image (.jpg|.png|.webp)", stored_as=("offset", "size")),
     Column("labels", ("cls", "json"), "a label (.cls|.json)", keep=VALUE, read=_label, dtype=np.int64,
            stored_as=("label",))),
    cut_hint="; set data_errors=skip to train on its complete samples",
    missing_hint="set data_errors=skip to train without them", no_samples="no samples in the shards {urls}")


def index_shard(path: str | os.PathLike, on_error: str = "raise") -> ShardIndex:
    """One classification shard's index (`index_tar`): `image` (offset, size) and `labels` of each sample."""
    return index_tar(path, CLASSIFICATION, on_error)


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


class ShardDataset(ShardedDataset, EncodedImageDataset):
    """The samples of a set of WebDataset shards, addressable by a global index (shard by shard, in the given
    shard order). `shard_sizes` tells the loader how to stream them (:func:`buffered_order`).

    Args:
        urls: the shard files (see :func:`expand_shard_urls`).
        classes: class names (from `index.json`); None: `class_0 … class_{K-1}` with K = the largest label + 1.
        crop, on_error, mean, std: see `EncodedImageDataset`.
        indexes: precomputed `ShardIndex`es (else each shard is indexed now).
    """

    KIND = CLASSIFICATION

    def __init__(self, urls: list[str], crop: DecodeCrop, classes: list[str] | None = None, name: str = "shards",
                 on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, indexes: list[ShardIndex] | None = None):
        self._open_shards(urls, on_error, indexes, name)
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
            indexes = load_offsets(folder, CLASSIFICATION, urls, index_shard, on_error) \
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

    def __repr__(self) -> str:
        return (f"ShardDataset({self.name}: {len(self)} images in {len(self.shards)} shards, {self.num_classes} "
                f"classes, {self.crop})")

    @property
    def targets(self) -> list[int]:
        return self._labels.tolist()

    def source(self, index: int) -> tuple[bytes, int, str]:
        shard, row = self._locate(index)
        return self._read(shard, "image", row), int(shard.labels[row]), f"{shard.path}: sample {shard.keys[row]!r}"

    def _with_shards(self, indexes: list[ShardIndex]) -> "ShardDataset":
        return ShardDataset([ix.path for ix in indexes], self.crop, self.classes, self.name, self.on_error, self.mean,
                            self.std, indexes)


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
            return bytes(data), image_extension(data), label  # shard members keep their bytes (re-sharding)
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

    out_dir = Path(out_dir)
    if (out_dir / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir / INDEX_FILE} exists: shards were already written there (overwrite=True / "
                              "--overwrite replaces them)")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    with staged_shard_set(out_dir, [f"{prefix}-*.tar", INDEX_FILE, OFFSETS_FILE]) as staging:
        order = np.arange(len(dataset)) if seed is None else np.random.default_rng(seed).permutation(len(dataset))
        digits = max(9, len(str(len(dataset))))

        def samples():  # (tar members, image bytes) per sample
            for i in tqdm(order.tolist(), desc=f"shards → {out_dir}", unit="img",
                          disable=not progress if progress is not None else None):
                data, ext, label = _encoded_sample(dataset, i)
                name = dataset.classes[label] if 0 <= label < len(dataset.classes) else str(label)
                meta = {"label": label, "class": name}
                if isinstance(dataset, EncodedImageDataset):
                    meta["source"] = dataset.source(i)[2]
                yield {"__key__": f"{i:0{digits}d}", ext: data, "cls": str(label).encode(),
                       "json": json.dumps(meta).encode()}, len(data)

        shards = write_tar_shards(staging, samples(), lambda s: f"{prefix}-{s:06d}.tar", shard_size, max_bytes,
                                  index_shard)
        save_offsets(staging / OFFSETS_FILE, CLASSIFICATION, [(shard.index, shard.stat) for shard in shards])
        write_shard_list(staging, description or prefix, shards,
                         {"classes": list(dataset.classes), "num_samples": len(order), "mean": _rgb(dataset.mean),
                          "std": _rgb(dataset.std), "seed": seed, "source": description})
    return out_dir


def _rgb(values: Iterable[float]) -> list[float]:
    """Shards decode to RGB: a one-channel dataset's statistic is repeated over the three channels."""
    values = [float(v) for v in values]
    return values * 3 if len(values) == 1 else values
