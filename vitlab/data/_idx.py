"""MNIST-style idx readers (MNIST, Fashion-MNIST), gzip-compressed (.gz) or raw.

idx format: a big-endian header — two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions —
then one big-endian uint32 per dimension, then the data row-major. Images files have magic 2051 (0x00000803: ubyte,
3 dims N x 28 x 28), label files magic 2049 (0x00000801: ubyte, 1 dim N)."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ._locate import DatasetFormatError, locate_file
from ._sources import DatasetInfo

__all__ = ["read_idx", "read_idx_dataset", "FASHION_MNIST_CLASSES", "MNIST_CLASSES"]

MNIST_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not path.name.endswith(".gz"):
        return raw
    try:
        return zlib.decompress(raw, wbits=16 + zlib.MAX_WBITS)  # gzip container; one call, no Python loop
    except zlib.error as err:
        raise DatasetFormatError(f"{path}: not a valid gzip file ({err})") from None


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """The uint8 array stored in an idx (or idx.gz) file; `magic` (2051 or 2049) is checked when given. Errors name
    the file, the field and the expected value."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: {len(data)} bytes, too short for an idx header")
    found_magic = int.from_bytes(data[:4], "big")
    if magic is not None and found_magic != magic:
        raise DatasetFormatError(f"{path}: idx magic number {found_magic}, expected {magic}")
    zeros, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zeros != 0 or type_code != 0x08:
        raise DatasetFormatError(f"{path}: idx header {data[:4].hex()} is not an unsigned-byte idx file "
                                 "(expected 0000 08 <ndim>)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated idx header ({len(data)} bytes, expected {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DatasetFormatError(f"{path}: {len(data)} bytes, expected {expected} for an idx array of shape {dims} "
                                 "(truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_dataset(root: Path, info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 1, H, W), labels int64 (N,), class names) for 'mnist' or 'fashion_mnist'."""
    images_rel, labels_rel = info.required[split]
    images_path, labels_path = locate_file(root, images_rel, info), locate_file(root, labels_rel, info)
    images = read_idx(images_path, IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)  # (N,)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                                 f"{labels.shape[0]} labels")
    classes = FASHION_MNIST_CLASSES if info.name == "fashion_mnist" else MNIST_CLASSES
    if labels.size and labels.max() >= len(classes):
        raise DatasetFormatError(f"{labels_path}: label {labels.max()} out of range, expected 0..{len(classes) - 1}")
    return images[:, None], labels, list(classes)  # (N, 1, H, W)
