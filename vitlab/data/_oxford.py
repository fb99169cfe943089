"""Sample lists of Oxford Flowers-102 and Oxford-IIIT Pets from their official split files.

Flowers-102: `jpg/image_%05d.jpg` (ids 1..8189), `imagelabels.mat` ('labels': 1 x 8189, values 1..102, entry k is
the class of image k+1) and `setid.mat` ('trnid', 'valid', 'tstid': 1-based image ids).
Pets: `images/<Breed_Name>_<k>.jpg`, `annotations/trainval.txt` and `annotations/test.txt` with lines
"<image id> <class id 1..37> <species 1..2> <breed id>"; a class's name is its image ids without the trailing _<k>."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._locate import DatasetFormatError, MissingFileError, locate_file
from ._sources import DatasetInfo

__all__ = ["flowers102_samples", "pets_samples"]

_FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


def _mat_vector(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=(key,))
    except (ValueError, OSError, TypeError, EOFError, NotImplementedError) as err:
        raise DatasetFormatError(f"{path}: not a readable MATLAB .mat file ({type(err).__name__}: {err})") from None
    if key not in mat:
        raise DatasetFormatError(f"{path}: variable {key!r} missing (found {sorted(k for k in mat if k[0] != '_')})")
    return np.asarray(mat[key]).reshape(-1).astype(np.int64)


def _require_files(paths: list[str], dataset: str) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"{dataset}: {len(missing)} images listed in the split file are missing, e.g. "
                               f"{missing[0]}")


def flowers102_samples(root: Path, info: DatasetInfo, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples (path, label 0..101), classes '1'..'102' as numbered in imagelabels.mat)."""
    labels_path = locate_file(root, "imagelabels.mat", info)
    setid_path = locate_file(root, "setid.mat", info)
    labels = _mat_vector(labels_path, "labels")
    if labels.size and (labels.min() < 1 or labels.max() > info.num_classes):
        raise DatasetFormatError(f"{labels_path}: 'labels' must lie in 1..{info.num_classes}, found "
                                 f"{labels.min()}..{labels.max()}")
    ids = _mat_vector(setid_path, _FLOWERS_SPLIT_KEYS[split])
    if ids.size and (ids.min() < 1 or ids.max() > labels.size):
        raise DatasetFormatError(f"{setid_path}: '{_FLOWERS_SPLIT_KEYS[split]}' image ids must lie in "
                                 f"1..{labels.size}, found {ids.min()}..{ids.max()}")
    samples = [(str(root / "jpg" / f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1) for i in ids.tolist()]
    _require_files([p for p, _ in samples], "flowers102")
    return samples, [str(k) for k in range(1, info.num_classes + 1)]


def _pets_lines(path: Path) -> list[tuple[str, int]]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise DatasetFormatError(f"{path}:{number}: expected '<image id> <class id> <species> <breed id>', "
                                     f"found {line!r}")
        entries.append((fields[0], int(fields[1])))
    return entries


def pets_samples(root: Path, info: DatasetInfo, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(samples (path, label 0..36), classes: breed names ordered by class id)."""
    split_file = locate_file(root, f"annotations/{split}.txt", info)
    entries = _pets_lines(split_file)
    bad = [(image, class_id) for image, class_id in entries if not 1 <= class_id <= info.num_classes]
    if bad:
        raise DatasetFormatError(f"{split_file}: class id {bad[0][1]} of {bad[0][0]} outside 1..{info.num_classes}")
    names: dict[int, str] = {}
    for other in ("trainval", "test"):  # both files, so that every split numbers and names classes alike
        path = root / "annotations" / f"{other}.txt"
        for image, class_id in (entries if other == split else _pets_lines(path) if path.is_file() else []):
            names.setdefault(class_id, image.rsplit("_", 1)[0])
    classes = [names.get(k, f"class_{k}") for k in range(1, info.num_classes + 1)]
    samples = [(str(root / "images" / f"{image}.jpg"), class_id - 1) for image, class_id in entries]
    _require_files([p for p, _ in samples], "pets")
    return samples, classes
