"""Run checkpoints: `<out_dir>/last/` and `<out_dir>/best/`, each holding `model.safetensors` (the unwrapped model's
weights) and `state.pt` (optimiser, scheduler, RNG and loader state, step, metrics).

A checkpoint directory is written whole into `<name>.tmp-<pid>/` (one temporary name per writer), then swapped in by
renames, so a crash at any moment leaves either the previous checkpoint or the new one, never a mix: `<name>.old/` is
only a stage of the swap, and `find_checkpoint` recovers it if the process died between the two renames. A failed
write (e.g. a full disk) removes its temporary and leaves the previous checkpoint as it was. `meta.json` is strict
JSON (non-finite numbers are written as null). `RunDirLock` keeps a second run out of a run directory.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

__all__ = ["write_text_atomic", "save_checkpoint", "find_checkpoint", "resolve_checkpoint", "load_training_state", "remove_stale_temporaries", "RunDirLock",
           "RunDirBusy", "strict_json", "move_run_aside", "WEIGHTS", "STATE"]

WEIGHTS, STATE = "model.safetensors", "state.pt"
_NO_SPACE_SIGNS = ("no space left on device", "os error 28", "file write failed", "enforce fail at inline_container")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so `json.dumps(..., allow_nan=False)` accepts it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `path` through `<name>.tmp-<pid>` and a rename: readers see the old file or the new one, never a
    truncated one (config.json, segmentation.json, a truncated metrics.jsonl)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write(file: Path, writer: Callable[[], Any]) -> None:
    """Runs `writer`; a full disk (ENOSPC, or torch's bare `[enforce fail at inline_container.cc]` / `file write
    failed`) becomes an OSError(ENOSPC) that names the file being written."""
    try:
        writer()
    except Exception as err:
        text = str(err)
        if getattr(err, "errno", None) == errno.ENOSPC or any(s in text.lower() for s in _NO_SPACE_SIGNS):
            detail = text.strip().splitlines()[0] if text.strip() else type(err).__name__
            raise OSError(errno.ENOSPC, f"no space left on device writing {file} ({detail}); the previous "
                                        "checkpoint is kept") from err
        raise


def _write_all(tmp: Path, weights: dict[str, torch.Tensor], state: dict[str, Any], metadata: dict[str, Any]) -> None:
    """The three files of a checkpoint into `tmp`, each flushed to disk."""
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    header = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in metadata.items()}
    _write(tmp / WEIGHTS, lambda: save_file(weights, str(tmp / WEIGHTS), metadata=header))
    _write(tmp / STATE, lambda: torch.save(state, tmp / STATE))
    text = json.dumps(strict_json(metadata), indent=1, default=str, allow_nan=False)
    _write(tmp / "meta.json", lambda: (tmp / "meta.json").write_text(text))
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            _write(f, lambda: os.fsync(handle.fileno()))


def save_checkpoint(directory: str | os.PathLike, weights: dict[str, torch.Tensor], state: dict[str, Any],
                    metadata: dict[str, Any] | None = None) -> Path:
    """Atomically replaces `directory` with one holding the weights, the training state and `meta.json`; on any
    failure the temporary is removed and the previous `directory` stays as it was. `metadata` also goes into the
    safetensors header: a dict or list value as JSON (e.g. `vitlab_model`, the model description that rebuilds
    the model, see `vitlab.models._hub`), anything else as its `str`."""
    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_all(tmp, weights, state, metadata or {})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Deletes the `*.tmp*` leftovers of writers that died (call only while holding the run's lock)."""
    stale = sorted(out_dir.glob("*.tmp*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def move_run_aside(out_dir: Path) -> tuple[Path, list[str]] | None:
    """Moves everything in `out_dir` but its lock and earlier `previous-*` folders into a new
    `out_dir/previous-<YYYYmmdd-HHMMSS>[-N]/` (call only while holding the run's lock); returns (that folder, the
    names moved), or None when there was nothing to move. Nothing is deleted."""
    if not out_dir.is_dir():
        return None
    entries = sorted(p for p in out_dir.iterdir() if p.name != ".lock" and not p.name.startswith("previous-"))
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = out_dir / f"previous-{stamp}", 1
    while dest.exists():
        dest, n = out_dir / f"previous-{stamp}-{n}", n + 1
    dest.mkdir()
    for entry in entries:
        os.replace(entry, dest / entry.name)
    return dest, [e.name for e in entries]


def find_checkpoint(directory: str | os.PathLike) -> Path | None:
    """`directory` if it is a complete checkpoint, else its `.old` stage left by a crash mid-swap, else None."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / WEIGHTS).is_file() and (candidate / STATE).is_file():
            return candidate
    return None


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

def load_training_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, state) of a checkpoint directory, read safely (safetensors; `weights_only=True`)."""
    try:
        weights = load_file(str(directory / WEIGHTS))
        state = torch.load(directory / STATE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{directory}: unreadable checkpoint ({err}); delete it or point out_dir elsewhere") from None
    return weights, state


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirLock:
    """An exclusive lock on `<out_dir>/.lock`, held for the whole run so two runs never share a directory. The file
    says who holds it (PID, host, start time); the OS releases the lock when the holder exits or dies.

    A POSIX record lock (`fcntl.lockf`), not `flock`: it belongs to the process alone, so DataLoader workers forked
    from the run do not inherit it, and a run killed with SIGKILL frees its directory at once, even while its
    orphaned workers are still winding down. Record locks do not exclude the process that holds them, so a set of
    the paths this process holds refuses a second run started from the same process."""

    _held: set[str] = set()

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / ".lock"
        self.key = str(self.path.resolve())
        self.handle = open(self.path, "a+")
        try:
            if self.key in RunDirLock._held:
                raise BlockingIOError
            fcntl.lockf(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown process"
            self.handle.close()
            raise RunDirBusy(f"{out_dir} is in use by another run ({holder}); wait for it to finish, or give this "
                             "run another out_dir=...") from None
        RunDirLock._held.add(self.key)
        self.handle.seek(0)
        self.handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n")
        self.handle.flush()

    def release(self) -> None:
        if not self.handle.closed:
            fcntl.lockf(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            RunDirLock._held.discard(self.key)
