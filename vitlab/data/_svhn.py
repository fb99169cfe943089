"""SVHN (cropped digits, format 2) reader for the official MATLAB v5 files `{train,test,extra}_32x32.mat`.

Each holds 'X': uint8 (32, 32, 3, N) — height, width, RGB channel, image — and 'y': (N, 1) labels 1..10, where
10 stands for the digit 0."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._locate import DatasetFormatError, locate_file
from ._sources import DatasetInfo

__all__ = ["read_svhn", "SVHN_CLASSES"]

SVHN_CLASSES = [str(digit) for digit in range(10)]


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(path, variable_names=("X", "y"))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise DatasetFormatError(f"{path}: {err}; the official SVHN files are MATLAB v5") from None
    except (ValueError, OSError, TypeError, EOFError) as err:
        raise DatasetFormatError(f"{path}: not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None


def read_svhn(root: Path, info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,) with 10 mapped to 0, class names '0'..'9')."""
    path = locate_file(root, f"{split}_32x32.mat", info)
    mat = _loadmat(path)
    for key in ("X", "y"):
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("_"))
            raise DatasetFormatError(f"{path}: variable {key!r} missing (found {found})")
    images, labels = mat["X"], mat["y"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3:
        raise DatasetFormatError(f"{path}: 'X' must be uint8 (H, W, 3, N), found {images.dtype} {images.shape}")
    if labels.shape != (images.shape[3], 1):
        raise DatasetFormatError(f"{path}: 'y' must have shape ({images.shape[3]}, 1), found {labels.shape}")
    labels = labels[:, 0].astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DatasetFormatError(f"{path}: 'y' must hold labels 1..10, found {labels.min()}..{labels.max()}")
    labels %= 10  # label 10 is the digit 0
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, labels, list(SVHN_CLASSES)
