"""The training loop: `train(config)` runs (or resumes) a run in `config.out_dir` and returns its final metrics.

Per optimiser step: `grad_accum_steps` micro-batches, each augmented on the device (soft targets), forward under
autocast (bf16 on CUDA), soft-target cross-entropy, backward (DDP syncs on the last micro-batch only); then gradient
clipping, the optimiser step and the schedule step. Every `eval_every` epochs: evaluation (top-1, top-5, loss) and
an atomic checkpoint (`best/` on a new best, then `last/`). A run started again with the same out_dir resumes from
`last/` and reproduces the uninterrupted run exactly on CPU.

Failures (docs/training.md, "Checkpoints and failures"): rank 0 holds a lock on out_dir for the whole run; `best/` is
written before `last/`, so `last/` never records a best that `best/` does not hold; nothing non-finite (training
loss, evaluation metrics, weights) is ever checkpointed; an evaluation that raises first checkpoints the training.

Between evaluations `last/` is also written every `checkpoint_every_steps` steps / `checkpoint_every_minutes` minutes,
and on SIGTERM or SIGUSR1 (preemption; SLURM's --signal) the run finishes its optimiser step, writes `last/` and exits
with `RunInterrupted` (exit status 75, EX_TEMPFAIL: "try again"); under DDP the ranks agree at each step boundary
(docs/clusters.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from .. import __version__
from .._profile import count_flops, cpu_bf16_flags
from ..convert import load_checkpoint
from ..init import mimetic_init_, norm_matched_init_
from ..models import create_model
from ..models._hub import METADATA_KEY, model_spec
from ..models.segmentation import SegmentationModel
from .checkpoint import (RunDirBusy, RunDirLock, find_checkpoint, load_training_state, move_run_aside,
                         remove_stale_temporaries, save_checkpoint, write_text_atomic)
from .clip import ClipData
from .config import TrainConfig, config_to_dict
from .data import TrainData, build_data, config_plan
from .distributed import (STOP_SIGNALS, DistInfo, StopSignals, agree_on_failure, all_reduce_sum, setup_distributed,
                          teardown_distributed, wrap_model)
from .evaluate import resolve_checkpoint
from ._malloc import keep_freed_memory
from .logger import RunLogger, check_wandb
from .optim import build_optimizer, build_scheduler

__all__ = ["train", "evaluate", "build_model", "TrainingDiverged", "EvaluationFailed", "RunInterrupted", "peak_flops",
           "git_commit", "EXIT_INTERRUPTED", "STOP_SIGNALS"]

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Settings a resumed run may change: they do not alter the results (`epochs` / `steps` extend or shorten the schedule:
# said when it happens, see _Run._schedule_change).
_FREE_ON_RESUME = {"max_steps", "progress", "tensorboard", "log_every", "num_workers", "device", "data_dir",
                   "download", "out_dir", "compile", "grad_checkpointing", "resume", "checkpoint_every_steps",
                   "checkpoint_every_minutes", "wandb", "wandb_project", "epochs", "steps"}
EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: stopped by a signal with last/ written; run the same command again


_BEST_FIELD = {"top1": "best_top1", "eval_loss": "best_loss", "miou": "best_miou",
               "zeroshot_top1": "best_zeroshot_top1"}  # primary metric → RunState


class TrainingDiverged(RuntimeError):
    """The loss, an evaluation metric or the weights became NaN or infinite; the last good checkpoint is kept."""


class EvaluationFailed(RuntimeError):
    """An evaluation raised; the training state of that step was checkpointed in `last/` first."""


class RunInterrupted(SystemExit):
    """SIGTERM / SIGUSR1 stopped the run at a step boundary after `last/` was written. A SystemExit with status
    `EXIT_INTERRUPTED` (75), so the command line exits with it and no traceback; `str()` is the message."""

    def __init__(self, message: str, step: int):
        super().__init__(EXIT_INTERRUPTED)
        self.message, self.step = message, step

    def __str__(self) -> str:
        return self.message


@dataclass
class RunState:
    step: int = 0
    epoch: int = 0
    best_top1: float = -1.0
    best_loss: float = math.inf  # language models: best/ keeps the lowest evaluation loss
    best_miou: float = -1.0  # semantic segmentation: best/ keeps the highest mIoU
    best_zeroshot_top1: float = -1.0  # CLIP with a zero-shot task: best/ keeps the highest zero-shot top-1
    pending_eval: bool = False  # checkpointed because this step's evaluation failed: a resume evaluates it first


def _tied_names(model: nn.Module) -> dict[str, str]:
    """{alias: first name} of parameters registered under two names (a language model's tied output head)."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known accelerators (for MFU), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)):
        if key in name:
            return value
    return None


def build_model(config: TrainConfig, data=None) -> nn.Module:
    """The configured model for the dataset's classes, channels and image size; init, then starting weights, then
    (segmentation: `config.head` on the backbone) gradient checkpointing when `grad_checkpointing` is set."""
    kwargs = dict(config.model_kwargs)
    if data is not None:
        _check_family(config, data)
        kwargs = _merge_kwargs(data.model_kwargs(), kwargs)
    model = create_model(config.model, pretrained=config.pretrained, **kwargs)
    if config.init == "mimetic":
        mimetic_init_(model, seed=config.seed, **config.init_kwargs)
    elif config.init == "norm_matched":
        norm_matched_init_(model, seed=config.seed, **config.init_kwargs)
    elif config.init is not None:
        raise ValueError(f"init must be None, 'mimetic' or 'norm_matched', got {config.init!r}")
    if config.checkpoint:  # a weight file, or a run / checkpoint directory (its best/, else last/ weights)
        weights = Path(config.checkpoint)
        if weights.is_dir():
            weights, _ = resolve_checkpoint(weights)
        load_checkpoint(model, weights, skip_head="auto", adapt=config.checkpoint_adapt)
    if isinstance(data, ClipData):
        data.check_model(model)
    if config.freeze_text:
        if not hasattr(model, "text"):
            raise ValueError(f"freeze_text=true needs a CLIP model with a text tower; {config.model!r} has none")
        model.text.requires_grad_(False)  # CLIPA: the image tower learns against a fixed text tower
    if config.head is not None:  # the backbone's classifier is pruned; the head is new
        num_classes = data.num_classes if data is not None else model.num_classes
        model = SegmentationModel(model, num_classes, config.head, **config.head_kwargs)
    if config.grad_checkpointing:
        model.set_grad_checkpointing()
    return model


def _merge_kwargs(from_data: dict, from_user: dict) -> dict:
    """The data's constructor arguments overridden by the user's; nested dicts (a CLIP model's image_kwargs /
    text_kwargs) merge key by key."""
    out = dict(from_data)
    for key, value in from_user.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check_family(config: TrainConfig, data) -> None:
    """A language model for text data, an image model for images, a head for segmentation data (and only there):
    said plainly, before anything is built."""
    from ..models import get_pretrained_cfg

    task = get_pretrained_cfg(config.model).get("task")
    is_clip_data = isinstance(data, ClipData)
    if (task == "clip") != is_clip_data:
        need = "a CLIP model (e.g. clip, crate_alpha_clipa_l14)" if is_clip_data else "a model that is not a CLIP model"
        raise ValueError(f"dataset {config.dataset!r} needs {need}; model {config.model!r} has task {task!r}")
    is_lm = task == "lm"
    if is_lm != (data.unit == "tokens"):
        kind = "a language model (e.g. gpt_char_tiny, crate_lm_char_tiny)" if not is_lm else "an image model"
        raise ValueError(f"dataset {config.dataset!r} needs {kind}; model {config.model!r} is "
                         f"{'a language model' if is_lm else 'an image model'}")
    if config.head is not None and data.primary[0] != "miou":
        raise ValueError(f"head={config.head!r} is for semantic segmentation datasets; {config.dataset!r} is not one "
                         "(leave head unset)")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'bf16' or 'fp32' for a `precision` setting on `device`. `auto` is bf16 autocast on CUDA and on a CPU with AMX
    bf16 tiles (`amx_bf16`, where benchmarks/bf16_cpu.py measured 2.1-2.4x fp32's train steps), fp32 elsewhere
    (a CPU without bf16 matrix units emulates bf16 products, several times slower than fp32)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and "amx_bf16" in cpu_bf16_flags()) else "fp32"


def _autocast(config: TrainConfig, device: torch.device):
    bf16 = resolve_precision(config.precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def evaluate(model: nn.Module, data, info: DistInfo, autocast) -> dict[str, float]:
    """The data's evaluation over its whole evaluation split (images: loss, top-1, top-5; text: loss, perplexity),
    in eval mode, summed across ranks."""
    was_training = model.training
    model.eval()
    try:
        return data.evaluate(model, info, autocast)
    finally:
        model.train(was_training)


def git_commit() -> str | None:
    """The git commit of the vitlab checkout in use (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _provenance(config: TrainConfig, preset: str | None, argv: list[str] | None) -> dict[str, Any]:
    return {"preset": preset, "config": config_to_dict(config), "vitlab": __version__, "git_commit": git_commit(),
            "torch": torch.__version__, "python": platform.python_version(), "command": argv or sys.argv}


class _Run:
    """Everything one run holds; its methods are the phases of `train`."""

    def __init__(self, config: TrainConfig, preset: str | None, info: DistInfo, argv: list[str] | None):
        self.config, self.info = config, info
        self.out_dir = Path(config.out_dir.format(preset=preset or "run"))
        self.lock = None  # taken in _build once the data and the model are built: a refused config creates nothing
        try:
            self._build(preset, argv)
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> RunDirLock | None:
        """Rank 0 locks out_dir (only rank 0 writes); every rank raises if the directory is another run's."""
        lock, busy = None, None
        if self.info.is_main:
            try:
                lock = RunDirLock(self.out_dir)
            except RunDirBusy as err:
                busy = err
        if self.info.enabled:
            flag = all_reduce_sum(torch.tensor(float(busy is not None), device=self.info.device), self.info)
            if flag.item() and busy is None:
                busy = RunDirBusy(f"{self.out_dir} is in use by another run (rank 0 says which)")
        if busy is not None:
            raise busy
        return lock

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _build(self, preset: str | None, argv: list[str] | None) -> None:
        """Data, model, optimiser, schedule; the state of `last/` when resuming; the provenance record."""
        config, info = self.config, self.info
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.data = build_data(config, info)
        self.model = build_model(config, self.data).to(info.device)
        self.lock = self._lock()
        # wrap first: FSDP2's fully_shard replaces the parameters, and the optimiser must hold the new ones
        self.wrapped = wrap_model(self.model, info, config.distributed)
        self.optimizer = build_optimizer(self.model, config.optimizer, config.lr, config.weight_decay, config.betas,
                                         config.layer_decay)
        self.steps_per_epoch = len(self.data.train) // config.grad_accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError("fewer training batches than grad_accum_steps: no optimiser step per epoch")
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        warmup = config.warmup_steps or round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, config.schedule, config.lr,
                                         config.min_lr)
        self.eval_interval = config.eval_interval or max(1, round(config.eval_every * self.steps_per_epoch))
        self.augment_rng = torch.Generator().manual_seed(config.seed * 9973 + info.rank)  # CPU: no device sync
        self.state = RunState()
        self.autocast = _autocast(config, info.device)
        self.tied = _tied_names(self.model)  # e.g. lm_head.weight → transformer.wte.weight: stored once
        if not config.resume and info.is_main:
            self._move_aside()
        self.resumed = config.resume and self._resume()
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            provenance = {**_provenance(config, preset, argv), "data_files": [list(f) for f in self.data.files]}
            write_text_atomic(self.out_dir / "config.json", json.dumps(provenance, indent=1))
            self.data.save_assets(self.out_dir)
        if config.compile:
            self.wrapped.compile()

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _move_aside(self) -> None:
        """resume=false: what a previous run left in out_dir is moved aside (said, never deleted)."""
        moved = move_run_aside(self.out_dir)
        if moved is not None:
            dest, names = moved
            print(f"resume=false: moved the previous run in {self.out_dir} ({', '.join(names)}) to {dest}; nothing "
                  "was deleted. This run starts at step 0.", flush=True)

    def _resume(self) -> bool:
        if self.info.is_main and self.out_dir.is_dir():
            remove_stale_temporaries(self.out_dir)  # under the lock: left by a writer that died
        directory = find_checkpoint(self.out_dir / "last")
        if directory is None:
            return False
        weights, state = load_training_state(directory)
        self._check_same_run(state)
        weights.update({alias: weights[name] for alias, name in self.tied.items() if name in weights})
        set_state_dict(self.model, self.optimizer, model_state_dict=weights, optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        try:
            self.data.train.load_state_dict(state["loader"])
        except ValueError as err:
            raise ValueError(f"{directory} cannot be resumed by this run: {err}") from None
        self._restore_augment_rng(state["augment_rng"], directory, int(state["run"]["step"]))
        torch.set_rng_state(state["torch_rng"])
        self.state = RunState(**state["run"])
        self._schedule_change(state)
        return True

    def _restore_augment_rng(self, saved: list, directory: Path, step: int) -> None:
        """Each rank's device-augmentation generator as saved. A checkpoint from another number of processes
        (elastic resume: the loaders give the same global batches, `EncodedLoader` the same crops) cannot continue
        the per-rank streams: they restart from a seed of (seed, step, rank), said on rank 0."""
        if len(saved) == self.info.world_size:
            self.augment_rng.set_state(saved[self.info.rank])
            return
        self.augment_rng.manual_seed(self.config.seed * 9973 + self.info.rank + 1_000_003 * (step + 1))
        if self.info.is_main:
            print(f"{directory} was written by {len(saved)} process(es), this run has {self.info.world_size}: every "
                  "global batch holds the same samples as before (elastic resume), but the random draws of the "
                  "device augmentation (flips, mixup, ...) restart from a new per-process seed", flush=True)

    def _schedule_change(self, state: dict[str, Any]) -> None:
        """A resume with other `epochs` / `steps`: the schedule is rebuilt for the new length at the current step
        (so the learning rate jumps to the new curve's value there); said on rank 0. Shortening below the step
        already reached is refused."""
        saved = self._saved_config(state)
        if saved is None:  # nothing to compare with (a checkpoint older than the config copy, no config.json)
            return
        saved = {**config_to_dict(TrainConfig()), **saved}
        old_total = saved["steps"] or max(1, math.ceil(saved["epochs"] * self.steps_per_epoch))
        if old_total == self.total_steps:
            return
        step = self.state.step
        if self.total_steps < step:
            raise ValueError(f"{self.out_dir} is at step {step}; epochs/steps now give {self.total_steps} steps, fewer "
                             "than already trained. Give at least as many, or start afresh with resume=false")
        old_lr = self.scheduler.get_last_lr()[0]
        self.scheduler.last_epoch = step - 1
        with warnings.catch_warnings():  # "step() before optimizer.step()": a re-evaluation, not a training step
            warnings.simplefilter("ignore")
            self.scheduler.step()  # the rebuilt schedule's value at this step
        if self.info.is_main:
            print(f"schedule changed on resume: {old_total} → {self.total_steps} steps (epochs {saved['epochs']} → "
                  f"{self.config.epochs}, steps {saved['steps']} → {self.config.steps}). The {self.config.schedule} "
                  f"schedule is rebuilt for the new length: at step {step} the learning rate moves from "
                  f"{old_lr:.4g} to {self.scheduler.get_last_lr()[0]:.4g}, so this run is not the run a "
                  f"{self.total_steps}-step schedule from step 0 would give.", flush=True)

    def _saved_config(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The config the run began with: the copy in `last/state.pt`, else (older checkpoints) `config.json`."""
        saved_file = self.out_dir / "config.json"
        in_state = json.loads(state["config"]) if "config" in state else None
        try:
            from_file = json.loads(saved_file.read_text())["config"] if saved_file.is_file() else None
        except (ValueError, KeyError, TypeError) as err:  # truncated or not ours
            if in_state is None:
                raise ValueError(f"{saved_file} is unreadable ({type(err).__name__}: {err}) and the checkpoint holds "
                                 "no copy of the config; restore the file, or start a new run with "
                                 "out_dir=...") from None
            if self.info.is_main:
                print(f"{saved_file} is unreadable ({type(err).__name__}: {err}); checking the config against the "
                      "copy in last/state.pt instead (config.json is rewritten)")
            from_file = None
        return in_state if in_state is not None else from_file

    def _check_same_run(self, state: dict[str, Any]) -> None:
        """A run resumes only under the config it was started with (up to settings that do not change results)."""
        saved = self._saved_config(state)
        if saved is None:
            return
        current = config_to_dict(self.config)
        saved = {**config_to_dict(TrainConfig()), **saved}  # keys added since the run began: their defaults
        changed = [f"{k}: {saved.get(k)!r} → {current[k]!r}" for k in current
                   if k not in _FREE_ON_RESUME and json.dumps(saved.get(k), default=str) != json.dumps(current[k], default=str)]
        if changed:
            raise ValueError(f"{self.out_dir} holds a run started with another config ({'; '.join(changed)}); resume "
                             "it unchanged, start a new run with out_dir=..., or restart this one with resume=false (the "
                             "old run is moved aside, not deleted)")

    def _last_good(self) -> str:
        """Where the last good checkpoint is, or that there is none: a message names only what exists."""
        found = find_checkpoint(self.out_dir / "last")
        if found is None:
            return "no checkpoint had been written yet"
        meta = found / "meta.json"
        step = json.loads(meta.read_text()).get("step", "?") if meta.is_file() else "?"
        return f"the last good checkpoint (step {step}) is in {found}"

    def _check_weights_finite(self) -> None:
        """One fused check over every parameter (local shards under FSDP, agreed across ranks) before a save."""
        params = [p.to_local() if hasattr(p, "to_local") else p for p in self.model.parameters()]
        bad = torch.stack([~torch.isfinite(p.detach()).all() for p in params]).sum().float()
        if all_reduce_sum(bad, self.info).item() > 0:
            raise TrainingDiverged(f"the weights became NaN/inf by step {self.state.step} (lr "
                                   f"{self.scheduler.get_last_lr()[0]:.3g}); nothing was saved and "
                                   f"{self._last_good()}. Lower lr, add warmup or set grad_clip.")

    def _save(self, metrics: dict[str, float], is_best: bool) -> None:
        """On a new best primary metric `best/` (weights) first, then `last/` (weights + everything to resume): a
        crash between the two leaves `last/` recording the previous best, and the resumed run redoes this step."""
        self._check_weights_finite()
        weights, optim = get_state_dict(self.model, self.optimizer, options=_FULL)  # collective under FSDP
        weights = {k: v for k, v in weights.items() if k not in self.tied}  # safetensors stores a tensor once
        rngs = [self.augment_rng.get_state()]
        if self.info.enabled:
            rngs = [None] * self.info.world_size
            torch.distributed.all_gather_object(rngs, self.augment_rng.get_state())
        if not self.info.is_main:
            return
        run = dataclasses.asdict(self.state)
        state = {"optimizer": optim, "scheduler": self.scheduler.state_dict(), "loader": self.data.train.state_dict(),
                 "augment_rng": rngs, "torch_rng": torch.get_rng_state(), "run": run,
                 "config": json.dumps(config_to_dict(self.config), default=str)}  # checked on resume
        metadata = {"architecture": self.model.pretrained_cfg.get("architecture", self.config.model),
                    "step": self.state.step, **metrics, METADATA_KEY: model_spec(self.model)}
        if is_best:
            save_checkpoint(self.out_dir / "best", weights, {"run": run}, metadata)
        save_checkpoint(self.out_dir / "last", weights, state, metadata)
        self.saved_step, self.saved_at = self.state.step, time.monotonic()

    # -- steps ----------------------------------------------------------------------------------------------------
    def _optimizer_step(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        accum = len(micro_batches)
        total = torch.zeros((), device=self.info.device)
        for i, batch in enumerate(micro_batches):
            sync = i == accum - 1 or not isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.wrapped.no_sync():
                with self.autocast:
                    loss = self.data.loss(self.wrapped, batch, self.augment_rng) / accum
                loss.backward()
            total += loss.detach()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    def _batches(self):
        """Groups of `grad_accum_steps` micro-batches, epoch after epoch, from the loader's saved position."""
        accum = self.config.grad_accum_steps
        while True:
            group = []
            for batch in self.data.train:
                group.append(batch)
                if len(group) == accum:
                    yield group
                    group = []
            self.state.epoch += 1
            self.data.train.set_epoch(self.state.epoch)

    def run(self) -> dict[str, Any]:
        config, info = self.config, self.info
        stop = min(self.total_steps, config.max_steps or self.total_steps)
        logger = RunLogger(self.out_dir, info.is_main, self.total_steps, self.state.step, config.tensorboard,
                           config.progress, config.wandb_project if config.wandb else None,
                           config_to_dict(self.config))
        peak = config.peak_tflops * 1e12 or peak_flops(info.device)  # MFU on known (or given) peaks only
        flops = count_flops(self.model, self.data.example_input(info.device), backward=True) if peak else 0
        if info.is_main:
            self._summary()
        metrics: dict[str, Any] = {}
        self.window_loss = torch.zeros((), device=info.device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=info.device)
        self.window_steps, window_start = 0, time.perf_counter()
        self.started = window_start  # for `elapsed_s` in the log (wall time of this process, evaluations included)
        self.saved_step, self.saved_at = self.state.step, time.monotonic()
        self.first_step = self.state.step
        self.model.train()
        batches = self._batches()
        self.stop = StopSignals(info.rank)
        self.stop.install()
        try:
            if self.state.pending_eval:  # the evaluation that failed before the resume
                metrics = self._evaluate_and_save(logger)
            while self.state.step < stop:
                loss = self._optimizer_step(next(batches))
                self.nonfinite |= ~torch.isfinite(loss)
                self.window_loss += loss
                self.window_steps += 1
                self.state.step += 1
                logger.advance()
                step = self.state.step
                if step == self.first_step + 1:
                    self._first_step_line(logger, loss, window_start)
                evaluating = step % self.eval_interval == 0 or step in (stop, self.total_steps)
                if step % config.log_every == 0 or evaluating:
                    self._check_loss_finite()
                    metrics = self._log(logger, window_start, flops, peak, echo=not evaluating)
                    self.window_loss.zero_()
                    self.window_steps, window_start = 0, time.perf_counter()
                if evaluating:
                    metrics.update(self._evaluate_and_save(logger, metrics.get("train_loss")))
                    window_start = time.perf_counter()
                if step < stop:
                    self._step_boundary(logger)
            if self.data.primary[0] not in metrics:  # resumed at its last step: nothing trained; where it stands
                metrics = evaluate(self.wrapped, self.data, self.info, self.autocast)
        finally:
            self.stop.restore()
            logger.close()
            self._unlock()
        name = self.data.primary[0]
        best = {f"best_{name}": getattr(self.state, _BEST_FIELD[name])}
        return {**metrics, "step": self.state.step, **best, "out_dir": str(self.out_dir)}

    # -- start-up summary, first step, signals and checkpoints between evaluations --------------------------------
    def _summary(self) -> None:
        """Rank 0's start-up lines: the run, the model, the input, the data, the batch, the checkpoints."""
        config, info = self.config, self.info
        resumed = f"resumed at step {self.state.step}" if self.resumed else "new run"
        print(f"{self.out_dir}: {resumed}; {self.total_steps} steps ({self.steps_per_epoch}/epoch), "
              f"{self.data.describe()}, {info.world_size} process(es) on {info.device}")
        kwargs = _merge_kwargs(self.data.model_kwargs(), config.model_kwargs)
        params = sum(p.numel() for p in self.model.parameters())
        example = self.data.example_input(torch.device("meta"))
        shape = " + ".join(str(tuple(t.shape[1:])) for t in (example if isinstance(example, tuple) else (example,)))
        label = getattr(self.model, "pretrained_cfg", {}).get("label", config.model)
        described = label if label != config.model else f"{label} {json.dumps(kwargs, default=str)}"
        print(f"model: {described}; {params:,} parameters "
              f"({sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} trained); input per sample "
              f"{shape}")
        if isinstance(self.data, TrainData) and config_plan(config).train_decode is not None:
            how = (f"image_size={config.image_size}" if config.image_size else
                   "image_size not set: the 224 px default for encoded images; set image_size=N to change it")
            print(f"IMAGES ARE DECODED AT {self.data.image_size} x {self.data.image_size} px ({how})")
        per_device = config.batch_size // (info.world_size * config.grad_accum_steps)
        precision = resolve_precision(config.precision, info.device)
        why = {"cuda": ": CUDA", "cpu": ": this CPU has amx_bf16"}.get(info.device.type, "")
        why = why if precision == "bf16" else ""
        auto = f" (auto{why})" if config.precision == "auto" else ""
        print(f"precision: {'bf16 autocast' if precision == 'bf16' else 'fp32'}{auto}")
        if info.device.type == "cpu" and config.precision == "bf16" and not cpu_bf16_flags():
            print("precision=bf16 on a CPU without bf16 matrix instructions (no amx_bf16 / avx512_bf16 in "
                  "/proc/cpuinfo): its bf16 matrix products are emulated and slower than fp32 "
                  "(benchmarks/bf16_cpu.py measures by how much); precision=fp32 is the fast choice here")
        print(f"batch: {config.batch_size} global = {info.world_size} process(es) x {config.grad_accum_steps} "
              f"accumulation step(s) x {per_device} per device; workers per process {config.num_workers}")
        every = [f"every {self.eval_interval} steps (with evaluation)"]
        every += [f"every {config.checkpoint_every_steps} steps"] if config.checkpoint_every_steps else []
        every += [f"every {config.checkpoint_every_minutes:g} min"] if config.checkpoint_every_minutes else []
        print(f"checkpoints: {self.out_dir / 'last'} {', '.join(every)}, and on SIGTERM / SIGUSR1 (then exit "
              f"{EXIT_INTERRUPTED})")
        for path, digest in self.data.files:  # which files were read, and what they were verified against
            print(f"data: {path} ({digest})")
        sys.stdout.flush()

    def _first_step_line(self, logger: RunLogger, loss: torch.Tensor, started: float) -> None:
        """A line after this process's first optimiser step (its loss and time, warm-up included), so a batch job's
        log shows within seconds that training runs, long before the first `log_every` line."""
        value = loss.item()  # waits for the device
        logger.say(f"step {self.state.step}: first step done in {time.perf_counter() - started:.2f} s (loss "
                   f"{value:.4g} on rank 0, warm-up included); a log line every {self.config.log_every} steps")

    def _step_boundary(self, logger: RunLogger) -> None:
        """Between two optimiser steps: a signal (on any rank) writes last/ and stops the run; a due periodic
        checkpoint writes last/. Under DDP / FSDP one all-reduce makes every rank take the same decision."""
        config = self.config
        minutes = config.checkpoint_every_minutes
        flags = self.stop.agree(self.info, minutes > 0 and time.monotonic() - self.saved_at >= 60 * minutes)
        step = self.state.step
        every = config.checkpoint_every_steps
        due = flags[1] > 0 or bool(every and step % every == 0)
        if (due or flags[0] > 0) and self.saved_step != step:
            self._check_loss_finite()
            self._save({}, is_best=False)
        if flags[0] > 0:
            name = signal.Signals(self.stop.received).name if self.stop.received else "a signal on another rank"
            message = (f"stopped by {name} after step {step}: the run is checkpointed in {self.out_dir / 'last'}; run "
                       f"the same command again to resume at step {step} (exit status {EXIT_INTERRUPTED})")
            logger.say(message)
            raise RunInterrupted(message, step)

    def _check_loss_finite(self) -> None:
        """The training-loss window is finite (else nothing is checkpointed and the run stops)."""
        if bool(self.nonfinite):
            step = self.state.step
            raise TrainingDiverged(f"the training loss became NaN/inf within steps "
                                   f"{step - self.window_steps + 1}..{step} (lr {self.scheduler.get_last_lr()[0]:.3g}); "
                                   f"{self._last_good()}. Lower lr, add warmup or set grad_clip.")

    def _log(self, logger, window_start, flops, peak, echo: bool = True) -> dict[str, Any]:
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)
        seconds = time.perf_counter() - window_start
        window_steps = self.window_steps
        loss = all_reduce_sum(self.window_loss.clone(), self.info).item() / (window_steps * self.info.world_size)
        samples_per_s = window_steps * self.config.batch_size / seconds  # images, or windows of block_size tokens
        record = {"step": self.state.step, "epoch": round(self.state.step / self.steps_per_epoch, 3),
                  "elapsed_s": round(time.perf_counter() - self.started, 3),
                  "train_loss": loss, "lr": self.scheduler.get_last_lr()[0],
                  f"{self.data.unit}_per_s": window_steps * self.data.samples_per_batch(self.config.batch_size) / seconds}
        if peak:
            record["mfu"] = samples_per_s * flops / peak / self.info.world_size
        logger.log(record, echo=echo)
        return record

    def _evaluate_or_checkpoint(self) -> dict[str, float]:
        """The evaluation; if it raises (e.g. an unreadable validation image), `last/` is saved first (no new best),
        so no training is lost, and the error says how to resume. Under torchrun the ranks agree first
        (`agree_on_failure`, through the store: the others may wait in a collective this rank left): if every rank
        failed they save together; if only some did, every rank stops without saving (a collective save would wait
        for ranks that are still inside the evaluation), naming the failing rank, and `last/` keeps its step."""
        try:
            result = evaluate(self.wrapped, self.data, self.info, self.autocast)
            all_reduce_sum(torch.zeros((), device=self.info.device), self.info)  # a peer that failed after the
            return result  # evaluation's own collectives is seen here, not in the save's
        except Exception as err:
            step, failure, together = self.state.step, f"{type(err).__name__}: {err}", True
            if self.info.enabled:  # failure: the first rank's, "rank 1: ValueError: ..."
                together, failure = agree_on_failure(self.info, f"evaluation/step-{step}",
                                                     f"rank {self.info.rank}: {failure}")
            if not together:
                raise EvaluationFailed(f"evaluation at step {step} failed ({failure}); every rank stopped without "
                                       f"saving this step (this is rank {self.info.rank}) and {self._last_good()}: fix "
                                       "the cause and run the same command again to resume there.") from err
            self.state.pending_eval = True
            self._save({}, is_best=False)
            raise EvaluationFailed(f"evaluation at step {step} failed ({failure}). The training was checkpointed at "
                                   f"step {step} in {self.out_dir / 'last'}: fix the cause and run the same command "
                                   f"again to resume there (step {step} is evaluated first).") from err

    def _evaluate_and_save(self, logger, train_loss: float | None = None) -> dict[str, float]:
        """Evaluates, logs (one printed line with the train loss of the window that ends here beside the evaluation),
        updates the best metric and checkpoints."""
        result = self._evaluate_or_checkpoint()
        record = {"step": self.state.step, "epoch": round(self.state.step / self.steps_per_epoch, 3),
                  "elapsed_s": round(time.perf_counter() - self.started, 3), **result}
        logger.log(record, echo=False)
        logger.echo({"step": record["step"], "epoch": record["epoch"],
                     **({"train_loss": train_loss} if train_loss is not None else {}), **result,
                     "lr": self.scheduler.get_last_lr()[0], "elapsed_s": record["elapsed_s"]})
        nonfinite = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
        if nonfinite:
            raise TrainingDiverged(f"the evaluation at step {self.state.step} gave non-finite {', '.join(nonfinite)}; "
                                   f"nothing was saved and {self._last_good()}. Lower lr, add warmup or set grad_clip.")
        self.state.pending_eval = False
        name, mode = self.data.primary
        best = getattr(self.state, _BEST_FIELD[name])
        is_best = result[name] > best if mode == "max" else result[name] < best
        setattr(self.state, _BEST_FIELD[name], result[name] if is_best else best)
        self._save(result, is_best)
        return result


def train(config: TrainConfig, preset: str | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Trains (or resumes) the configured run; returns the last evaluation, best top-1, step and out_dir."""
    config.validate()
    if config.wandb:
        check_wandb()
    info = setup_distributed(config.device)
    if info.device.type == "cpu":
        keep_freed_memory()  # glibc: reuse freed tensor memory instead of re-faulting it every step (_malloc.py)
    try:
        return _Run(config, preset, info, argv).run()
    finally:
        teardown_distributed()
