"""`ImageFolderDataset`: (path, label) samples from an ImageFolder tree (`root/<class>/**/*.jpg|png|...`, classes
sorted by folder name) or from a dataset's own split files (Flowers-102, Oxford-IIIT Pets), decoded on access by the
`EncodedImageDataset` contract (vitlab/data/encoded.py): one decode stage that crops and resizes, nothing after it
crops again."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ._locate import DatasetFormatError, MissingFileError
from ._sources import IMAGENET_MEAN, IMAGENET_STD
from ._subset import Subset
from .decode import DecodeCrop
from .encoded import EncodedImageDataset

__all__ = ["ImageFolderDataset", "scan_image_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


class ImageFolderDataset(Subset, EncodedImageDataset):
    """(path, label) samples decoded on access. `dataset[i]` or `dataset[(i, seed)]` -> (uint8 (3, S, S), label).

    `crop` is the decode stage (default: evaluation resize + centre crop to 224). For compatibility,
    `image_size`, `train`, `min_scale` and `crop_pct` build it when `crop` is not given. `subset(n)`: n samples
    drawn with a fixed seed (vitlab/data/_subset.py), the stored order being class by class."""

    SUBSET_DRAWN = True

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], name: str = "imagefolder",
                 image_size: int = 224, train: bool = False, min_scale: float = 0.08, crop_pct: float = 0.875,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 crop: DecodeCrop | None = None, on_error: str = "raise") -> None:
        if crop is None:
            if not 0 < min_scale <= 1:
                raise ValueError(f"min_scale must lie in (0, 1], got {min_scale}")
            if not 0 < crop_pct <= 1:
                raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
            crop = DecodeCrop(size=int(image_size), train=train, scale=(min_scale, 1.0), crop_pct=crop_pct)
        super().__init__(classes, name, crop, on_error, mean, std)
        self.samples = samples

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        c = self.crop
        mode = f"train crop scale={c.scale} ratio={tuple(round(r, 3) for r in c.ratio)}" if c.train \
            else f"eval, crop_pct={c.crop_pct}"
        return (f"ImageFolderDataset({self.name}: {len(self)} images, {self.num_classes} classes, "
                f"{c.size}px, {mode})")

    def source(self, index: int) -> tuple[str, int, str]:
        path, label = self.samples[index]
        return path, label, path

    def _select(self, rows: np.ndarray) -> "ImageFolderDataset":
        return ImageFolderDataset([self.samples[i] for i in rows.tolist()], self.classes, self.name, crop=self.crop,
                                  on_error=self.on_error, mean=self.mean, std=self.std)


def _image_files(folder: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return files


def scan_image_folder(root: str | os.PathLike, classes: list[str] | None = None
                      ) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples, classes) of an ImageFolder tree `root/<class>/**/<image>`. `classes` (e.g. those of the train
    folder, so that a validation folder gets the same label numbers) defaults to the sorted sub-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"missing folder {root} (expected class sub-folders <class>/*.jpg|png)")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        loose = [e.name for e in os.scandir(root) if e.name.lower().endswith(IMAGE_EXTENSIONS)]
        what = f"{len(loose)} images directly" if loose else "no sub-folders"
        raise DatasetFormatError(f"{root}: holds {what}; expected one sub-folder per class, <class>/*.jpg|png "
                                 "(ImageNet's validation images must first be sorted into val/<wnid>/ folders)")
    classes = list(classes) if classes is not None else folders
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in folders if name not in index]
    if unknown:
        raise DatasetFormatError(f"{root}: class folders {unknown[:5]} are not among the {len(classes)} training "
                                 "classes")
    samples = [(path, index[name]) for name in folders for path in _image_files(root / name)]
    if not samples:
        raise DatasetFormatError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under its class folders")
    present = {label for _, label in samples}
    empty = [name for name in folders if index[name] not in present]
    if empty:
        warnings.warn(f"{root}: class folders without images: {empty[:5]}", stacklevel=2)
    return samples, classes
