"""The semantic-segmentation study's report: the reference a trained head must beat, computed from the test scenes
themselves (no training): predicting background everywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.segmentation import load_segmentation_dataset
from ..train.tasks.seg_eval import confusion_matrix, segmentation_metrics
from .runner import Study

__all__ = ["background_baseline", "dense_report"]


def background_baseline(dataset: str = "fashion_mnist_scenes", split: str = "test",
                        data_dir: str | None = None) -> dict[str, float]:
    """mIoU / mean accuracy / all-pixel accuracy (%) of predicting class 0 (background) for every pixel of a split,
    through the same confusion matrix and metrics as the trained runs."""
    data = load_segmentation_dataset(dataset, split, data_dir=data_dir)
    masks = data.masks.long()  # (N, S, S)
    matrix = confusion_matrix(torch.zeros_like(masks), masks, data.num_classes, data.ignore_index)
    return {k: v for k, v in segmentation_metrics(matrix).items() if k in ("miou", "macc", "aacc")}


def dense_report(study: Study, records: list[dict[str, Any]], root: Path, figures: Path) -> str:
    cell = study.cells[0].config
    base = background_baseline(cell.dataset, cell.eval_split, cell.data_dir)
    return (f"All-background reference on the same {cell.eval_split} scenes (every pixel predicted background, "
            f"scored by the same confusion matrix): mIoU {base['miou']:.2f}%, mean accuracy {base['macc']:.2f}%, "
            f"all-pixel accuracy {base['aacc']:.2f}%.")
