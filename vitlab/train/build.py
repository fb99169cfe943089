"""What a run trains with: the model for its task (`build_model`), the numeric precision (`resolve_precision`,
`autocast_for`) and the device's peak for the MFU log (`peak_flops`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .._profile import cpu_bf16_flags
from ..convert import load_checkpoint
from ..init import mimetic_init_, norm_matched_init_
from ..models import create_model
from .checkpoint import resolve_checkpoint
from .config import TrainConfig
from .tasks import Task

__all__ = ["build_model", "merge_kwargs", "tied_names", "describe_model", "describe_precision", "resolve_precision", "autocast_for", "peak_flops"]


def build_model(config: TrainConfig, task: Task | None = None) -> nn.Module:
    """The configured model: for a task, its family checked first (`Task.check_model`) and its data's constructor
    arguments (classes, channels, image size, vocabulary) under the user's `model_kwargs`; then the init, the
    starting weights, the task's preparation (`Task.prepare_model`: a segmentation head on the backbone, a frozen
    text tower) and gradient checkpointing when `grad_checkpointing` is set."""
    kwargs = dict(config.model_kwargs)
    if task is not None:
        task.check_model(config.model)
        kwargs = merge_kwargs(task.model_kwargs(), kwargs)
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
    if task is not None:
        model = task.prepare_model(model, config)
    if config.grad_checkpointing:
        model.set_grad_checkpointing()
    return model


def merge_kwargs(from_data: dict, from_user: dict) -> dict:
    """The data's constructor arguments overridden by the user's; nested dicts (a CLIP model's image_kwargs /
    text_kwargs) merge key by key."""
    out = dict(from_data)
    for key, value in from_user.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tied_names(model: nn.Module) -> dict[str, str]:
    """{alias: first name} of parameters registered under two names (a language model's tied output head)."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def describe_model(config: TrainConfig, task: Task, model: nn.Module) -> str:
    """The start-up line about the model: its name (and constructor arguments when it has no label of its own),
    parameters (all and trained) and the input of one sample."""
    kwargs = merge_kwargs(task.model_kwargs(), config.model_kwargs)
    params = sum(p.numel() for p in model.parameters())
    example = task.example_input(torch.device("meta"))
    shape = " + ".join(str(tuple(t.shape[1:])) for t in (example if isinstance(example, tuple) else (example,)))
    label = getattr(model, "pretrained_cfg", {}).get("label", config.model)
    described = label if label != config.model else f"{label} {json.dumps(kwargs, default=str)}"
    return (f"model: {described}; {params:,} parameters "
            f"({sum(p.numel() for p in model.parameters() if p.requires_grad):,} trained); input per sample {shape}")


def describe_precision(config: TrainConfig, device: torch.device) -> list[str]:
    """The start-up lines about the precision: which one and why, and a warning where bf16 is emulated."""
    precision = resolve_precision(config.precision, device)
    why = {"cuda": ": CUDA", "cpu": ": this CPU has amx_bf16"}.get(device.type, "")
    why = why if precision == "bf16" else ""
    auto = f" (auto{why})" if config.precision == "auto" else ""
    lines = [f"precision: {'bf16 autocast' if precision == 'bf16' else 'fp32'}{auto}"]
    if device.type == "cpu" and config.precision == "bf16" and not cpu_bf16_flags():
        lines.append("precision=bf16 on a CPU without bf16 matrix instructions (no amx_bf16 / avx512_bf16 in "
                     "/proc/cpuinfo): its bf16 matrix products are emulated and slower than fp32 "
                     "(benchmarks/bf16_cpu.py measures by how much); precision=fp32 is the fast choice here")
    return lines


def resolve_precision(precision: str, device: torch.device) -> str:
    """'bf16' or 'fp32' for a `precision` setting on `device`. `auto` is bf16 autocast on CUDA and on a CPU with AMX
    bf16 tiles (`amx_bf16`, where benchmarks/bf16_cpu.py measured 2.1-2.4x fp32's train steps), fp32 elsewhere
    (a CPU without bf16 matrix units emulates bf16 products, several times slower than fp32)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and "amx_bf16" in cpu_bf16_flags()) else "fp32"


def autocast_for(config: TrainConfig, device: torch.device):
    """The autocast context of `config.precision` on `device` (disabled for fp32)."""
    bf16 = resolve_precision(config.precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known accelerators (for MFU), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)):
        if key in name:
            return value
    return None
