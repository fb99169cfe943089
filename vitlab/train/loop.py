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
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from .._profile import count_flops
from ..models import METADATA_KEY, model_spec
from .build import autocast_for, build_model, describe_model, describe_precision, peak_flops, tied_names
from .checkpoint import (RunDirBusy, RunDirLock, find_checkpoint, load_training_state, move_run_aside,
                         remove_stale_temporaries, save_checkpoint, write_text_atomic)
from .config import TrainConfig, config_to_dict
from .distributed import (STOP_SIGNALS, DistInfo, StopSignals, agree_on_failure, all_reduce_sum, setup_distributed,
                          teardown_distributed, wrap_model)
from .evaluate import evaluate
from ._malloc import keep_freed_memory
from .logger import RunLogger, check_wandb, git_commit, run_provenance
from .optim import build_optimizer, build_scheduler
from .resume import RunState, check_same_run, rebuild_schedule, restore_augment_rng, saved_config
from .tasks import build_task

__all__ = ["train", "evaluate", "build_model", "TrainingDiverged", "EvaluationFailed", "RunInterrupted", "peak_flops",
           "git_commit", "EXIT_INTERRUPTED", "STOP_SIGNALS"]

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: stopped by a signal with last/ written; run the same command again


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
        self.task = build_task(config, info)
        self.model = build_model(config, self.task).to(info.device)
        self.lock = self._lock()
        # wrap first: FSDP2's fully_shard replaces the parameters, and the optimiser must hold the new ones
        self.wrapped = wrap_model(self.model, info, config.distributed)
        self.optimizer = build_optimizer(self.model, config.optimizer, config.lr, config.weight_decay, config.betas,
                                         config.layer_decay)
        self.steps_per_epoch = len(self.task.train) // config.grad_accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError("fewer training batches than grad_accum_steps: no optimiser step per epoch")
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * self.steps_per_epoch))
        warmup = config.warmup_steps or round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, config.schedule, config.lr,
                                         config.min_lr)
        self.eval_interval = config.eval_interval or max(1, round(config.eval_every * self.steps_per_epoch))
        self.augment_rng = torch.Generator().manual_seed(config.seed * 9973 + info.rank)  # CPU: no device sync
        self.state = RunState()
        self.autocast = autocast_for(config, info.device, self.model)  # auto: measured at the model's shape
        self.tied = tied_names(self.model)  # e.g. lm_head.weight → transformer.wte.weight: stored once
        if not config.resume and info.is_main:
            self._move_aside()
        self.resumed = config.resume and self._resume()
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            provenance = {**run_provenance(config, preset, argv), "data_files": [list(f) for f in self.task.files]}
            write_text_atomic(self.out_dir / "config.json", json.dumps(provenance, indent=1))
            self.task.save_assets(self.out_dir)
        if config.compile:
            self.wrapped.compile()

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _resume(self) -> bool:
        """The state of `last/`, when there is one: weights, optimiser, schedule, loader position, random streams."""
        if self.info.is_main and self.out_dir.is_dir():
            remove_stale_temporaries(self.out_dir)  # under the lock: left by a writer that died
        directory = find_checkpoint(self.out_dir / "last")
        if directory is None:
            return False
        weights, state = load_training_state(directory)
        saved = saved_config(self.out_dir, state, self.info.is_main)
        check_same_run(self.config, self.out_dir, saved)
        weights.update({alias: weights[name] for alias, name in self.tied.items() if name in weights})
        set_state_dict(self.model, self.optimizer, model_state_dict=weights, optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        try:
            self.task.train.load_state_dict(state["loader"])
        except ValueError as err:
            raise ValueError(f"{directory} cannot be resumed by this run: {err}") from None
        step = int(state["run"]["step"])
        restore_augment_rng(self.augment_rng, state["augment_rng"], self.config, self.info.rank,
                            self.info.world_size, directory, step)
        torch.set_rng_state(state["torch_rng"])
        self.state = RunState.from_saved(state["run"], self.task.primary[0])
        rebuild_schedule(self.config, saved, self.scheduler, step, self.steps_per_epoch, self.total_steps,
                         self.out_dir, self.info.is_main)
        return True

    def _move_aside(self) -> None:
        """resume=false: what a previous run left in out_dir is moved aside (said, never deleted)."""
        moved = move_run_aside(self.out_dir)
        if moved is not None:
            dest, names = moved
            print(f"resume=false: moved the previous run in {self.out_dir} ({', '.join(names)}) to {dest}; nothing "
                  "was deleted. This run starts at step 0.", flush=True)

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
        state = {"optimizer": optim, "scheduler": self.scheduler.state_dict(), "loader": self.task.train.state_dict(),
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
                    loss = self.task.loss(self.wrapped, batch, self.augment_rng) / accum
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
            for batch in self.task.train:
                group.append(batch)
                if len(group) == accum:
                    yield group
                    group = []
            self.state.epoch += 1
            self.task.train.set_epoch(self.state.epoch)

    def run(self) -> dict[str, Any]:
        config, info = self.config, self.info
        stop = min(self.total_steps, config.max_steps or self.total_steps)
        logger = RunLogger(self.out_dir, info.is_main, self.total_steps, self.state.step, config.tensorboard,
                           config.progress, config.wandb_project if config.wandb else None,
                           config_to_dict(self.config))
        peak = config.peak_tflops * 1e12 or peak_flops(info.device)  # MFU on known (or given) peaks only
        flops = count_flops(self.model, self.task.example_input(info.device), backward=True) if peak else 0
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
            if self.task.primary[0] not in metrics:  # resumed at its last step: nothing trained; where it stands
                metrics = evaluate(self.wrapped, self.task, self.info, self.autocast)
        finally:
            self.stop.restore()
            logger.close()
            self._unlock()
        best = {f"best_{self.task.primary[0]}": self.state.best}
        return {**metrics, "step": self.state.step, **best, "out_dir": str(self.out_dir)}

    # -- start-up summary, first step, signals and checkpoints between evaluations --------------------------------
    def _summary(self) -> None:
        """Rank 0's start-up lines: the run, the model, the input, the data, the batch, the checkpoints."""
        config, info = self.config, self.info
        resumed = f"resumed at step {self.state.step}" if self.resumed else "new run"
        print(f"{self.out_dir}: {resumed}; {self.total_steps} steps ({self.steps_per_epoch}/epoch), "
              f"{self.task.describe()}, {info.world_size} process(es) on {info.device}")
        print(describe_model(config, self.task, self.model))
        for note in self.task.notes():
            print(note)
        per_device = config.batch_size // (info.world_size * config.grad_accum_steps)
        for line in describe_precision(config, info.device, self.model):
            print(line)
        print(f"batch: {config.batch_size} global = {info.world_size} process(es) x {config.grad_accum_steps} "
              f"accumulation step(s) x {per_device} per device; workers per process {config.num_workers}")
        every = [f"every {self.eval_interval} steps (with evaluation)"]
        every += [f"every {config.checkpoint_every_steps} steps"] if config.checkpoint_every_steps else []
        every += [f"every {config.checkpoint_every_minutes:g} min"] if config.checkpoint_every_minutes else []
        print(f"checkpoints: {self.out_dir / 'last'} {', '.join(every)}, and on SIGTERM / SIGUSR1 (then exit "
              f"{EXIT_INTERRUPTED})")
        for path, digest in self.task.files:  # which files were read, and what they were verified against
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
                  f"{self.task.unit}_per_s": window_steps * self.task.samples_per_batch(self.config.batch_size) / seconds}
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
            result = evaluate(self.wrapped, self.task, self.info, self.autocast)
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
        name, mode = self.task.primary
        is_best = self.state.improves(result[name], name, mode)
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
