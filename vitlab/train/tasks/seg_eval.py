"""Semantic-segmentation evaluation: a confusion matrix, the mmsegmentation metrics, whole-image and sliding-window
inference.

Metrics follow mmsegmentation (`mmseg.evaluation.metrics.IoUMetric`): from the confusion matrix M (rows = true
class, columns = predicted; pixels whose target is `ignore_index` skipped), per class
    IoU_k = M_kk / (sum_j M_kj + sum_i M_ik - M_kk),   Acc_k = M_kk / sum_j M_kj,
    mIoU = nanmean_k IoU_k,   mAcc = nanmean_k Acc_k,   aAcc = trace(M) / sum(M),
all reported in percent. A class with no ground-truth pixel and no prediction has IoU 0/0 = NaN and is left out of
mIoU; a class with no ground-truth pixel has Acc NaN and is left out of mAcc (so a class that is only predicted
counts as IoU 0 in mIoU but not in mAcc).

Why a hand-written `torch.bincount` rather than torchmetrics (which is not a dependency): one K x K matrix, summed
over batches and ranks, gives all four numbers at once, in mmseg's convention. torchmetrics' definitions differ in
places: before 1.0 (0.10/0.11), `MulticlassJaccardIndex(average='macro')` counted a class absent from target and
prediction as IoU 0 in the mean (torchmetrics issue #1693); since 1.0 (PR #1821) its macro average leaves such a
class out, as mmseg does, but `average=None` reports it as 0 (`zero_division`), not NaN; and
`MulticlassAccuracy(average='macro')` only leaves out classes with tp + fp + fn = 0, so a class that is predicted
but absent from the target counts as accuracy 0, where mmseg's mAcc leaves it out.

Inference: the model maps float (B, C, h, w) images to (B, K, h, w) logits at its input resolution.
`slide_inference` follows mmsegmentation's `EncoderDecoder.slide_inference`."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import DistInfo, all_reduce_sum

__all__ = ["confusion_matrix", "ConfusionMatrix", "segmentation_metrics", "whole_inference", "slide_inference",
           "window_starts", "predict_logits"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """int64 (K, K) counts: entry [t, p] is the number of pixels of true class t predicted as p. `pred` and
    `target` are integer label maps of one shape (e.g. (B, H, W)); pixels whose target is `ignore_index` are
    skipped. Out-of-range labels raise (naming the range found). One `torch.bincount`, on the inputs' device."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape "
                         "(pass label maps; argmax logits over the class dimension first)")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError(f"pred and target must be integer label maps, got {pred.dtype} and {target.dtype}")
    keep = target != ignore_index  # (...) bool
    target_kept = target[keep].long()  # (P,)
    pred_kept = pred[keep].long()  # (P,)
    if target_kept.numel():
        low = torch.minimum(target_kept.min(), pred_kept.min())
        high = torch.maximum(target_kept.max(), pred_kept.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"labels must be in 0..{num_classes - 1} (or target == ignore_index {ignore_index}); "
                             f"found values {int(low)}..{int(high)}")
    counts = torch.bincount(target_kept * num_classes + pred_kept, minlength=num_classes * num_classes)  # (K*K,)
    return counts.reshape(num_classes, num_classes)  # (K, K)


class ConfusionMatrix:
    """Accumulates `confusion_matrix` over batches (and, with `all_reduce`, over ranks)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # (K, K)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch. `pred`: label map (B, H, W), or logits (B, K, H, W) (argmax over dim 1); `target`:
        (B, H, W)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)  # (B, H, W)
        batch = confusion_matrix(pred, target, self.num_classes, self.ignore_index)  # (K, K)
        self.matrix = self.matrix.to(batch.device) + batch

    def all_reduce(self, info: DistInfo) -> "ConfusionMatrix":
        """Sums the matrix over all ranks (in place; a no-op without distributed training). Returns self."""
        self.matrix = all_reduce_sum(self.matrix.to(info.device), info)
        return self

    def reset(self) -> None:
        self.matrix = torch.zeros_like(self.matrix)

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        """`segmentation_metrics` of the accumulated matrix."""
        return segmentation_metrics(self.matrix, class_names)


def segmentation_metrics(matrix: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """mmsegmentation's metrics of a (K, K) confusion matrix (rows true, columns predicted), in percent:
    'miou', 'macc', 'aacc' (floats; NaN when no class qualifies), 'iou' and 'acc' (lists of K floats, NaN where
    undefined, see the module docstring), and 'iou_<name>' per class when `class_names` (K names) are given."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square (K, K), got {tuple(matrix.shape)}")
    if class_names is not None and len(class_names) != matrix.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {matrix.shape[0]}-class matrix")
    counts = matrix.detach().double().cpu()  # (K, K)
    intersect = counts.diag()  # (K,)
    area_label, area_pred = counts.sum(1), counts.sum(0)  # (K,), (K,)
    union = area_label + area_pred - intersect  # (K,)
    iou = intersect / union  # (K,) 0/0 -> NaN
    acc = intersect / area_label  # (K,) 0/0 -> NaN
    total = counts.sum()
    result = {"miou": 100 * _nanmean(iou), "macc": 100 * _nanmean(acc),
              "aacc": 100 * float(intersect.sum() / total) if total > 0 else math.nan,
              "iou": [100 * float(v) for v in iou], "acc": [100 * float(v) for v in acc]}
    for name, value in zip(class_names or [], result["iou"]):
        result[f"iou_{name}"] = value
    return result


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else math.nan


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of them, got {value!r}")
    return pair


def _check_logits(logits: torch.Tensor, images: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    b, _, h, w = images.shape
    if logits.dim() != 4 or logits.shape[0] != b or tuple(logits.shape[2:]) != (h, w):
        raise ValueError(f"the model must map images (B, C, h, w) = {tuple(images.shape)} to logits (B, K, h, w) at "
                         f"the input resolution; got {tuple(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"the model gave {logits.shape[1]} logit channels, expected num_classes={num_classes}")
    return logits


def whole_inference(model: nn.Module, images: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Logits (B, K, H, W) of float images (B, C, H, W) in one model call."""
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    return _check_logits(model(images), images, num_classes)  # (B, K, H, W)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the sliding windows along one axis, as mmsegmentation: grids = max(size - crop + stride - 1,
    0) // stride + 1 windows starting at min(i * stride, size - crop), clamped at 0 (the last window touches the
    border; windows may overlap). A size smaller than the crop gives one window at 0."""
    grids = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, size - crop), 0) for i in range(grids)]


def slide_inference(model: nn.Module, images: torch.Tensor, num_classes: int, crop_size: int | Sequence[int],
                    stride: int | Sequence[int], batch_windows: int = 16) -> torch.Tensor:
    """Sliding-window logits (B, K, H, W) of float images (B, C, H, W): the logits of every window (see
    `window_starts`) are summed and divided by the number of windows covering each pixel.

    Windows of all images are stacked and run through the model `batch_windows` at a time. An image smaller than
    the crop along an axis has one window there, zero-padded at the bottom / right to the crop size for the model,
    and its logits cropped back (mmseg instead feeds the smaller window unpadded; padding keeps the model's input
    size fixed, which a ViT with a fixed position-embedding grid needs)."""
    if images.dim() != 4 or images.shape[-2] < 1 or images.shape[-1] < 1:
        raise ValueError(f"images must be (B, C, H, W) with H, W >= 1, got {tuple(images.shape)}")
    (crop_h, crop_w), (stride_h, stride_w) = _pair(crop_size, "crop_size"), _pair(stride, "stride")
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    b, _, h, w = images.shape
    if b == 0:
        return images.new_zeros((0, num_classes, h, w))
    win_h, win_w = min(crop_h, h), min(crop_w, w)  # every window has this size
    boxes = [(y, x) for y in window_starts(h, crop_h, stride_h) for x in window_starts(w, crop_w, stride_w)]
    jobs = [(i, y, x) for i in range(b) for y, x in boxes]  # every window of every image
    logits = count = None
    for first in range(0, len(jobs), batch_windows):
        chunk = jobs[first:first + batch_windows]
        windows = torch.stack([images[i, :, y:y + win_h, x:x + win_w] for i, y, x in chunk])  # (n, C, wh, ww)
        windows = F.pad(windows, (0, crop_w - win_w, 0, crop_h - win_h))  # (n, C, crop_h, crop_w)
        out = _check_logits(model(windows), windows, num_classes)[:, :, :win_h, :win_w]  # (n, K, wh, ww)
        if logits is None:  # sums in at least float32, also under bf16 / fp16 autocast
            dtype = torch.promote_types(out.dtype, torch.float32)
            logits = out.new_zeros((b, num_classes, h, w), dtype=dtype)  # (B, K, H, W)
            count = out.new_zeros((1, 1, h, w), dtype=dtype)  # (1, 1, H, W)
        for (i, y, x), window_logits in zip(chunk, out):
            logits[i, :, y:y + win_h, x:x + win_w] += window_logits  # (K, wh, ww)
    for y, x in boxes:
        count[:, :, y:y + win_h, x:x + win_w] += 1
    return logits / count  # (B, K, H, W); every pixel is covered by >= 1 window


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mode: str = "whole", num_classes: int | None = None,
                   crop_size: int | Sequence[int] | None = None, stride: int | Sequence[int] | None = None,
                   out_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Logits (B, K, H, W) by `mode` 'whole' or 'slide' (which needs num_classes, crop_size and stride), then, when
    `out_size` (h, w) is given, bilinearly resized to it (align_corners=False): mmseg's way of scoring at the
    annotation's resolution. Runs without gradients; put the model in eval mode first."""
    if mode == "whole":
        logits = whole_inference(model, images, num_classes)
    elif mode == "slide":
        if num_classes is None or crop_size is None or stride is None:
            raise ValueError("mode='slide' needs num_classes, crop_size and stride, got "
                             f"num_classes={num_classes}, crop_size={crop_size}, stride={stride}")
        logits = slide_inference(model, images, num_classes, crop_size, stride)
    else:
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if out_size is not None and tuple(logits.shape[-2:]) != _pair(out_size, "out_size"):
        logits = F.interpolate(logits, size=_pair(out_size, "out_size"), mode="bilinear", align_corners=False)
    return logits  # (B, K, H, W) or (B, K, *out_size)
