"""Training: typed configs, presets as code, the tasks (`vitlab.train.tasks`: one `Task` per objective), the loop
(DDP / FSDP2, exact resume), checkpoints."""
from .config import OverrideError, TrainConfig, apply_overrides, config_from_dict, config_to_dict
from .evaluate import evaluate_checkpoint
from .loop import EXIT_INTERRUPTED, RunInterrupted, TrainingDiverged, build_model, git_commit, train
from .presets import PRESETS, get_preset, list_presets, register_preset
from .tasks import TASKS, Task, build_task
from .tasks.clip_loss import ClipLoss, gather_features
from .tasks.zeroshot import retrieval_recall, zero_shot_classifier, zero_shot_logits

__all__ = ["TrainConfig", "apply_overrides", "config_to_dict", "config_from_dict", "OverrideError", "train",
           "build_model", "TrainingDiverged", "evaluate_checkpoint", "PRESETS", "get_preset", "list_presets",
           "register_preset", "git_commit", "ClipLoss", "gather_features", "zero_shot_classifier",
           "zero_shot_logits", "retrieval_recall", "RunInterrupted", "EXIT_INTERRUPTED", "Task", "TASKS",
           "build_task"]
