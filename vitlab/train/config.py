"""The training configuration: one typed dataclass, presets are functions returning it, and `key=value` overrides
are checked against the field types (an unknown key is an error listing the valid ones)."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.augment import AugmentConfig
from ..data.loader import default_num_workers

__all__ = ["TrainConfig", "apply_overrides", "config_to_dict", "config_from_dict", "OverrideError"]


class OverrideError(ValueError):
    """A `key=value` override names no field or carries a value of the wrong type."""


@dataclass
class TrainConfig:
    """Everything one training run needs. `validate()` checks every field (run by the constructor, at the end of
    `apply_overrides` and at the start of `train`) and raises `OverrideError` naming the key, the value and the valid
    range. Valid values (the comments below say what each does):

    - ints (a bool is not one): `batch_size`, `grad_accum_steps` (a divisor of batch_size), `block_size`, `log_every`
      >= 1; `train_subset`, `eval_subset`, `num_workers`, `shuffle_buffer`, `seed`, `max_steps`, `steps`,
      `warmup_steps` (<= steps when both are set), `eval_interval`, `context_length`, `heldout_templates`,
      `checkpoint_every_steps` >= 0; `eval_batches` >= 0, and > 0 only for a text dataset with `eval_subset` 0;
      `eval_stride` >= 1; `image_size` None or >= 1.
    - finite numbers: `lr`, `epochs`, `eval_every` > 0; `min_lr` in [0, lr]; `weight_decay`, `grad_clip`,
      `peak_tflops`, `checkpoint_every_minutes` >= 0; `warmup_epochs` in [0, epochs]; `crop_pct` in (0, 1]; `layer_decay` in (0, 1]; `betas` two numbers in [0, 1).
    - choices: `optimizer` adamw | adam | lion; `schedule` cosine | piecewise; `precision` auto | fp32 | bf16;
      `distributed` ddp | fsdp; `init` None | mimetic | norm_matched (`init_kwargs`: that init's keyword arguments,
      empty without an init); `head` None | linear | upernet (`head_kwargs`: the head's keyword arguments, empty
      without a head); `eval_mode` whole | slide; `data_errors` raise | skip; `device` auto | cpu | cuda | cuda:N | mps; `tokenizer`
      char | bpe | bpe:N (N >= 257) | gpt2, and for CLIP data clip | bert.
    - strings: `model` a registered model that `model_kwargs` can build (checked on the meta device); `dataset`,
      `train_split`, `eval_split`, `zeroshot_split`, `wandb_project`, `out_dir` (`{preset}` its one placeholder)
      non-empty;
      `data_dir`, `checkpoint`, `tokenizer_path`, `templates`, `class_names` None or a path; `zeroshot_dataset` None
      or a dataset name. Booleans are booleans (`progress` may be None); `augment` passes `AugmentConfig.validate`.
    """

    # -- model ------------------------------------------------------------------------------------------------
    model: str = "vit_tiny_patch4_32"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor overrides (img_size, depth, ...)
    init: str | None = None  # None (the family's default), 'mimetic' or 'norm_matched'
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. alpha_qk, beta_qk, alpha_vo, beta_vo
    checkpoint: str | None = None  # weights to start from: a file (ours, timm ViT, official CRATE / CRATE-α /
    # CRATE-α-CLIPA) or a run directory (its best/, else last/)
    checkpoint_adapt: bool = True  # resize the stem kernel and interpolate positions when the patch grid differs
    pretrained: bool = False  # the model's published weights (pretrained_cfg url)
    # -- semantic segmentation (datasets ade20k, ade20k_shards, fashion_mnist_scenes): `model` is the backbone -----
    head: str | None = None  # 'linear' (BN + 1×1 conv probe) or 'upernet'; needed by segmentation datasets only
    head_kwargs: dict[str, Any] = field(default_factory=dict)  # indices, channels, pool_scales, dropout, norm_features
    eval_mode: str = "whole"  # segmentation evaluation: 'whole' image, or 'slide' windows of image_size
    eval_stride: int = 341  # sliding-window stride (pixels; mmsegmentation's ADE20K 512 crop uses 341)
    # -- data -------------------------------------------------------------------------------------------------
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = False
    train_split: str = "train"
    eval_split: str = "test"
    image_size: int | None = None  # None: the dataset's own size (ImageFolder datasets need one)
    train_subset: int = 0  # N training images (0: all): the first N; ImageFolder: N drawn with a fixed seed
    eval_subset: int = 0  # images, or for text the first N windows of block_size tokens (0: the whole split)
    # text only: each evaluation reads N random batches of batch_size / grad_accum_steps windows (nanoGPT's
    # estimate_loss with eval_iters=N: fresh offsets every evaluation, seeded by seed and the training position, so
    # a resumed run draws the same ones); 0: the whole split (or its first eval_subset windows)
    eval_batches: int = 0
    # DataLoader workers per process for encoded datasets (ImageFolder, shards; in-memory ones need none). Default:
    # this process's CPUs / processes on the node (LOCAL_WORLD_SIZE), capped at 8 (`default_num_workers`)
    num_workers: int = field(default_factory=default_num_workers)
    crop_pct: float = 0.875  # encoded datasets: eval decode resizes the short side to image_size / crop_pct, crops
    shuffle_buffer: int = 10000  # shards: the shuffle buffer of the streamed order (shard order + buffer); 0: none
    data_errors: str = "raise"  # encoded datasets: 'raise' (stop, naming the file) or 'skip' (counted, logged)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # -- text (language-model datasets: tinyshakespeare, wikitext2, wikitext103, openwebtext, textfile:PATH) -----
    tokenizer: str = "char"  # 'char', 'bpe' / 'bpe:N' (byte-level BPE trained on the train split), 'gpt2' (tiktoken)
    block_size: int = 256  # context length of the training windows (and of the model)
    # -- image–text (CLIP) datasets: fashion_mnist_captions, image_text:ROOT; `model` a CLIP (task 'clip') -------
    # `tokenizer` there: 'clip' / 'bert' (local vocabulary files) or 'bpe:N' (trained on the training captions)
    tokenizer_path: str | None = None  # a 'clip' / 'bert' vocabulary file or folder (None: the standard places)
    context_length: int = 0  # text tokens per caption (0: the model's, e.g. CLIPA's 32; CLIP's BPE 77; else 32)
    freeze_text: bool = False  # train the image tower against a frozen text tower (CLIPA; load it via checkpoint)
    templates: str | None = None  # prompt templates file, one per line with {} (None: vitlab's photo templates)
    heldout_templates: int = 0  # class-captioned data: the last N templates caption nothing in training (zero-shot)
    zeroshot_dataset: str | None = None  # image_text data: a labelled dataset classified zero-shot at each evaluation
    zeroshot_split: str = "val"
    class_names: str | None = None  # zero-shot class names file (one per line, or ImageNet's LOC_synset_mapping)
    # -- optimisation -----------------------------------------------------------------------------------------
    optimizer: str = "adamw"  # 'adamw', 'adam' (decoupled weight decay, as the JAX recipes) or 'lion'
    lr: float = 1e-3
    layer_decay: float = 1.0  # layer-wise lr decay (BEiT / MAE fine-tuning): block i's lr × decay^(L + 1 − i); 1: off
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
    precision: str = "auto"  # 'auto' (bf16 on CUDA; on a CPU where measured faster: train.build), 'fp32', 'bf16'
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
    # -- run directory: resume, extra checkpoints, preemption (docs/clusters.md) ----------------------------------
    resume: bool = True  # False: start afresh; a previous run in out_dir is moved aside into out_dir/previous-<time>/
    checkpoint_every_steps: int = 0  # also write last/ (no evaluation, no best/) every N steps; 0: off
    checkpoint_every_minutes: float = 30.0  # also write last/ when this much wall time passed since the last write; 0: off
    wandb: bool = False  # also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works without a network)
    wandb_project: str = "vitlab"
    # -- step-based budgets (nanoGPT style; 0: use the epoch-based fields above) --------------------------------
    steps: int = 0  # total optimiser steps of the schedule (instead of epochs)
    warmup_steps: int = 0  # instead of warmup_epochs
    eval_interval: int = 0  # steps between evaluations (instead of eval_every)
    peak_tflops: float = 0.0  # the device's peak (TFLOP/s) for the MFU log; 0: known GPUs only

    def __post_init__(self) -> None:
        self.validate(check_model=False)  # the model is built (on the meta device) by validate() only

    def validate(self, check_model: bool = True) -> None:
        """Checks every field (the ranges are in the class docstring); raises OverrideError naming the key, the
        value and what is valid. `check_model`: also build `model(**model_kwargs)` on the meta device."""
        _check_types(self)
        _check_numbers(self)
        _check_choices(self)
        if not isinstance(self.augment, AugmentConfig):
            raise OverrideError(f"augment={self.augment!r}: must be an AugmentConfig")
        try:
            self.augment.validate()
        except ValueError as err:
            raise OverrideError(str(err)) from None
        if check_model:
            _check_model(self)


_CHOICES: dict[str, tuple] = {
    "optimizer": ("adamw", "adam", "lion"),
    "schedule": ("cosine", "piecewise"),
    "precision": ("auto", "fp32", "bf16"),
    "distributed": ("ddp", "fsdp"),
    "init": (None, "mimetic", "norm_matched"),
    "data_errors": ("raise", "skip"),
    "head": (None, "linear", "upernet"),
    "eval_mode": ("whole", "slide"),
}
_INT_MINIMUM = {"batch_size": 1, "grad_accum_steps": 1, "block_size": 1, "log_every": 1, "train_subset": 0,
                "context_length": 0, "heldout_templates": 0, "eval_subset": 0, "eval_batches": 0, "num_workers": 0,
                "shuffle_buffer": 0, "seed": 0, "max_steps": 0, "steps": 0,
                "warmup_steps": 0, "eval_interval": 0, "eval_stride": 1, "checkpoint_every_steps": 0}
_POSITIVE = ("lr", "epochs", "eval_every")  # finite numbers > 0
_NON_NEGATIVE = ("min_lr", "weight_decay", "grad_clip", "peak_tflops", "warmup_epochs", "checkpoint_every_minutes")  # finite numbers >= 0
_BOOLS = ("checkpoint_adapt", "freeze_text", "pretrained", "download", "compile", "grad_checkpointing",
          "tensorboard", "resume", "wandb")
_NON_EMPTY = ("model", "dataset", "train_split", "eval_split", "zeroshot_split", "out_dir", "tokenizer", "wandb_project")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _bad(key: str, value: Any, rule: str) -> OverrideError:
    return OverrideError(f"{key}={value!r}: {rule}")


def _check_types(c: TrainConfig) -> None:
    """Booleans, strings and dicts."""
    for key in _BOOLS:
        if not isinstance(getattr(c, key), bool):
            raise _bad(key, getattr(c, key), "must be a boolean (true / false)")
    if c.progress is not None and not isinstance(c.progress, bool):
        raise _bad("progress", c.progress, "must be None or a boolean (true / false)")
    for key in _NON_EMPTY:
        if not isinstance(getattr(c, key), str) or not getattr(c, key).strip():
            raise _bad(key, getattr(c, key), "must be a non-empty string")
    for key in ("data_dir", "checkpoint", "tokenizer_path", "templates", "zeroshot_dataset", "class_names"):
        if getattr(c, key) is not None and not isinstance(getattr(c, key), str):
            raise _bad(key, getattr(c, key), "must be None or a path")
    try:
        c.out_dir.format(preset="run")
    except (KeyError, IndexError, ValueError):
        raise _bad("out_dir", c.out_dir, "must be a path whose only placeholder is {preset}") from None
    for key in ("model_kwargs", "init_kwargs", "head_kwargs"):
        value = getattr(c, key)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _bad(key, value, "must be a dict with string keys")


def _check_numbers(c: TrainConfig) -> None:
    for key, minimum in _INT_MINIMUM.items():
        if not _is_int(getattr(c, key)) or getattr(c, key) < minimum:
            raise _bad(key, getattr(c, key), f"must be an int >= {minimum}")
    if c.image_size is not None and (not _is_int(c.image_size) or c.image_size < 1):
        raise _bad("image_size", c.image_size, "must be None (the dataset's size) or an int >= 1")
    for key in _POSITIVE:
        if not _is_number(getattr(c, key)) or getattr(c, key) <= 0:
            raise _bad(key, getattr(c, key), "must be a finite number > 0")
    for key in _NON_NEGATIVE:
        if not _is_number(getattr(c, key)) or getattr(c, key) < 0:
            raise _bad(key, getattr(c, key), "must be a finite number >= 0")
    if c.min_lr > c.lr:
        raise _bad("min_lr", c.min_lr, f"must be a finite number in [0, lr={c.lr!r}]")
    if not _is_number(c.layer_decay) or not 0 < c.layer_decay <= 1:
        raise _bad("layer_decay", c.layer_decay, "must be a finite number in (0, 1] (1: off)")
    if not _is_number(c.crop_pct) or not 0 < c.crop_pct <= 1:
        raise _bad("crop_pct", c.crop_pct, "must be a finite number in (0, 1]")
    if (not isinstance(c.betas, (tuple, list)) or len(c.betas) != 2
            or not all(_is_number(b) and 0 <= b < 1 for b in c.betas)):
        raise _bad("betas", c.betas, "must be two numbers (beta1, beta2), each in [0, 1)")
    if c.batch_size % c.grad_accum_steps:
        raise _bad("grad_accum_steps", c.grad_accum_steps, f"must divide batch_size={c.batch_size}")
    if c.steps == 0 and c.warmup_steps == 0 and c.warmup_epochs > c.epochs:
        raise _bad("warmup_epochs", c.warmup_epochs, f"must be a finite number in [0, epochs={c.epochs!r}]")
    if c.steps > 0 and c.warmup_steps > c.steps:
        raise _bad("warmup_steps", c.warmup_steps, f"must be an int in [0, steps={c.steps}]")
    if c.eval_batches:
        _check_eval_batches(c)


def _check_eval_batches(c: TrainConfig) -> None:
    """eval_batches > 0: a text dataset, and not together with eval_subset (two different evaluation budgets)."""
    from ..text import TEXT_DATASETS

    if c.dataset not in TEXT_DATASETS and not c.dataset.startswith("textfile:"):
        raise _bad("eval_batches", c.eval_batches, f"is for text datasets (random windows of block_size tokens); "
                   f"dataset {c.dataset!r} is not one: leave it 0 (use eval_subset to shorten an image evaluation)")
    if c.eval_subset:
        raise _bad("eval_batches", c.eval_batches, f"and eval_subset={c.eval_subset} are two evaluation budgets: set "
                   "one of them (eval_batches: random batches; eval_subset: the first windows of the split)")


def _check_choices(c: TrainConfig) -> None:
    for key, choices in _CHOICES.items():
        if getattr(c, key) not in choices:
            raise _bad(key, getattr(c, key), "must be one of " + ", ".join(map(repr, choices)))
    if not isinstance(c.device, str) or not _DEVICE.fullmatch(c.device):
        raise _bad("device", c.device, "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    from ..text.tokenizers import parse_tokenizer_spec

    try:
        if c.tokenizer not in ("clip", "bert"):  # CLIP text towers' vocabularies (read from local files)
            parse_tokenizer_spec(c.tokenizer)
    except ValueError as err:
        raise _bad("tokenizer", c.tokenizer, str(err)) from None
    if c.head is None and c.head_kwargs:
        raise _bad("head_kwargs", c.head_kwargs, "must be empty without a segmentation head (head=linear|upernet)")
    if c.init is None:
        if c.init_kwargs:
            raise _bad("init_kwargs", c.init_kwargs, "must be empty without an init (init=mimetic|norm_matched)")
        return
    from ..init import mimetic_init_, norm_matched_init_

    fn = mimetic_init_ if c.init == "mimetic" else norm_matched_init_
    valid = [name for name in list(inspect.signature(fn).parameters)[1:] if name not in ("seed", "generator")]
    unknown = sorted(set(c.init_kwargs) - set(valid))
    if unknown:
        raise _bad("init_kwargs", c.init_kwargs, f"unknown key(s) {unknown} for init={c.init!r}; valid: "
                   + ", ".join(valid) + " (the seed is the config's seed)")


def _check_model(c: TrainConfig) -> None:
    """Builds the model with the user's model_kwargs on the meta device (no memory, no init cost): an unknown name
    or a constructor error (depth=0, ...) is reported here, before any data is read or a run directory is made.
    The data-derived kwargs (num_classes, vocab_size, ...) are left at the model's defaults, except an image model's
    img_size where the user's kwargs leave it out: `image_size` when set, else (the dataset's size is not known
    before its files are read) a placeholder that the user's patch_size divides."""
    from ..models import SegmentationModel, check_model_size, create_model, get_pretrained_cfg

    kwargs = dict(c.model_kwargs)
    try:
        with torch.device("meta"):
            task = get_pretrained_cfg(c.model).get("task")
            if task == "clip":  # the image tower's size goes in image_kwargs
                image_kwargs = dict(kwargs.get("image_kwargs") or {})
                _placeholder_img_size(image_kwargs, c.image_size)
                kwargs["image_kwargs"] = image_kwargs
            elif task != "lm":
                _placeholder_img_size(kwargs, c.image_size)
            model = create_model(c.model, **kwargs)
    except Exception as err:  # any constructor error means these kwargs cannot build this model
        raise OverrideError(f"model={c.model!r} model_kwargs={c.model_kwargs!r}: {err}") from None
    if c.head is None or task in ("lm", "clip"):
        return
    try:  # the head on the meta backbone (2 classes: the head's size hardly depends on them)
        with torch.device("meta"):
            check_model_size(SegmentationModel(model, 2, c.head, **c.head_kwargs), f"head={c.head!r}")
    except Exception as err:
        raise OverrideError(f"head={c.head!r} head_kwargs={c.head_kwargs!r}: {err}") from None


def _placeholder_img_size(kwargs: dict, image_size: int | None) -> None:
    if "img_size" in kwargs:
        return
    if image_size is not None:
        kwargs["img_size"] = image_size
    elif _is_int(kwargs.get("patch_size")) and kwargs["patch_size"] >= 1:
        kwargs["img_size"] = 2 * kwargs["patch_size"]


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
                                 model_kwargs=dict(config.model_kwargs), init_kwargs=dict(config.init_kwargs),
                                 head_kwargs=dict(config.head_kwargs))
    top, aug = _field_types(TrainConfig), _field_types(AugmentConfig)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise OverrideError(f"override {item!r} is not of the form key=value")
        head, _, rest = key.partition(".")
        if head in ("model_kwargs", "init_kwargs", "head_kwargs") and rest:
            getattr(config, head)[rest] = _literal(text)
        elif head == "augment" and rest:
            if rest not in aug:
                raise OverrideError(f"unknown key {key!r}; augment keys: {', '.join(sorted(aug))}")
            setattr(config.augment, rest, _parse_value(text, aug[rest], key))
        elif key in top and key != "augment":
            setattr(config, key, _parse_value(text, top[key], key))
        else:
            valid = sorted(k for k in top if k != "augment") + ["augment.<" + "|".join(sorted(aug)) + ">",
                                                                 "model_kwargs.<name>", "init_kwargs.<name>",
                                                                 "head_kwargs.<name>"]
            raise OverrideError(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
    config.validate()
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
