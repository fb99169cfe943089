"""Segmentation samples in WebDataset shards: `<key>.jpg` (or .png / .webp, the image as stored) and `<key>.seg.png`
(the label mask as stored: raw values, for ADE20K 0 = other and 1 … 150 the classes; reduce_zero_label is applied on
read), plus `<key>.json` (`{"source": <original image path>}`).

The folder layout is the classification shards' (vitlab/data/shards.py): tar files and an `index.json` in wids'
shard-index format (`shardlist` of `{url, nsamples, filesize}`), whose `vitlab` entry says `"task": "segmentation"`
and carries the classes, palette and statistics. Each shard is indexed on opening (`vitlab.data.shard_index`, the
index of the three shard kinds: tar headers only, the member offsets of the image and the mask of each key), and
samples are then read by offset, so `EncodedLoader` streams them with
the shard-aware order (`shard_sizes`, :func:`vitlab.data.shards.buffered_order`) and resumes exactly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ._locate import DatasetFormatError, MissingFileError
from ._seg_source import SegmentationDataset
from ._seg_transform import SegCrop
from ._sources import IMAGENET_MEAN, IMAGENET_STD
from .shard_index import (SHARD_IMAGE_EXTENSIONS, Column, ShardedDataset, ShardIndex, ShardKind, image_extension,
                          index_tar)
from .shard_set import INDEX_FILE, check_complete, staged_shard_set, write_shard_list, write_tar_shards
from .shards import shard_url_in

__all__ = ["SegmentationShardDataset", "index_segmentation_shard", "write_segmentation_shards", "MASK_EXTENSION",
           "SEGMENTATION_TASK", "SEGMENTATION"]

MASK_EXTENSION = "seg.png"
SEGMENTATION_TASK = "segmentation"

SEGMENTATION = ShardKind(
    "segmentation",
    (Column("image", SHARD_IMAGE_EXTENSIONS, "image (.jpg|.png|.webp)"),
     Column("mask", (MASK_EXTENSION,), f"mask (.{MASK_EXTENSION})")),
    cut_hint="; set on_error='skip' to use its complete samples", missing_hint="on_error='skip' reads the others",
    no_samples="{name}: no samples in the shards {urls}")


def index_segmentation_shard(path: str | os.PathLike, on_error: str = "raise") -> ShardIndex:
    """One segmentation shard's index (`index_tar`): `image` and `mask`, the (offset, size) of each sample's
    `<key>.jpg|png|webp` and `<key>.seg.png`."""
    return index_tar(path, SEGMENTATION, on_error)


class SegmentationShardDataset(ShardedDataset, SegmentationDataset):
    """The samples of segmentation shards, addressable by a global index (shard by shard). Items as
    `SegmentationDataset`'s. `shard_sizes` tells `EncodedLoader` how to stream them.

    Args:
        urls: the shard files. classes, palette: from index.json (`from_folder`).
        crop, on_error, mean, std: see `SegmentationDataset`.
        indexes: precomputed `ShardIndex`es (else each shard is indexed now).
    """

    KIND = SEGMENTATION

    def __init__(self, urls: list[str], crop: SegCrop, classes: list[str], palette: list, name: str = "seg_shards",
                 on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, indexes: list[ShardIndex] | None = None):
        super().__init__(classes, palette, name, crop, on_error, mean, std)
        self._open_shards(urls, on_error, indexes, name)

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

    def __repr__(self) -> str:
        return (f"SegmentationShardDataset({self.name}: {len(self)} samples in {len(self.shards)} shards, "
                f"{self.num_classes} classes, {self.crop})")

    def source(self, index: int) -> tuple[bytes, bytes, str, str]:
        shard, row = self._locate(index)
        where = f"{shard.path}: sample {shard.keys[row]!r}"
        return (self._read(shard, "image", row), self._read(shard, "mask", row), f"{where} (image)",
                f"{where} (.{MASK_EXTENSION})")

    def _with_shards(self, indexes: list[ShardIndex]) -> "SegmentationShardDataset":
        copy = SegmentationShardDataset([ix.path for ix in indexes], self.crop, self.classes, self.palette, self.name,
                                        self.on_error, self.mean, self.std, indexes)
        copy.files = self.files
        return copy


def write_segmentation_shards(dataset: SegmentationDataset, out_dir: str | os.PathLike, shard_size: int = 1000,
                              prefix: str = "shard", seed: int | None = 0, overwrite: bool = False) -> Path:
    """Writes `dataset` (a `SegmentationDataset`: ADE20K folders, other segmentation shards) as shards
    `<out_dir>/<prefix>-000000.tar ...` plus `index.json`; returns `out_dir`. Files are copied as stored (no
    re-encoding). `seed`: the order of the samples (None: the dataset's order; ADE20K's file order is by scene)."""
    out_dir = Path(out_dir)
    if (out_dir / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir / INDEX_FILE} exists: shards were already written there (overwrite=True "
                              "replaces them)")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    order = np.arange(len(dataset)) if seed is None else np.random.default_rng(seed).permutation(len(dataset))
    digits = max(9, len(str(len(dataset))))

    def samples():  # (tar members, 0) per sample: these shards close by count only
        for i in order.tolist():
            image, mask, name = dataset.encoded_pair(i)
            yield {"__key__": f"{i:0{digits}d}", image_extension(image): image, MASK_EXTENSION: mask,
                   "json": json.dumps({"source": name}).encode()}, 0

    with staged_shard_set(out_dir, [f"{prefix}-*.tar", INDEX_FILE]) as staging:
        shards = write_tar_shards(staging, samples(), lambda s: f"{prefix}-{s:06d}.tar", shard_size,
                                  index=index_segmentation_shard)
        meta = {"task": SEGMENTATION_TASK, "classes": list(dataset.classes),
                "palette": [list(c) for c in dataset.palette], "num_samples": len(order), "mean": list(dataset.mean),
                "std": list(dataset.std), "seed": seed,
                "labels": "stored values: 0 = ignore, k = class k - 1 (reduce_zero_label on read)",
                "source": dataset.name}
        write_shard_list(staging, prefix, shards, meta)
    return out_dir
