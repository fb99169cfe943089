"""The training configuration: one typed dataclass, presets are functions returning it, and `key=value` overrides
are checked against the field types (an unknown key is an error listing the valid ones)."""
from __future__ import annotations

import ast
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ..data.augment import AugmentConfig

__all__ = ["TrainConfig", "apply_overrides", "config_to_dict", "config_from_dict", "OverrideError"]


class OverrideError(ValueError):
    """A `key=value` override names no field or carries a value of the wrong type."""


@dataclass
class TrainConfig:
    # -- model ------------------------------------------------------------------------------------------------
    model: str = "vit_tiny_patch4_32"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor overrides (img_size, depth, ...)
    init: str | None = None  # None (the family's default), 'mimetic' or 'norm_matched'
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. alpha_qk, beta_qk, alpha_vo, beta_vo
    checkpoint: str | None = None  # weights to start from (ours, timm ViT, or an official CRATE / CRATE-α file)
    checkpoint_adapt: bool = True  # resize the stem kernel and interpolate positions when the patch grid differs
    pretrained: bool = False  # the model's published weights (pretrained_cfg url)
    # -- data -------------------------------------------------------------------------------------------------
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = False
    train_split: str = "train"
    eval_split: str = "test"
    image_size: int | None = None  # None: the dataset's own size (ImageFolder datasets need one)
    train_subset: int = 0  # N training images (0: all): the first N; ImageFolder: N drawn with a fixed seed
    eval_subset: int = 0  # images, or for text the first N windows of block_size tokens (0: the whole split)
    num_workers: int = 4  # DataLoader workers for encoded datasets: ImageFolder, shards (in-memory ones need none)
    crop_pct: float = 0.875  # encoded datasets: eval decode resizes the short side to image_size / crop_pct, crops
    shuffle_buffer: int = 10000  # shards: the shuffle buffer of the streamed order (shard order + buffer); 0: none
    data_errors: str = "raise"  # encoded datasets: 'raise' (stop, naming the file) or 'skip' (counted, logged)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # -- text (language-model datasets: tinyshakespeare, wikitext2, wikitext103, openwebtext, textfile:PATH) -----
    tokenizer: str = "char"  # 'char', 'bpe' / 'bpe:N' (byte-level BPE trained on the train split), 'gpt2' (tiktoken)
    block_size: int = 256  # context length of the training windows (and of the model)
    # -- optimisation -----------------------------------------------------------------------------------------
    optimizer: str = "adamw"  # 'adamw', 'adam' (decoupled weight decay, as the JAX recipes) or 'lion'
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"  # 'cosine' (linear warmup then cosine), 'piecewise' (0 → lr at 40% → lr/20 at 80% → 0)
    warmup_epochs: float = 0.0
    epochs: float = 10.0
    batch_size: int = 128  # global batch: split over ranks, and over accumulation steps
    grad_accum_steps: int = 1
    grad_clip: float = 0.0  # max global gradient norm, 0: off
    # -- machinery --------------------------------------------------------------------------------------------
    precision: str = "auto"  # 'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'fp32', 'bf16'
    compile: bool = False
    grad_checkpointing: bool = False  # recompute each block in backward: less activation memory, same results
    distributed: str = "ddp"  # under torchrun: 'ddp' or 'fsdp' (FSDP2 fully_shard per block)
    device: str = "auto"
    seed: int = 0
    eval_every: float = 1.0  # epochs between evaluations (and checkpoints)
    log_every: int = 50  # steps between log lines (and NaN/inf checks)
    out_dir: str = "runs/{preset}"
    tensorboard: bool = False
    progress: bool | None = None  # None: a progress bar when stdout is a terminal
    max_steps: int = 0  # stop after this many optimiser steps of the schedule (0: run to the end); resumable
    # -- step-based budgets (nanoGPT style; 0: use the epoch-based fields above) --------------------------------
    steps: int = 0  # total optimiser steps of the schedule (instead of epochs)
    warmup_steps: int = 0  # instead of warmup_epochs
    eval_interval: int = 0  # steps between evaluations (instead of eval_every)
    peak_tflops: float = 0.0  # the device's peak (TFLOP/s) for the MFU log; 0: known GPUs only


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    """Converts `text` to `annotation` (bool, int, float, str, tuple, dict, Optional[...])."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _parse_value(text, inner[0], key)
        for candidate in inner:
            try:
                return _parse_value(text, candidate, key)
            except OverrideError:
                continue
        raise OverrideError(f"{key}={text!r}: expected one of {inner}")
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise OverrideError(f"{key}={text!r}: expected a boolean (true/false)")
    if annotation in (int, float):
        try:
            value = annotation(float(text)) if annotation is int and float(text).is_integer() else annotation(text)
        except ValueError:
            raise OverrideError(f"{key}={text!r}: expected {annotation.__name__}") from None
        return value
    if annotation is str:
        return text
    if origin in (tuple, dict, list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise OverrideError(f"{key}={text!r}: expected a Python {origin.__name__} literal") from None
        if not isinstance(value, origin):
            value = origin(value) if origin is tuple and isinstance(value, list) else value
        if not isinstance(value, origin):
            raise OverrideError(f"{key}={text!r}: expected a {origin.__name__}")
        return value
    raise OverrideError(f"{key}: cannot parse a value of type {annotation}")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Applies `key=value` strings: top-level fields, `augment.<field>`, and free keys of the dict fields
    (`model_kwargs.depth=6`, `init_kwargs.alpha_qk=0.5`, values as Python literals)."""
    config = dataclasses.replace(config, augment=dataclasses.replace(config.augment),
                                 model_kwargs=dict(config.model_kwargs), init_kwargs=dict(config.init_kwargs))
    top, aug = _field_types(TrainConfig), _field_types(AugmentConfig)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise OverrideError(f"override {item!r} is not of the form key=value")
        head, _, rest = key.partition(".")
        if head in ("model_kwargs", "init_kwargs") and rest:
            getattr(config, head)[rest] = _literal(text)
        elif head == "augment" and rest:
            if rest not in aug:
                raise OverrideError(f"unknown key {key!r}; augment keys: {', '.join(sorted(aug))}")
            setattr(config.augment, rest, _parse_value(text, aug[rest], key))
        elif key in top and key != "augment":
            setattr(config, key, _parse_value(text, top[key], key))
        else:
            valid = sorted(k for k in top if k != "augment") + ["augment.<" + "|".join(sorted(aug)) + ">",
                                                                 "model_kwargs.<name>", "init_kwargs.<name>"]
            raise OverrideError(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
    try:
        config.augment.validate()
    except ValueError as err:
        raise OverrideError(str(err)) from None
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of config_to_dict (as saved in a run's config.json); unknown keys are an error."""
    data = dict(data)
    augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("augment", {}).items()})
    top = _field_types(TrainConfig)
    unknown = sorted(set(data) - set(top))
    if unknown:
        raise OverrideError(f"unknown config keys {unknown}")
    data = {k: tuple(v) if isinstance(v, list) and typing.get_origin(top[k]) is tuple else v for k, v in data.items()}
    return TrainConfig(augment=augment, **data)
