"""`SegCrop`: the one owner of the semantic-segmentation transform, applied once to an image and its label mask
together (in DataLoader workers), with every random draw taken from one `random.Random` seeded per sample.

Train (mmsegmentation's ADE20K 512 x 512 recipe, in its order and with its draws):
1. Random rescale, mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)``: r ~ U(ratio_range),
   target (int(scale[0]·r), int(scale[1]·r)); the image is rescaled by min(long / max(h, w), short / min(h, w))
   (mmcv's ``imrescale``: the long side fits max(target), the short side min(target)), sizes int(x·f + 0.5).
   Image: bilinear (torch's uint8 antialiased kernel, see decode.py; mmcv's cv2 kernel has no antialiasing, so
   downscaled images are smoother here). Mask: nearest at pixel centres, src = floor((dst + 0.5) · src / dst)
   (Pillow's NEAREST, torch's 'nearest-exact'): aligned with the bilinear image. mmcv's cv2 INTER_NEAREST floors
   dst · src / dst instead, up to half a source pixel off the image it resizes with the same factor.
2. Random crop size x size, mmseg ``RandomCrop(cat_max_ratio)``: offsets uniform in [0, margin]; up to 10 redraws
   while the crop does not have more than one non-ignore label with the most frequent one under cat_max_ratio of
   the non-ignore pixels (after 10 redraws the last crop drawn is kept, as mmseg does).
3. Horizontal flip with p = 0.5.
4. ``PhotoMetricDistortion`` on the image only: brightness ±32, then (mode 1) contrast ×U(0.5, 1.5), saturation
   ×U(0.5, 1.5), hue ± up to 18 OpenCV units (36°), then (mode 0) contrast; each with p = 0.5, saturating uint8
   arithmetic as mmcv's. HSV is Pillow's (hue 0..255 for 360°; mmseg's OpenCV hue is 0..179), so the hue shift is
   converted to Pillow units, and saturation and hue share one HSV round trip (mmseg makes one each).
5. Pad to size x size at the bottom / right: image 0, mask ``ignore_index``. (mmseg pads after normalising, which
   equals padding with the mean colour; here the image is still uint8 and normalised later on the device.)

Eval: the image is rescaled to fit inside `scale` (short side 512 for typical ADE20K images), bilinear; the mask
keeps its original resolution: metrics are computed at the annotation's size, as mmseg does. Sizes differ between
images, so evaluation batches hold one image.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .decode import _resize

__all__ = ["SegCrop", "rescale_size", "resize_mask_nearest", "choose_crop", "photometric_distortion"]

_CROP_TRIES = 10  # mmseg RandomCrop's redraws for the category-ratio rule


@dataclass(frozen=True)
class SegCrop:
    """The segmentation transform (module docstring). Defaults: mmsegmentation's ADE20K 512 x 512 recipe.

    `apply(image, mask, rng)`: image (H, W, 3) uint8, mask (H, W) uint8 (labels already reduced, ignore =
    `ignore_index`) → train: image uint8 (3, size, size), mask uint8 (size, size); eval: image uint8 (3, h, w) that
    fits inside `scale`, mask uint8 (H, W) unchanged."""

    size: int = 512
    train: bool = False
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: bool = True
    photometric: bool = True
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"SegCrop.size must be a positive int, got {self.size!r}")
        if len(self.scale) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.scale):
            raise ValueError(f"SegCrop.scale must be two positive ints (long, short), got {self.scale!r}")
        low, high = self.ratio_range if len(self.ratio_range) == 2 else (0, -1)
        if not 0 < low <= high or not math.isfinite(high):
            raise ValueError(f"SegCrop.ratio_range must be (low, high) with 0 < low <= high, got {self.ratio_range!r}")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"SegCrop.cat_max_ratio must lie in (0, 1], got {self.cat_max_ratio!r}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int) \
                or not 0 <= self.ignore_index <= 255:
            raise ValueError(f"SegCrop.ignore_index must be an int in 0..255 (masks are uint8), got "
                             f"{self.ignore_index!r}")
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "ratio_range", (float(low), float(high)))

    def apply(self, image: np.ndarray, mask: np.ndarray, rng: random.Random | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transform of one (image (H, W, 3) uint8, mask (H, W) uint8) pair; `rng` required when training."""
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
        if not self.train:
            new_w, new_h = rescale_size(image.shape[1], image.shape[0], self.scale)
            if (new_h, new_w) != image.shape[:2]:
                image = _resize(image, new_h, new_w)  # (h, w, 3)
            return _to_chw(image), torch.from_numpy(np.ascontiguousarray(mask))  # (3, h, w), (H, W)
        if rng is None:
            raise ValueError("SegCrop.apply: a train transform needs rng (a random.Random) for its random draws")
        image, mask = self._random_rescale(image, mask, rng)  # (h, w, 3), (h, w)
        top, left = choose_crop(mask, self.size, self.cat_max_ratio, self.ignore_index, rng)
        image = image[top:top + self.size, left:left + self.size]  # (≤S, ≤S, 3)
        mask = mask[top:top + self.size, left:left + self.size]  # (≤S, ≤S)
        if self.hflip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        return self._pad(image, mask)

    def _random_rescale(self, image: np.ndarray, mask: np.ndarray, rng: random.Random
                        ) -> tuple[np.ndarray, np.ndarray]:
        ratio = rng.uniform(*self.ratio_range)
        new_w, new_h = rescale_size(image.shape[1], image.shape[0], self.scale, ratio)
        if (new_h, new_w) == image.shape[:2]:
            return image, mask
        return _resize(image, new_h, new_w), resize_mask_nearest(mask, new_h, new_w)  # (h, w, 3), (h, w)

    def _pad(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = mask.shape
        out_image = np.zeros((3, self.size, self.size), dtype=np.uint8)  # (3, S, S)
        out_mask = np.full((self.size, self.size), self.ignore_index, dtype=np.uint8)  # (S, S)
        out_image[:, :h, :w], out_mask[:h, :w] = image.transpose(2, 0, 1), mask
        return torch.from_numpy(out_image), torch.from_numpy(out_mask)  # (3, S, S), (S, S)


def _to_chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) → (3, H, W) uint8, contiguous. numpy's transposing copy: torch's permute().contiguous() of uint8
    channels-last data is about 15x slower (measured, torch 2.13 CPU)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W)


def rescale_size(width: int, height: int, scale: tuple[int, int], ratio: float = 1.0) -> tuple[int, int]:
    """(new_width, new_height) of mmcv's ``imrescale`` to (int(scale[0]·ratio), int(scale[1]·ratio)), keeping the
    aspect ratio: the long side fits the larger target, the short side the smaller one."""
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    factor = min(max(target) / max(width, height), min(target) / min(width, height))
    return max(int(width * factor + 0.5), 1), max(int(height * factor + 0.5), 1)


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) → (height, width), nearest neighbour at pixel centres: src = floor((dst + 0.5) · H / height), the
    sampling grid of the bilinear image resize (module docstring)."""
    rows = np.minimum(((np.arange(height) + 0.5) * (mask.shape[0] / height)).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (mask.shape[1] / width)).astype(np.int64), mask.shape[1] - 1)
    return np.take(np.take(mask, rows, axis=0), cols, axis=1)  # (height, width)


def _crop_offsets(height: int, width: int, size: int, rng: random.Random) -> tuple[int, int]:
    return rng.randint(0, max(height - size, 0)), rng.randint(0, max(width - size, 0))  # (top, left)


def choose_crop(mask: np.ndarray, size: int, cat_max_ratio: float, ignore_index: int, rng: random.Random
                ) -> tuple[int, int]:
    """(top, left) of a size x size crop of `mask` (H, W), mmseg ``RandomCrop``'s rule: accept a crop with more than
    one non-ignore label whose most frequent one covers under `cat_max_ratio` of the non-ignore pixels; else draw
    again, up to 10 times, and keep the last draw. cat_max_ratio = 1: the first draw."""
    top, left = _crop_offsets(*mask.shape, size, rng)
    if cat_max_ratio >= 1:
        return top, left
    for _ in range(_CROP_TRIES):
        counts = np.bincount(mask[top:top + size, left:left + size].ravel(), minlength=256)  # (256,)
        counts[ignore_index] = 0
        present = counts[counts > 0]
        if len(present) > 1 and present.max() / present.sum() < cat_max_ratio:
            break
        top, left = _crop_offsets(*mask.shape, size, rng)
    return top, left


def _saturate(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert`` of uint8 values: values · alpha + beta in float32, clipped to 0..255, truncated to uint8;
    through a 256-entry lookup table (the same numbers, 3-5x faster)."""
    table = np.clip(np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)
    return np.take(table, values)  # same shape as values


def _adjust_hsv(image: np.ndarray, saturation: float | None, hue_shift: int | None) -> np.ndarray:
    """Scales the saturation and / or shifts the hue (Pillow units, 256 per turn) of an (H, W, 3) uint8 image in
    one RGB → HSV → RGB round trip (mmseg makes one per step; the results differ by the rounding of one trip)."""
    hsv = np.array(Image.fromarray(image).convert("HSV"))  # (H, W, 3) uint8, writable
    if saturation is not None:
        hsv[..., 1] = _saturate(hsv[..., 1], alpha=saturation)
    if hue_shift is not None:
        hsv[..., 0] += np.uint8(hue_shift % 256)  # uint8 arithmetic wraps around the hue circle
    size = (image.shape[1], image.shape[0])
    return np.array(Image.frombytes("HSV", size, hsv.tobytes()).convert("RGB"))  # (H, W, 3)


def photometric_distortion(image: np.ndarray, rng: random.Random, brightness_delta: float = 32,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion`` of an (H, W, 3) uint8 image, its draws in its order (each step with
    p = 0.5; contrast first or last at random). Hue: ``hue_delta`` in OpenCV units (2° each), delta drawn from
    [-hue_delta, hue_delta) as numpy's randint does."""
    if rng.randrange(2):
        image = _saturate(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.randrange(2)
    if mode == 1 and rng.randrange(2):
        image = _saturate(image, alpha=rng.uniform(*contrast_range))
    saturation = rng.uniform(*saturation_range) if rng.randrange(2) else None
    hue = round(rng.randrange(-hue_delta, hue_delta) * 256 / 180) if rng.randrange(2) else None  # → Pillow units
    if saturation is not None or hue is not None:
        image = _adjust_hsv(image, saturation, hue)
    if mode == 0 and rng.randrange(2):
        image = _saturate(image, alpha=rng.uniform(*contrast_range))
    return image
