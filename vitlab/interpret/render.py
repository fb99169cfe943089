"""Pictures of what a model attends to and segments: inputs from image files or dataset items, preprocessed with the
model's `pretrained_cfg`, and figures (`vitlab attention`, `vitlab segment`) in vitlab's shared style
(`vitlab._figures`: PNG at 300 dpi, or PDF / SVG with `fmt`; colour bars where colour encodes a value).

Maps live on the patch grid; for display, attention maps are upsampled bilinearly and scaled to [0, 1] per panel
(the colour shows where a head looks, the title its peak weight), masks and PCA colours by nearest neighbour.
matplotlib drives an off-screen `Figure` (Agg), never pyplot's global state. Saved masks (`save_masks`) are mapped
back to each input image's own resolution (the crop the model saw, resized back; outside it: background).
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

from ..data import create_transform, load_image, normalize_images, resolve_data_config
from ..data.decode import center_crop_box
from ..models import get_blocks
from .attention import attention_rollout, cls_attention, grid_shape, patch_features, pca_rgb, record_attention
from .segment import _as_dicts, attention_scores, mass_threshold, maskcut, score_batch, upsample_mask
from .._figures import (figure_format, new_figure, save_figure, show_panel, smooth_map, styled, tint_masks,
                        value_colorbar)

__all__ = ["Inputs", "load_inputs", "plot_attention", "plot_segmentation", "save_mask", "evaluate_mask_files"]

_ITEM = re.compile(r"^(?P<dataset>[a-z0-9_]+):(?:(?P<split>[a-z]+):)?(?P<index>\d+)$")


@dataclass
class Inputs:
    """Model-ready images and what to show: `images` float (B, C, S, S) normalised with the model's mean / std;
    `display` uint8 (B, S, S, C), the same crop before normalisation; `names` one file-name stem per image;
    `sources` per image (width, height, crop box (left, top, right, bottom) in its pixels), or None when unknown."""
    images: torch.Tensor
    display: torch.Tensor
    names: list[str]
    sources: list[tuple[int, int, tuple[float, float, float, float]]] | None = None


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
    `fashion_mnist:test:0`; split defaults to test), prepared for the model whose `pretrained_cfg` is `cfg`
    (`vitlab.data.create_transform` of `resolve_data_config(cfg)`: by default timm's centre crop, resampled once)."""
    if not specs:
        raise ValueError("no images given: pass image files or dataset items such as fashion_mnist:test:0")
    config = resolve_data_config(cfg, crop_mode="center")  # the figures map masks back through the centre box
    transform = create_transform(config, normalize=False)
    arrays, names, sources = [], [], []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            image, name = load_image(path), path.stem
        elif (match := _ITEM.match(spec)) is not None:
            image, name = _dataset_item(match, data_dir)
        else:
            raise FileNotFoundError(f"{spec}: no such image file, and not a dataset item DATASET[:SPLIT]:INDEX")
        arrays.append(transform(image).permute(1, 2, 0))  # (S, S, C) uint8
        names.append(name)
        box = center_crop_box(*image.size, config.input_size[-1], config.crop_pct)  # what the centre crop keeps
        sources.append((image.size[0], image.size[1], box))
    display = torch.stack(arrays)  # (B, S, S, C) uint8
    images = normalize_images(display.permute(0, 3, 1, 2), config.mean, config.std)  # (B, C, S, S)
    return Inputs(images, display, _unique(names), sources)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _blocky(grid_map: torch.Tensor, size: int) -> np.ndarray:
    """(h, w[, c]) → (size, size[, c]) nearest neighbour."""
    x = grid_map.float()
    x = x[..., None] if x.ndim == 2 else x
    up = F.interpolate(x.permute(2, 0, 1)[None], size=(size, size), mode="nearest")[0].permute(1, 2, 0)
    return up.squeeze(-1).numpy()


def _select(n: int, chosen: Sequence[int] | None, what: str) -> list[int]:
    if chosen is None:
        return list(range(n))
    out = []
    for i in chosen:
        if not -n <= i < n:
            raise ValueError(f"{what} {i} out of range: the model has {n}")
        out.append(i % n)
    return out


_HEAT_LABEL = "attention (÷ panel max)"


@styled
@torch.no_grad()
def plot_attention(model: nn.Module, inputs: Inputs, out_dir: str | os.PathLike, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None, pca_layer: int = -1, dpi: int | None = None,
                   fmt: str = "png") -> list[Path]:
    """One figure per image, `<out_dir>/<name>_attention.<fmt>` (png, pdf or svg): the class token's attention for
    each chosen layer (rows) and head (columns, plus their mean), then the input, the attention rollout and the PCA
    of the patch tokens of block `pca_layer` as RGB (components fitted over all given images, so colours compare
    across them). A colour bar reads the heat maps (each scaled to its panel's maximum, written in its title)."""
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
        fig = new_figure((1.25 * ncols + 0.6, 1.3 * (len(rows) + 1) + 0.4))
        axes = fig.subplots(len(rows) + 1, ncols, squeeze=False)
        for r, layer in enumerate(rows):
            for c, head in enumerate(cols):
                m = maps[b, layer, head]
                show_panel(axes[r, c], inputs.display[b], f"layer {layer} head {head}\nmax {m.max():.2f}",
                           heat=smooth_map(m, size))
            mean = maps[b, layer].mean(dim=0)
            show_panel(axes[r, len(cols)], inputs.display[b], f"layer {layer} mean\nmax {mean.max():.2f}",
                       heat=smooth_map(mean, size))
            for c in range(len(cols) + 1, ncols):
                axes[r, c].axis("off")
        last = axes[len(rows)]
        show_panel(last[0], inputs.display[b], "input")
        show_panel(last[1], inputs.display[b], "attention rollout", heat=smooth_map(rollout[b], size))
        show_panel(last[2], inputs.display[b], f"PCA of block {pca_block} tokens", rgb=_blocky(pca[b], size))
        for c in range(3, ncols):
            last[c].axis("off")
        architecture = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        value_colorbar(fig, axes, "inferno", 0, 1, _HEAT_LABEL)
        fig.suptitle(f"{architecture}: class-token attention, {name}", fontsize=8)
        paths.append(save_figure(fig, _figure_path(out_dir, f"{name}_attention", fmt), dpi))
    return paths


def _figure_path(out_dir: str | os.PathLike, stem: str, fmt: str) -> Path:
    path = Path(out_dir) / f"{stem}.{fmt.lstrip('.').lower()}"
    figure_format(path)  # an unknown format is an error before anything is drawn
    return path


def to_source_resolution(mask: torch.Tensor, source: tuple[int, int, tuple[float, float, float, float]]
                         ) -> torch.Tensor:
    """A boolean (S, S) mask on the model's crop → (height, width) of the source image: the crop box resized by
    nearest neighbour and pasted at its place; pixels outside the crop are background."""
    from PIL import Image

    width, height, (left, top, right, bottom) = source
    left, top, right, bottom = (round(v) for v in (left, top, right, bottom))
    resized = Image.fromarray(mask.numpy().astype(np.uint8) * 255, mode="L").resize(
        (max(1, right - left), max(1, bottom - top)), Image.Resampling.NEAREST)
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(resized, (left, top))
    return torch.from_numpy(np.asarray(canvas) > 0)  # (height, width)


def save_mask(mask: torch.Tensor, path: str | os.PathLike,
              source: tuple[int, int, tuple[float, float, float, float]] | None = None) -> Path:
    """A boolean (H, W) mask as an 8-bit PNG (255 foreground, 0 background); with `source` (an `Inputs.sources`
    entry) at that image's resolution (`to_source_resolution`)."""
    from PIL import Image

    if source is not None:
        mask = to_source_resolution(mask, source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.numpy().astype(np.uint8) * 255, mode="L").save(path)
    return path


@styled
@torch.no_grad()
def plot_segmentation(model: nn.Module, inputs: Inputs, out_dir: str | os.PathLike, mass: float = 0.6,
                      tau: float = 0.15, num_masks: int = 1, layer: int = -1, save_masks: bool = False,
                      dpi: int | None = None, fmt: str = "png") -> list[Path]:
    """One figure per image, `<out_dir>/<name>_segment.<fmt>`: the input, the class-token attention (heads
    averaged, with a colour bar) and its mass-thresholded mask, the rollout mask, and MaskCut's masks (one colour
    each). With `save_masks`, also one 8-bit PNG per mask (255 = foreground) at the input image's own resolution:
    `<name>_mask_attention.png`, `<name>_mask_rollout.png` and `<name>_mask_maskcut<k>.png` for k = 0 … M − 1 (the
    masks `save_masks` returns are not in the returned figure list)."""
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
        fig = new_figure((7.2, 1.75))
        axes = fig.subplots(1, 5)
        base = inputs.display[b].float().numpy() / 255
        base = np.repeat(base, 3, axis=-1) if base.shape[-1] == 1 else base
        show_panel(axes[0], inputs.display[b], "input")
        show_panel(axes[1], inputs.display[b], "class-token attention", heat=smooth_map(scores[b], size))
        for ax, mask, title in ((axes[2], attention_mask[b], f"attention mask ({mass:.0%} mass)"),
                                (axes[3], rollout_mask[b], "rollout mask")):
            show_panel(ax, inputs.display[b], title, rgb=tint_masks(base, [mask.numpy()], colours))
        show_panel(axes[4], inputs.display[b], f"MaskCut (τ={tau})",
                   rgb=tint_masks(base, list(cuts[b].numpy()), colours))
        fig.suptitle(f"{getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)}: "
                     f"unsupervised masks, {name}", fontsize=8)
        value_colorbar(fig, axes[1], "inferno", 0, 1, "÷ max", ticks=(0, 0.5, 1))
        paths.append(save_figure(fig, _figure_path(out_dir, f"{name}_segment", fmt), dpi))
        if save_masks:
            _save_masks(inputs, b, Path(out_dir), {"attention": attention_mask[b], "rollout": rollout_mask[b],
                                                   **{f"maskcut{k}": cut for k, cut in enumerate(cuts[b])}})
    return paths


def _save_masks(inputs: Inputs, b: int, out_dir: Path, masks: dict[str, torch.Tensor]) -> None:
    source = inputs.sources[b] if inputs.sources is not None else None
    for kind, mask in masks.items():
        save_mask(mask, out_dir / f"{inputs.names[b]}_mask_{kind}.png", source)


def evaluate_mask_files(model: nn.Module, inputs: Inputs, masks_dir: str | os.PathLike,
                        mass: float = 0.6, tau: float = 0.15) -> dict:
    """Scores every method on the given images against ground-truth mask files `<masks_dir>/<name>.png` (`name` as
    in `inputs.names`; nonzero pixels are foreground), cropped like the images (nearest neighbour)."""
    # the masks get the images' crop, through nearest neighbour and unnormalised (mean 0, std 1: not used)
    cfg = model.pretrained_cfg
    transform = create_transform(resolve_data_config(cfg, in_chans=1, interpolation="nearest", mean=(0.0,),
                                                     std=(1.0,)), normalize=False)
    targets = []
    for name in inputs.names:
        path = Path(masks_dir) / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"no ground-truth mask {path} for image {name!r} (masks are named <image stem>.png)")
        targets.append(transform(path)[0] > 0)  # (S, S)
    return _as_dicts(score_batch(model, inputs.images, torch.stack(targets), mass=mass, tau=tau))
