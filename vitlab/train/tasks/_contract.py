"""The contract the training engine relies on: a task owns its data, its loss and its evaluation, and declares what
the engine needs to know about them. `vitlab.train.loop` talks to a task through this protocol only and names no
task; `vitlab.train.tasks.TASKS` picks one per dataset.

Four tasks implement it: `ClassificationTask` (images → classes), `SegmentationTask` (images → per-pixel classes,
a head on the backbone), `ClipTask` (contrastive image–text) and `LMTask` (next-token prediction). Learnt from
open_clip's per-objective training tasks and big_vision's evaluators; the names are timm's where timm has one.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..distributed import DistInfo

__all__ = ["Task", "ResumableLoader", "check_task", "task_members", "per_rank_batch", "refuse_head", "refuse_freeze_text", "check_model_family"]


@runtime_checkable
class ResumableLoader(Protocol):
    """The training batches: one epoch per iteration, `len()` batches per epoch on this rank, and a position that
    `state_dict()` saves and `load_state_dict()` restores so a resumed run continues with the very next batch."""

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class Task(Protocol):
    """One training objective on one dataset, built from a `TrainConfig` for this process (`DistInfo`).

    Attributes:
      name       the task's name in `TASKS` ('classification', 'segmentation', 'clip', 'lm')
      unit       what a sample is, for the throughput log (`{unit}_per_s`): 'images' or 'tokens'
      primary    (metric, 'max' | 'min'): the key of `evaluate()`'s result that `best/` follows, and its direction
      train      this rank's training batches (`ResumableLoader`); the evaluation split is the task's own, read by
                 `evaluate()`
      eval_size  samples one evaluation scores (images, pairs or tokens)
      files      (path, verified digest) of every file the data was read from, for the log and config.json

    Methods (the engine calls them in this order):
      check_model(name)           before the model is built: a ValueError naming the dataset and the model when the
                                  registered model `name` cannot serve this task (a language model for images, ...)
      model_kwargs()              the constructor arguments the data fixes (num_classes, img_size, vocab_size, ...)
      prepare_model(model, config)  after init and starting weights: the model the engine trains (a segmentation
                                  head on the backbone, a frozen text tower, ...); may check the built model
      example_input(device)       one batch of the model's input (a tensor or a tuple), for FLOPs and the summary
      loss(model, batch, generator)  the mean loss of one micro-batch (augmentation drawn from `generator`)
      evaluate(model, info, autocast)  {metric: value} over the whole evaluation split, summed across ranks
      samples_per_batch(batch_size)  samples (`unit`) in one optimiser step of `batch_size` global samples
      describe()                  one line for the start-up summary
      notes()                     further start-up lines the user should read (may be empty)
      save_assets(out_dir)        what a later `vitlab eval` / `zeroshot` / `generate` / `segment` needs besides the
                                  weights and config.json (a tokenizer, class names, ...)
    """

    name: str
    unit: str
    primary: tuple[str, str]
    train: ResumableLoader
    eval_size: int
    files: list

    def check_model(self, name: str) -> None: ...

    def model_kwargs(self) -> dict: ...

    def prepare_model(self, model: nn.Module, config: TrainConfig) -> nn.Module: ...

    def example_input(self, device: torch.device) -> torch.Tensor | tuple[torch.Tensor, ...]: ...

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, info: DistInfo, autocast) -> dict[str, Any]: ...

    def samples_per_batch(self, batch_size: int) -> int: ...

    def describe(self) -> str: ...

    def notes(self) -> list[str]: ...

    def save_assets(self, out_dir: Path) -> None: ...


def check_task(task: object) -> Task:
    """`task`, or a TypeError naming its class and the members of `Task` it lacks."""
    if isinstance(task, Task):
        return task
    missing = [m for m in task_members() if not hasattr(task, m)]
    raise TypeError(f"{type(task).__name__} does not implement vitlab.train.tasks.Task (missing: {', '.join(missing)})"
                    ": the training engine needs every member of the protocol (vitlab/train/tasks/_contract.py)")


def task_members() -> list[str]:
    """The names `Task` declares: its attributes, then its methods."""
    methods = [name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")]
    return list(Task.__annotations__) + methods


def per_rank_batch(config: TrainConfig, info: DistInfo) -> int:
    """Samples per micro-batch on this rank: batch_size / (world size × grad_accum_steps), which must divide."""
    per_rank = config.batch_size // (info.world_size * config.grad_accum_steps)
    if per_rank * info.world_size * config.grad_accum_steps != config.batch_size or per_rank < 1:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by world size {info.world_size} × "
                         f"grad_accum_steps {config.grad_accum_steps}")
    return per_rank


def refuse_head(config: TrainConfig) -> None:
    """A segmentation head asked of a task that has none."""
    if config.head is not None:
        raise ValueError(f"head={config.head!r} is for semantic segmentation datasets; {config.dataset!r} is not one "
                         "(leave head unset)")


def refuse_freeze_text(config: TrainConfig) -> None:
    """freeze_text asked of a task whose model has no text tower."""
    if config.freeze_text:
        raise ValueError(f"freeze_text=true needs a CLIP model with a text tower; {config.model!r} has none")


_FAMILY_EXAMPLES = {"clip": "a CLIP model (e.g. clip, crate_alpha_clipa_l14)",
                    "lm": "a language model (e.g. gpt_char_tiny, crate_lm_char_tiny)"}


def check_model_family(config: TrainConfig, name: str, family: str) -> None:
    """The registered model `name` is of `family` — 'clip', 'lm' or 'image' (any other image model), read from its
    pretrained_cfg's task — else a ValueError naming the dataset, what it needs and what the model is."""
    from ...models import get_pretrained_cfg

    task = get_pretrained_cfg(name).get("task")
    if (task == "clip") != (family == "clip"):
        need = _FAMILY_EXAMPLES["clip"] if family == "clip" else "a model that is not a CLIP model"
        raise ValueError(f"dataset {config.dataset!r} needs {need}; model {name!r} has task {task!r}")
    is_lm = task == "lm"
    if is_lm != (family == "lm"):
        kind = _FAMILY_EXAMPLES["lm"] if not is_lm else "an image model"
        raise ValueError(f"dataset {config.dataset!r} needs {kind}; model {name!r} is "
                         f"{'a language model' if is_lm else 'an image model'}")
