"""`ImageFolderDataset`: large image datasets decoded lazily with Pillow (in DataLoader workers).

Samples are (path, label) pairs, from an ImageFolder tree (`root/<class>/**/*.jpg|png|...`, classes sorted by
folder name) or from a dataset's own split files (Flowers-102, Oxford-IIIT Pets). Training samples get an
Inception-style random-resized crop (area fraction in [min_scale, 1], aspect ratio in [3/4, 4/3]) to S x S;
evaluation samples are resized so the short side is S / crop_pct, then center-cropped to S x S. No flip here: it is
done later, batched, on the device."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ._locate import DatasetFormatError, MissingFileError
from ._sources import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ImageFolderDataset", "scan_image_folder", "IMAGE_EXTENSIONS", "random_resized_crop_box",
           "center_crop_box"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))

Box = tuple[float, float, float, float]  # (left, upper, right, lower) in pixels, Pillow's convention


def random_resized_crop_box(width: int, height: int, min_scale: float = 0.08) -> Box:
    """Inception-style crop: area fraction uniform in [min_scale, 1], log aspect ratio uniform in
    [log 3/4, log 4/3], position uniform; after 10 failed draws, the largest centered crop with a ratio in range.
    Uses torch's global RNG (seeded per DataLoader worker)."""
    area = width * height
    for _ in range(10):
        target_area = area * (min_scale + (1 - min_scale) * torch.rand(()).item())
        aspect = math.exp(_LOG_RATIO[0] + (_LOG_RATIO[1] - _LOG_RATIO[0]) * torch.rand(()).item())
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, ()).item())
            top = int(torch.randint(0, height - h + 1, ()).item())
            return (left, top, left + w, top + h)
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        w, h = round(height * (4 / 3)), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int, size: int, crop_pct: float) -> Box:
    """The region of the original image that "resize the short side to floor(size / crop_pct), then center-crop
    size x size" keeps, so that one Pillow resize with `box=` does both."""
    scale_size = math.floor(size / crop_pct)
    side = size * min(width, height) / scale_size  # the crop's side in original pixels
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


class ImageFolderDataset(torch.utils.data.Dataset):
    """(path, label) samples decoded on access. `__getitem__(i)` -> (uint8 tensor (3, S, S), int label)."""

    in_chans = 3

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], name: str = "imagefolder",
                 image_size: int = 224, train: bool = False, min_scale: float = 0.08, crop_pct: float = 0.875,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must lie in (0, 1], got {min_scale}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
        self.samples, self.classes, self.name = samples, list(classes), name
        self.image_size, self.train, self.min_scale, self.crop_pct = int(image_size), train, min_scale, crop_pct
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        """The labels of all samples, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        mode = f"train, min_scale={self.min_scale}" if self.train else f"eval, crop_pct={self.crop_pct}"
        return (f"ImageFolderDataset({self.name}: {len(self)} images, {self.num_classes} classes, "
                f"{self.image_size}px, {mode})")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        size = self.image_size
        try:
            with Image.open(path) as img:
                if not self.train and img.format == "JPEG":
                    # decode at a reduced DCT scale when that still leaves >= the pixels the resize needs
                    factor = math.floor(size / self.crop_pct) / min(img.size)
                    img.draft("RGB", (math.ceil(img.size[0] * factor), math.ceil(img.size[1] * factor)))
                img = img.convert("RGB")
                box = (random_resized_crop_box(*img.size, self.min_scale) if self.train
                       else center_crop_box(*img.size, size, self.crop_pct))
                img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DatasetFormatError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None
        array = np.asarray(img)  # (S, S, 3) uint8
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), label  # (3, S, S)


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
