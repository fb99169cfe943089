"""Fashion-MNIST scenes: a real-data semantic-segmentation task built from local files, nothing to download.

Each scene is a black `canvas` x `canvas` image on which k ~ U{items[0], ..., items[1]} Fashion-MNIST items
(28 x 28) are pasted at uniformly random integer positions, fully inside the canvas. Items may overlap; a later
item is drawn on top (its silhouette pixels replace whatever was there). The label map gives 0 for background and
c + 1 for a pixel of an item of class c.

Silhouette: an item's pixels with intensity >= `SILHOUETTE_THRESHOLD` (16 of 255). Fashion-MNIST has faint
near-zero noise around its items (about 3.6% of all pixels are 1..15); those pixels are neither labelled nor drawn,
so the image is exactly the item's pixel where the mask is an item and exactly 0 where the mask is background.

Layouts (`scene_layout`) come from a numpy Generator per block of `BLOCK` scenes (entropy `(*seed, block)`), so
they are deterministic for a seed, and the first n scenes do not depend on `count` (`make_scenes(..., count=n)`
equals the first n scenes of a larger call). Train scenes take items only from the train split; test scenes only from the test
split, with the derived seed `(seed, 1)`, so no test layout repeats a train one.

Normalisation (`mean`, `std`): statistics of the pixels of the first `STATS_SCENES` train scenes built with the
same canvas, items and seed, identical for both splits (the scenes are mostly black, so Fashion-MNIST's own
0.2860 / 0.3530 would be far off)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ._subset import Subset, leading
from .datasets import load_dataset

__all__ = ["SegmentationTensorDataset", "make_scenes", "scene_layout", "paste_items", "fashion_mnist_scenes",
           "SILHOUETTE_THRESHOLD", "IGNORE_INDEX", "SCENE_PALETTE"]

SILHOUETTE_THRESHOLD = 16  # an item pixel belongs to the item's silhouette when its intensity is >= 16 (of 255)
IGNORE_INDEX = 255  # the label of pixels left out of loss and metrics (no scene pixel uses it)
BLOCK = 1000  # scenes per random-number block (the prefix-stability unit)
STATS_SCENES = 2000  # train scenes whose pixels give mean / std
TEST_SEED_TAG = 1  # test layouts use seed (seed, TEST_SEED_TAG)
DEFAULT_COUNT = {"train": 20000, "test": 2000}
# background black, then matplotlib's tab10 colours for the 10 item classes
SCENE_PALETTE = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


@dataclass
class SegmentationTensorDataset(Subset):
    """A semantic-segmentation dataset held in memory. `images`: uint8 (N, C, S, S); `masks`: uint8 (N, S, S) with
    values in 0..num_classes-1 or `ignore_index`; `mean` / `std`: per channel, in [0, 1] units; `palette`: one RGB
    triple per class; `files`: (path, verified digest) of the source files."""
    images: torch.Tensor
    masks: torch.Tensor
    classes: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: list[tuple[str, str]] = field(default_factory=list)
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.masks.dim() != 3:
            raise ValueError(f"images must be (N, C, H, W) and masks (N, H, W); got {tuple(self.images.shape)} and "
                             f"{tuple(self.masks.shape)}")
        n, _, h, w = self.images.shape
        if tuple(self.masks.shape) != (n, h, w):
            raise ValueError(f"masks {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}: "
                             f"expected ({n}, {h}, {w})")
        if self.palette and len(self.palette) != len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image uint8 (C, S, S), mask uint8 (S, S))."""
        return self.images[index], self.masks[index]

    def _select(self, rows: np.ndarray) -> "SegmentationTensorDataset":
        index = leading(rows)  # subset: the first n scenes (vitlab/data/_subset.py), a view of the tensors
        return SegmentationTensorDataset(self.images[index], self.masks[index], self.classes, self.name, self.mean,
                                         self.std, self.files, self.palette, self.ignore_index)

    def class_frequencies(self) -> torch.Tensor:
        """float64 (num_classes,): the fraction of labelled (non-ignored) pixels of each class. Its maximum is the
        all-pixel accuracy of always predicting that class (e.g. all background)."""
        labels = self.masks.reshape(-1).long()  # (N*S*S,)
        labels = labels[labels != self.ignore_index]
        counts = torch.bincount(labels, minlength=self.num_classes).double()  # (K,)
        return counts / counts.sum().clamp_min(1)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"SegmentationTensorDataset({self.name}: {n} scenes {c}x{h}x{w}, {self.num_classes} classes)"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]


def paste_items(scenes: np.ndarray, masks: np.ndarray, items: np.ndarray, labels: np.ndarray,
                positions: np.ndarray, scene_index: np.ndarray | None = None,
                threshold: int = SILHOUETTE_THRESHOLD) -> None:
    """Pastes item i onto scene `scene_index[i]` at `positions[i]` = (top, left), in place: where the item's
    silhouette (pixels >= threshold) is, the scene takes the item's pixel and the mask `labels[i] + 1`; elsewhere
    both are unchanged, so an item pasted later lies on top of an earlier one.

    scenes, masks: uint8 (N, S, S), C-contiguous; items: uint8 (M, h, w); labels (M,) class ids (label + 1 must stay
    below 255); positions (M, 2) integers; scene_index (M,) distinct scene numbers (default 0..M-1). One scene gets
    at most one item per call: call again for the next layer."""
    m, h, w = items.shape
    n, size, size_w = scenes.shape
    scene_index = np.arange(m) if scene_index is None else np.asarray(scene_index, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    _check_paste(scenes, masks, items, labels, positions, scene_index)
    base = scene_index * (size * size_w) + positions[:, 0] * size_w + positions[:, 1]  # (M,) flat top-left
    offsets = (np.arange(h)[:, None] * size_w + np.arange(w)[None, :]).reshape(-1)  # (h*w,)
    flat_index = base[:, None] + offsets[None, :]  # (M, h*w)
    pixels = items.reshape(m, h * w)  # (M, h*w)
    silhouette = pixels >= threshold  # (M, h*w)
    values = np.broadcast_to((np.asarray(labels, dtype=np.int64) + 1)[:, None], (m, h * w))  # (M, h*w)
    target = flat_index[silhouette]  # (P,) flat positions of all silhouette pixels
    scenes.reshape(-1)[target] = pixels[silhouette]
    masks.reshape(-1)[target] = values[silhouette].astype(np.uint8)


def _check_paste(scenes, masks, items, labels, positions, scene_index) -> None:
    m, h, w = items.shape
    n, size, size_w = scenes.shape
    if masks.shape != scenes.shape or not (scenes.flags.c_contiguous and masks.flags.c_contiguous):
        raise ValueError(f"scenes {scenes.shape} and masks {masks.shape} must be C-contiguous arrays of one shape")
    if scenes.dtype != np.uint8 or masks.dtype != np.uint8 or items.dtype != np.uint8:
        raise TypeError(f"scenes, masks and items must be uint8, got {scenes.dtype}, {masks.dtype}, {items.dtype}")
    if positions.shape != (m, 2) or len(labels) != m or scene_index.shape != (m,):
        raise ValueError(f"{m} items need positions (M, 2), labels (M,) and scene_index (M,); got "
                         f"{positions.shape}, {len(labels)}, {scene_index.shape}")
    if m == 0:
        return
    tops, lefts = positions[:, 0], positions[:, 1]
    if tops.min() < 0 or lefts.min() < 0 or tops.max() > size - h or lefts.max() > size_w - w:
        raise ValueError(f"item positions must keep each {h}x{w} item inside the {size}x{size_w} canvas: top in "
                         f"0..{size - h}, left in 0..{size_w - w}; got tops {tops.min()}..{tops.max()}, lefts "
                         f"{lefts.min()}..{lefts.max()}")
    if scene_index.min() < 0 or scene_index.max() >= n or len(np.unique(scene_index)) != m:
        raise ValueError(f"scene_index must hold distinct scene numbers in 0..{n - 1} (one item per scene per call)")
    if np.min(labels) < 0 or np.max(labels) + 1 >= IGNORE_INDEX:
        raise ValueError(f"labels must be in 0..{IGNORE_INDEX - 2} (label + 1 is stored, {IGNORE_INDEX} is ignore); "
                         f"got {np.min(labels)}..{np.max(labels)}")


def _as_items(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (M, h, w) items and int64 (M,) labels from (M, 1, h, w) or (M, h, w) images."""
    images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]  # (M, h, w)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (M, 1, h, w) or (M, h, w); got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},) to match the images; got {labels.shape}")
    if images.shape[0] == 0:
        raise ValueError("no items to place: images is empty")
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _seed_entropy(seed: int | Sequence[int]) -> tuple[int, ...]:
    entropy = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    if not entropy or any(int(s) < 0 for s in entropy):
        raise ValueError(f"seed must be a non-negative int or a non-empty tuple of them, got {seed!r}")
    return tuple(int(s) for s in entropy)


def scene_layout(count: int, num_items: int, canvas: int, item_shape: tuple[int, int] = (28, 28),
                 items: tuple[int, int] = (2, 4), seed: int | Sequence[int] = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The random layout of `count` scenes: `counts` int64 (N,) items per scene, uniform in items[0]..items[1];
    `picks` int64 (N, items[1]) which of the `num_items` items fills each slot; `positions` int64 (N, items[1], 2)
    (top, left) of each slot, uniform over the positions that keep the item inside the canvas. Slots >= counts[n]
    are unused; slot j is drawn over slots < j. One Generator per block of `BLOCK` scenes, seeded `(*seed, block)`,
    always drawing a full block, so the first n scenes are the same for every count >= n."""
    h, w = item_shape
    lo, hi = (int(k) for k in items)
    if not 0 <= lo <= hi:
        raise ValueError(f"items must be (min, max) with 0 <= min <= max, got {items!r}")
    if canvas < max(h, w):
        raise ValueError(f"canvas {canvas} is smaller than the {h}x{w} items: it must be >= {max(h, w)}")
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    entropy = _seed_entropy(seed)
    blocks = []
    for block in range(-(-count // BLOCK)):
        rng = np.random.default_rng((*entropy, block))
        counts = rng.integers(lo, hi + 1, size=BLOCK)  # (BLOCK,)
        picks = rng.integers(0, num_items, size=(BLOCK, hi))  # (BLOCK, hi)
        tops = rng.integers(0, canvas - h + 1, size=(BLOCK, hi))  # (BLOCK, hi)
        lefts = rng.integers(0, canvas - w + 1, size=(BLOCK, hi))  # (BLOCK, hi)
        blocks.append((counts, picks, np.stack([tops, lefts], axis=-1)))  # ..., (BLOCK, hi, 2)
    if not blocks:
        return np.zeros(0, np.int64), np.zeros((0, hi), np.int64), np.zeros((0, hi, 2), np.int64)
    return tuple(np.concatenate(parts)[:count] for parts in zip(*blocks))  # (N,), (N, hi), (N, hi, 2)


def make_scenes(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, count: int,
                canvas: int = 64, items: tuple[int, int] = (2, 4), seed: int | Sequence[int] = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` scenes of `items[0]..items[1]` items (uniform) drawn from `images` (uint8 (M, 1, h, w) or (M, h, w))
    with class `labels` (M,), pasted at random positions fully inside a black canvas (see the module docstring and
    `scene_layout`).

    Returns scenes uint8 (count, 1, canvas, canvas) and masks uint8 (count, canvas, canvas): 0 background,
    label + 1 on an item's silhouette (the topmost item where items overlap). Deterministic for `seed` (an int or
    a tuple of ints); the first n scenes are the same for every count >= n."""
    item_pixels, item_labels = _as_items(images, labels)
    counts, picks, positions = scene_layout(count, item_pixels.shape[0], canvas, item_pixels.shape[1:], items, seed)
    scenes = np.zeros((count, canvas, canvas), dtype=np.uint8)  # (N, S, S)
    masks = np.zeros((count, canvas, canvas), dtype=np.uint8)  # (N, S, S)
    for start in range(0, count, BLOCK):  # bounded memory: (BLOCK, h*w) index arrays per paste
        stop = min(start + BLOCK, count)
        for slot in range(picks.shape[1]):  # slot order = drawing order: a later slot lies on top
            where = np.nonzero(counts[start:stop] > slot)[0]  # (M,) scenes of this block that have this slot
            chosen = picks[start + where, slot]  # (M,)
            paste_items(scenes[start:stop], masks[start:stop], item_pixels[chosen], item_labels[chosen],
                        positions[start + where, slot], scene_index=where)
    return torch.from_numpy(scenes).unsqueeze(1), torch.from_numpy(masks)  # (N, 1, S, S), (N, S, S)


def _pixel_stats(scenes: torch.Tensor) -> tuple[tuple[float], tuple[float]]:
    """Mean and std of uint8 (N, 1, S, S) pixels, in [0, 1] units, as 1-tuples."""
    pixels = scenes.numpy().astype(np.float64) / 255.0  # (N, 1, S, S)
    return (float(pixels.mean()),), (float(pixels.std()),)


def fashion_mnist_scenes(split: str, data_dir: str | os.PathLike | None = None, count: int | None = None,
                         canvas: int = 64, items: tuple[int, int] = (2, 4), seed: int = 0
                         ) -> SegmentationTensorDataset:
    """The Fashion-MNIST scenes of `split` ('train': 20,000 scenes by default, items from the train split, layouts
    from `seed`; 'test': 2,000 by default, items from the test split, layouts from `(seed, 1)`).

    data_dir: where Fashion-MNIST is (passed to `load_dataset`, which otherwise searches $VITLAB_DATA, ./data,
    ../shared/data and /usr/share/datasets). Classes: 'background' then the 10 Fashion-MNIST names (11 in all).
    `mean` / `std` are those of the first 2,000 train scenes of the same canvas, items and seed, for both splits;
    `files` lists the Fashion-MNIST files the items came from (for 'test', the train files used for the
    statistics are not listed)."""
    if split not in DEFAULT_COUNT:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    count = DEFAULT_COUNT[split] if count is None else count
    source = load_dataset("fashion_mnist", split, data_dir=data_dir)
    layout_seed = seed if split == "train" else (seed, TEST_SEED_TAG)
    scenes, masks = make_scenes(source.images, source.labels, count, canvas, items, layout_seed)
    if split == "train" and count >= STATS_SCENES:
        stats_scenes = scenes[:STATS_SCENES]  # the same scenes a separate call would build (prefix-stable)
    else:
        train = source if split == "train" else load_dataset("fashion_mnist", "train", data_dir=data_dir)
        stats_scenes, _ = make_scenes(train.images, train.labels, STATS_SCENES, canvas, items, seed)
    mean, std = _pixel_stats(stats_scenes)
    return SegmentationTensorDataset(scenes, masks, ["background", *source.classes], f"fashion_mnist_scenes_{split}",
                                     mean, std, list(source.files), list(SCENE_PALETTE), IGNORE_INDEX)
