"""`vitlab eval CHECKPOINT`: evaluate a saved run's weights on its evaluation split."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..convert import load_checkpoint
from .checkpoint import WEIGHTS, find_checkpoint
from .config import apply_overrides, config_from_dict
from .data import build_data
from .distributed import setup_distributed, teardown_distributed

__all__ = ["evaluate_checkpoint", "resolve_checkpoint"]


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, run directory) for a run directory (its `best/`, else `last/`), a checkpoint directory, or a
    weights file inside one."""
    path = Path(path)
    if path.is_file():
        return path, path.parent.parent
    for candidate in (path / "best", path / "last", path):
        found = find_checkpoint(candidate)
        if found is not None:
            run_dir = path if candidate != path else path.parent
            return found / WEIGHTS, run_dir
    raise FileNotFoundError(f"no checkpoint at {path}: expected a run directory with best/ or last/, a checkpoint "
                            f"directory holding {WEIGHTS}, or the weights file itself")


def evaluate_checkpoint(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """Rebuilds the run's model and data from its config.json (with `key=value` overrides, e.g. eval_split=val),
    loads the weights strictly and returns loss, top-1 and top-5."""
    from .loop import _autocast, build_model, evaluate

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
        data = build_data(config, info)
        model = build_model(config, data)
        load_checkpoint(model, weights)
        result = evaluate(model.to(info.device), data, info, _autocast(config, info.device))
    finally:
        teardown_distributed()
    return {**result, "checkpoint": str(weights), "eval_split": config.eval_split, data.unit: data.eval_size}
