"""Fast image decoding for the training pipeline: encoded bytes → crop → size x size uint8 RGB, in one call.

:func:`decode_image` does what timm's PIL transforms do before ``ToTensor`` (read, decode, Inception random-resized crop
or resize-and-centre-crop, bilinear antialiased resize) and leaves the flip and the normalisation to
:class:`vitlab.data.augment.DeviceAugment`, batched on the training device. The pipeline:

1. **Header first.** The image size comes from the JPEG header (simplejpeg) or from ``Image.open`` (Pillow reads
   only the header); images over Pillow's ``Image.MAX_IMAGE_PIXELS`` are refused before anything is decoded.
2. **Crop box in original coordinates.** Train: :func:`random_resized_crop_box`, the same draws in the same order as
   timm's ``RandomResizedCropAndInterpolation.get_params`` (torchvision's RandomResizedCrop semantics), from the
   caller's ``random.Random``. Eval: nothing to draw.
3. **DCT-domain downscaling** (JPEG only). libjpeg-turbo can decode at 1/2, 1/4 or 1/8 scale by running a smaller
   inverse DCT per 8 x 8 block. The largest reduction k is used for which the crop region still has at least
   ``size + 1`` decoded pixels on its shorter side (eval: the short side at least ``floor(size / crop_pct) + 1``),
   so a scaled decode never upsamples what a full decode would have downsampled. The other M/8 factors libjpeg-turbo
   offers (3/8, 5/8, 6/8, 7/8) are not used: they run a scalar IDCT and decode slower than the full size (measured:
   7/8 takes 2x the time of 8/8, 1/2 0.9x, 1/8 0.6x). On ImageNet-sized files (500 x 375) a 224 crop never allows
   a reduction; on 1024 x 768 files the crops that do are decoded about 20 % faster.
4. **Decoder.** simplejpeg (libjpeg-turbo bundled in its wheel, decoding straight into a numpy array) for baseline
   and progressive YCbCr / grayscale JPEGs: ~1.4-1.7x faster than ``Image.open(...).convert("RGB")`` with
   bit-identical pixels (both run libjpeg-turbo's default islow IDCT and fancy upsampling). Pillow (``Image.draft``
   for the same 1/k scale) decodes everything else: PNG, WebP, GIF, BMP, TIFF, CMYK / YCCK JPEGs, JPEGs simplejpeg
   refuses (it treats libjpeg's "corrupt data" warnings as errors, Pillow does not), and every JPEG when simplejpeg
   is not installed; the result does not depend on which decoder ran.
5. **Crop, then resize.** Train: the crop is a numpy view of the decoded pixels (after a scaled decode the box is
   snapped to the decoded pixel grid: each edge moves by less than half a decoded pixel, under half an output
   pixel), then one resize of that region only. Eval: resize so the short side is ``floor(size / crop_pct)`` (long
   side truncated as torchvision's ``Resize`` does), then the centre crop with torchvision's ``CenterCrop`` rounding.
   The resize is torch's uint8 antialiased bilinear kernel (``F.interpolate(..., antialias=True)``: Pillow's
   triangle filter, AVX2 on x86, results within ±1 of ``Image.resize(..., BILINEAR)``), 3.5-4x faster than
   torchvision's Pillow crop + resize of the same box.
6. **No floats per image.** The result is uint8 (size, size, 3); conversion to float, flip and normalisation run
   once per batch on the device.

Measured speed: docs/data.md, "Fast decode" (benchmarks/decode_throughput.py). Mode handling: grayscale, palette,
CMYK, RGBA / LA (alpha dropped, as ``convert("RGB")``) become RGB; 16-bit grayscale (Pillow's ``I;16`` modes) keeps
its high byte (``convert("RGB")`` would saturate it to white). EXIF orientation is ignored, as in timm and torchvision.
"""
from __future__ import annotations

import io
import math
import os
import random
import stat
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

try:
    import simplejpeg
except ImportError:  # optional at import time: Pillow decodes everything then
    simplejpeg = None

__all__ = ["DecodeCrop", "ImageDecodeError", "decode_image", "read_file_bytes", "open_image_file",
           "MAX_IMAGE_FILE_BYTES", "random_resized_crop_box", "center_crop_box", "resize_center_crop"]

Box = tuple[float, float, float, float]  # (left, upper, right, lower) in pixels, Pillow's convention
_JPEG_MAGIC = b"\xff\xd8\xff"
_REDUCTIONS = (8, 4, 2)  # libjpeg-turbo's 1/8, 1/4, 1/2 DCT scaling, largest reduction first
_SIMPLEJPEG_COLORSPACES = ("YCbCr", "Gray", "RGB")  # CMYK / YCCK go to Pillow, whose conversion is the reference
# what Pillow raises for bad or truncated data (UnidentifiedImageError is an OSError)
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class DecodeCrop:
    """How a decoded image becomes size x size: train=True → Inception random-resized crop (area fraction uniform in
    `scale`, log aspect ratio uniform in log(`ratio`), 10 tries then the centred fallback, torchvision's
    RandomResizedCrop semantics), then resize; train=False → resize the short side to floor(size / crop_pct), then
    centre crop (timm's eval transform)."""

    size: int = 224
    train: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"DecodeCrop.size must be a positive int, got {self.size!r}")
        for name in ("scale", "ratio"):
            pair = getattr(self, name)
            if len(pair) != 2 or not 0 < pair[0] <= pair[1] or not math.isfinite(pair[1]):
                raise ValueError(f"DecodeCrop.{name} must be a (low, high) pair with 0 < low <= high, got {pair!r}")
            object.__setattr__(self, name, (float(pair[0]), float(pair[1])))
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"DecodeCrop.crop_pct must lie in (0, 1], got {self.crop_pct!r}")

    @property
    def resize_size(self) -> int:
        """The eval transform's short side before the centre crop: floor(size / crop_pct) (timm's scale_size)."""
        return math.floor(self.size / self.crop_pct)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (empty, truncated, unknown format, zero-size, over
    ``PIL.Image.MAX_IMAGE_PIXELS``). The message says what is wrong; callers prefix the file or shard member name."""


def random_resized_crop_box(width: int, height: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """Inception-style crop (left, upper, right, lower) of a width x height image: area fraction uniform in `scale`,
    log aspect ratio uniform in log(`ratio`), position uniform; after 10 draws that do not fit, the largest centred
    crop with an aspect ratio in range. The draws (``rng.uniform``, ``rng.uniform``, ``rng.randint`` top,
    ``rng.randint`` left) are timm's ``RandomResizedCropAndInterpolation.get_params``, so equal states of `rng` and
    of timm's ``random`` give the same box."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(scale[0], scale[1]) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int, size: int, crop_pct: float) -> Box:
    """The region (left, upper, right, lower) of a width x height image that "resize the short side to
    floor(size / crop_pct), then centre-crop size x size" keeps, in original pixels (fractional)."""
    scale_size = math.floor(size / crop_pct)
    side = size * min(width, height) / scale_size  # the crop's side in original pixels
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


class _Plan(NamedTuple):
    """What to decode: the original size, the train crop box (None for eval) and the DCT reduction (1, 2, 4, 8)."""
    width: int
    height: int
    box: tuple[int, int, int, int] | None
    reduction: int


def _reduction(short_side: float, needed: int) -> int:
    """The largest k in (8, 4, 2) with short_side / k - 1 >= needed (the snapped region keeps >= needed pixels),
    else 1."""
    return next((k for k in _REDUCTIONS if short_side >= k * (needed + 1)), 1)


def _plan(width: int, height: int, crop: DecodeCrop, rng: random.Random | None, jpeg: bool) -> _Plan:
    _check_size(width, height)
    if crop.train:
        box = random_resized_crop_box(width, height, crop.scale, crop.ratio, rng)
        short, needed = min(box[2] - box[0], box[3] - box[1]), crop.size
    else:
        box, short, needed = None, min(width, height), crop.resize_size
    return _Plan(width, height, box, _reduction(short, needed) if jpeg else 1)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageDecodeError(f"zero-size image ({width} x {height})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageDecodeError(f"image of {width} x {height} = {width * height} pixels exceeds "
                               f"PIL.Image.MAX_IMAGE_PIXELS = {limit} (possible decompression bomb)")


# The most bytes read from one user-named image file: far above any real photo, far below the machine's memory.
MAX_IMAGE_FILE_BYTES = 256 * 2**20


def read_file_bytes(path: str | os.PathLike, limit: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them. Raises ImageDecodeError naming the path for
    anything else (a device such as /dev/zero, a FIFO, a folder, a file over `limit`), so a user-named path can
    neither hang the reader nor exhaust memory; FileNotFoundError / OSError when it cannot be opened."""
    mode = os.stat(path).st_mode  # stat first: opening a FIFO would block until a writer appears
    if not stat.S_ISREG(mode):
        raise ImageDecodeError(f"{os.fspath(path)}: not a regular file (a device, FIFO, socket or folder)")
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ImageDecodeError(f"{os.fspath(path)}: file larger than {limit} bytes (the limit for one image file)")
    return data


def open_image_file(path: str | os.PathLike, limit: int = MAX_IMAGE_FILE_BYTES) -> Image.Image:
    """A Pillow image of the regular file `path`, read with `read_file_bytes` (use it as a context manager).
    Raises ImageDecodeError naming the path when it is not an image Pillow reads or is over
    ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb limit)."""
    data = read_file_bytes(path, limit)
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{os.fspath(path)}: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageDecodeError(f"{os.fspath(path)}: not an image Pillow can read ({err})") from None


def _read(data: bytes | bytearray | memoryview | str | os.PathLike) -> bytes | bytearray | memoryview:
    if isinstance(data, (str, os.PathLike)):
        return read_file_bytes(data)  # a missing file raises FileNotFoundError, not ImageDecodeError
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise TypeError(f"data must be bytes, bytearray, memoryview or a path, got {type(data).__name__}")


def _jpeg_header(buf) -> tuple[int, int] | None:
    """(width, height) when simplejpeg can decode this JPEG, else None (Pillow then decodes it)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(buf)
    except ValueError:
        return None
    return (width, height) if colorspace in _SIMPLEJPEG_COLORSPACES else None


def _decode_simplejpeg(buf, plan: _Plan) -> np.ndarray | None:
    """(H / k, W / k, 3) uint8 RGB (sizes rounded up) at the plan's reduction k; None when simplejpeg refuses."""
    k = plan.reduction
    expected = (-(-plan.height // k), -(-plan.width // k))
    try:
        pixels = simplejpeg.decode_jpeg(buf, colorspace="RGB", min_height=expected[0], min_width=expected[1],
                                        min_factor=k, strict=True)
    except ValueError:  # corrupt, truncated or unsupported: Pillow has the last word
        return None
    return pixels if pixels.shape[:2] == expected else None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB; 16-bit grayscale keeps its high byte, alpha is dropped."""
    if img.mode.startswith("I;16"):
        gray = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)  # (H, W)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W, 3)
    # np.array, not np.asarray: Pillow's buffer is read-only, and torch.from_numpy warns about read-only arrays
    return np.array(img if img.mode == "RGB" else img.convert("RGB"))


def _decode_pillow(buf, crop: DecodeCrop, rng: random.Random | None, plan: _Plan | None) -> tuple[np.ndarray, _Plan]:
    """Decode with Pillow (``draft`` for JPEG DCT scaling); reuses `plan` when the simplejpeg path already drew it."""
    try:
        with Image.open(io.BytesIO(buf)) as img:
            if plan is None or (plan.width, plan.height) != img.size:
                plan = _plan(*img.size, crop, rng, jpeg=img.format == "JPEG")
            k = plan.reduction
            if k > 1:
                img.draft("RGB", (plan.width // k, plan.height // k))
            if img.size == (-(-plan.width // k), -(-plan.height // k)):
                pixels = _to_rgb_array(img)
            else:  # draft declined or chose another scale: decode at full size instead
                plan = plan._replace(reduction=1)
                with Image.open(io.BytesIO(buf)) as full:
                    pixels = _to_rgb_array(full)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:  # its message names the BytesIO object, which tells the caller nothing
        raise ImageDecodeError("not a recognised image (unknown format or corrupt header)") from None
    except _PIL_ERRORS as err:
        raise ImageDecodeError(f"cannot decode image ({type(err).__name__}: {err})") from None
    return pixels, plan


def _resize(region: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """(h, w, 3) uint8 → (out_height, out_width, 3) uint8, bilinear with antialiasing when shrinking: torch's uint8
    kernel of Pillow's filter, written straight into a channels-last (height, width, 3) buffer (``F.interpolate``
    would return (3, H, W) and need a transposing copy)."""
    # a contiguous copy of a crop view first: numpy's row copy is faster than the kernel's strided read (measured)
    x = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)[None]  # (1, 3, h, w), channels last
    out = torch.empty(1, out_height, out_width, 3, dtype=torch.uint8)  # (1, H, W, 3)
    torch.ops.aten._upsample_bilinear2d_aa.out(x, [out_height, out_width], False, None, None,
                                               out=out.permute(0, 3, 1, 2))  # writes (1, 3, H, W) into out
    return out[0].numpy()  # (H, W, 3)


def _crop_resize(pixels: np.ndarray, plan: _Plan, crop: DecodeCrop) -> np.ndarray:
    """The decoded (H / k, W / k, 3) pixels → (size, size, 3) uint8, C-contiguous."""
    size, k = crop.size, plan.reduction
    rows, cols = pixels.shape[:2]
    if crop.train:
        left, top, right, bottom = (round(edge / k) for edge in plan.box)  # snapped to the decoded grid
        left, top = min(left, cols - 1), min(top, rows - 1)
        right, bottom = min(max(right, left + 1), cols), min(max(bottom, top + 1), rows)
        return _resize(pixels[top:bottom, left:right], size, size)  # (size, size, 3)
    return resize_center_crop(pixels, crop, plan.width, plan.height)


def resize_center_crop(pixels: np.ndarray, crop: DecodeCrop, width: int | None = None,
                       height: int | None = None) -> np.ndarray:
    """The eval crop of `crop` (train=False): uint8 (h, w, 3) pixels → (size, size, 3), C-contiguous. The short side
    is resized to floor(size / crop_pct) (long side truncated, torchvision's ``Resize``), then the centre is cut
    (torchvision's ``CenterCrop`` rounding). `width` x `height`: the source's size when `pixels` were decoded at a
    reduced DCT scale (default: the pixels' own size)."""
    width, height = width or pixels.shape[1], height or pixels.shape[0]
    size = crop.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = crop.resize_size, int(crop.resize_size * long / short)  # torchvision's Resize
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = _resize(pixels, new_h, new_w)  # (new_h, new_w, 3)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # torchvision's CenterCrop
    return np.ascontiguousarray(resized[top:top + size, left:left + size])  # (size, size, 3)


def decode_image(data: bytes | bytearray | memoryview | str | os.PathLike, crop: DecodeCrop,
                 rng: random.Random | None = None) -> np.ndarray:
    """(size, size, 3) uint8 RGB, C-contiguous. `data`: encoded bytes (JPEG, PNG, WebP, GIF, BMP, TIFF ...) or a
    path. `rng` supplies every random draw of the train crop (required when crop.train); equal rng states → identical
    output.

    Raises ImageDecodeError for empty, truncated or undecodable data, zero-size images and images over
    ``PIL.Image.MAX_IMAGE_PIXELS``; FileNotFoundError / OSError when a path cannot be read."""
    if crop.train and rng is None:
        raise ValueError("decode_image: a train crop needs rng (a random.Random) for its random draws")
    buf = _read(data)
    if len(buf) == 0:
        raise ImageDecodeError("empty data (0 bytes)")
    plan = pixels = None
    if simplejpeg is not None and bytes(buf[:3]) == _JPEG_MAGIC:
        size = _jpeg_header(buf)
        if size is not None:
            plan = _plan(*size, crop, rng, jpeg=True)
            pixels = _decode_simplejpeg(buf, plan)
    if pixels is None:
        pixels, plan = _decode_pillow(buf, crop, rng, plan)
    return _crop_resize(pixels, plan, crop)
