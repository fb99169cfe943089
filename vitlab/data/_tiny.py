"""Tiny ImageNet (tiny-imagenet-200) reader, held in memory as uint8 (N, 3, 64, 64).

Official layout: `wnids.txt` (one WordNet id per line), `words.txt` (wnid<TAB>description),
`train/<wnid>/images/<wnid>_<k>.JPEG`, `val/images/val_<k>.JPEG` with `val/val_annotations.txt`
(file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1). Classes are the wnids sorted, as an ImageFolder of train/ would number
them. The JPEGs are decoded once (Pillow, a thread pool) and cached as an .npy in the vitlab cache folder, keyed by a
fingerprint of the file list and sizes, written atomically; later loads read the .npy."""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._download import cache_dir
from ._locate import DatasetFormatError, MissingFileError, locate_file
from ._sources import DatasetInfo
from .decode import ImageDecodeError, open_image_file

__all__ = ["read_tiny_imagenet", "tiny_imagenet_samples"]

_SIZE = 64


def _wnids(root: Path, info: DatasetInfo) -> list[str]:
    path = locate_file(root, "wnids.txt", info)
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise DatasetFormatError(f"{path}: expected one distinct wnid per line, found {len(wnids)} lines, "
                                 f"{len(set(wnids))} distinct")
    return sorted(wnids)


def _val_samples(root: Path, info: DatasetInfo, index: dict[str, int]) -> tuple[list[str], list[int]]:
    annotations = locate_file(root, "val/val_annotations.txt", info)
    paths, labels = [], []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or fields[1] not in index:
            raise DatasetFormatError(f"{annotations}:{number}: expected '<file>\\t<wnid>\\t<box>' with a wnid from "
                                     f"wnids.txt, found {line!r}")
        paths.append(str(root / "val" / "images" / fields[0]))
        labels.append(index[fields[1]])
    return paths, labels


def tiny_imagenet_samples(root: Path, info: DatasetInfo, split: str) -> tuple[list[str], list[int], list[str]]:
    """(image paths, labels, classes) of a split, from the official layout."""
    classes = _wnids(root, info)
    index = {wnid: i for i, wnid in enumerate(classes)}
    if split == "val":
        paths, labels = _val_samples(root, info, index)
    else:
        paths, labels = [], []
        for wnid in classes:
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise MissingFileError(f"tiny_imagenet: missing folder {folder} (train/<wnid>/images/*.JPEG for "
                                       f"every wnid in wnids.txt)")
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpeg", ".jpg")))
            paths += [str(folder / f) for f in files]
            labels += [index[wnid]] * len(files)
    if not paths:
        raise DatasetFormatError(f"{root}: no images in the {split} split")
    return paths, labels, classes


def _fingerprint(root: Path, paths: list[str], labels: list[int]) -> str:
    digest = hashlib.sha256()
    for path, label in zip(paths, labels):
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise MissingFileError(f"tiny_imagenet: missing image {path}") from None
        digest.update(f"{os.path.relpath(path, root)}\t{size}\t{label}\n".encode())
    return digest.hexdigest()[:20]


def _decode(path: str) -> np.ndarray:
    try:
        with open_image_file(path) as img:
            array = np.asarray(img.convert("RGB"))  # (H, W, 3); a few official images are grayscale
    except ImageDecodeError as err:
        raise DatasetFormatError(str(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetFormatError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from None
    if array.shape != (_SIZE, _SIZE, 3):
        raise DatasetFormatError(f"{path}: image is {array.shape[1]}x{array.shape[0]}, expected {_SIZE}x{_SIZE}")
    return array


def _decode_all(paths: list[str], chunk: int = 512) -> np.ndarray:
    images = np.empty((len(paths), _SIZE, _SIZE, 3), dtype=np.uint8)  # (N, H, W, C)

    def work(start: int) -> None:
        for i in range(start, min(start + chunk, len(paths))):
            images[i] = _decode(paths[i])

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        list(pool.map(work, range(0, len(paths), chunk)))  # list(): re-raises a worker's error here
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, C, H, W)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"could not cache decoded Tiny ImageNet images at {path}: {err}", stacklevel=3)


def read_tiny_imagenet(root: Path, info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 3, 64, 64), labels int64 (N,), classes = sorted wnids); decoded JPEGs are cached."""
    paths, labels, classes = tiny_imagenet_samples(root, info, split)
    cache = cache_dir() / "datasets" / f"tiny_imagenet-{split}-{_fingerprint(root, paths, labels)}.npy"
    images = None
    if cache.is_file():
        try:
            images = np.load(cache)
        except (OSError, ValueError):
            images = None
        if images is not None and images.shape != (len(paths), 3, _SIZE, _SIZE):
            images = None
    if images is None:
        images = _decode_all(paths)
        _save_atomic(cache, images)
    return images, np.asarray(labels, dtype=np.int64), classes
