"""Loading a model to look inside: a vitlab run directory (rebuilt from its config.json, with the run's input
preprocessing in `pretrained_cfg`), or any weight file `load_checkpoint` reads plus a model name (our safetensors /
.pth, timm and Hugging Face ViT state dicts, official CRATE / CRATE-α)."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..data import resolve_data_config

__all__ = ["load_model", "parse_model_kwargs", "LanguageModelRunError", "with_run_preprocessing"]


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
    from ..models import create_model, resolve_model_name, shape_kwargs

    _refuse_language_model(resolve_model_name(name), weights)  # an unknown name fails before the file is read
    state_dict = unwrap_state_dict(read_weights(weights), str(weights))
    if detect_layout(state_dict) == "vitlab":
        kwargs = {**kwargs, **shape_kwargs(state_dict, name, kwargs)}
    return load_checkpoint(create_model(name, **kwargs), state_dict, layout="auto")


def load_model(checkpoint: str | os.PathLike, model: str | None = None,
               model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, str]:
    """(model with the checkpoint's weights, short label for file names). `checkpoint`: a vitlab run directory, its
    best/ or last/ directory or weights file, or a `save_pretrained` directory (the model is rebuilt from the
    weights' own description, or an older run's config.json), or with `model` any weight file `load_checkpoint`
    reads (our safetensors / .pth, a timm ViT state dict, official CRATE / CRATE-α). The architecture as built,
    e.g. `vit_tiny_patch4_32(patch_size=7, embed_dim=96)`, is `model.pretrained_cfg['label']` (for titles). A
    segmentation run gives its backbone."""
    from ..models import create_model, resolve_model_name, resolve_source
    from ..models.segmentation import SegmentationModel

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if model is not None:  # said before any file is read
        _refuse_language_model(resolve_model_name(model), checkpoint)
    source = resolve_source(path)
    weights, run_dir, spec = source.weights, source.run_dir, source.spec
    label = f"{run_dir.name}_{weights.parent.name}" if run_dir is not None else weights.stem
    described = spec is not None and (model is None or resolve_model_name(model) == spec["architecture"])
    if model is not None and not described:
        return _build_and_load(model, dict(model_kwargs or {}), weights), label
    if spec is None:
        raise ValueError(f"{path}: not inside a vitlab run directory and its weights do not describe their model; "
                         "pass --model NAME (and --model-kwargs key=value ...) to say which architecture the weights "
                         "belong to")
    _refuse_language_model(spec["architecture"], checkpoint)
    net = create_model(checkpoint_path=weights, **(model_kwargs or {}))
    if isinstance(net, SegmentationModel):
        net = net.backbone
    if run_dir is None:
        return net, label
    from ..train import config_from_dict

    config = config_from_dict(json.loads((run_dir / "config.json").read_text())["config"])
    return with_run_preprocessing(net, config, run_dir), label


def with_run_preprocessing(net: nn.Module, config, run_dir: Path | None = None) -> nn.Module:
    """Sets `net.pretrained_cfg` to what a run (its TrainConfig `config`) fed the model: its dataset's mean / std
    and channels (a segmentation run's from its `run_dir`/segmentation.json), the model's input size, no extra crop
    (crop_pct 1.0: interpretation sees the whole short side, whatever crop the run's eval decode used), through
    `vitlab.data.resolve_data_config(net, run_config=config)`."""
    from ..data.segmentation import is_segmentation_dataset

    overrides = {}
    if run_dir is not None and is_segmentation_dataset(config.dataset):  # not in the classification registry
        meta = json.loads((run_dir / "segmentation.json").read_text())  # what the segmentation run normalised with
        overrides = {"mean": tuple(meta["mean"]), "std": tuple(meta["std"])}
    size = net.patch_embed.grid_size * net.patch_embed.patch_size
    data = resolve_data_config(net, run_config=config, crop_pct=1.0, **overrides)
    net.pretrained_cfg = {**getattr(net, "pretrained_cfg", {}), "mean": data.mean, "std": data.std,
                          "input_size": (data.in_chans, size, size), "crop_pct": 1.0,
                          "num_classes": getattr(net, "num_classes", None), "dataset": config.dataset}
    return net
