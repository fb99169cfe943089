"""Semantic-segmentation data: ADE20K (SceneParsing, 150 classes) read from its published folder layout or from
segmentation shards, and `load_segmentation_dataset`, one entry point for every segmentation dataset vitlab reads.

ADE20K's layout (ADEChallengeData2016.zip, as released by the MIT Scene Parsing Benchmark)::

    ROOT/ADEChallengeData2016/images/training/ADE_train_00000001.jpg      (20,210 images)
    ROOT/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg      (2,000 images)
    ROOT/ADEChallengeData2016/annotations/{training,validation}/<same stem>.png

The annotations are 8-bit single-channel PNGs: 0 = "other" (not one of the 150 classes), 1 … 150 = the classes.
Labels are reduced as mmsegmentation's ``reduce_zero_label``: stored 0 → 255 (ignored), k → k − 1, so the classes
are 0 … 149 (`ADE20K_CLASSES`) and the ignore index is 255.

Items (`dataset[(index, seed)]`, the `EncodedImageDataset` convention, so `EncodedLoader` drives them): train →
(image uint8 (3, S, S), mask uint8 (S, S)); eval → (image uint8 (3, h, w) fitting inside `SegCrop.scale`, mask
uint8 (H0, W0) at the annotation's own size). Evaluation images differ in size: evaluate with batch size 1. The
transform is `SegCrop` (vitlab/data/_seg_transform.py), the decode and checks `SegmentationDataset`
(vitlab/data/_seg_source.py), the shards vitlab/data/_seg_shards.py.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .._files import DatasetNotFoundError, search_places
from ._locate import DatasetFormatError, MissingFileError
from ._seg_shards import SegmentationShardDataset, index_segmentation_shard, write_segmentation_shards
from ._seg_source import SegmentationDataset, decode_mask, decode_rgb, reduce_zero_label
from ._seg_transform import SegCrop
from ._sources import IMAGENET_MEAN, IMAGENET_STD, SEGMENTATION_DATASETS
from ._subset import Subset
from .shards import INDEX_FILE

__all__ = ["ADE20KDataset", "SegCrop", "SegmentationDataset", "SegmentationShardDataset", "ADE20K_CLASSES",
           "ADE20K_PALETTE", "ADE20K_FOLDER", "SEGMENTATION_DATASETS", "load_segmentation_dataset",
           "is_segmentation_dataset", "write_segmentation_shards", "index_segmentation_shard", "find_ade20k_root",
           "decode_rgb", "decode_mask", "reduce_zero_label"]

ADE20K_FOLDER = "ADEChallengeData2016"
_SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}
_PREFIXES = {"training": "ADE_train_", "validation": "ADE_val_"}

# The 150 classes of the ADE20K SceneParsing benchmark (objectInfo150), label k − 1 ↔ stored value k.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag")

# The standard ADE20K colour palette (as in mmsegmentation), one (r, g, b) per class, in class order; as there,
# (140, 140, 140) is both ceiling's (5) and skyscraper's (48).
_PALETTE_FLAT = (
    120, 120, 120, 180, 120, 120, 6, 230, 230, 80, 50, 50, 4, 200, 3, 120, 120, 80, 140, 140, 140, 204, 5, 255,
    230, 230, 230, 4, 250, 7, 224, 5, 255, 235, 255, 7, 150, 5, 61, 120, 120, 70, 8, 255, 51, 255, 6, 82,
    143, 255, 140, 204, 255, 4, 255, 51, 7, 204, 70, 3, 0, 102, 200, 61, 230, 250, 255, 6, 51, 11, 102, 255,
    255, 7, 71, 255, 9, 224, 9, 7, 230, 220, 220, 220, 255, 9, 92, 112, 9, 255, 8, 255, 214, 7, 255, 224,
    255, 184, 6, 10, 255, 71, 255, 41, 10, 7, 255, 255, 224, 255, 8, 102, 8, 255, 255, 61, 6, 255, 194, 7,
    255, 122, 8, 0, 255, 20, 255, 8, 41, 255, 5, 153, 6, 51, 255, 235, 12, 255, 160, 150, 20, 0, 163, 255,
    140, 140, 140, 250, 10, 15, 20, 255, 0, 31, 255, 0, 255, 31, 0, 255, 224, 0, 153, 255, 0, 0, 0, 255,
    255, 71, 0, 0, 235, 255, 0, 173, 255, 31, 0, 255, 11, 200, 200, 255, 82, 0, 0, 255, 245, 0, 61, 255,
    0, 255, 112, 0, 255, 133, 255, 0, 0, 255, 163, 0, 255, 102, 0, 194, 255, 0, 0, 143, 255, 51, 255, 0,
    0, 82, 255, 0, 255, 41, 0, 255, 173, 10, 0, 255, 173, 255, 0, 0, 255, 153, 255, 92, 0, 255, 0, 255,
    255, 0, 245, 255, 0, 102, 255, 173, 0, 255, 0, 20, 255, 184, 184, 0, 31, 255, 0, 255, 61, 0, 71, 255,
    255, 0, 204, 0, 255, 194, 0, 255, 82, 0, 10, 255, 0, 112, 255, 51, 0, 255, 0, 194, 255, 0, 122, 255,
    0, 255, 163, 255, 153, 0, 0, 255, 10, 255, 112, 0, 143, 255, 0, 82, 0, 255, 163, 255, 0, 255, 235, 0,
    8, 184, 170, 133, 0, 255, 0, 255, 92, 184, 0, 255, 255, 0, 31, 0, 184, 255, 0, 214, 255, 255, 0, 112,
    92, 255, 0, 0, 224, 255, 112, 224, 255, 70, 184, 160, 163, 0, 255, 153, 0, 255, 71, 255, 0, 255, 0, 163,
    255, 204, 0, 255, 0, 143, 0, 255, 235, 133, 255, 0, 255, 0, 235, 245, 0, 255, 255, 0, 122, 255, 245, 0,
    10, 190, 212, 214, 255, 0, 0, 204, 255, 20, 0, 255, 255, 255, 0, 0, 153, 255, 0, 41, 255, 0, 255, 204,
    41, 0, 255, 41, 255, 0, 173, 0, 255, 0, 245, 255, 71, 0, 255, 122, 0, 255, 0, 255, 184, 0, 92, 255,
    184, 255, 0, 0, 133, 255, 255, 214, 0, 25, 194, 194, 102, 255, 0, 92, 0, 255)
ADE20K_PALETTE = tuple(tuple(_PALETTE_FLAT[i:i + 3]) for i in range(0, len(_PALETTE_FLAT), 3))


def find_ade20k_root(root: str | os.PathLike) -> Path:
    """The `ADEChallengeData2016` folder: `root/ADEChallengeData2016` or `root` itself (either holds `images/` and
    `annotations/`). Raises `DatasetNotFoundError` saying what was expected."""
    root = Path(root).expanduser()
    for folder in (root / ADE20K_FOLDER, root):
        if (folder / "images").is_dir() and (folder / "annotations").is_dir():
            return folder
    raise DatasetNotFoundError(f"ade20k: {root} holds neither {ADE20K_FOLDER}/images + {ADE20K_FOLDER}/annotations "
                               "nor images/ + annotations/ itself; expected the unpacked ADEChallengeData2016.zip "
                               "(http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)")


def _stems(folder: Path, suffix: str) -> dict[str, str]:
    """stem → file name of the `suffix` files (case-insensitive) in `folder`, hidden files left out."""
    if not folder.is_dir():
        raise MissingFileError(f"ade20k: missing folder {folder} (expected the {folder.parent.name}/{folder.name}/ "
                               f"folder of ADEChallengeData2016 with *{suffix} files)")
    return {name[: -len(suffix)]: name for name in os.listdir(folder)
            if name.lower().endswith(suffix) and not name.startswith(".")}


def _pair_files(root: Path, split: str, on_error: str) -> list[tuple[str, str]]:
    """Sorted (image path, annotation path) pairs of `split`; an image without annotation or an annotation without
    image raises `MissingFileError` naming both files ('raise') or is left out with a warning ('skip')."""
    image_dir, mask_dir = root / "images" / split, root / "annotations" / split
    images, masks = _stems(image_dir, ".jpg"), _stems(mask_dir, ".png")
    problems = [f"{image_dir / images[s]}: no annotation; expected {mask_dir / (s + '.png')}"
                for s in sorted(images.keys() - masks.keys())]
    problems += [f"{mask_dir / masks[s]}: no image; expected {image_dir / (s + '.jpg')}"
                 for s in sorted(masks.keys() - images.keys())]
    if problems and on_error == "raise":
        more = f" (and {len(problems) - 1} more unpaired files)" if len(problems) > 1 else ""
        raise MissingFileError(f"ade20k {split}: {problems[0]}{more}; on_error='skip' leaves them out")
    for message in problems:
        warnings.warn(f"skipped: {message}", stacklevel=3)
    pairs = [(str(image_dir / images[s]), str(mask_dir / masks[s])) for s in sorted(images.keys() & masks.keys())]
    if not pairs:
        raise DatasetFormatError(f"ade20k {split}: no image/annotation pairs in {image_dir} and {mask_dir} (expected "
                                 f"{_PREFIXES[split]}<8 digits>.jpg and .png files)")
    return pairs


class ADE20KDataset(Subset, SegmentationDataset):
    """ADE20K SceneParsing read from its published folder layout (module docstring).

    Args:
        root: the folder holding `ADEChallengeData2016`, or that folder itself.
        split: 'training' / 'train' or 'validation' / 'val'.
        crop: the transform; default: `SegCrop(train=True)` for training, `SegCrop(train=False)` for validation.
        on_error: 'raise' (a bad file stops with its name) or 'skip' (unpaired files are left out with a warning;
            unreadable or inconsistent samples are left out of their batch by the loader, counted and logged).

    `subset(n)`: n pairs drawn with a fixed seed (vitlab/data/_subset.py), the files being ordered by scene.
    """

    SUBSET_DRAWN = True

    def __init__(self, root: str | os.PathLike, split: str, crop: SegCrop | None = None, on_error: str = "raise",
                 pairs: list[tuple[str, str]] | None = None):
        if split not in _SPLITS:
            raise ValueError(f"ade20k has no split {split!r}; valid: {', '.join(_SPLITS)}")
        self.split = _SPLITS[split]
        crop = SegCrop(train=self.split == "training") if crop is None else crop
        super().__init__(list(ADE20K_CLASSES), list(ADE20K_PALETTE), "ade20k", crop, on_error, IMAGENET_MEAN,
                         IMAGENET_STD)
        self.root = find_ade20k_root(root)
        self.pairs = _pair_files(self.root, self.split, on_error) if pairs is None else pairs
        self.files = [(str((self.root / part / self.split).resolve()), "no registered checksum")
                      for part in ("images", "annotations")]

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"ADE20KDataset({self.split}: {len(self)} images, {self.num_classes} classes, {self.crop})"

    def source(self, index: int) -> tuple[str, str, str, str]:
        image, mask = self.pairs[index]
        return image, mask, image, mask

    def _select(self, rows: np.ndarray) -> "ADE20KDataset":
        return ADE20KDataset(self.root, self.split, self.crop, self.on_error, [self.pairs[i] for i in rows.tolist()])


def is_segmentation_dataset(name: str) -> bool:
    """Whether `name` is one of `SEGMENTATION_DATASETS`."""
    return name in SEGMENTATION_DATASETS


def _search_ade20k(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir` (which must hold ADE20K), else the first of `search_places()` that does."""
    if data_dir is not None:
        return find_ade20k_root(data_dir)
    places = search_places(None)
    for folder, _ in places:
        if folder is not None:
            try:
                return find_ade20k_root(folder)
            except DatasetNotFoundError:
                continue
    looked = "\n".join(f"  {folder}  ({why})" if folder is not None else f"  {why}" for folder, why in places)
    raise DatasetNotFoundError(f"ade20k: dataset not found. Looked for {ADE20K_FOLDER}/images and "
                               f"{ADE20K_FOLDER}/annotations in:\n{looked}\nPass data_dir= the folder holding "
                               f"{ADE20K_FOLDER} (unpacked ADEChallengeData2016.zip).")


def _shard_folder(data_dir: str | os.PathLike | None, split: str) -> Path:
    """`data_dir/<split>` (any alias of the split) when it holds index.json, else `data_dir` itself."""
    if data_dir is None:
        raise DatasetNotFoundError("ade20k_shards: data_dir must be the folder of segmentation shards (with "
                                   "index.json, or with one sub-folder per split)")
    aliases = [split] + [a for a, canonical in _SPLITS.items() if canonical == _SPLITS.get(split) and a != split]
    return next((Path(data_dir) / a for a in aliases if (Path(data_dir) / a / INDEX_FILE).is_file()), Path(data_dir))


def load_segmentation_dataset(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                              crop: SegCrop | None = None, on_error: str = "raise", **kwargs):
    """Split `split` of segmentation dataset `name` (one of `SEGMENTATION_DATASETS`).

    'ade20k': the published folder layout at `data_dir` (the folder holding ADEChallengeData2016, or that folder);
        None: the first of `vitlab.data.search_places()` holding it. → `ADE20KDataset`.
    'ade20k_shards': shards written by `write_segmentation_shards`; `data_dir` holds index.json, or a sub-folder
        per split (`training`/`train`, `validation`/`val`) that does. → `SegmentationShardDataset`.
    'fashion_mnist_scenes': `vitlab.data.scenes.fashion_mnist_scenes(split, data_dir=data_dir, **kwargs)`, an
        in-memory dataset (augmented on the device: `crop` and `on_error` do not apply to it).
    crop: the `SegCrop` (default: train transform for the training split, eval transform otherwise)."""
    if name not in SEGMENTATION_DATASETS:
        raise ValueError(f"unknown segmentation dataset {name!r}; valid: {', '.join(SEGMENTATION_DATASETS)}")
    if name == "fashion_mnist_scenes":
        from .scenes import fashion_mnist_scenes  # noqa: PLC0415  (written separately, imported on use)

        return fashion_mnist_scenes(split, data_dir=data_dir, **kwargs)
    if kwargs:
        raise TypeError(f"load_segmentation_dataset({name!r}) got unexpected arguments {sorted(kwargs)}")
    if split not in _SPLITS:
        raise ValueError(f"{name} has no split {split!r}; valid: {', '.join(_SPLITS)}")
    crop = SegCrop(train=_SPLITS[split] == "training") if crop is None else crop
    if name == "ade20k":
        return ADE20KDataset(_search_ade20k(data_dir), split, crop, on_error)
    folder = _shard_folder(data_dir, split)
    dataset = SegmentationShardDataset.from_folder(folder, crop, on_error, name=f"ade20k_shards:{folder.name}")
    dataset.files = [(str(folder.resolve()), "no registered checksum")]
    return dataset
