"""The training tasks: each implements `Task` (`_contract.py`) in its own module, and `TASKS` picks one per dataset.

To add a task: write a module here with a dataclass implementing `Task` and a `build_<name>_task(config, info)`,
then add one `TaskKind` row to `TASKS` (before `classification`, which takes every dataset no other task claims).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ...data.segmentation import is_segmentation_dataset
from ._contract import (ResumableLoader, Task, check_model_family, check_task, per_rank_batch, refuse_freeze_text,
                        refuse_head, task_members)
from .classification import ClassificationTask, build_classification_task
from .clip import ClipTask, build_clip_task, is_clip_dataset
from .lm import LMTask, build_lm_task, is_text_dataset
from .segmentation import SegmentationTask, build_segmentation_task

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..distributed import DistInfo

__all__ = ["Task", "ResumableLoader", "TaskKind", "TASKS", "task_kind", "build_task", "check_task", "task_members",
           "per_rank_batch", "check_model_family", "refuse_head", "refuse_freeze_text", "ClassificationTask",
           "SegmentationTask", "ClipTask", "LMTask"]


@dataclass(frozen=True)
class TaskKind:
    """A row of `TASKS`: the task's name, which datasets it trains on, and how it is built."""
    name: str
    accepts: Callable[[str], bool]  # dataset name -> whether this task trains on it
    build: Callable[[TrainConfig, DistInfo], Task]


def _any_dataset(name: str) -> bool:
    return True  # image classification: every image dataset of vitlab.data.load_dataset (it names the unknown ones)


TASKS: tuple[TaskKind, ...] = (  # the first row that accepts the dataset wins
    TaskKind("lm", is_text_dataset, build_lm_task),
    TaskKind("segmentation", is_segmentation_dataset, build_segmentation_task),
    TaskKind("clip", is_clip_dataset, build_clip_task),
    TaskKind("classification", _any_dataset, build_classification_task),
)


def task_kind(dataset: str) -> TaskKind:
    """The row of `TASKS` that trains on `dataset`."""
    return next(kind for kind in TASKS if kind.accepts(dataset))


def build_task(config: TrainConfig, info: DistInfo) -> Task:
    """The run's task for `config.dataset`, its data loaded and placed for this process."""
    return check_task(task_kind(config.dataset).build(config, info))
