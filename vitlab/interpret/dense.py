"""`vitlab segment --head RUN`: what a trained semantic-segmentation run predicts, as coloured overlays with a
legend (PNG at 300 dpi, or PDF / SVG: vitlab's shared figure style), for image files or dataset items (with their
ground truth beside the prediction).

A run is rebuilt from its directory: `config.json` (backbone, head) and `segmentation.json` (class names, palette,
mean / std, input size) written by the training run; the weights load strictly. Image files are resized so their
short side is the training crop size (aspect ratio kept), then predicted as the run evaluates (whole image, or
sliding windows); saved class masks are resized (nearest neighbour) to the image's own resolution (its original
size for a file, its mask's size for a dataset item), so they match the input pixel for pixel.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data import create_transform, load_image, resolve_data_config
from ..data.segmentation import is_segmentation_dataset, load_segmentation_dataset
from ..models import create_model
from ..models.segmentation import SegmentationModel
from ..train.tasks.seg_eval import predict_logits
from .._figures import figure_format, new_figure, save_figure, styled

__all__ = ["SegmentationRun", "load_segmentation_run", "load_segmentation_inputs", "plot_predictions"]

_ITEM = re.compile(r"^(?P<dataset>[a-z0-9_]+):(?:(?P<split>[a-z]+):)?(?P<index>\d+)$")


@dataclass
class SegmentationRun:
    model: SegmentationModel
    meta: dict[str, Any]  # classes, palette, mean, std, in_chans, image_size, ignore_index
    eval_mode: str
    eval_stride: int
    label: str


def load_segmentation_run(run: str | os.PathLike) -> SegmentationRun:
    """The model of a segmentation run directory (its best/, else last/ weights; or a checkpoint inside one)."""
    from ..train import config_from_dict
    from ..train.checkpoint import resolve_checkpoint

    weights, run_dir = resolve_checkpoint(run)
    config_file, meta_file = run_dir / "config.json", run_dir / "segmentation.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: --head needs a vitlab segmentation run directory")
    config = config_from_dict(json.loads(config_file.read_text())["config"])
    if config.head is None or not meta_file.is_file():
        raise ValueError(f"{run_dir} is not a segmentation run (no head in its config.json or no segmentation.json); "
                         "train one with e.g. `vitlab train fashion_scenes_crate_alpha_upernet`")
    meta = json.loads(meta_file.read_text())
    model = create_model(checkpoint_path=weights)  # backbone + head, described by the weights (or the run's files)
    return SegmentationRun(model.eval(), meta, config.eval_mode, config.eval_stride,
                           f"{run_dir.parent.name}/{run_dir.name} ({weights.parent.name}/)")


def _file_image(path: Path, meta: dict[str, Any]) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 (C, H, W) with the short side at the run's crop size (bilinear, aspect kept) and the file's (H0, W0)."""
    config = resolve_data_config(input_size=(meta["in_chans"], meta["image_size"], meta["image_size"]),
                                 mean=meta["mean"], std=meta["std"], interpolation="bilinear", crop_pct=1.0,
                                 crop_mode="short_side")
    image = load_image(path)
    return create_transform(config, normalize=False)(image), (image.size[1], image.size[0])


def load_segmentation_inputs(specs: Sequence[str], meta: dict[str, Any], data_dir: str | os.PathLike | None = None
                             ) -> list[tuple[str, torch.Tensor, torch.Tensor | None, tuple[int, int]]]:
    """(name, uint8 image (C, H, W), ground-truth mask (H0, W0) or None, the source's (H0, W0)) per spec: an image
    file (resized for the model; H0, W0 its original size), or a segmentation dataset item `DATASET[:SPLIT]:INDEX`
    (e.g. `fashion_mnist_scenes:test:3`; split defaults to test)."""
    if not specs:
        raise ValueError("no images given: pass image files or items such as fashion_mnist_scenes:test:0")
    out = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            image, original = _file_image(path, meta)
            out.append((path.stem, image, None, original))
        elif (match := _ITEM.match(spec)) is not None and is_segmentation_dataset(match["dataset"]):
            name, split, index = match["dataset"], match["split"] or "test", int(match["index"])
            data = load_segmentation_dataset(name, split, data_dir=data_dir)
            if index >= len(data):
                raise ValueError(f"{spec}: index {index} out of range, {name} {split} has {len(data)} images")
            image, mask = data[index]
            mask = torch.as_tensor(mask)
            out.append((f"{name}_{split}_{index}", image, mask, tuple(mask.shape[-2:])))
        else:
            raise FileNotFoundError(f"{spec}: no such image file, and not a segmentation dataset item "
                                    "DATASET[:SPLIT]:INDEX")
    return out


@torch.no_grad()
def predict_mask(run: SegmentationRun, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Class index per pixel (H, W) int64 for a uint8 image (C, H, W), evaluated as the run evaluates."""
    meta = run.meta
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1) * 255
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1) * 255
    x = (image[None].float() - mean) / std  # (1, C, H, W)
    logits = predict_logits(run.model, x, mode=run.eval_mode, num_classes=len(meta["classes"]),
                            crop_size=meta["image_size"], stride=run.eval_stride,
                            out_size=out_size or tuple(image.shape[-2:]))
    return logits.argmax(1)[0]  # (H, W)


def _colour(mask: np.ndarray, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    rgb = palette[np.clip(mask, 0, len(palette) - 1)]  # (H, W, 3) in [0, 1]
    rgb[mask == ignore_index] = 1.0  # unlabelled pixels white
    return rgb


@styled
def plot_predictions(run: SegmentationRun, inputs, out_dir: str | os.PathLike, alpha: float = 0.55,
                     save_masks: bool = False, dpi: int | None = None, fmt: str = "png") -> list[Path]:
    """One figure per input, `<out_dir>/<name>_semantic.<fmt>` (png, pdf or svg): the image, the predicted classes
    over it, the ground truth (dataset items), and a legend of the classes present beside the panels. `save_masks`:
    also `<name>_classes.png`, the predicted class index per pixel (8-bit) at the input's own resolution."""
    from matplotlib.patches import Patch
    from PIL import Image

    meta = run.meta
    palette = np.asarray(meta["palette"], dtype=np.float64) / 255
    paths = []
    for name, image, truth, original in inputs:
        figure_path = Path(out_dir) / f"{name}_semantic.{fmt.lstrip('.').lower()}"
        figure_format(figure_path)
        out_size = tuple(truth.shape) if truth is not None else None
        pred = predict_mask(run, image, out_size).numpy()  # (H0, W0)
        shown = torch.nn.functional.interpolate(image[None].float(), size=pred.shape, mode="bilinear",
                                                align_corners=False)[0]  # the image at the mask's size
        base = shown.permute(1, 2, 0).numpy() / 255
        base = np.repeat(base, 3, axis=-1) if base.shape[-1] == 1 else base
        panels = [("input", base), ("prediction", (1 - alpha) * base + alpha * _colour(pred, palette, 255))]
        present = set(np.unique(pred).tolist())
        if truth is not None:
            t = truth.numpy().astype(np.int64)
            panels.append(("ground truth", (1 - alpha) * base + alpha * _colour(t, palette, meta["ignore_index"])))
            present |= set(np.unique(t).tolist()) - {meta["ignore_index"]}
        fig = new_figure((2.2 * len(panels) + 1.8, 2.4))
        for ax, (title, rgb) in zip(fig.subplots(1, len(panels)), panels):
            ax.imshow(np.clip(rgb, 0, 1), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        handles = [Patch(color=palette[c], label=meta["classes"][c]) for c in sorted(present)]
        fig.legend(handles=handles, loc="outside right center", frameon=False)  # beside the panels, off the data
        fig.suptitle(f"{run.label}: {name}", fontsize=8)
        paths.append(save_figure(fig, figure_path, dpi))
        if save_masks:
            classes = Image.fromarray(pred.astype(np.uint8))  # class per pixel at the model's resolution
            if classes.size != (original[1], original[0]):
                classes = classes.resize((original[1], original[0]), Image.Resampling.NEAREST)
            classes.save(Path(out_dir) / f"{name}_classes.png")
    return paths
