"""`load_dataset`: one entry point for every dataset vitlab reads.

Small datasets (CIFAR-10/100, SVHN, MNIST, Fashion-MNIST, Tiny ImageNet) come back fully in memory as a
`TensorImageDataset` of uint8 (N, C, H, W) images; augmentation and normalisation happen later, batched, on the
device. Large ones (ImageNet, ImageNet-21K, Flowers-102, Pets, any ImageFolder tree) come back as an
`ImageFolderDataset`, WebDataset shards as a `ShardDataset`: both `EncodedImageDataset`s, decoded, cropped and resized
once, on access, in DataLoader workers."""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ._cifar import read_cifar
from ._idx import read_idx_dataset
from ._imagefolder import ImageFolderDataset, scan_image_folder
from ._locate import dataset_files, dataset_info, ensure_downloaded, find_data_root, resolve_split
from ._oxford import flowers102_samples, pets_samples
from ._sources import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from ._subset import Subset, leading
from ._svhn import read_svhn
from ._tiny import read_tiny_imagenet
from .decode import DecodeCrop
from .encoded import EncodedImageDataset
from .shards import ShardDataset

__all__ = ["TensorImageDataset", "ImageFolderDataset", "ShardDataset", "EncodedImageDataset", "load_dataset",
           "DATASETS", "find_data_root"]

_log = logging.getLogger("vitlab.data")


@dataclass
class TensorImageDataset(Subset):
    """A small dataset held in memory. `images`: uint8 (N, C, H, W), C = 1 for MNIST-style data, 3 otherwise;
    `labels`: int64 (N,); `mean` / `std`: per-channel, in [0, 1] units, to normalise with on the device;
    `files`: (path, verified digest) of the files read (see `load_dataset`)."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def _select(self, rows: np.ndarray) -> "TensorImageDataset":
        index = leading(rows)  # subset: the first n (vitlab/data/_subset.py), a view of the tensors
        return TensorImageDataset(self.images[index], self.labels[index], self.classes, self.name, self.mean,
                                  self.std, self.files)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"TensorImageDataset({self.name}: {n} images {c}x{h}x{w}, {self.num_classes} classes)"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of uint8 (N, C, H, W) to (N, C, size, size), in chunks."""
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        batch = images[start:start + chunk].float()  # (n, C, H, W)
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)  # (n, C, size, size)
    return out


_READERS: dict[str, Callable[[Path, DatasetInfo, str], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "cifar10": read_cifar, "cifar100": read_cifar, "svhn": read_svhn, "mnist": read_idx_dataset,
    "fashion_mnist": read_idx_dataset, "tiny_imagenet": read_tiny_imagenet}


def _tensor_dataset(root: Path, info: DatasetInfo, split: str, image_size: int | None) -> TensorImageDataset:
    images, labels, classes = _READERS[info.name](root, info, split)
    if not images.flags.writeable:  # np.frombuffer views; torch wants writable memory
        images = images.copy()
    tensor = torch.from_numpy(images)  # (N, C, H, W) uint8
    if image_size is not None and image_size != tensor.shape[-1]:
        tensor = _resize_uint8(tensor, image_size)
    return TensorImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)), classes, info.name, info.mean,
                              info.std)


def _imagefolder_split_dir(root: Path, split: str) -> Path:
    """`root/<split>` ('test' falls back to 'val' and 'val' to 'test'); `root` itself when it holds class folders
    directly (then every split reads the same images, with a warning for the evaluation splits)."""
    for name in (split, {"test": "val", "val": "test"}.get(split)):
        if name and (root / name).is_dir():
            return root / name
    if any((root / name).is_dir() for name in ("train", "val", "test")):
        present = [name for name in ("train", "val", "test") if (root / name).is_dir()]
        raise FileNotFoundError(f"{root}: no {split}/ folder (found {', '.join(present)}/)")
    if split != "train":
        warnings.warn(f"{root} holds class folders directly, without train/ and val/: the {split!r} split reads the "
                      "same images as 'train'", stacklevel=3)
    return root


def _folder_samples(root: Path, info: DatasetInfo, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    if info.name == "flowers102":
        return flowers102_samples(root, info, split)
    if info.name == "pets":
        return pets_samples(root, info, split)
    folder = _imagefolder_split_dir(root, split) if info.name == "imagefolder" else root / split
    train_dir = folder.parent / "train"
    classes = None
    if folder.name != "train" and train_dir.is_dir():  # number the classes as the train split does
        classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith("."))
    return scan_image_folder(folder, classes)


def load_dataset(name: str, split: str = "train", data_dir: str | None = None, download: bool = False,
                 image_size: int | None = None, train_transform: bool | None = None, min_scale: float = 0.08,
                 crop_pct: float = 0.875, decode_crop: DecodeCrop | None = None, on_error: str = "raise"
                 ) -> TensorImageDataset | EncodedImageDataset:
    """Loads split `split` of dataset `name` (a key of `DATASETS`).

    data_dir: searched first (see `find_data_root` for the full search order); for 'imagefolder' and 'shards' the
        root itself.
    download: fetch the official files (checksum-verified, resumable) into `data_dir` / `$VITLAB_DATA` / `./data`
        when they are not found.
    image_size: in-memory datasets are resized to it when it differs from their native size; encoded datasets
        (ImageFolder, shards) decode to it (default 224).
    decode_crop: encoded datasets only — the decode stage (`DecodeCrop`): random-resized crop or resize + centre
        crop. Default: built from image_size, train_transform (default: True for the training split), min_scale
        and crop_pct.
    on_error: encoded datasets only — 'raise' or 'skip' (counted and logged) for unreadable images and shards.
    Split names: 'test' is accepted for a dataset whose evaluation split is 'val' (and 'val' for one whose split is
    'test'); 'train' for Pets means 'trainval'. For 'shards' the split is a sub-folder of data_dir (with index.json
    or .tar files) or a brace pattern of .tar files.
    The returned dataset's `files` lists (path, digest) of the files read — the registered checksum each was verified
    against, or "no registered checksum" — and each is logged at INFO on the "vitlab.data" logger."""
    info = dataset_info(name)
    if name != "shards":
        split = resolve_split(info, split)
    root = ensure_downloaded(name, split, data_dir) if download and name != "shards" else find_data_root(name, data_dir)
    dataset = _load(root, info, name, split, image_size, train_transform, min_scale, crop_pct, decode_crop, on_error)
    files = dataset_files(root, info, split) if name != "shards" else [(str(root.resolve()), "no registered checksum")]
    try:
        dataset.files = files
    except AttributeError:  # pragma: no cover  (a dataset class with __slots__)
        pass
    for path, digest in files:
        _log.info("%s %s: using %s (%s)", name, split, path, digest)
    return dataset


def _load(root: Path, info: DatasetInfo, name: str, split: str, image_size, train_transform, min_scale, crop_pct,
          decode_crop, on_error) -> TensorImageDataset | EncodedImageDataset:
    if info.in_memory:
        return _tensor_dataset(root, info, split, image_size)
    if decode_crop is None:
        train = split in ("train", "trainval") if train_transform is None else train_transform
        decode_crop = DecodeCrop(size=image_size or 224, train=train, scale=(min_scale, 1.0), crop_pct=crop_pct)
    if name == "shards":
        return ShardDataset.from_spec(split, root, decode_crop, on_error, name=f"shards:{split}")
    samples, classes = _folder_samples(root, info, split)
    return ImageFolderDataset(samples, classes, name=name, crop=decode_crop, on_error=on_error, mean=IMAGENET_MEAN,
                              std=IMAGENET_STD)
