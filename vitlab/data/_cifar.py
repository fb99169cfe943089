"""CIFAR-10 / CIFAR-100 readers for the official "python version" pickle batches.

The batches were written by Python 2 cPickle (protocol 2): a dict with str keys (bytes when read with
encoding='bytes'), b'data' a numpy uint8 array (N, 3072) whose rows are the R, G and B 32x32 planes in row-major order,
b'labels' (CIFAR-10) or b'fine_labels' / b'coarse_labels' (CIFAR-100) lists of ints. The numpy array is encoded
as `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')` followed by `ndarray.__setstate__`, with
`numpy.dtype('u1', 0, 1)` for its dtype. A pickle can run arbitrary code, so these files are read with an
unpickler that resolves exactly those three globals and refuses everything else."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from ._locate import DatasetFormatError, locate_file
from ._sources import DatasetInfo

__all__ = ["UnsafePickleError", "load_cifar_pickle", "read_cifar"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global that a CIFAR batch never contains."""


class _NdarrayName:
    """Stands for the global numpy.ndarray: it may only be passed to `_reconstruct`, never called."""

    def __init__(self, *args, **kwargs):
        raise UnsafePickleError("numpy.ndarray may only appear as the first argument of _reconstruct")


def _reconstruct(cls, shape, dtype_code):
    if cls is not _NdarrayName or tuple(shape) != (0,):
        raise UnsafePickleError(f"numpy _reconstruct({cls!r}, {shape!r}) is not the ndarray(0,) a numpy pickle "
                                "starts from")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)  # empty array; BUILD then sets shape, dtype, data


def _dtype(spec, align=0, copy=1):
    code = spec.decode("ascii") if isinstance(spec, bytes) else spec
    dtype = np.dtype(code)
    if dtype.kind not in "biuf":  # no object, void, string or datetime dtypes
        raise UnsafePickleError(f"numpy dtype {code!r} is not a plain numeric dtype")
    return np.dtype(code, bool(align), bool(copy))


_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): _NdarrayName,
            ("numpy", "dtype"): _dtype}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise UnsafePickleError(f"refusing to load global {module}.{name} (a CIFAR batch only needs {allowed})"
                                    ) from None


def load_cifar_pickle(path: str | Path) -> dict:
    """Reads one official CIFAR pickle (batch or meta) with the restricted unpickler; keys come back as bytes."""
    with open(path, "rb") as f:
        data = f.read()  # from memory: a crafted length field then reads past the end instead of allocating it
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError) as err:  # what a corrupt opcode stream raises (AttributeError: APPEND on a non-list)
        raise DatasetFormatError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _key(batch: dict, key: bytes, path: Path):
    if key not in batch:
        raise DatasetFormatError(f"{path}: key {key!r} missing (found {sorted(batch)})")
    return batch[key]


def _batch_arrays(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = load_cifar_pickle(path)
    data = _key(batch, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), found {got}")
    try:
        labels = np.asarray(_key(batch, label_key, path), dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as err:
        raise DatasetFormatError(f"{path}: {label_key!r} is not a list of integers ({err})") from None
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(f"{path}: {label_key!r} has {labels.size} entries for {data.shape[0]} images")
    return data, labels


def _names(meta_path: Path, key: bytes) -> list[str]:
    names = _key(load_cifar_pickle(meta_path), key, meta_path)
    if not isinstance(names, list):
        raise DatasetFormatError(f"{meta_path}: {key!r} must be a list of class names, found {type(names).__name__}")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{meta_path}: a class name in {key!r} is not UTF-8 ({err})") from None


def read_cifar(root: Path, info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,), class names) for 'cifar10' or 'cifar100'."""
    cifar100 = info.name == "cifar100"
    meta = locate_file(root, "meta" if cifar100 else "batches.meta", info)
    label_key = b"fine_labels" if cifar100 else b"labels"
    paths = [locate_file(root, rel, info) for rel in info.required[split] if rel not in ("meta", "batches.meta")]
    parts = [_batch_arrays(path, label_key) for path in paths]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    classes = _names(meta, b"fine_label_names" if cifar100 else b"label_names")
    if len(classes) != info.num_classes:
        raise DatasetFormatError(f"{meta}: {len(classes)} class names, expected {info.num_classes}")
    for path, (_, part) in zip(paths, parts):
        if part.size and (part.min() < 0 or part.max() >= len(classes)):
            raise DatasetFormatError(f"{path}: labels must lie in [0, {len(classes)}), found "
                                     f"{part.min()}..{part.max()}")
    images = data.reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, C, H, W): R, G, B planes, each row-major
    return np.ascontiguousarray(images), labels, classes
