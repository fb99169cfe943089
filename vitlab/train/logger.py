"""Run logging: stdout and `metrics.jsonl` always, TensorBoard when asked for and installed, a progress bar on a
terminal. Only rank 0 writes. A run that starts (or resumes) at step S first cuts `metrics.jsonl` back to the records
of steps <= S, so the steps it trains again are not logged twice."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .checkpoint import strict_json, write_text_atomic

__all__ = ["RunLogger", "truncate_metrics"]


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
                 progress: bool | None):
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
        if echo:
            text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                             if not isinstance(v, (dict, list)))  # per-class tables go to metrics.jsonl only
            (self.bar.write if self.bar is not None else print)(text)

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
