"""Learning curves of a study: one panel per table row, one line per column (mean over seeds), and a shaded band:
the 95% confidence interval of that mean (Student t over the seeds; no band with one seed). Each curve is a list of
(x, value) pairs, x the step or epoch its record names; seeds are averaged at equal x. Drawn in vitlab's shared
figure style (`vitlab._figures`): the legend below the panels, PNG at 300 dpi or PDF / SVG by the file name."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from .._figures import legend_below, new_figure, save_figure, styled

__all__ = ["plot_curves", "curve_band", "BAND_CAPTION"]

BAND_CAPTION = "shaded: 95% confidence interval of the mean over seeds (Student t)"


def _align(curves: list[list[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """(x, values (seeds, points)) at the x values (step or epoch, as recorded) every curve has; a curve's repeated x
    (records of a resumed run's older log) keeps its last value. Points are matched by x, never by position."""
    by_x = [dict(curve) for curve in curves]  # later records win
    xs = sorted(set.intersection(*(set(c) for c in by_x)))
    return np.array(xs, dtype=float), np.array([[c[x] for x in xs] for c in by_x], dtype=float).reshape(len(by_x), -1)


def curve_band(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high) per point of the mean over seeds (rows of `values`): mean ± t_{(1+level)/2, n−1} · s / √n; None
    with fewer than two seeds."""
    from scipy.stats import t

    n = values.shape[0]
    if n < 2:
        return None
    half = t.ppf((1 + level) / 2, n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)
    mean = values.mean(axis=0)
    return mean - half, mean + half


@styled
def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str, ylabel: str = "test top-1 (%)",
                xlabel: str = "epoch", dpi: int | None = None) -> Path:
    """Writes the figure to `path` (format by suffix) and returns it. `xlabel`: what the curves' x is ("epoch",
    or "optimiser step" for step-budgeted studies)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = list(dict.fromkeys(r["row"] for r in records))
    cols = list(dict.fromkeys(r["col"] for r in records))
    fig = new_figure((max(3.0 * len(rows), 4.0), 2.9 + 0.18 * (len(cols) // 4)))
    axes = fig.subplots(1, len(rows), squeeze=False, sharey=False)[0]
    colours = {col: f"C{i % 10}" for i, col in enumerate(cols)}
    seeds = max((len({r["seed"] for r in records if (r["row"], r["col"]) == (row, col)})
                 for row in rows for col in cols), default=0)
    for ax, row in zip(axes, rows):
        for col in cols:
            curves = [r["curve"] for r in records if r["row"] == row and r["col"] == col and r["curve"]]
            if not curves:
                continue
            xs, values = _align(curves)  # (points,), (seeds, points)
            if not len(xs):
                continue
            ax.plot(xs, values.mean(0), marker="o", color=colours[col], label=col)
            if (band := curve_band(values)) is not None:
                ax.fill_between(xs, *band, color=colours[col], alpha=0.18, linewidth=0)
        ax.set_title(textwrap.fill(row, 40))
        ax.set_xlabel(xlabel)
        ax.grid(True)
    axes[0].set_ylabel(ylabel)
    handles = [Line2D([], [], color=colours[c], marker="o") for c in cols]
    labels = list(cols)
    if seeds >= 2:
        handles.append(Patch(color="0.5", alpha=0.3))
        labels.append(f"shaded: 95% CI of the mean over {seeds} seeds")
    legend_below(fig, handles, labels, ncols=min(len(handles), 4))
    fig.suptitle(textwrap.fill(title, width=int(45 * max(len(rows), 1.4))))  # wrapped to the figure's width
    return save_figure(fig, path, dpi)
