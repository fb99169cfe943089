"""The comparison runner: a grid of configurations × seeds trained through the normal engine, then a Markdown table
(mean ± std and a 95% confidence interval per cell; paired differences between chosen columns) and learning-curve
PNGs. Resumable at two levels: a finished run leaves `result.json` and is skipped, and an interrupted run resumes
from its own `last/` checkpoint (exactly, on CPU).

A result is reused only when it was produced by the same resolved config and the same code: every `result.json`
carries `provenance` = {config_hash, code: {vitlab, git_commit, source_hash}} (`source_hash` covers the package's
source files, so an uncommitted change counts). A different config hash always retrains; different code (or no
provenance: an old cache) retrains unless `reuse_stale=True`, which reuses the result and marks it stale on the page
with the commit it was produced at. Verdicts are computed from the numbers; hand-written interpretations are `Note`s
stamped with the commit and figures they were written against, and printed under a warning when the figures changed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..train import TrainConfig, config_to_dict, git_commit, train

__all__ = ["Cell", "Study", "Note", "run_study", "summarise", "confidence_interval", "config_hash", "code_version",
           "study_figures", "render_notes", "slugify", "run_dir", "curve_axis"]


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
    notes: list["str | Note"] = field(default_factory=list)
    """Plain strings are definitions (true whatever the numbers); interpretations are `Note`s."""
    orderings: list[tuple[str, ...]] = field(default_factory=list)
    """Column orders whose holding is checked per row, best first (e.g. ("GPT", "CRATE-α", "CRATE"))."""
    metric: str = "top1"  # the result compared: 'top1', 'miou' or 'accuracy' (top-1 or a CLIP's zero-shot top-1;
    # %, higher is better), 'eval_loss' (lower is better)
    report: Callable[["Study", list[dict[str, Any]], Path, Path], str] | None = None
    """Optional further section after training: report(study, records, runs root, figures folder) → Markdown."""
    figures: Callable[["Study", list[dict[str, Any]], Path], dict[str, str]] | None = None
    """Optional further figures a `Note` may cite (e.g. the report's): figures(study, records, runs root)."""


@dataclass
class Note:
    """A hand-written interpretation, stamped with the commit whose results it was written against and the figures
    (as the page prints them, keyed as `study_figures` keys them) it assumed. When the computed figures differ, the
    page prints it under a warning."""
    text: str
    commit: str
    figures: dict[str, str]


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean: mean ± t_{(1+level)/2, n−1} · s / √n."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, mean
    half = t.ppf((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def slugify(label: str) -> str:
    """A label as a path component without spaces, commas or slashes: every run of other characters than letters,
    digits, '.', '+' and '-' becomes one '-' (`60k images, 3 epochs` → `60k-images-3-epochs`)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^\w.+-]+|_+", "-", label)).strip("-") or "-"


def run_dir(root: str | Path, cell: Cell, seed: int) -> Path:
    """`<root>/<slug(row)>__<slug(col)>/seed<seed>`, root being the study's folder."""
    return Path(root) / f"{slugify(cell.row)}__{slugify(cell.col)}" / f"seed{seed}"


def _old_run_dir(root: Path, cell: Cell, seed: int) -> Path:
    """The name runs had before `slugify` (spaces as '_', commas kept): still found and renamed."""
    return root / f"{cell.row}__{cell.col}".replace(" ", "_").replace("/", "-") / f"seed{seed}"


def _migrate(root: Path, cell: Cell, seed: int, log: Callable[[str], None]) -> Path:
    """The run's directory; a run under its old name (and none under the new) is renamed, so it is reused."""
    new, old = run_dir(root, cell, seed), _old_run_dir(root, cell, seed)
    if old != new and old.is_dir() and not new.exists():
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
        log(f"renamed {old} -> {new} (run directories no longer contain spaces or commas)")
        if old.parent.is_dir() and not any(old.parent.iterdir()):
            old.parent.rmdir()
    return new


def curve_axis(study: "Study") -> str:
    """'step' when every cell is budgeted in optimiser steps (`steps` > 0), else 'epoch': the curves' x."""
    return "step" if study.cells and all(c.config.steps > 0 for c in study.cells) else "epoch"


def config_hash(config: TrainConfig) -> str:
    """sha256 of the resolved config (sorted JSON), without `out_dir`: where a run lives does not change it."""
    resolved = {k: v for k, v in config_to_dict(config).items() if k != "out_dir"}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """{vitlab: version, git_commit: HEAD or None, source_hash: sha256 over the package's .py files (relative path
    and bytes), which also catches uncommitted changes}. Results are stale when `vitlab` or `source_hash` differ;
    the commit is recorded to say where a result came from."""
    from .._version import __version__

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"vitlab": __version__, "git_commit": git_commit(), "source_hash": digest.hexdigest()}


def _produced_at(run_dir: Path, result: dict[str, Any]) -> str | None:
    """The commit a result was produced at: its provenance, else (old caches) the run's own config.json."""
    if result.get("provenance"):
        return result["provenance"]["code"].get("git_commit")
    saved = run_dir / "config.json"
    return json.loads(saved.read_text()).get("git_commit") if saved.is_file() else None


def _reuse(done: Path, wanted_config: str, code: dict[str, str | None], reuse_stale: bool
           ) -> tuple[bool, str | None]:
    """(reuse it?, why it is stale or None), against the current `code_version()`."""
    if not done.is_file():
        return False, None
    provenance = json.loads(done.read_text()).get("provenance")
    if provenance is not None and provenance.get("config_hash") != wanted_config:
        return False, None  # another config: always retrained
    if provenance is None:
        stale = "produced before results recorded their config and code"
    elif (provenance["code"].get("vitlab"), provenance["code"].get("source_hash")) != (code["vitlab"],
                                                                                       code["source_hash"]):
        stale = "produced by different code"
    else:
        return True, None
    return reuse_stale, stale


def _check_unique_names(study: Study) -> None:
    names: dict[str, tuple[str, str]] = {}
    for cell in study.cells:
        name = f"{slugify(cell.row)}__{slugify(cell.col)}"
        if names.setdefault(name, (cell.row, cell.col)) != (cell.row, cell.col):
            raise ValueError(f"study {study.name}: cells {names[name]} and {(cell.row, cell.col)} share the run "
                             f"directory name {name!r}; rename one")


def _eta(durations: list[float], left: int) -> str:
    """', ETA …' from the mean duration of the runs trained so far in this invocation."""
    if not durations:
        return ""
    seconds = statistics.fmean(durations) * left
    return f", ETA {seconds / 60:.1f} min for {left} run{'s' if left != 1 else ''}" if left else ""


def run_study(study: Study, root: str | Path, log: Callable[[str], None] = print,
              reuse_stale: bool = False) -> list[dict[str, Any]]:
    """Trains every (cell, seed) without a current result under `root/<study>/`; returns one record per run.
    `reuse_stale`: keep results of other code (or without provenance) instead of retraining; they are marked.
    Progress lines count the runs to train and give an ETA from the durations of those already trained here."""
    root = Path(root) / study.name
    _check_unique_names(study)
    records = []
    code = code_version()  # once per study: hashing the package source per run would repeat the same work
    plan = []
    for seed, cell in ((s, c) for s in study.seeds for c in study.cells):
        directory = _migrate(root, cell, seed, log)
        config = dataclasses.replace(cell.config, seed=seed, out_dir=str(directory), progress=False,
                                     log_every=10**9)
        wanted = config_hash(config)
        plan.append((seed, cell, directory, config, wanted, *_reuse(directory / "result.json", wanted, code,
                                                                     reuse_stale)))
    total = sum(not reuse for *_, reuse, _ in plan)
    durations: list[float] = []
    axis = curve_axis(study)
    for seed, cell, run_dir, config, wanted, reuse, stale in plan:
        done = run_dir / "result.json"
        if not reuse:
            if done.is_file():
                log(f"{done}: {stale or 'produced by another config'}; retraining")
                done.unlink()
                _clear_checkpoints(run_dir)
            log(f"[{len(durations) + 1}/{total}] {study.name}: {cell.row} / {cell.col}, seed {seed}"
                f"{_eta(durations, total - len(durations))}")
            start = time.perf_counter()
            result = train(config, preset=f"{study.name}:{cell.row}/{cell.col}")
            result["seconds"] = time.perf_counter() - start
            durations.append(result["seconds"])
            result["provenance"] = {"config_hash": wanted, "code": code}
            done.write_text(json.dumps(result))
            stale = None
        result = json.loads(done.read_text())
        curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        records.append({"row": cell.row, "col": cell.col, "seed": seed, "run_dir": str(run_dir),
                        "top1": result.get("top1", math.nan), "miou": result.get("miou", math.nan),
                        "accuracy": _accuracy(result),
                        "eval_loss": result["eval_loss"],
                        "train_loss": result.get("train_loss", float("nan")),
                        "seconds": result.get("seconds", float("nan")), "stale": stale,
                        "commit": _produced_at(run_dir, result),
                        "curve": [(r[axis], _metric(r, study.metric)) for r in curve
                                  if _metric(r, study.metric) is not None and r.get(axis) is not None]})
    return records


def _accuracy(result: dict) -> float:
    """A CLIP's zero-shot top-1, else a classifier's top-1 (metric 'accuracy': the two side by side)."""
    return result.get("zeroshot_top1", result.get("top1", math.nan))


def _metric(record: dict, metric: str) -> float | None:
    if metric == "accuracy":
        return record.get("zeroshot_top1", record.get("top1"))
    return record.get(metric)


def _clear_checkpoints(run_dir: Path) -> None:
    """A result being retrained must not resume from the old run's checkpoints or append to its metrics."""
    import shutil

    for name in ("last", "best", "metrics.jsonl", "config.json"):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()


_METRIC_NAMES = {"top1": "Test top-1 (%)", "miou": "Test mIoU (%)",
                 "accuracy": "Test accuracy (%: a classifier's top-1, a CLIP's zero-shot top-1)",
                 "eval_loss": "Validation loss (nats per token; lower is better)"}


def _higher_is_better(study: Study) -> bool:
    return study.metric in ("top1", "miou", "accuracy")


def _cell_text(values: list[float], digits: int = 2) -> str:
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "–"
    low, high = confidence_interval(values)
    return (f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} "
            f"[{low:.{digits}f}, {high:.{digits}f}]")


def _diffs(study: Study, value: dict, row: str, col: str, against: str) -> list[float]:
    return [value[row, col, s] - value[row, against, s] for s in study.seeds
            if (row, col, s) in value and (row, against, s) in value]


def _diff_text(diffs: list[float], digits: int) -> str:
    low, high = confidence_interval(diffs)
    return f"{statistics.fmean(diffs):+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _verdicts(study: Study, rows: list[str], value: dict, digits: int) -> list[str]:
    """One sentence per comparison and row, computed from its paired 95% interval: the numbers, whether the interval
    excludes zero, and which side is better."""
    out = []
    for col, against in study.comparisons:
        for row in rows:
            diffs = _diffs(study, value, row, col, against)
            if len(diffs) < 2:
                out.append(f"- `{col}` − `{against}` at {row}: not enough seeds yet.")
                continue
            low, high = confidence_interval(diffs)
            if low <= 0 <= high:
                said = "the interval includes zero: no clear difference"
            else:
                better = col if (low > 0) == _higher_is_better(study) else against
                said = f"the interval excludes zero: `{better}` is better"
            out.append(f"- `{col}` − `{against}` at {row}: {_diff_text(diffs, digits)}: {said}.")
    for order in study.orderings:
        for row in rows:
            means = {c: statistics.fmean(v) for c in order
                     if (v := [value[row, c, s] for s in study.seeds if (row, c, s) in value])}
            if len(means) < len(order):
                continue
            sign = 1 if _higher_is_better(study) else -1
            holds = all(sign * (means[a] - means[b]) > 0 for a, b in zip(order, order[1:]))
            relation = " > " if _higher_is_better(study) else " < "
            clear = [f"`{a}` vs `{b}` {'clear' if _excludes_zero(_diffs(study, value, row, a, b)) else 'within noise'}"
                     for a, b in zip(order, order[1:])]
            out.append(f"- Ordering {relation.join(f'`{c}`' for c in order)} ({_METRIC_NAMES[study.metric].lower()}, "
                       f"means) at {row}: {'holds' if holds else 'does not hold'} "
                       f"({', '.join(f'{means[c]:.{digits}f}' for c in order)}; {', '.join(clear)}).")
    return out


def _excludes_zero(diffs: list[float]) -> bool:
    if len(diffs) < 2:
        return False
    low, high = confidence_interval(diffs)
    return low > 0 or high < 0


def study_figures(study: Study, records: list[dict[str, Any]]) -> dict[str, str]:
    """Every figure of the study's tables as the page prints it, keyed `"<col> @ <row>"` (mean over seeds) and
    `"<col> − <against> @ <row>"` (paired difference, mean [95% CI]), `"train loss: <col> @ <row>"`; what a
    `Note` cites."""
    value = {(r["row"], r["col"], r["seed"]): r[study.metric] for r in records}
    digits = 2 if _higher_is_better(study) else 3
    out = {}
    for cell in study.cells:
        values = [value[cell.row, cell.col, s] for s in study.seeds if (cell.row, cell.col, s) in value]
        if values:
            out[f"{cell.col} @ {cell.row}"] = f"{statistics.fmean(values):.{digits}f}"
        losses = [r.get("train_loss", math.nan) for r in records if (r["row"], r["col"]) == (cell.row, cell.col)]
        if losses:
            out[f"train loss: {cell.col} @ {cell.row}"] = f"{statistics.fmean(losses):.3f}"
    for col, against in study.comparisons:
        for row in dict.fromkeys(c.row for c in study.cells):
            if len(diffs := _diffs(study, value, row, col, against)) >= 2:
                out[f"{col} − {against} @ {row}"] = _diff_text(diffs, digits)
    return out


def render_notes(study: Study, figures: dict[str, str]) -> list[str]:
    """The notes as Markdown paragraphs; a `Note` whose cited figures differ from `figures` (or are missing) comes
    under a warning naming the commit and figures it was written against and the figures now."""
    out = []
    for note in study.notes:
        if isinstance(note, str):
            out.append(f"Note: {note}")
            continue
        now = {key: figures.get(key, "missing") for key in note.figures}
        if now == note.figures:
            cited = "; ".join(f"{k}: {v}" for k, v in note.figures.items())
            out.append(f"Note (written against {note.commit[:7]}, whose figures it cites and which still hold: "
                       f"{cited}): {note.text}")
        else:
            then = "; ".join(f"{k}: {v}" for k, v in note.figures.items())
            changed = "; ".join(f"{k}: {v}" for k, v in now.items() if v != note.figures[k])
            out.append(f"> **Warning:** the note below was written against {note.commit[:7]} with {then}; the numbers "
                       f"have changed (now {changed}). Read it against the computed verdicts above.\n\n"
                       f"Note (outdated): {note.text}")
    return out


def provenance_line(records: list[dict[str, Any]]) -> str:
    """Which commit(s) produced the table's runs, and how many of them are stale (reused from other code)."""
    commits: dict[str, int] = {}
    for r in records:
        key = (r.get("commit") or "unknown")[:7]
        commits[key] = commits.get(key, 0) + 1
    produced = ", ".join(f"{c} ({n} runs)" if len(commits) > 1 else c for c, n in commits.items())
    line = f"Produced at commit{'s' if len(commits) > 1 else ''} {produced}."
    stale = [r for r in records if r.get("stale")]
    if stale:
        reasons = sorted({r["stale"] for r in stale})
        at = sorted({(r.get("commit") or "unknown")[:7] for r in stale})
        line = (f"> **Stale:** {len(stale)} of {len(records)} runs were reused with `reuse_stale` although "
                f"{' / '.join(reasons)} (produced at {', '.join(at)}); the current code may give other numbers.\n\n"
                + line)
    return line


def summarise(study: Study, records: list[dict[str, Any]]) -> str:
    """Markdown: the top-1 table (mean ± std [95% CI] over seeds) and the paired differences of `study.comparisons`."""
    rows = list(dict.fromkeys(c.row for c in study.cells))
    cols = list(dict.fromkeys(c.col for c in study.cells))
    value = {(r["row"], r["col"], r["seed"]): r[study.metric] for r in records}
    digits = 2 if _higher_is_better(study) else 3
    lines = [provenance_line(records), "",
             f"{_METRIC_NAMES[study.metric]}, mean ± std [95% CI] over seeds {study.seeds}:", "",
             "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in rows:
        cells = [_cell_text([value[row, col, s] for s in study.seeds if (row, col, s) in value], digits)
                 for col in cols]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if study.comparisons:
        unit = "percentage points" if _higher_is_better(study) else "nats per token"
        lines += ["", f"Paired differences (same row and seed), {unit}, mean [95% CI]; **bold** where the "
                  "interval excludes zero:", "", "| | " + " | ".join(rows) + " |", "|---|" + "---:|" * len(rows)]
        for col, against in study.comparisons:
            cells = []
            for row in rows:
                diffs = _diffs(study, value, row, col, against)
                if len(diffs) < 2:
                    cells.append("–")
                    continue
                text = _diff_text(diffs, digits)
                cells.append(f"**{text}**" if _excludes_zero(diffs) else text)
            lines.append(f"| {col} − {against} | " + " | ".join(cells) + " |")
    if study.comparisons or study.orderings:
        lines += ["", "Verdicts, computed from these numbers:", "", *_verdicts(study, rows, value, digits)]
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
