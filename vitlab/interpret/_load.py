"""Loading a model to look inside: a vitlab run directory (rebuilt from its config.json, with the run's input
preprocessing in `pretrained_cfg`), or any weight file `load_checkpoint` reads plus a model name (our safetensors /
.pth, timm and Hugging Face ViT state dicts, official CRATE / CRATE-α)."""
from __future__ import annotations

import ast
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["load_model", "parse_model_kwargs", "LanguageModelRunError"]


def parse_model_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """['img_size=32', 'pos_embed=sincos'] → {'img_size': 32, 'pos_embed': 'sincos'}: values are Python literals,
    anything that is not one stays a string."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"model kwargs must be key=value pairs (e.g. img_size=32), got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _shape_kwargs(state_dict: dict[str, torch.Tensor], name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Constructor kwargs (depth, num_classes, in_chans, patch_size, img_size) read off a vitlab/timm-layout state
    dict, for the keys `given` does not set (a run's model_kwargs win, as in training)."""
    found: dict[str, Any] = {}
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        found["depth"] = max(blocks) + 1
    if "head.weight" in state_dict:
        found["num_classes"] = state_dict["head.weight"].shape[0]
    kernel = state_dict.get("patch_embed.proj.weight")  # conv (d, C, p, p) or linear (d, C·p·p) stem
    patch = given.get("patch_size")
    if kernel is not None and kernel.ndim == 4:
        found["in_chans"], patch = kernel.shape[1], patch or kernel.shape[-1]
        found["patch_size"] = patch
    elif kernel is not None and kernel.ndim == 2:
        from ..models import create_model

        patch = patch or create_model(name, **given).patch_embed.patch_size  # the family default
        found["in_chans"] = kernel.shape[1] // (patch * patch)
    pos = state_dict.get("pos_embed")  # (1, prefix + grid², d)
    if pos is not None and patch:
        grid = math.isqrt(pos.shape[1] - int("cls_token" in state_dict))
        found["img_size"] = grid * patch
    return {k: v for k, v in found.items() if k not in given}


class LanguageModelRunError(ValueError):
    """Attention maps, segmentation and weight plots are for image models; this checkpoint is a language model."""


def _refuse_language_model(name: str, source: str | os.PathLike) -> None:
    """Raises `LanguageModelRunError` when model `name` is a language model (task 'lm')."""
    from ..models import get_pretrained_cfg

    if get_pretrained_cfg(name).get("task") == "lm":
        raise LanguageModelRunError(
            f"{source}: {name!r} is a language model; `vitlab attention`, `segment` and `plot-weights` are for image "
            f"models (ViT, CRATE, CRATE-α). For a language-model run try `vitlab generate {source}` or `vitlab eval "
            f"{source}`")


def _build_and_load(name: str, kwargs: dict[str, Any], weights: Path) -> nn.Module:
    """create_model(name, **kwargs) with the shapes the weights imply (vitlab/timm layout) filled in, then a strict
    `load_checkpoint` (layout auto: vitlab, timm ViT, official CRATE / CRATE-α)."""
    from ..convert import detect_layout, load_checkpoint, read_weights, unwrap_state_dict
    from ..models import create_model, resolve_model_name

    _refuse_language_model(resolve_model_name(name), weights)  # an unknown name fails before the file is read
    state_dict = unwrap_state_dict(read_weights(weights), str(weights))
    if detect_layout(state_dict) == "vitlab":
        kwargs = {**kwargs, **_shape_kwargs(state_dict, name, kwargs)}
    return load_checkpoint(create_model(name, **kwargs), state_dict, layout="auto")


def load_model(checkpoint: str | os.PathLike, model: str | None = None,
                        model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, str]:
    """(model with the checkpoint's weights, short label). `checkpoint`: a vitlab run directory, its best/ or last/
    directory or weights file (the model is rebuilt from the run's config.json), or with `model` any weight file
    `load_checkpoint` reads (our safetensors / .pth, a timm ViT state dict, official CRATE / CRATE-α)."""
    from ..train.evaluate import resolve_checkpoint

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    weights, run_dir = resolve_checkpoint(path)
    config_file = run_dir / "config.json"
    label = f"{run_dir.name}_{weights.parent.name}" if config_file.is_file() else weights.stem
    if model is not None:
        return _build_and_load(model, dict(model_kwargs or {}), weights), label
    if not config_file.is_file():
        raise ValueError(f"{path}: not inside a vitlab run directory (no {config_file}); pass --model NAME (and "
                         "--model-kwargs key=value ...) to say which architecture the weights belong to")
    from ..train import config_from_dict

    config = config_from_dict(json.loads(config_file.read_text())["config"])
    _refuse_language_model(config.model, checkpoint)
    net = _build_and_load(config.model, {**config.model_kwargs, **(model_kwargs or {})}, weights)
    return _with_run_preprocessing(net, config), label


def _with_run_preprocessing(net: nn.Module, config) -> nn.Module:
    """Sets `pretrained_cfg` to what the run fed the model: its dataset's mean / std and channels, the model's input
    size, no extra crop (the run's images were resized to the input size)."""
    from ..data._locate import dataset_info

    info = dataset_info(config.dataset)
    size = net.patch_embed.grid_size * net.patch_embed.patch_size
    net.pretrained_cfg = {**getattr(net, "pretrained_cfg", {}), "mean": tuple(info.mean), "std": tuple(info.std),
                          "input_size": (len(info.mean), size, size), "crop_pct": 1.0,
                          "num_classes": getattr(net, "num_classes", None), "dataset": config.dataset}
    return net
