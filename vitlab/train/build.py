"""What a run trains with: the model for its task (`build_model`), the numeric precision (`choose_precision`:
measured on the machine at hand; `resolve_precision`, `autocast_for`) and the device's peak for the MFU log
(`peak_flops`)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .._calibrate import BF16_MARGIN, agreed, cache_file, calibrate, calibration_enabled, model_workload
from .._calibrate import precision_workload, shape_class
from .._profile import cpu_bf16_flags, example_inputs
from ..convert import load_checkpoint
from ..init import mimetic_init_, norm_matched_init_
from ..models import create_model
from .checkpoint import resolve_checkpoint
from .config import TrainConfig
from .tasks import Task

__all__ = ["build_model", "merge_kwargs", "tied_names", "describe_model", "PrecisionChoice", "choose_precision",
           "model_shape", "describe_precision", "resolve_precision", "autocast_for", "peak_flops"]


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


@dataclass(frozen=True)
class PrecisionChoice:
    """What `precision` resolves to on a device ('bf16' autocast or 'fp32') and why (the start-up line's reason:
    '' for an explicit setting)."""
    precision: str
    why: str = ""


DEFAULT_SHAPE = (192, 64)  # (width, tokens) of the block calibrated without a model: a ViT-Tiny on 28-32 px images
TIMED_FLOPS = 4e9  # the most train FLOPs of one timed model step (~40-80 ms of fp32 on a 2-core CPU); beyond, the
# batch is cut, and a model of which one sample is larger is calibrated by one block of its width and tokens
_MEASURED: dict[tuple, PrecisionChoice] = {}  # the measured choices of this process, so every call agrees


def model_shape(model: nn.Module | None) -> tuple[int, int] | None:
    """(width, tokens) of the model's blocks: an image model's patches plus prefix tokens, a language model's
    block_size; None for no model or one that says neither (a CLIP or segmentation model)."""
    width = getattr(model, "num_features", None)
    embed = getattr(model, "patch_embed", None)
    tokens = (embed.num_patches + getattr(model, "num_prefix_tokens", 0) if embed is not None
              else getattr(model, "block_size", None))
    return (width, tokens) if isinstance(width, int) and isinstance(tokens, int) else None


def _precision_workload(model: nn.Module | None, batch: int) -> tuple[str, Callable]:
    """(its name, the cache's shape class; a factory of its fp32 / bf16 candidates) of what calibrates `auto`: the
    model's own forward + backward at `batch` (cut to TIMED_FLOPS, estimated as 6 x parameters x tokens per
    sample), else one block of DEFAULT_SHAPE or of the model's shape (`vitlab._calibrate.precision_workload`)."""
    shape = model_shape(model)
    if shape is not None:
        per_sample = 6 * sum(p.numel() for p in model.parameters()) * shape[1]
        fits = int(TIMED_FLOPS // per_sample)
        if fits >= 1:
            batch = min(max(batch, 1), fits)
            name = f"{type(model).__name__} {shape_class(*shape)} b{2 ** (batch - 1).bit_length()}"
            return name, lambda: model_workload(model, example_inputs(model, batch)[0])
    width, tokens = shape or DEFAULT_SHAPE
    return f"block {shape_class(width, tokens)}", lambda: precision_workload(width, tokens)


def _home_relative(path: Path) -> str:
    return str(path).replace(str(Path.home()), "~", 1) if str(path).startswith(str(Path.home())) else str(path)


def _measured_choice(name: str, candidates: Callable) -> PrecisionChoice:
    """fp32 vs bf16 autocast timed on this CPU (`vitlab._calibrate`), or read from its cache."""
    measured = calibrate("precision", name, candidates, BF16_MARGIN)
    where = f"{'read from' if measured.cached else 'cached in'} {_home_relative(cache_file())}"
    on = f"on {measured.key['cpu']}, {name}"
    if measured.choice == "bf16":
        return PrecisionChoice("bf16", f"auto: {measured.ratio:.2f}x fp32 measured {on}; {where}")
    return PrecisionChoice("fp32", f"auto: fp32, bf16 measured {measured.ratio:.2f}x fp32 {on} (bf16 needs "
                                   f">= {BF16_MARGIN}x); {where}")


def _choose_here(device: torch.device, name: str, candidates: Callable) -> PrecisionChoice:
    """`auto` on this process's device, measured unless VITLAB_CALIBRATE=0."""
    if device.type == "cuda":
        return PrecisionChoice("bf16", "auto: CUDA")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: fp32 on {device.type}")
    if not calibration_enabled():
        amx = "amx_bf16" in cpu_bf16_flags()
        return PrecisionChoice("bf16" if amx else "fp32",
                               f"auto: VITLAB_CALIBRATE=0, {'' if amx else 'no '}amx_bf16: {'bf16' if amx else 'fp32'}")
    memo = (device.type, name, str(cache_file()))
    if memo not in _MEASURED:
        _MEASURED[memo] = _measured_choice(name, candidates)
    return _MEASURED[memo]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def choose_precision(precision: str, device: torch.device, model: nn.Module | None = None,
                     batch: int = 64) -> PrecisionChoice:
    """The one place a run's precision is chosen. 'bf16' / 'fp32' as set (never measured). `auto`: bf16 autocast
    on CUDA; on a CPU, bf16 only where a short calibration (`_precision_workload`: the model's own train pass at
    its per-device `batch`) measured it `vitlab._calibrate.BF16_MARGIN` times faster than fp32 (cached per CPU
    model, torch version and workload); with VITLAB_CALIBRATE=0 the flag rule (bf16 with `amx_bf16` only). Under
    torchrun rank 0 decides and every rank takes its decision (`vitlab._calibrate.agreed`): ranks cannot diverge."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    if precision != "auto":
        return PrecisionChoice(precision)
    name, candidates = _precision_workload(model, batch)
    if _world_size() > 1:
        decided = agreed(f"precision/{device.type}/{name}", lambda: asdict(_choose_here(device, name, candidates)),
                         dist.get_rank(), dist.distributed_c10d._get_default_store())
        return PrecisionChoice(**decided)
    return _choose_here(device, name, candidates)


def _per_device_batch(config: TrainConfig) -> int:
    return max(1, config.batch_size // (_world_size() * config.grad_accum_steps))


def describe_precision(config: TrainConfig, device: torch.device, model: nn.Module | None = None) -> list[str]:
    """The start-up lines about the precision: which one and why, and a warning where bf16 is emulated."""
    choice = choose_precision(config.precision, device, model, _per_device_batch(config))
    lines = [f"precision: {'bf16 autocast' if choice.precision == 'bf16' else 'fp32'}"
             + (f" ({choice.why})" if choice.why else "")]
    if device.type == "cpu" and config.precision == "bf16" and not cpu_bf16_flags():
        lines.append("precision=bf16 on a CPU without bf16 matrix instructions (no amx_bf16 / avx512_bf16 in "
                     "/proc/cpuinfo): its bf16 matrix products are emulated and slower than fp32 "
                     "(benchmarks/bf16_cpu.py measures by how much); precision=fp32 is the fast choice here")
    return lines


def resolve_precision(precision: str, device: torch.device, model: nn.Module | None = None, batch: int = 64) -> str:
    """'bf16' or 'fp32' for a `precision` setting on `device` (`choose_precision`, which says why)."""
    return choose_precision(precision, device, model, batch).precision


def autocast_for(config: TrainConfig, device: torch.device, model: nn.Module | None = None):
    """The autocast context of `config.precision` on `device` (disabled for fp32)."""
    bf16 = choose_precision(config.precision, device, model, _per_device_batch(config)).precision == "bf16"
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
