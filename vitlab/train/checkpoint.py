"""Run checkpoints: `<out_dir>/last/` and `<out_dir>/best/`, each holding `model.safetensors` (the unwrapped model's
weights) and `state.pt` (optimiser, scheduler, RNG and loader state, step, metrics).

A checkpoint directory is written whole into `<name>.tmp/`, then swapped in by renames, so a crash at any moment
leaves either the previous checkpoint or the new one, never a mix: `<name>.old/` is only a stage of the swap, and
`find_checkpoint` recovers it if the process died between the two renames.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "find_checkpoint", "load_training_state", "WEIGHTS", "STATE"]

WEIGHTS, STATE = "model.safetensors", "state.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike, weights: dict[str, torch.Tensor], state: dict[str, Any],
                    metadata: dict[str, Any] | None = None) -> Path:
    """Atomically replaces `directory` with one holding the weights, the training state and `meta.json`."""
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(weights, str(tmp / WEIGHTS), metadata={k: str(v) for k, v in (metadata or {}).items()})
    torch.save(state, tmp / STATE)
    (tmp / "meta.json").write_text(json.dumps(metadata or {}, indent=1, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def find_checkpoint(directory: str | os.PathLike) -> Path | None:
    """`directory` if it is a complete checkpoint, else its `.old` stage left by a crash mid-swap, else None."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / WEIGHTS).is_file() and (candidate / STATE).is_file():
            return candidate
    return None


def load_training_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, state) of a checkpoint directory, read safely (safetensors; `weights_only=True`)."""
    try:
        weights = load_file(str(directory / WEIGHTS))
        state = torch.load(directory / STATE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{directory}: unreadable checkpoint ({err}); delete it or point out_dir elsewhere") from None
    return weights, state
