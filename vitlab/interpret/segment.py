"""Emergent segmentation: foreground masks from a transformer trained only to classify, and how good they are.

Two unsupervised methods, both on the patch grid, upsampled to pixels by nearest neighbour (each patch mask covers
its patch, as DINO does):
- class-token attention thresholded by mass (DINO, Caron et al. 2021; used for CRATE by Yu et al. 2023): keep the
  highest-attention patches that together hold `mass` (0.6) of the class token's attention over the patches;
- MaskCut (Wang et al. 2023, CutLER): a normalized cut of the patch-feature affinity graph, W_ij = 1 if
  cos(f_i, f_j) > τ else ε; the second-smallest generalized eigenvector of (D − W) x = λ D x, split at its mean;
  the foreground is the side holding the eigenvector's largest |entry|, flipped when it holds ≥ 3 of the 4 corners,
  and of it the 4-connected piece holding its most salient patch is kept; further masks repeat the cut on the
  patches not yet taken.

Scores: `segmentation_scores` accumulates per-class intersection and union over a whole split (background and
foreground), mIoU = their mean (the semantic-segmentation convention), and also the per-image foreground Jaccard
averaged over images (DINO's table).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data import normalize_images
from ..models import get_blocks

__all__ = ["mass_threshold", "upsample_mask", "maskcut", "fashion_mnist_foreground", "SegmentationScores",
           "segmentation_scores", "METHODS", "attention_scores", "unsupervised_masks", "score_batch",
           "evaluate_segmentation", "evaluate_fashion_mnist"]


def mass_threshold(scores: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Boolean mask of the highest scores that together hold `mass` of each map's total (DINO's thresholding).

    scores: (..., h, w) non-negative. The patch that crosses the threshold is included, so a mask is never empty.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if (scores < 0).any():
        raise ValueError("mass thresholding needs non-negative scores (attention weights)")
    flat = scores.flatten(-2).double()  # (..., h·w)
    values, order = flat.sort(dim=-1, descending=True)
    total = values.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    before = (values.cumsum(dim=-1) - values) / total  # mass held by the strictly larger patches
    keep_sorted = before < mass  # (..., h·w)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(scores.shape)


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(…, h, w) boolean patch mask → (…, H, W) pixel mask by nearest neighbour."""
    lead = mask.shape[:-2]
    up = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=size, mode="nearest")
    return up.reshape(*lead, *size) > 0.5


def _second_eigenvector(affinity: np.ndarray) -> np.ndarray:
    """Generalized eigenvector of (D − W) x = λ D x with the second-smallest λ, via the symmetric normalized
    Laplacian I − D^{-1/2} W D^{-1/2}: x = D^{-1/2} y."""
    degree = affinity.sum(axis=1)
    inv_sqrt = 1.0 / np.sqrt(degree)
    laplacian = np.eye(len(degree)) - inv_sqrt[:, None] * affinity * inv_sqrt[None, :]
    _, vectors = np.linalg.eigh(laplacian)  # ascending eigenvalues
    return inv_sqrt * vectors[:, 1]


def maskcut(features: torch.Tensor, grid: tuple[int, int], num_masks: int = 1, tau: float = 0.15,
            eps: float = 1e-5) -> torch.Tensor:
    """MaskCut foreground masks on the patch grid: features (B, h·w, D) → (B, num_masks, h, w) boolean."""
    B, N, _ = features.shape
    h, w = grid
    if N != h * w:
        raise ValueError(f"{N} patch features do not fit a {h}×{w} grid")
    if num_masks < 1:
        raise ValueError(f"num_masks must be ≥ 1, got {num_masks}")
    from scipy import ndimage

    corners = [0, w - 1, (h - 1) * w, h * w - 1]
    unit = F.normalize(features.double(), dim=-1).cpu().numpy()  # (B, N, D)
    out = np.zeros((B, num_masks, N), dtype=bool)
    for b in range(B):
        affinity = np.where(unit[b] @ unit[b].T > tau, 1.0, eps)  # W_ij = 1 if cos > τ else ε
        taken = np.zeros(N, dtype=bool)
        for m in range(num_masks):
            free = np.flatnonzero(~taken)
            if len(free) < 2:
                break
            x = _second_eigenvector(affinity[np.ix_(free, free)])  # the cut runs on the patches still free
            if x[np.argmax(np.abs(x))] < 0:
                x = -x  # orient: the most salient patch on the positive side
            side = x > x.mean()  # bipartition at the mean
            if np.isin(free[side], corners).sum() >= 3:  # a side holding three corners is background
                x, side = -x, ~side
            seed = free[np.argmax(x)]  # the most salient patch of the foreground side
            grid_side = np.zeros(N, dtype=bool)
            grid_side[free[side]] = True
            components, _ = ndimage.label(grid_side.reshape(h, w))  # 4-connected pieces on the patch grid
            mask = components.reshape(N) == components.reshape(N)[seed]  # the piece holding the seed
            out[b, m] = mask
            taken |= mask
    return torch.from_numpy(out).reshape(B, num_masks, h, w)


def fashion_mnist_foreground(images: torch.Tensor) -> torch.Tensor:
    """Ground-truth foreground of Fashion-MNIST images: pixels above 0, with enclosed holes filled.

    Fashion-MNIST's backgrounds are exactly 0 (half of all pixels of the test split); dark parts of a garment can
    also be 0, so zero regions not connected to the image border (holes inside a silhouette) count as foreground
    (`scipy.ndimage.binary_fill_holes`, 4-connected). images: uint8 (B, 1, H, W) or (B, H, W) → bool (B, H, W).
    """
    from scipy import ndimage

    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 Fashion-MNIST pixels, got {images.dtype}")
    pixels = images.reshape(images.shape[0], *images.shape[-2:]).cpu().numpy()
    masks = np.stack([ndimage.binary_fill_holes(p > 0) for p in pixels]) if len(pixels) else pixels > 0
    return torch.from_numpy(masks)


@dataclass
class SegmentationScores:
    """Running binary-segmentation scores. `intersection` / `union`: pixels per class [background, foreground]."""
    intersection: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    union: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    jaccard_sum: float = 0.0
    images: int = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "SegmentationScores":
        """pred, target: bool (B, H, W)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
        pred, target = pred.bool().cpu(), target.bool().cpu()
        for cls, (p, t) in enumerate(((~pred, ~target), (pred, target))):
            self.intersection[cls] += int((p & t).sum())
            self.union[cls] += int((p | t).sum())
        inter = (pred & target).flatten(1).sum(1).double()
        union = (pred | target).flatten(1).sum(1).double()
        self.jaccard_sum += float(torch.where(union > 0, inter / union.clamp_min(1), 1.0).sum())  # both empty: 1
        self.images += pred.shape[0]
        return self

    @property
    def iou(self) -> np.ndarray:
        """IoU of [background, foreground] over everything seen."""
        return self.intersection / np.maximum(self.union, 1)

    @property
    def miou(self) -> float:
        return float(self.iou.mean())

    @property
    def jaccard(self) -> float:
        """Mean over images of the foreground IoU."""
        return self.jaccard_sum / max(self.images, 1)

    def as_dict(self) -> dict[str, float]:
        return {"miou": self.miou, "iou_background": float(self.iou[0]), "iou_foreground": float(self.iou[1]),
                "jaccard": self.jaccard, "images": self.images}


def segmentation_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """mIoU, per-class IoU and mean per-image Jaccard of boolean masks (B, H, W) against the ground truth."""
    return SegmentationScores().update(pred, target).as_dict()


# ----------------------------------------------------------------------------------------------------------------
# Masks from a model, and their scores over a dataset

METHODS = ("attention", "rollout", "maskcut")


def attention_scores(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1,
                     method: str = "attention", head: int | str = "mean", layer: int = -1) -> torch.Tensor:
    """The (B, h, w) map a mask is cut from: the class token's attention in block `layer` (heads averaged, or one
    head), or the attention rollout; attn (B, L, H, N, N)."""
    from .attention import attention_rollout, cls_attention

    if method == "rollout":
        return attention_rollout(attn, grid, num_prefix_tokens)  # (B, h, w)
    maps = cls_attention(attn, grid, num_prefix_tokens)[:, layer]  # (B, H, h, w)
    if head == "mean":
        return maps.mean(dim=1)
    if isinstance(head, int) and -maps.shape[1] <= head < maps.shape[1]:
        return maps[:, head]
    raise ValueError(f"head must be 'mean' or a head index below {maps.shape[1]}, got {head!r}")


@torch.no_grad()
def unsupervised_masks(model: torch.nn.Module, images: torch.Tensor, method: str = "attention", *,
                       head: int | str = "mean", layer: int = -1, mass: float = 0.6, tau: float = 0.15
                       ) -> torch.Tensor:
    """Foreground masks (B, H_img, W_img) for normalised images (B, C, H_img, W_img), from no labels at all.

    method 'attention': the class token's attention in block `layer`, heads averaged (head='mean') or one head,
    thresholded to `mass`; 'rollout': attention rollout thresholded to `mass`; 'maskcut': MaskCut's first mask on
    the keys of block `layer` (affinity threshold `tau`).
    """
    from .attention import grid_shape, patch_features, record_attention

    grid = grid_shape(model)
    if method == "maskcut":
        patch_mask = maskcut(patch_features(model, images, layer=layer, kind="keys"), grid, tau=tau)[:, 0]
    elif method in ("attention", "rollout"):
        scores = attention_scores(record_attention(model, images), grid, model.num_prefix_tokens, method, head, layer)
        patch_mask = mass_threshold(scores, mass)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return upsample_mask(patch_mask, tuple(images.shape[-2:]))


@torch.no_grad()
def score_batch(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                scores: dict[str, SegmentationScores | list[SegmentationScores]] | None = None, mass: float = 0.6,
                tau: float = 0.15) -> dict[str, SegmentationScores | list[SegmentationScores]]:
    """Adds one batch to the running scores of every method (last block): normalised images (B, C, H, W), targets
    bool (B, H, W). `scores` (created when None): {'attention', 'rollout', 'maskcut': SegmentationScores,
    'attention_head': one SegmentationScores per head}."""
    from .attention import grid_shape, patch_features, record_attention

    grid, prefix = grid_shape(model), model.num_prefix_tokens
    num_heads = get_blocks(model, "score_batch")[-1].attn.num_heads
    if scores is None:
        scores = {**{m: SegmentationScores() for m in METHODS},
                  "attention_head": [SegmentationScores() for _ in range(num_heads)]}
    size = tuple(images.shape[-2:])
    attn = record_attention(model, images)  # (B, L, H, N, N), once for every attention method
    for method, head, into in [("attention", "mean", scores["attention"]), ("rollout", "mean", scores["rollout"]),
                               *[("attention", h, scores["attention_head"][h]) for h in range(num_heads)]]:
        into.update(upsample_mask(mass_threshold(attention_scores(attn, grid, prefix, method, head), mass), size),
                    targets)
    cut = maskcut(patch_features(model, images, kind="keys"), grid, tau=tau)[:, 0]  # (B, h, w)
    scores["maskcut"].update(upsample_mask(cut, size), targets)
    return scores


def _as_dicts(scores: dict) -> dict:
    return {k: [s.as_dict() for s in v] if isinstance(v, list) else v.as_dict() for k, v in scores.items()}


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                          mean: tuple[float, ...], std: tuple[float, ...], batch_size: int = 500,
                          mass: float = 0.6, tau: float = 0.15, device: str | torch.device = "cpu"
                          ) -> dict[str, dict]:
    """Scores of every method (last block) over a split: images uint8 (N, C, H, W), targets bool (N, H, W).

    Returns {'attention': …, 'rollout': …, 'maskcut': …, 'attention_head': [one per head]}, each a
    `SegmentationScores.as_dict()`.
    """
    model = model.to(device).eval()
    if len(images) == 0 or len(images) != len(targets):
        raise ValueError(f"need as many ground-truth masks as images (at least one), got {len(images)} images and "
                         f"{len(targets)} masks")
    scores = None
    for start in range(0, len(images), batch_size):
        x = normalize_images(images[start:start + batch_size].to(device), mean, std)  # (B, C, H, W)
        scores = score_batch(model, x, targets[start:start + batch_size], scores, mass=mass, tau=tau)
    return _as_dicts(scores)


def evaluate_fashion_mnist(model: torch.nn.Module, split: str = "test", limit: int = 0,
                           data_dir: str | None = None, **kwargs) -> dict[str, dict]:
    """`evaluate_segmentation` on Fashion-MNIST (`limit` > 0: its first images) against `fashion_mnist_foreground`,
    normalised with the model's pretrained_cfg mean / std (a vitlab run's: the dataset's)."""
    from ..data import load_dataset

    data = load_dataset("fashion_mnist", split, data_dir=data_dir)
    images = data.images[:limit] if limit > 0 else data.images
    cfg = getattr(model, "pretrained_cfg", {})
    size = cfg.get("input_size", (1, 28, 28))
    if tuple(size) != tuple(images.shape[1:]):
        raise ValueError(f"the model takes {tuple(size)} inputs, Fashion-MNIST images are {tuple(images.shape[1:])}: "
                         "evaluate a model trained on Fashion-MNIST at its native 28 × 28")
    return evaluate_segmentation(model, images, fashion_mnist_foreground(images), cfg.get("mean", data.mean),
                                 cfg.get("std", data.std), **kwargs)
