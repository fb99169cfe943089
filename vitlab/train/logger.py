"""Run logging: stdout and `metrics.jsonl` always, TensorBoard and Weights & Biases when asked for and installed, a
progress bar on a terminal. Only rank 0 writes. A run that starts (or resumes) at step S first cuts `metrics.jsonl` back to the records
of steps <= S, so the steps it trains again are not logged twice."""
from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .checkpoint import strict_json, write_text_atomic
from .config import TrainConfig, config_to_dict

__all__ = ["RunLogger", "truncate_metrics", "check_wandb", "git_commit", "run_provenance"]

WANDB_MISSING = "wandb=true needs the wandb package: pip install wandb (or leave wandb=false)"


def git_commit() -> str | None:
    """The git commit of the vitlab checkout in use (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_provenance(config: TrainConfig, preset: str | None, argv: list[str] | None) -> dict[str, Any]:
    """What config.json records besides the config: the preset, versions, the commit and the command."""
    return {"preset": preset, "config": config_to_dict(config), "vitlab": __version__, "git_commit": git_commit(),
            "torch": torch.__version__, "python": platform.python_version(), "command": argv or sys.argv}


def check_wandb() -> None:
    """Raises at once, before any data is read, when `wandb=true` cannot be honoured."""
    if importlib.util.find_spec("wandb") is None:
        raise RuntimeError(WANDB_MISSING)


def _start_wandb(out_dir: Path, project: str, config: dict[str, Any] | None):
    """A W&B run for out_dir: its id is kept in `out_dir/wandb_id`, so a resumed run continues the same W&B run.
    WANDB_MODE=offline (read by wandb itself) writes under out_dir/wandb/ for a later `wandb sync`."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError(WANDB_MISSING) from None
    id_file = out_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    write_text_atomic(id_file, run_id + "\n")
    return wandb.init(project=project, id=run_id, resume="allow", name=out_dir.name, dir=str(out_dir),
                      config=config)


def truncate_metrics(path: Path, step: int) -> int:
    """Atomically drops the records of `path` with a step after `step` (and a torn last line); returns how many
    were dropped. Those steps are trained again by the resumed run and logged anew."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("step", 0) > step:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped


class RunLogger:
    def __init__(self, out_dir: Path, enabled: bool, total_steps: int, start_step: int, tensorboard: bool,
                 progress: bool | None, wandb_project: str | None = None, config: dict[str, Any] | None = None):
        """`wandb_project`: also log to that Weights & Biases project (None: no W&B); `config` is recorded there."""
        self.enabled = enabled
        if enabled:
            truncate_metrics(out_dir / "metrics.jsonl", start_step)
        self.metrics = open(out_dir / "metrics.jsonl", "a") if enabled else None
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        self.wandb = _start_wandb(out_dir, wandb_project, config) if enabled and wandb_project else None
        show = sys.stdout.isatty() if progress is None else progress
        self.bar = None
        if enabled and show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, record: dict[str, Any], echo: bool = True) -> None:
        if not self.enabled:
            return
        self.metrics.write(json.dumps(strict_json(record), allow_nan=False) + "\n")  # NaN/inf as null
        self.metrics.flush()
        if self.writer is not None:
            prefix = "eval" if "eval_loss" in record else "train"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        if self.wandb is not None:
            prefix = "eval" if "eval_loss" in record else "train"
            self.wandb.log({f"{prefix}/{k}": v for k, v in record.items() if isinstance(v, (int, float))
                            and k != "step"}, step=record["step"])
        if echo:
            self.echo(record)

    def echo(self, record: dict[str, Any]) -> None:
        """Prints `record` as one line (rank 0 only; through the progress bar when there is one)."""
        if not self.enabled:
            return
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                         if not isinstance(v, (dict, list)))  # per-class tables go to metrics.jsonl only
        self.say(text)

    def say(self, text: str) -> None:
        """Prints a line of text on rank 0, flushed at once (a batch job's log file shows it immediately)."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)
            sys.stdout.flush()

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
