"""Resuming a run from its `last/`: the run's position (`RunState`), the check that the config is the one the run
began with, a changed schedule length, and the per-process augmentation streams (elastic resume).

`RunState.from_saved` also reads the `run` record of checkpoints written before the task contract, which kept one
best value per metric (`best_top1`, `best_loss`, `best_miou`, `best_zeroshot_top1`) instead of `best` + `best_metric`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, config_to_dict

__all__ = ["RunState", "FREE_ON_RESUME", "saved_config", "check_same_run", "rebuild_schedule", "restore_augment_rng"]

# Settings a resumed run may change: they do not alter the results (`epochs` / `steps` extend or shorten the schedule:
# said when it happens, see rebuild_schedule).
FREE_ON_RESUME = {"max_steps", "progress", "tensorboard", "log_every", "num_workers", "device", "data_dir",
                  "download", "out_dir", "compile", "grad_checkpointing", "resume", "checkpoint_every_steps",
                  "checkpoint_every_minutes", "wandb", "wandb_project", "epochs", "steps"}


@dataclass
class RunState:
    """Where a run stands; saved in `last/state.pt` (and `best/`) as the `run` record."""
    step: int = 0
    epoch: int = 0
    best: float | None = None  # the best value of `best_metric` so far (None: not evaluated yet)
    best_metric: str | None = None  # the task's primary metric, which `best/` follows
    pending_eval: bool = False  # checkpointed because this step's evaluation failed: a resume evaluates it first

    def improves(self, value: float, metric: str, mode: str) -> bool:
        """Whether `value` of `metric` beats the best so far (`mode` 'max' or 'min'); records it when it does."""
        better = self.best is None or (value > self.best if mode == "max" else value < self.best)
        if better:
            self.best, self.best_metric = value, metric
        return better

    @classmethod
    def from_saved(cls, run: dict[str, Any], metric: str) -> "RunState":
        """The state saved as `run`; an older record's per-metric best field (`best_<metric>`, `best_loss` for
        eval_loss; its -1 / inf meant "none yet") becomes `best`."""
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in run.items() if k in known})
        if "best" not in run:
            old = run.get("best_loss" if metric == "eval_loss" else f"best_{metric}")
            if old is not None and math.isfinite(old) and old != -1.0:
                state.best, state.best_metric = float(old), metric
        return state


def saved_config(out_dir: Path, state: dict[str, Any], is_main: bool) -> dict[str, Any] | None:
    """The config the run began with: the copy in `last/state.pt`, else (older checkpoints) `config.json`."""
    saved_file = out_dir / "config.json"
    in_state = json.loads(state["config"]) if "config" in state else None
    try:
        from_file = json.loads(saved_file.read_text())["config"] if saved_file.is_file() else None
    except (ValueError, KeyError, TypeError) as err:  # truncated or not ours
        if in_state is None:
            raise ValueError(f"{saved_file} is unreadable ({type(err).__name__}: {err}) and the checkpoint holds "
                             "no copy of the config; restore the file, or start a new run with "
                             "out_dir=...") from None
        if is_main:
            print(f"{saved_file} is unreadable ({type(err).__name__}: {err}); checking the config against the "
                  "copy in last/state.pt instead (config.json is rewritten)")
        from_file = None
    return in_state if in_state is not None else from_file


def check_same_run(config: TrainConfig, out_dir: Path, saved: dict[str, Any] | None) -> None:
    """A run resumes only under the config it was started with (up to settings that do not change results)."""
    if saved is None:
        return
    current = config_to_dict(config)
    saved = {**config_to_dict(TrainConfig()), **saved}  # keys added since the run began: their defaults
    changed = [f"{k}: {saved.get(k)!r} → {current[k]!r}" for k in current
               if k not in FREE_ON_RESUME and json.dumps(saved.get(k), default=str) != json.dumps(current[k], default=str)]
    if changed:
        raise ValueError(f"{out_dir} holds a run started with another config ({'; '.join(changed)}); resume "
                         "it unchanged, start a new run with out_dir=..., or restart this one with resume=false (the "
                         "old run is moved aside, not deleted)")


def rebuild_schedule(config: TrainConfig, saved: dict[str, Any] | None, scheduler, step: int, steps_per_epoch: int,
                     total_steps: int, out_dir: Path, is_main: bool) -> None:
    """A resume with other `epochs` / `steps`: the schedule is rebuilt for the new length at the current step
    (so the learning rate jumps to the new curve's value there); said on rank 0. Shortening below the step
    already reached is refused."""
    if saved is None:  # nothing to compare with (a checkpoint older than the config copy, no config.json)
        return
    saved = {**config_to_dict(TrainConfig()), **saved}
    old_total = saved["steps"] or max(1, math.ceil(saved["epochs"] * steps_per_epoch))
    if old_total == total_steps:
        return
    if total_steps < step:
        raise ValueError(f"{out_dir} is at step {step}; epochs/steps now give {total_steps} steps, fewer "
                         "than already trained. Give at least as many, or start afresh with resume=false")
    old_lr = scheduler.get_last_lr()[0]
    scheduler.last_epoch = step - 1
    with warnings.catch_warnings():  # "step() before optimizer.step()": a re-evaluation, not a training step
        warnings.simplefilter("ignore")
        scheduler.step()  # the rebuilt schedule's value at this step
    if is_main:
        print(f"schedule changed on resume: {old_total} → {total_steps} steps (epochs {saved['epochs']} → "
              f"{config.epochs}, steps {saved['steps']} → {config.steps}). The {config.schedule} "
              f"schedule is rebuilt for the new length: at step {step} the learning rate moves from "
              f"{old_lr:.4g} to {scheduler.get_last_lr()[0]:.4g}, so this run is not the run a "
              f"{total_steps}-step schedule from step 0 would give.", flush=True)


def restore_augment_rng(generator: torch.Generator, saved: list, config: TrainConfig, rank: int, world_size: int,
                        directory: Path, step: int) -> None:
    """Each rank's device-augmentation generator as saved. A checkpoint from another number of processes
    (elastic resume: the loaders give the same global batches, `EncodedLoader` the same crops) cannot continue
    the per-rank streams: they restart from a seed of (seed, step, rank), said on rank 0."""
    if len(saved) == world_size:
        generator.set_state(saved[rank])
        return
    generator.manual_seed(config.seed * 9973 + rank + 1_000_003 * (step + 1))
    if rank == 0:
        print(f"{directory} was written by {len(saved)} process(es), this run has {world_size}: every "
              "global batch holds the same samples as before (elastic resume), but the random draws of the "
              "device augmentation (flips, mixup, ...) restart from a new per-process seed", flush=True)
