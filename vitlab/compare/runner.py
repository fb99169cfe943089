"""The comparison runner: a grid of configurations × seeds trained through the normal engine, then a Markdown table
(mean ± std and a 95% confidence interval per cell; paired differences between chosen columns) and learning-curve
PNGs. Resumable at two levels: a finished run leaves `result.json` and is skipped, and an interrupted run resumes
from its own `last/` checkpoint (exactly, on CPU).
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..train import TrainConfig, train

__all__ = ["Cell", "Study", "run_study", "summarise", "confidence_interval"]


@dataclass
class Cell:
    """One configuration of a study: its row and column labels in the table, and the config to train."""
    row: str
    col: str
    config: TrainConfig


@dataclass
class Study:
    """A grid of cells trained for each seed. `comparisons`: (column, against) pairs whose paired differences (same
    row, same seed) are reported with confidence intervals. `budget`: the compute it takes, said beside its table."""
    name: str
    title: str
    cells: list[Cell]
    seeds: list[int]
    comparisons: list[tuple[str, str]] = field(default_factory=list)
    budget: str = ""
    notes: list[str] = field(default_factory=list)
    metric: str = "top1"  # the result compared: 'top1' (%, higher is better) or 'eval_loss' (lower is better)
    report: Callable[["Study", list[dict[str, Any]], Path, Path], str] | None = None
    """Optional further section after training: report(study, records, runs root, figures folder) → Markdown."""


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean: mean ± t_{(1+level)/2, n−1} · s / √n."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, mean
    half = t.ppf((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def _run_dir(root: Path, cell: Cell, seed: int) -> Path:
    return root / f"{cell.row}__{cell.col}".replace(" ", "_").replace("/", "-") / f"seed{seed}"


def run_study(study: Study, root: str | Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Trains every (cell, seed) not finished yet under `root/<study>/`; returns one record per run."""
    root = Path(root) / study.name
    records = []
    total = len(study.cells) * len(study.seeds)
    for i, (seed, cell) in enumerate((s, c) for s in study.seeds for c in study.cells):
        run_dir = _run_dir(root, cell, seed)
        done = run_dir / "result.json"
        if not done.is_file():
            config = dataclasses.replace(cell.config, seed=seed, out_dir=str(run_dir), progress=False,
                                         log_every=10**9)
            log(f"[{i + 1}/{total}] {study.name}: {cell.row} / {cell.col}, seed {seed}")
            start = time.perf_counter()
            result = train(config, preset=f"{study.name}:{cell.row}/{cell.col}")
            result["seconds"] = time.perf_counter() - start
            done.write_text(json.dumps(result))
        result = json.loads(done.read_text())
        curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        records.append({"row": cell.row, "col": cell.col, "seed": seed, "run_dir": str(run_dir),
                        "top1": result.get("top1", math.nan), "eval_loss": result["eval_loss"],
                        "train_loss": result.get("train_loss", float("nan")),
                        "seconds": result.get("seconds", float("nan")),
                        "curve": [(r["epoch"], r[study.metric]) for r in curve if study.metric in r]})
    return records


_METRIC_NAMES = {"top1": "Test top-1 (%)", "eval_loss": "Validation loss (nats per token; lower is better)"}


def _higher_is_better(study: Study) -> bool:
    return study.metric == "top1"


def _cell_text(values: list[float], digits: int = 2) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    low, high = confidence_interval(values)
    return (f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} "
            f"[{low:.{digits}f}, {high:.{digits}f}]")


def _verdicts(study: Study, rows: list[str], value: dict) -> list[str]:
    """One plain sentence per comparison: in which rows its 95% interval lies above zero, below zero, or spans it."""
    out = []
    for col, against in study.comparisons:
        groups: dict[str, list[str]] = {"better": [], "worse": [], "no clear difference": []}
        for row in rows:
            diffs = [value[row, col, s] - value[row, against, s] for s in study.seeds
                     if (row, col, s) in value and (row, against, s) in value]
            if len(diffs) < 2:
                continue
            low, high = confidence_interval(diffs)
            above, below = ("better", "worse") if _higher_is_better(study) else ("worse", "better")
            groups[above if low > 0 else below if high < 0 else "no clear difference"].append(row)
        said = "; ".join(f"{verdict} at {', '.join(where)}" for verdict, where in groups.items() if where)
        out.append(f"- `{col}` vs `{against}`: {said or 'not enough seeds yet'}.")
    return out


def summarise(study: Study, records: list[dict[str, Any]]) -> str:
    """Markdown: the top-1 table (mean ± std [95% CI] over seeds) and the paired differences of `study.comparisons`."""
    rows = list(dict.fromkeys(c.row for c in study.cells))
    cols = list(dict.fromkeys(c.col for c in study.cells))
    value = {(r["row"], r["col"], r["seed"]): r[study.metric] for r in records}
    digits = 2 if study.metric == "top1" else 3
    lines = [f"{_METRIC_NAMES[study.metric]}, mean ± std [95% CI] over seeds {study.seeds}:", "",
             "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in rows:
        cells = [_cell_text([value[row, col, s] for s in study.seeds if (row, col, s) in value], digits)
                 for col in cols]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if study.comparisons:
        unit = "percentage points" if study.metric == "top1" else "nats per token"
        lines += ["", f"Paired differences (same row and seed), {unit}, mean [95% CI]; **bold** where the "
                  "interval excludes zero:", "", "| | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
        for col, against in study.comparisons:
            cells = []
            for row in rows:
                diffs = [value[row, col, s] - value[row, against, s] for s in study.seeds
                         if (row, col, s) in value and (row, against, s) in value]
                if len(diffs) < 2:
                    cells.append("–")
                    continue
                low, high = confidence_interval(diffs)
                text = f"{statistics.fmean(diffs):+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
                cells.append(f"**{text}**" if low > 0 or high < 0 else text)
            lines.append(f"| {col} − {against} | " + " | ".join(cells) + " |")
        lines += ["", *_verdicts(study, rows, value)]
    train = {(r["row"], r["col"]): [] for r in records}
    for r in records:
        train[r["row"], r["col"]].append(r.get("train_loss", math.nan))
    lines += ["", "Final training loss (last logged window, mean over seeds):", "", "| | " + " | ".join(cols) + " |",
              "|---|" + "---:|" * len(cols)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{statistics.fmean(train.get((row, c), [math.nan])):.3f}"
                                                for c in cols) + " |")
    minutes = sum(r["seconds"] for r in records if r["seconds"] == r["seconds"]) / 60
    lines += ["", f"{len(records)} runs, {minutes:.1f} min of training in total."]
    return "\n".join(lines)
