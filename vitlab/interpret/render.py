"""Pictures of what a model attends to and segments: inputs from image files or dataset items, preprocessed with the
model's `pretrained_cfg`, and PNG figures (`vitlab attention`, `vitlab segment`).

Maps live on the patch grid; for display, attention maps are upsampled bilinearly and scaled to [0, 1] per panel
(the colour shows where a head looks, the title its peak weight), masks and PCA colours by nearest neighbour.
matplotlib drives an off-screen `Figure` (Agg), never pyplot's global state.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import get_blocks
from .attention import attention_rollout, cls_attention, grid_shape, patch_features, pca_rgb, record_attention
from .segment import _as_dicts, attention_scores, mass_threshold, maskcut, score_batch, upsample_mask
from .weights import _save

__all__ = ["Inputs", "load_inputs", "plot_attention", "plot_segmentation", "save_mask", "evaluate_mask_files"]

_ITEM = re.compile(r"^(?P<dataset>[a-z0-9_]+):(?:(?P<split>[a-z]+):)?(?P<index>\d+)$")


@dataclass
class Inputs:
    """Model-ready images and what to show: `images` float (B, C, S, S) normalised with the model's mean / std;
    `display` uint8 (B, S, S, C), the same crop before normalisation; `names` one file-name stem per image."""
    images: torch.Tensor
    display: torch.Tensor
    names: list[str]


def _preprocess(image, cfg: dict) -> np.ndarray:
    """Pillow image → uint8 (S, S, C): resize the short side to S / crop_pct, centre-crop S × S (timm's eval
    transform) with the cfg's interpolation, in the model's channels (L for 1, RGB for 3)."""
    from PIL import Image

    from ..data.decode import center_crop_box

    channels, size = cfg["input_size"][0], cfg["input_size"][-1]
    if channels not in (1, 3):
        raise ValueError(f"cannot show images to a model with {channels} input channels (expected 1 or 3)")
    image = image.convert("L" if channels == 1 else "RGB")
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}.get(cfg.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)
    box = center_crop_box(*image.size, size, cfg.get("crop_pct", 1.0))
    array = np.asarray(image.resize((size, size), resample, box=box))
    return array.reshape(size, size, channels)


def _dataset_item(spec: re.Match, data_dir: str | os.PathLike | None):
    from PIL import Image

    from ..data import load_dataset

    name, split, index = spec["dataset"], spec["split"] or "test", int(spec["index"])
    data = load_dataset(name, split, data_dir=data_dir)
    if index >= len(data):
        raise ValueError(f"{spec.string}: index {index} out of range, {name} {split} has {len(data)} images")
    pixels = data[index][0].permute(1, 2, 0).numpy()  # (H, W, C) uint8
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels), f"{name}_{split}_{index}"


def load_inputs(specs: Sequence[str], cfg: dict, data_dir: str | os.PathLike | None = None) -> Inputs:
    """Images from files (anything Pillow decodes) or dataset items written `DATASET[:SPLIT]:INDEX` (e.g.
    `fashion_mnist:test:0`; split defaults to test), preprocessed for the model whose `pretrained_cfg` is `cfg`."""
    from PIL import Image, UnidentifiedImageError

    if not specs:
        raise ValueError("no images given: pass image files or dataset items such as fashion_mnist:test:0")
    arrays, names = [], []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            try:
                with Image.open(path) as image:
                    arrays.append(_preprocess(image, cfg))
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"{path}: not an image Pillow can read ({err})") from None
            names.append(path.stem)
        elif (match := _ITEM.match(spec)) is not None:
            image, name = _dataset_item(match, data_dir)
            arrays.append(_preprocess(image, cfg))
            names.append(name)
        else:
            raise FileNotFoundError(f"{spec}: no such image file, and not a dataset item DATASET[:SPLIT]:INDEX")
    display = torch.from_numpy(np.stack(arrays))  # (B, S, S, C) uint8
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1)
    if mean.shape[1] != display.shape[-1]:
        raise ValueError(f"pretrained_cfg mean has {mean.shape[1]} channels, the model takes {display.shape[-1]}")
    images = (display.permute(0, 3, 1, 2).float() / 255 - mean) / std  # (B, C, S, S)
    return Inputs(images, display, _unique(names))


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _smooth(grid_map: torch.Tensor, size: int) -> np.ndarray:
    """(h, w) → (size, size) bilinear, scaled to [0, 1]."""
    up = F.interpolate(grid_map[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    return (up / up.max().clamp_min(1e-12)).numpy()


def _blocky(grid_map: torch.Tensor, size: int) -> np.ndarray:
    """(h, w[, c]) → (size, size[, c]) nearest neighbour."""
    x = grid_map.float()
    x = x[..., None] if x.ndim == 2 else x
    up = F.interpolate(x.permute(2, 0, 1)[None], size=(size, size), mode="nearest")[0].permute(1, 2, 0)
    return up.squeeze(-1).numpy()


def _show(ax, display: torch.Tensor, title: str = "", heat: np.ndarray | None = None, rgb: np.ndarray | None = None):
    image = display.numpy()
    gray = image[..., 0] if image.shape[-1] == 1 else None
    if rgb is not None:
        ax.imshow(rgb, interpolation="nearest")
    else:
        ax.imshow(gray if gray is not None else image, cmap="gray" if gray is not None else None, vmin=0, vmax=255)
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
    ax.set_title(title, fontsize=6.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _select(n: int, chosen: Sequence[int] | None, what: str) -> list[int]:
    if chosen is None:
        return list(range(n))
    out = []
    for i in chosen:
        if not -n <= i < n:
            raise ValueError(f"{what} {i} out of range: the model has {n}")
        out.append(i % n)
    return out


@torch.no_grad()
def plot_attention(model: nn.Module, inputs: Inputs, out_dir: str | os.PathLike, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None, pca_layer: int = -1, dpi: int = 110) -> list[Path]:
    """One PNG per image, `<out_dir>/<name>_attention.png`: the class token's attention for each chosen layer (rows)
    and head (columns, plus their mean), then the input, the attention rollout and the PCA of the patch tokens of
    block `pca_layer` as RGB (components fitted over all given images, so colours compare across them)."""
    from matplotlib.figure import Figure

    grid, prefix = grid_shape(model), model.num_prefix_tokens
    attn = record_attention(model, inputs.images)  # (B, L, H, N, N)
    maps = cls_attention(attn, grid, prefix)  # (B, L, H, h, w)
    rollout = attention_rollout(attn, grid, prefix)  # (B, h, w)
    pca = pca_rgb(patch_features(model, inputs.images, layer=pca_layer), grid)  # (B, h, w, 3)
    pca_block = pca_layer % len(get_blocks(model, "plot_attention"))
    rows, cols = _select(maps.shape[1], layers, "layer"), _select(maps.shape[2], heads, "head")
    size = inputs.display.shape[1]
    paths = []
    for b, name in enumerate(inputs.names):
        ncols = max(len(cols) + 1, 3)
        fig = Figure(figsize=(1.25 * ncols, 1.3 * (len(rows) + 1) + 0.4), layout="constrained")
        axes = fig.subplots(len(rows) + 1, ncols, squeeze=False)
        for r, layer in enumerate(rows):
            for c, head in enumerate(cols):
                m = maps[b, layer, head]
                _show(axes[r, c], inputs.display[b], f"layer {layer} head {head}\nmax {m.max():.2f}",
                      heat=_smooth(m, size))
            mean = maps[b, layer].mean(dim=0)
            _show(axes[r, len(cols)], inputs.display[b], f"layer {layer} mean\nmax {mean.max():.2f}",
                  heat=_smooth(mean, size))
            for c in range(len(cols) + 1, ncols):
                axes[r, c].axis("off")
        last = axes[len(rows)]
        _show(last[0], inputs.display[b], "input")
        _show(last[1], inputs.display[b], "attention rollout", heat=_smooth(rollout[b], size))
        _show(last[2], inputs.display[b], f"PCA of block {pca_block} tokens",
              rgb=_blocky(pca[b], size))
        for c in range(3, ncols):
            last[c].axis("off")
        architecture = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        fig.suptitle(f"{architecture}: class-token attention, {name}", fontsize=8)
        paths.append(_save(fig, Path(out_dir) / f"{name}_attention.png", dpi))
    return paths


def save_mask(mask: torch.Tensor, path: str | os.PathLike) -> Path:
    """A boolean (H, W) mask as an 8-bit PNG (255 foreground, 0 background)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.numpy().astype(np.uint8) * 255, mode="L").save(path)
    return path


@torch.no_grad()
def plot_segmentation(model: nn.Module, inputs: Inputs, out_dir: str | os.PathLike, mass: float = 0.6,
                      tau: float = 0.15, num_masks: int = 1, layer: int = -1, save_masks: bool = False,
                      dpi: int = 110) -> list[Path]:
    """One PNG per image, `<out_dir>/<name>_segment.png`: the input, the class-token attention (heads averaged) and
    its mass-thresholded mask, the rollout mask, and MaskCut's masks (one colour each). With `save_masks`, also
    `<name>_mask_attention.png` and `<name>_mask_maskcut.png` (8-bit, 255 = foreground)."""
    from matplotlib.figure import Figure

    grid, prefix = grid_shape(model), model.num_prefix_tokens
    size = inputs.display.shape[1]
    attn = record_attention(model, inputs.images)
    scores = attention_scores(attn, grid, prefix, "attention", "mean", layer)  # (B, h, w)
    attention_mask = upsample_mask(mass_threshold(scores, mass), (size, size))  # (B, S, S)
    rollout_mask = upsample_mask(mass_threshold(attention_scores(attn, grid, prefix, "rollout"), mass), (size, size))
    cuts = upsample_mask(maskcut(patch_features(model, inputs.images, layer=layer, kind="keys"), grid,
                                 num_masks=num_masks, tau=tau), (size, size))  # (B, M, S, S)
    colours = np.array([[1.0, 0.2, 0.2], [0.2, 0.6, 1.0], [0.2, 0.9, 0.3], [1.0, 0.8, 0.1], [0.8, 0.3, 1.0]])
    paths = []
    for b, name in enumerate(inputs.names):
        fig = Figure(figsize=(6.4, 1.6), layout="constrained")
        axes = fig.subplots(1, 5)
        base = inputs.display[b].float().numpy() / 255
        base = np.repeat(base, 3, axis=-1) if base.shape[-1] == 1 else base
        _show(axes[0], inputs.display[b], "input")
        _show(axes[1], inputs.display[b], "class-token attention", heat=_smooth(scores[b], size))
        for ax, mask, title in ((axes[2], attention_mask[b], f"attention mask ({mass:.0%} mass)"),
                                (axes[3], rollout_mask[b], "rollout mask")):
            _show(ax, inputs.display[b], title, rgb=_tint(base, [mask.numpy()], colours))
        _show(axes[4], inputs.display[b], f"MaskCut (τ={tau})", rgb=_tint(base, list(cuts[b].numpy()), colours))
        fig.suptitle(f"{getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)}: "
                     f"unsupervised masks, {name}", fontsize=8)
        paths.append(_save(fig, Path(out_dir) / f"{name}_segment.png", dpi))
        if save_masks:
            save_mask(attention_mask[b], Path(out_dir) / f"{name}_mask_attention.png")
            save_mask(cuts[b].any(dim=0), Path(out_dir) / f"{name}_mask_maskcut.png")
    return paths


def _tint(base: np.ndarray, masks: list[np.ndarray], colours: np.ndarray) -> np.ndarray:
    """The image (S, S, 3) in [0, 1] with each mask blended in its colour (background dimmed)."""
    out = base * 0.45
    for i, mask in enumerate(masks):
        colour = colours[i % len(colours)]
        out = np.where(mask[..., None], 0.45 * base + 0.55 * colour, out)
    return np.clip(out, 0, 1)


def evaluate_mask_files(model: nn.Module, inputs: Inputs, masks_dir: str | os.PathLike,
                        mass: float = 0.6, tau: float = 0.15) -> dict:
    """Scores every method on the given images against ground-truth mask files `<masks_dir>/<name>.png` (`name` as
    in `inputs.names`; nonzero pixels are foreground), cropped like the images (nearest neighbour)."""
    from PIL import Image, UnidentifiedImageError

    cfg = {**model.pretrained_cfg, "input_size": (1, *model.pretrained_cfg["input_size"][1:]),
           "interpolation": "nearest"}
    targets = []
    for name in inputs.names:
        path = Path(masks_dir) / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"no ground-truth mask {path} for image {name!r} (masks are named <image stem>.png)")
        try:
            with Image.open(path) as mask:
                targets.append(torch.from_numpy(_preprocess(mask, cfg)[..., 0] > 0))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path}: not an image Pillow can read ({err})") from None
    return _as_dicts(score_batch(model, inputs.images, torch.stack(targets), mass=mass, tau=tau))
