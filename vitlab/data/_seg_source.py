"""`SegmentationDataset`: the contract of segmentation datasets whose image / label-mask pairs are stored encoded
(an ADE20K folder tree, segmentation shards) and decoded on access in DataLoader workers.

One decode stage, owned here: the image (JPEG through simplejpeg, anything else through Pillow, the helpers of
decode.py) and the mask (an 8-bit single-channel PNG through Pillow) are decoded at full size, checked (same size,
stored labels within 0 … num_classes), the labels reduced (stored 0 → ignore_index, k → k − 1, mmsegmentation's
``reduce_zero_label``), and the pair goes once through the dataset's `SegCrop`. Nothing is ever unpickled.

Items are addressed as `dataset[(index, seed)]`, the convention of `EncodedImageDataset` (vitlab/data/encoded.py):
the sample's random draws come from `random.Random(seed)`, so they depend on (run seed, epoch, position) only, and
`vitlab.data.loader.EncodedLoader` drives these datasets as it drives the classification ones. `dataset[index]` uses
seed 0. A bad file raises `DatasetFormatError` naming it; the loader's `DecodedOrFailure` view turns that into a
`DecodeFailure`, so ``on_error='skip'`` leaves it out of its batch as for classification.
"""
from __future__ import annotations

import io
import os
import random

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ._locate import DatasetFormatError
from ._seg_transform import SegCrop
from .decode import (_JPEG_MAGIC, _PIL_ERRORS, ImageDecodeError, _check_size, _jpeg_header, _read, _to_rgb_array,
                     simplejpeg)
from .encoded import ON_ERROR

__all__ = ["SegmentationDataset", "decode_rgb", "decode_mask", "reduce_zero_label"]

_MASK_MODES = ("L", "P")  # 8-bit single channel: grayscale, or palette indices (the stored values either way)


def decode_rgb(data: bytes | memoryview | str | os.PathLike) -> np.ndarray:
    """Encoded bytes or a path → (H, W, 3) uint8 RGB at full size. Raises `ImageDecodeError` (bad data) or `OSError`
    (unreadable path)."""
    buf = _read(data)
    if len(buf) == 0:
        raise ImageDecodeError("empty data (0 bytes)")
    header = _jpeg_header(buf) if simplejpeg is not None and bytes(buf[:3]) == _JPEG_MAGIC else None
    if header is not None:
        _check_size(*header)
        try:
            return simplejpeg.decode_jpeg(buf, colorspace="RGB", strict=True)  # (H, W, 3)
        except ValueError:  # simplejpeg refuses (corrupt-data warnings are errors there): Pillow has the last word
            pass
    try:
        with Image.open(io.BytesIO(buf)) as img:
            _check_size(*img.size)
            return _to_rgb_array(img)  # (H, W, 3)
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image (unknown format or corrupt header)") from None
    except ImageDecodeError:
        raise
    except _PIL_ERRORS as err:
        raise ImageDecodeError(f"cannot decode image ({type(err).__name__}: {err})") from None


def decode_mask(data: bytes | memoryview | str | os.PathLike) -> np.ndarray:
    """An 8-bit single-channel label image (PNG; mode L, or P whose indices are the labels) → (H, W) uint8 stored
    values. Raises `ImageDecodeError` for anything else (RGB, 16-bit, undecodable) or `OSError`."""
    buf = _read(data)
    if len(buf) == 0:
        raise ImageDecodeError("empty data (0 bytes)")
    try:
        with Image.open(io.BytesIO(buf)) as img:
            _check_size(*img.size)
            if img.mode not in _MASK_MODES:
                raise ImageDecodeError(f"mode {img.mode} image; expected an 8-bit single-channel PNG (mode L or P)")
            return np.array(img)  # (H, W) uint8, writable
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image (unknown format or corrupt header)") from None
    except ImageDecodeError:
        raise
    except _PIL_ERRORS as err:
        raise ImageDecodeError(f"cannot decode annotation ({type(err).__name__}: {err})") from None


def reduce_zero_label(stored: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """mmsegmentation's ``reduce_zero_label``: stored 0 ("other") → ignore_index, stored k → k − 1.
    (H, W) uint8 → (H, W) uint8."""
    reduced = stored - np.uint8(1)  # (H, W) uint8; 0 wraps to 255
    if ignore_index != 255:
        reduced[stored == 0] = ignore_index
    return reduced


class SegmentationDataset(torch.utils.data.Dataset):
    """Base of the segmentation datasets decoded on access. Subclasses give `__len__` and `source(index) ->
    (image bytes or path, mask bytes or path, image name, mask name)` (names for messages).

    `dataset[(index, seed)]` → (image uint8 (3, S, S), mask uint8 (S, S)) for a train `SegCrop`, (image uint8
    (3, h, w) fitting inside crop.scale, mask uint8 (H0, W0) at the annotation's resolution) for an eval one. Mask
    values: classes 0 … num_classes − 1, `ignore_index` (255) for unlabelled pixels and padding.

    Args:
        classes: class names after reduce_zero_label (label i ↔ classes[i]); stored values 1 … len(classes).
        palette: one (r, g, b) per class, for drawing masks.
        crop: the transform (`SegCrop`); its ignore_index must not be a class label.
        on_error: 'raise' or 'skip' (the loader leaves unreadable samples out, counted and logged).
        mean, std: per-channel normalisation statistics in [0, 1] units (ImageNet's by default).
    """

    in_chans = 3

    def __init__(self, classes: list[str], palette: list[tuple[int, int, int]], name: str, crop: SegCrop,
                 on_error: str = "raise", mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                 std: tuple[float, ...] = (0.229, 0.224, 0.225)):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not isinstance(crop, SegCrop):
            raise TypeError(f"crop must be a SegCrop, got {type(crop).__name__}")
        if crop.ignore_index < len(classes):
            raise ValueError(f"SegCrop.ignore_index={crop.ignore_index} is a class label of {name} "
                             f"({len(classes)} classes, labels 0 … {len(classes) - 1}); use 255")
        self.classes, self.palette, self.name = list(classes), [tuple(c) for c in palette], name
        self.crop, self.on_error = crop, on_error
        self.mean, self.std = tuple(mean), tuple(std)
        self.files: list[tuple[str, str]] = []  # (path, digest) read, as other datasets fill it

    def __len__(self) -> int:
        raise NotImplementedError

    def source(self, index: int) -> tuple[bytes | memoryview | str, bytes | memoryview | str, str, str]:
        """(image bytes or path, mask bytes or path, image name, mask name) of sample `index`."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ignore_index(self) -> int:
        return self.crop.ignore_index

    @property
    def image_size(self) -> int:
        return self.crop.size

    @property
    def train(self) -> bool:
        return self.crop.train

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index` decoded and checked, before the transform: image (H, W, 3) uint8, mask (H, W) uint8 with
        reduced labels. Raises `DatasetFormatError` naming the bad file and what was expected."""
        image_data, mask_data, image_name, mask_name = self.source(index)
        try:
            stored = decode_mask(mask_data)  # (H, W)
        except (ImageDecodeError, OSError) as err:
            raise DatasetFormatError(f"{mask_name}: unreadable annotation: {err}") from None
        try:
            image = decode_rgb(image_data)  # (H, W, 3)
        except (ImageDecodeError, OSError) as err:
            raise DatasetFormatError(f"{image_name}: unreadable image: {err}") from None
        if image.shape[:2] != stored.shape:
            raise DatasetFormatError(f"{mask_name}: annotation is {stored.shape[1]} x {stored.shape[0]} (W x H) but "
                                     f"its image {image_name} is {image.shape[1]} x {image.shape[0]}; expected the "
                                     "same size")
        top = int(stored.max())
        if top > self.num_classes:
            raise DatasetFormatError(f"{mask_name}: label value {top} outside 0 … {self.num_classes} (expected 0 = "
                                     f"other/ignore, 1 … {self.num_classes} = the {self.name} classes)")
        return image, reduce_zero_label(stored, self.ignore_index)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        image, mask = self.load_pair(int(index))  # (H, W, 3), (H, W)
        rng = random.Random(int(seed)) if self.crop.train else None
        return self.crop.apply(image, mask, rng)  # (3, S, S), (S, S) — eval: (3, h, w), (H, W)

    def encoded_pair(self, index: int) -> tuple[bytes, bytes, str]:
        """(image bytes, mask bytes, a name) of sample `index` as stored (no decoding): what shards are written
        from."""
        image_data, mask_data, image_name, _ = self.source(index)
        return bytes(_read(image_data)), bytes(_read(mask_data)), image_name
