"""Evaluation: `evaluate` runs a task's evaluation in eval mode; `vitlab eval CHECKPOINT` (`evaluate_checkpoint`)
evaluates a saved run's weights on its evaluation split."""
from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from ..convert import load_checkpoint
from .build import autocast_for, build_model
from .checkpoint import resolve_checkpoint
from .config import apply_overrides, config_from_dict
from .distributed import DistInfo, setup_distributed, teardown_distributed
from .tasks import Task, build_task

__all__ = ["evaluate", "evaluate_checkpoint", "resolve_checkpoint"]


def evaluate(model: nn.Module, task: Task, info: DistInfo, autocast) -> dict[str, float]:
    """The task's evaluation over its whole evaluation split (e.g. images: loss, top-1, top-5; text: loss,
    perplexity), in eval mode, summed across ranks."""
    was_training = model.training
    model.eval()
    try:
        return task.evaluate(model, info, autocast)
    finally:
        model.train(was_training)


def evaluate_checkpoint(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """Rebuilds the run's model and data from its config.json (with `key=value` overrides, e.g. eval_split=val),
    loads the weights strictly and returns the task's evaluation (e.g. loss, top-1 and top-5)."""
    weights, run_dir = resolve_checkpoint(path)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: `vitlab eval` needs the run directory's config.json")
    try:
        recorded = json.loads(config_file.read_text())["config"]
    except (ValueError, RecursionError, KeyError, TypeError) as err:  # not JSON, nested too deep, no 'config'
        raise ValueError(f"{config_file}: not a vitlab run config ({type(err).__name__}: {err})") from None
    config = apply_overrides(config_from_dict(recorded), overrides or [])
    config.checkpoint, config.pretrained, config.init = None, False, None
    info = setup_distributed(config.device)
    try:
        task = build_task(config, info)
        model = build_model(config, task)
        load_checkpoint(model, weights)
        result = evaluate(model.to(info.device), task, info, autocast_for(config, info.device))
    finally:
        teardown_distributed()
    return {**result, "checkpoint": str(weights), "eval_split": config.eval_split, task.unit: task.eval_size}
