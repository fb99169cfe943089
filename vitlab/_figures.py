"""The one figure style of vitlab: every figure writer (learning curves, attention maps, masks, weight products,
segmentation overlays) draws under `styled` and writes through `save_figure`.

- The format follows the file name: `.pdf` and `.svg` are real vector files (text stays text; images inside them,
  such as heatmaps, keep their native pixels), `.png` is a raster at `dpi` (default `PNG_DPI`, 300).
- Every file is written with `bbox_inches="tight"`, so titles, outside legends and colour bars are never cut off.
- Legends go outside the axes (`legend_below`), never over the data; colour encoding a value gets a colour bar
  (`value_colorbar`).

matplotlib is driven off-screen (`matplotlib.figure.Figure`, Agg), never through pyplot's global state.
"""
from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["STYLE", "PNG_DPI", "FORMATS", "styled", "new_figure", "save_figure", "legend_below", "value_colorbar",
           "figure_format", "show_panel", "smooth_map", "tint_masks"]

PNG_DPI = 300
"""Raster resolution of every PNG unless a caller asks otherwise (print quality at the figure's size)."""

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}

STYLE: dict[str, Any] = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 9, "axes.grid": False, "grid.alpha": 0.3, "lines.linewidth": 1.4,
    "lines.markersize": 3, "savefig.facecolor": "white",
    "pdf.fonttype": 42, "svg.fonttype": "none",  # editable text in vector files (TrueType in PDF, <text> in SVG)
    "image.interpolation": "nearest",
}


def styled(fn: Callable) -> Callable:
    """Runs a figure writer under `STYLE` (a temporary rc context: matplotlib's defaults are restored after)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def new_figure(figsize: tuple[float, float]):
    """An off-screen Figure with constrained layout (titles, colour bars and outside legends get room)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def figure_format(path: str | os.PathLike) -> str:
    """'png', 'pdf' or 'svg' from the file name; anything else is an error naming the choices."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: figures are written as {', '.join(FORMATS)} (chosen by the file name's "
                         f"suffix), not {suffix or 'a name without a suffix'!r}")
    return FORMATS[suffix]


def save_figure(fig, path: str | os.PathLike, dpi: int | None = None, palette: bool = False) -> Path:
    """Writes `fig` in the format its suffix names (`figure_format`), cropped tight to what is drawn.
    PNG: at `dpi` (default `PNG_DPI`); `palette=True` stores it with a 256-colour palette (noise heatmaps compress
    badly as RGBA). PDF / SVG: vector. Returns the path."""
    path = Path(path)
    kind = figure_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = dict(format=kind, bbox_inches="tight", pad_inches=0.03, facecolor="white",
                   metadata={"Software": None} if kind == "png" else None)
    if kind != "png":
        fig.savefig(path, **{k: v for k, v in options.items() if k != "metadata"})
        return path
    if not palette:
        fig.savefig(path, dpi=dpi or PNG_DPI, **options)
        return path
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi or PNG_DPI, **options)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)
    return path


def legend_below(fig, handles: Sequence | None = None, labels: Sequence[str] | None = None, ncols: int | None = None,
                 **kwargs):
    """One legend for the whole figure, below the axes (outside them, so it never hides data); constrained layout
    makes room for it."""
    if handles is None:
        handles, labels = [], []
        for ax in fig.axes:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in labels:
                    handles.append(h)
                    labels.append(l)
    if not handles:
        return None
    ncols = ncols or min(len(handles), 5)
    return fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False, **kwargs)


def value_colorbar(fig, axes, cmap: str, vmin: float, vmax: float, label: str, ticks: Sequence[float] | None = None,
                   ticklabels: Sequence[str] | None = None, orientation: str = "vertical"):
    """A colour bar for colour that encodes a value, drawn beside `axes` (one axes or many)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
    bar = fig.colorbar(mappable, ax=axes, orientation=orientation, shrink=0.8, aspect=30, pad=0.02)
    bar.set_label(label)
    if ticks is not None:
        bar.set_ticks(list(ticks))
        if ticklabels is not None:
            bar.set_ticklabels(list(ticklabels))
    return bar


def smooth_map(grid_map, size: int):
    """A patch-grid map (h, w) tensor → (size, size) numpy array, bilinear, scaled to [0, 1] (a heat-map panel)."""
    import torch.nn.functional as F

    up = F.interpolate(grid_map[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    return (up / up.max().clamp_min(1e-12)).numpy()


def show_panel(ax, display, title: str = "", heat=None, rgb=None) -> None:
    """One image panel without ticks: `display` uint8 (S, S, C) tensor (gray when C = 1), or `rgb` (S, S, 3) in
    [0, 1] instead; `heat` (S, S) in [0, 1] drawn over it in inferno at alpha 0.6."""
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


def tint_masks(base, masks: list, colours):
    """The image `base` (S, S, 3) in [0, 1] with each boolean mask (S, S) blended in its colour (`colours` (K, 3),
    cycled), the background dimmed."""
    import numpy as np

    out = base * 0.45
    for i, mask in enumerate(masks):
        colour = colours[i % len(colours)]
        out = np.where(mask[..., None], 0.45 * base + 0.55 * colour, out)
    return np.clip(out, 0, 1)
