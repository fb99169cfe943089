"""Learning curves of a study: one panel per table row, one line per column (mean over seeds, band = min–max)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_curves"]


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
            length = min(len(c) for c in curves)
            epochs = np.array([p[0] for p in curves[0][:length]])
            values = np.array([[p[1] for p in c[:length]] for c in curves])  # (seeds, evals)
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
