"""Inference preprocessing, written once: `resolve_data_config` says how a model's images are prepared (timm's name
and field names), `create_transform` prepares them (image file, Pillow image or uint8 array → float (C, H, W)).
Every reader of images outside the training loaders goes through this pair: `vitlab attention` / `segment`
(`interpret.render`), `vitlab zeroshot`, `vitlab segment --head` (`interpret.dense`), the emergent-segmentation
scores (`normalize_images`), and the training loaders' eval decode is its `crop_mode="decode"`.

Where a field comes from, first match wins: an explicit override, the run's config (`run_config`: its dataset's
mean / std and channels, its image size, its eval crop), the model's `pretrained_cfg`, the defaults of `DataConfig`.

The crop modes (`CROP_MODES`) are the four geometries vitlab's commands have always used, kept so that their
numbers do not change; S = input_size[-1] (square inputs), T = floor(S / crop_pct):

- ``center``: timm's eval crop (short side to T, centre S x S) computed as one Pillow resample of that centre box of
  the source (sub-pixel exact), any `interpolation`: `vitlab attention` / `segment` inputs and mask files.
- ``decode``: the training loaders' eval decode (`decode_image`): torchvision's ``Resize`` (long side truncated) then
  ``CenterCrop`` rounding, torch's antialiased bilinear uint8 kernel, DCT-scaled decoding of large JPEG files; RGB and
  ``interpolation="bilinear"`` only. `vitlab eval` / `train` on encoded datasets.
- ``resize_crop``: a Pillow resize of the whole image so that its short side is T (long side rounded), then the centre
  S x S at whole-pixel offsets (rounded down): `vitlab zeroshot`.
- ``short_side``: the same resize, no crop (the aspect ratio is kept; the output is T x round(T · long / short)):
  `vitlab segment --head` (dense prediction runs on the whole image).
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ._sources import IMAGENET_MEAN, IMAGENET_STD
from .decode import (DecodeCrop, ImageDecodeError, _to_rgb_array, center_crop_box, decode_image, open_image_file,
                     read_file_bytes, resize_center_crop)

__all__ = ["DataConfig", "CROP_MODES", "INTERPOLATIONS", "resolve_data_config", "create_transform", "ImageTransform",
           "load_image", "normalize_images"]

INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}
CROP_MODES = ("center", "decode", "resize_crop", "short_side")


class _BadField(ValueError):
    """A DataConfig field with a bad value (`resolve_data_config` adds where the value came from)."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class DataConfig:
    """How images are prepared for a model (timm's data-config fields). input_size (C, H, W), square (H = W = S);
    interpolation: Pillow's filter ('bilinear', 'bicubic', 'nearest'); crop_pct in (0, 1]: the crop keeps
    S / floor(S / crop_pct) of the short side (1.0: all of it); crop_mode: one of `CROP_MODES` (see the module
    docstring); mean / std: per channel on the [0, 1] scale, one value per input channel."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        size = tuple(self.input_size) if isinstance(self.input_size, (tuple, list)) else ()
        if len(size) != 3 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                                     for v in size):
            raise _BadField("input_size", f"input_size must be three positive ints (C, H, W), got {self.input_size!r}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in size))
        if self.interpolation not in INTERPOLATIONS:
            raise _BadField("interpolation", f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                                             f"{self.interpolation!r}")
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, numbers.Real) \
                or not 0 < self.crop_pct <= 1:
            raise _BadField("crop_pct", f"crop_pct must be a number in (0, 1], got {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            raise _BadField("crop_mode", f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)) or not all(
                    isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise _BadField(name, f"{name} must be a sequence of finite numbers, got {values!r}")
            if len(values) != self.in_chans:
                raise _BadField(name, f"{name} has {len(values)} values, the model takes {self.in_chans} input "
                                      f"channels (input_size {self.input_size})")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if any(s <= 0 for s in self.std):
            raise _BadField("std", f"std must be positive, got {self.std!r}")
        if self.crop_mode == "decode" and (self.in_chans != 3 or self.interpolation != "bilinear"):
            raise _BadField("crop_mode", "crop_mode 'decode' (the training loaders' eval decode) gives RGB through "
                                         "a bilinear kernel: it needs in_chans 3 and interpolation 'bilinear', got "
                                         f"{self.in_chans} and {self.interpolation!r}")

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def scale_size(self) -> int:
        """The short side before the crop: floor(S / crop_pct) (timm's scale_size)."""
        return math.floor(self.input_size[-1] / self.crop_pct)


_FIELDS = tuple(f.name for f in fields(DataConfig))


def _from_pretrained_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: cfg[k] for k in _FIELDS if cfg.get(k) is not None}


def _from_run_config(run_config, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """What a training run fed its model at evaluation: its dataset's mean / std and so its channels (`in_chans`),
    its image size, and for datasets decoded from files (not held in memory) the eval decode with its crop_pct."""
    from ._locate import dataset_info
    from .segmentation import is_segmentation_dataset

    if is_segmentation_dataset(run_config.dataset):
        if "mean" not in overrides or "std" not in overrides:
            raise ValueError(f"run_config dataset {run_config.dataset!r} is a segmentation dataset: its mean / std "
                             "are in the run's segmentation.json; pass mean= and std=")
        out, encoded = {"in_chans": len(overrides["mean"])}, False
    else:
        info = dataset_info(run_config.dataset)
        out = {"mean": tuple(info.mean), "std": tuple(info.std), "in_chans": len(info.mean)}
        encoded = not info.in_memory
    if encoded:
        out.update(crop_pct=run_config.crop_pct, crop_mode="decode", interpolation="bilinear")
    if run_config.image_size or encoded:
        size = run_config.image_size or 224  # what the loaders decode to when the config names no size
        out["input_size"] = (out["in_chans"], size, size)
    return out


def resolve_data_config(model=None, run_config=None, **overrides: Any) -> DataConfig:
    """The `DataConfig` for `model` (a module with a `pretrained_cfg`, or a pretrained_cfg mapping) and / or a
    training run's config (`run_config`, a TrainConfig), with explicit `overrides` (DataConfig's fields, and
    `in_chans`: the channels of input_size). Precedence: override > run config > model > defaults. A bad value is a
    one-line ValueError naming the field, its value and where it came from."""
    unknown = set(overrides) - {*_FIELDS, "in_chans"}
    if unknown:
        raise ValueError(f"resolve_data_config: unknown field(s) {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join((*_FIELDS, 'in_chans'))}")
    cfg = model if isinstance(model, Mapping) or model is None else getattr(model, "pretrained_cfg", {})
    layers = [("the model's pretrained_cfg", _from_pretrained_cfg(cfg or {}))]
    if run_config is not None:
        layers.append(("the run config", _from_run_config(run_config, overrides)))
    layers.append(("the override", {k: v for k, v in overrides.items() if v is not None}))
    values: dict[str, Any] = {}
    origin = dict.fromkeys(_FIELDS, "the default")
    for where, layer in layers:
        values.update({k: v for k, v in layer.items() if k != "in_chans"})
        origin.update(dict.fromkeys(layer, where))
        if "in_chans" in layer:  # the channels of input_size, its spatial size as resolved so far
            size = values.get("input_size", DataConfig.input_size)
            values["input_size"] = (layer["in_chans"], *size[1:]) if isinstance(size, (tuple, list)) else size
            origin["input_size"] = where
    try:
        return DataConfig(**values)
    except _BadField as err:
        raise ValueError(f"{err} (from {origin[err.name]})") from None


def load_image(source: str | os.PathLike) -> Image.Image:
    """The image file `source` as a loaded Pillow image (any format Pillow reads). Raises ImageDecodeError naming the
    file when it is not a regular file, not an image, truncated, or over ``PIL.Image.MAX_IMAGE_PIXELS``."""
    image = open_image_file(source)  # decoded from the bytes in memory: there is no file handle to close
    try:
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ImageDecodeError(f"{os.fspath(source)}: not an image Pillow can read ({err})") from None
    return image


def _as_pil(image, what: str) -> Image.Image:
    """A Pillow image of a path, Pillow image, uint8 numpy array (H, W) / (H, W, C) or uint8 tensor (C, H, W)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        array = image.numpy() if image.ndim != 3 else image.permute(1, 2, 0).numpy()  # (H, W, C)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"{what}: expected an image file path, a Pillow image or a uint8 array, got "
                        f"{type(image).__name__}")
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"{what}: a {array.dtype} image of shape {tuple(array.shape)} cannot be converted to the "
                         "model's channels (expected uint8 (H, W) or (H, W, C) with C 1, 3 or 4; a tensor (C, H, W))")
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def normalize_images(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images (..., C, H, W) → float32 (images / 255 − mean) / std per channel, on the images' device (the
    arithmetic of the classification loaders' device normalisation)."""
    shape = (-1, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(shape)  # (C, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=images.device).view(shape)
    if images.shape[-3] != mean.shape[0]:
        raise ValueError(f"images have {images.shape[-3]} channels, mean / std {mean.shape[0]}")
    return (images.float() / 255 - mean) / std


@dataclass(frozen=True)
class ImageTransform:
    """`create_transform`'s result: call it on an image file path, a Pillow image, a uint8 numpy array (H, W[, C])
    or a uint8 tensor (C, H, W); returns float32 (C, H, W) normalised, or with `normalize=False` the uint8 pixels."""
    config: DataConfig
    normalize: bool = True

    def __post_init__(self) -> None:
        config = self.config
        if not isinstance(config, DataConfig):
            raise TypeError(f"an image transform needs a DataConfig (from resolve_data_config), got "
                            f"{type(config).__name__}")
        if config.in_chans not in (1, 3):
            raise ValueError(f"cannot prepare images for a model with {config.in_chans} input channels (expected 1 "
                             "or 3)")
        if config.input_size[1] != config.input_size[2]:
            raise ValueError(f"create_transform prepares square inputs, got input_size {config.input_size}")

    def __call__(self, image) -> torch.Tensor:
        config, what = self.config, os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image"
        if config.crop_mode == "decode":
            pixels = self._decode(image, what)  # (S, S, 3)
        else:
            pil = _as_pil(image, what).convert("L" if config.in_chans == 1 else "RGB")
            pixels = np.asarray(self._resample(pil))
        out = torch.from_numpy(pixels.reshape(pixels.shape[0], pixels.shape[1], -1).copy()).permute(2, 0, 1)
        return normalize_images(out, config.mean, config.std) if self.normalize else out  # (C, H, W)

    def _decode(self, image, what: str) -> np.ndarray:
        crop = DecodeCrop(size=self.config.input_size[-1], train=False, crop_pct=self.config.crop_pct)
        if isinstance(image, (str, os.PathLike)):
            data = read_file_bytes(image)  # what the loaders decode: the file's bytes (a JPEG may decode scaled)
            try:
                return decode_image(data, crop)
            except ImageDecodeError as err:
                raise ImageDecodeError(f"{what}: {err}") from None
        return resize_center_crop(_to_rgb_array(_as_pil(image, what)), crop)

    def _resample(self, image: Image.Image) -> Image.Image:
        config, size = self.config, self.config.input_size[-1]
        resample = INTERPOLATIONS[config.interpolation]
        if config.crop_mode == "center":
            return image.resize((size, size), resample, box=center_crop_box(*image.size, size, config.crop_pct))
        short = config.scale_size
        scale = short / min(image.size)
        width, height = max(short, round(image.size[0] * scale)), max(short, round(image.size[1] * scale))
        image = image.resize((width, height), resample)
        if config.crop_mode == "short_side":
            return image
        left, top = (width - size) // 2, (height - size) // 2  # resize_crop
        return image.crop((left, top, left + size, top + size))


def create_transform(data_config: DataConfig, normalize: bool = True) -> ImageTransform:
    """The transform of `data_config` (see `ImageTransform`): decode, channels (L for 1, RGB for 3), the crop mode's
    resize / crop, then (images / 255 − mean) / std unless `normalize=False` (then uint8, timm's prefetcher case:
    normalised later in batches, see `normalize_images`). in_chans must be 1 or 3 and input_size square."""
    return ImageTransform(data_config, normalize)
