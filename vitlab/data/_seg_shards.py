"""Segmentation samples in WebDataset shards: `<key>.jpg` (or .png / .webp, the image as stored) and `<key>.seg.png`
(the label mask as stored: raw values, for ADE20K 0 = other and 1 … 150 the classes; reduce_zero_label is applied on
read), plus `<key>.json` (`{"source": <original image path>}`).

The folder layout is the classification shards' (vitlab/data/shards.py): tar files and an `index.json` in wids'
shard-index format (`shardlist` of `{url, nsamples, filesize}`), whose `vitlab` entry says `"task": "segmentation"`
and carries the classes, palette and statistics. Each shard is indexed on opening (tar headers only: member offsets
of the image and the mask of each key), and samples are then read by offset, so `EncodedLoader` streams them with
the shard-aware order (`shard_sizes`, :func:`vitlab.data.shards.buffered_order`) and resumes exactly.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._locate import DatasetFormatError, MissingFileError
from ._seg_source import SegmentationDataset
from ._seg_transform import SegCrop
from ._sources import IMAGENET_MEAN, IMAGENET_STD
from .shard_set import check_complete, staged_shard_set
from .shards import _INDEX_KIND, INDEX_FILE, SHARD_IMAGE_EXTENSIONS, ShardFiles, scan_tar_members, shard_url_in

__all__ = ["SegmentationShardDataset", "SegShardIndex", "index_segmentation_shard", "write_segmentation_shards",
           "MASK_EXTENSION", "SEGMENTATION_TASK"]

MASK_EXTENSION = "seg.png"
SEGMENTATION_TASK = "segmentation"


@dataclass
class SegShardIndex:
    """Where each sample of one shard is: image member `image[i] = (offset, size)`, mask member `mask[i]`."""
    path: str
    image: np.ndarray  # (n, 2) int64: offset, size
    mask: np.ndarray  # (n, 2) int64
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def head(self, n: int) -> "SegShardIndex":
        return SegShardIndex(self.path, self.image[:n], self.mask[:n], self.keys[:n])


def _scan_members(path: str) -> tuple[list[str], dict, dict, str | None]:
    """(keys in order, key → image (offset, size), key → mask (offset, size), error or None), from the tar
    headers (`scan_tar_members`); after an error the last key, possibly incomplete, is dropped."""
    members, error = scan_tar_members(path)
    images: dict[str, tuple[int, int]] = {}
    masks: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    for member in members:
        if member.key not in images and member.key not in masks:
            order.append(member.key)
        table = masks if member.ext == MASK_EXTENSION else images if member.ext in SHARD_IMAGE_EXTENSIONS else None
        if table is not None:
            table[member.key] = (member.offset, member.size)
    return (order[:-1] if error else order), images, masks, error


def index_segmentation_shard(path: str | os.PathLike, on_error: str = "raise") -> SegShardIndex:
    """Scans one tar's headers into a `SegShardIndex`. A truncated tar or a sample without its image
    (`<key>.jpg|png|webp`) or its mask (`<key>.seg.png`) raises `DatasetFormatError` naming the shard and key
    ('raise'), or is left out with a warning ('skip': the complete samples before a cut are kept)."""
    path = str(path)
    order, images, masks, problem = _scan_members(path)
    problems = [problem] if problem else []
    if problem and on_error == "raise":
        raise DatasetFormatError(problem + "; set on_error='skip' to use its complete samples")
    keep = []
    for key in order:
        missing = [what for what, table in (("image (.jpg|.png|.webp)", images), (f"mask (.{MASK_EXTENSION})", masks))
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
    return SegShardIndex(path, np.array([images[k] for k in keep], np.int64).reshape(-1, 2),
                         np.array([masks[k] for k in keep], np.int64).reshape(-1, 2), keep)


class SegmentationShardDataset(SegmentationDataset):
    """The samples of segmentation shards, addressable by a global index (shard by shard). Items as
    `SegmentationDataset`'s. `shard_sizes` tells `EncodedLoader` how to stream them.

    Args:
        urls: the shard files. classes, palette: from index.json (`from_folder`).
        crop, on_error, mean, std: see `SegmentationDataset`.
        indexes: precomputed `SegShardIndex`es (else each shard is indexed now).
    """

    def __init__(self, urls: list[str], crop: SegCrop, classes: list[str], palette: list, name: str = "seg_shards",
                 on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, indexes: list[SegShardIndex] | None = None):
        super().__init__(classes, palette, name, crop, on_error, mean, std)
        missing = [u for u in urls if not os.path.isfile(u)]
        if missing and on_error == "raise":
            raise MissingFileError(f"{len(missing)} of {len(urls)} shards are missing: {', '.join(missing[:5])}"
                                   f"{' ...' if len(missing) > 5 else ''} (on_error='skip' reads the others)")
        if missing:
            warnings.warn(f"skipped {len(missing)} missing shard(s): {', '.join(missing[:5])}", stacklevel=2)
        if indexes is None:
            indexes = [index_segmentation_shard(u, on_error) for u in urls if u not in missing]
        self.shards = [ix for ix in indexes if len(ix)]
        if not self.shards:
            raise DatasetFormatError(f"{name}: no samples in the shards {urls[:3]}{' ...' if len(urls) > 3 else ''}")
        self.shard_sizes = [len(ix) for ix in self.shards]
        self._starts = np.cumsum([0] + self.shard_sizes)  # (S + 1,)
        self._files = ShardFiles()

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, crop: SegCrop, on_error: str = "raise",
                    name: str | None = None) -> "SegmentationShardDataset":
        """The shards listed in `folder/index.json` (written by `write_segmentation_shards`)."""
        path = Path(folder) / INDEX_FILE
        if Path(folder).is_dir():
            check_complete(folder)
        if not path.is_file():
            raise MissingFileError(f"{path}: missing; expected the index.json that write_segmentation_shards writes "
                                   "beside the shards")
        try:
            index = json.loads(path.read_text())
            urls = [shard_url_in(Path(folder), entry["url"], path) for entry in index["shardlist"]]
            meta = index["vitlab"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:  # RecursionError: nested too deep
            if isinstance(err, DatasetFormatError):
                raise
            raise DatasetFormatError(f"{path}: not a shard index ({type(err).__name__}: {err}); expected JSON with a "
                                     "'shardlist' of {'url', 'nsamples'} entries and a 'vitlab' entry") from None
        if meta.get("task") != SEGMENTATION_TASK or "classes" not in meta:
            raise DatasetFormatError(f"{path}: vitlab.task is {meta.get('task')!r}, expected {SEGMENTATION_TASK!r} "
                                     "with 'classes' (classification shards are read by ShardDataset)")
        return cls(urls, crop, meta["classes"], meta.get("palette", []), name or f"seg_shards:{Path(folder).name}",
                   on_error, tuple(meta.get("mean", IMAGENET_MEAN)), tuple(meta.get("std", IMAGENET_STD)))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return (f"SegmentationShardDataset({self.name}: {len(self)} samples in {len(self.shards)} shards, "
                f"{self.num_classes} classes, {self.crop})")

    def _read(self, shard: SegShardIndex, member: np.ndarray) -> bytes:
        return self._files.read(shard.path, int(member[0]), int(member[1]))  # member = (offset, size)

    def source(self, index: int) -> tuple[bytes, bytes, str, str]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} outside 0 … {len(self) - 1}")
        s = int(np.searchsorted(self._starts, index, side="right")) - 1
        shard, row = self.shards[s], index - int(self._starts[s])
        where = f"{shard.path}: sample {shard.keys[row]!r}"
        return (self._read(shard, shard.image[row]), self._read(shard, shard.mask[row]), f"{where} (image)",
                f"{where} (.{MASK_EXTENSION})")

    def subset(self, n: int) -> "SegmentationShardDataset":
        """The first `n` samples in shard order (`write_segmentation_shards` writes them in a seeded random order)."""
        if not n or n >= len(self):
            return self
        kept, left = [], n
        for ix in self.shards:
            if left:
                kept.append(ix.head(min(left, len(ix))))
                left -= len(kept[-1])
        copy = SegmentationShardDataset([ix.path for ix in kept], self.crop, self.classes, self.palette, self.name,
                                        self.on_error, self.mean, self.std, kept)
        copy.files = self.files
        return copy


def _image_extension(data: bytes) -> str:
    if data[:4] == b"\x89PNG":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def write_segmentation_shards(dataset: SegmentationDataset, out_dir: str | os.PathLike, shard_size: int = 1000,
                              prefix: str = "shard", seed: int | None = 0, overwrite: bool = False) -> Path:
    """Writes `dataset` (a `SegmentationDataset`: ADE20K folders, other segmentation shards) as shards
    `<out_dir>/<prefix>-000000.tar ...` plus `index.json`; returns `out_dir`. Files are copied as stored (no
    re-encoding). `seed`: the order of the samples (None: the dataset's order; ADE20K's file order is by scene)."""
    from webdataset import TarWriter

    out_dir = Path(out_dir)
    if (out_dir / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir / INDEX_FILE} exists: shards were already written there (overwrite=True "
                              "replaces them)")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    order = np.arange(len(dataset)) if seed is None else np.random.default_rng(seed).permutation(len(dataset))
    digits, started, shards = max(9, len(str(len(dataset)))), int(time.time()), []
    with staged_shard_set(out_dir, [f"{prefix}-*.tar", INDEX_FILE]) as staging:
        for first in range(0, len(order), shard_size):
            path = staging / f"{prefix}-{len(shards):06d}.tar"
            with TarWriter(str(path), encoder=False, mtime=started) as writer:
                for i in order[first:first + shard_size].tolist():
                    image, mask, name = dataset.encoded_pair(i)
                    writer.write({"__key__": f"{i:0{digits}d}", _image_extension(image): image,
                                  MASK_EXTENSION: mask, "json": json.dumps({"source": name}).encode()})
            shards.append({"url": path.name, "nsamples": len(index_segmentation_shard(path)),
                           "filesize": path.stat().st_size})
        meta = {"task": SEGMENTATION_TASK, "classes": list(dataset.classes),
                "palette": [list(c) for c in dataset.palette], "num_samples": len(order), "mean": list(dataset.mean),
                "std": list(dataset.std), "seed": seed,
                "labels": "stored values: 0 = ignore, k = class k - 1 (reduce_zero_label on read)",
                "source": dataset.name}
        index = {"__kind__": _INDEX_KIND, "wids_version": 1, "name": prefix, "shardlist": shards, "vitlab": meta}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return out_dir
