"""Learning curves of a study: one panel per table row, one line per column (mean over seeds, band = min–max).
Each curve is a list of (x, value) pairs, x the step or epoch its record names; seeds are averaged at equal x."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_curves"]


def _align(curves: list[list[tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """(x, values (seeds, points)) at the x values (step or epoch, as recorded) every curve has; a curve's repeated x
    (records of a resumed run's older log) keeps its last value. Points are matched by x, never by position."""
    by_x = [dict(curve) for curve in curves]  # later records win
    xs = sorted(set.intersection(*(set(c) for c in by_x)))
    return np.array(xs, dtype=float), np.array([[c[x] for x in xs] for c in by_x], dtype=float).reshape(len(by_x), -1)


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str, ylabel: str = "test top-1 (%)",
                xlabel: str = "epoch") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(r["row"] for r in records))
    cols = list(dict.fromkeys(r["col"] for r in records))
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.4), squeeze=False, sharey=False)
    for ax, row in zip(axes[0], rows):
        for col in cols:
            curves = [r["curve"] for r in records if r["row"] == row and r["col"] == col and r["curve"]]
            if not curves:
                continue
            epochs, values = _align(curves)  # (evals,), (seeds, evals)
            if not len(epochs):
                continue
            (line,) = ax.plot(epochs, values.mean(0), marker="o", markersize=3, label=col)
            ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
        ax.set_title(row)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(textwrap.fill(title, width=55 * len(rows)), fontsize=10)  # wrapped to the figure's width
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
