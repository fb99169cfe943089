"""Training: typed configs, presets as code, the loop (DDP / FSDP2, exact resume), checkpoints."""
from .config import OverrideError, TrainConfig, apply_overrides, config_from_dict, config_to_dict
from .evaluate import evaluate_checkpoint
from .loop import TrainingDiverged, build_model, git_commit, train
from .presets import PRESETS, get_preset, list_presets, register_preset

__all__ = ["TrainConfig", "apply_overrides", "config_to_dict", "config_from_dict", "OverrideError", "train",
           "build_model", "TrainingDiverged", "evaluate_checkpoint", "PRESETS", "get_preset", "list_presets",
           "register_preset", "git_commit"]
