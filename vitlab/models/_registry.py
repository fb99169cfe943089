"""Model registry with timm semantics: `register_model`, `list_models(pattern)`, `create_model(name, **overrides)`.

Canonical names are timm style (`crate_alpha_base_patch16_224`); each image model also gets a short alias
(`crate_alpha_b16`; `vit_t2_32` for 32 px models). Language models (pretrained_cfg task 'lm': `gpt2`,
`crate_lm_base`, ...) have no alias. CLIP models have task 'clip' (`clip`, `crate_alpha_clipa_large_patch14_224` =
`crate_alpha_clipa_l14`).
"""
from __future__ import annotations

import fnmatch
import os
import re
from typing import Any, Callable

import torch
from torch import nn

from ._constants import IMAGENET_MEAN, IMAGENET_STD, MAX_PARAMETERS

__all__ = ["register_model", "list_models", "is_model", "create_model", "resolve_model_name", "get_pretrained_cfg",
           "has_pretrained_weights", "check_model_size", "short_alias", "register_init"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, dict[str, Any]] = {}
_ALIASES: dict[str, str] = {}
_INITS: dict[str, Callable[..., Any]] = {}  # create_model(init=NAME): filled by vitlab.init ('mimetic')
_SIZE_LETTERS = {"tiny": "t", "small": "s", "base": "b", "large": "l", "huge": "h"}


def short_alias(name: str) -> str | None:
    """`crate_alpha_base_patch16_224` → `crate_alpha_b16`; `vit_tiny_patch2_32` → `vit_t2_32`."""
    match = re.fullmatch(r"(.+)_(tiny|small|base|large|huge)_patch(\d+)_(\d+)", name)
    if match is None:
        return None
    family, size, patch, img = match.groups()
    suffix = "" if img == "224" else f"_{img}"
    return f"{family}_{_SIZE_LETTERS[size]}{patch}{suffix}"


def register_init(name: str, fn: Callable[..., Any]) -> None:
    """Makes `create_model(..., init=name, init_kwargs=...)` call `fn(model, **init_kwargs)` on the built model.
    vitlab.init registers 'mimetic' when it is imported (`vitlab.create_model` imports it)."""
    _INITS[name] = fn


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   alias: str | None = None, cfg: dict[str, Any] | None = None):
    """Decorator (or call): registers `fn` under `name` (default: its own name) and its short `alias`, with its
    pretrained_cfg. Both are written out where the model is registered (`grep -rn NAME vitlab/` finds them); a
    name of the `<family>_<size>_patch<P>_<img>` form must be given its alias, and the alias must be
    `short_alias(name)`."""

    def wrap(fn):
        nonlocal name
        name = name or fn.__name__
        if name in _MODELS or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
        if alias != short_alias(name):
            raise ValueError(f"model {name!r} registered with alias {alias!r}; its short alias is "
                             f"{short_alias(name)!r}")
        _MODELS[name] = fn
        _CFGS[name] = dict(cfg or {})
        if alias is not None:
            _ALIASES[alias] = name
        return fn

    return wrap(fn) if fn is not None else wrap


def has_pretrained_weights(name: str) -> bool:
    """Whether the model's pretrained_cfg names published weights (a `url` or a local `file`)."""
    cfg = _CFGS[resolve_model_name(name)]
    return bool(cfg.get("url") or cfg.get("file"))


def list_models(pattern: str | list[str] = "", include_aliases: bool = False, pretrained: bool = False) -> list[str]:
    """Sorted registered names matching a shell-style pattern (or any of several): `list_models('crate_alpha_*')`.
    `pretrained=True` keeps only models with published weights (a cfg `url` or `file`), as timm."""
    names = list(_MODELS) + (list(_ALIASES) if include_aliases else [])
    if pretrained:
        names = [n for n in names if has_pretrained_weights(n)]
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if patterns and any(patterns):
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns if p)]
    return sorted(names)


def is_model(name: str) -> bool:
    return name in _MODELS or name in _ALIASES


def resolve_model_name(name: str) -> str:
    """Canonical name of a model or alias; a clear error with close matches for an unknown one."""
    if name in _MODELS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    import difflib

    close = difflib.get_close_matches(name, list(_MODELS) + list(_ALIASES), n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} `vitlab.list_models()` lists all {len(_MODELS)} models.")


def get_pretrained_cfg(name: str) -> dict[str, Any]:
    return dict(_CFGS[resolve_model_name(name)])


def _fit_cfg_to_model(cfg: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The cfg's input size and channels as built (img_size / in_chans overrides), so images are prepared for this
    model; a mean / std with another channel count becomes its channel average, repeated (e.g. grayscale).
    `num_classes` keeps describing the published weights (a model built for other classes gets a fresh head).
    A language model's cfg gets the vocab_size and block_size it was built with. A CLIP model (task 'clip') follows
    its image tower `visual` (whose own cfg supplies mean / std / interpolation / crop_pct where the CLIP cfg has
    none, as the generic `clip` builder) and records its text context length and vocabulary as built."""
    if cfg.get("task") == "lm":
        return {**cfg, "vocab_size": model.vocab_size, "block_size": model.block_size}
    if cfg.get("task") == "clip":
        visual_cfg = getattr(model.visual, "pretrained_cfg", {})
        cfg = {**{k: visual_cfg[k] for k in ("mean", "std", "interpolation", "crop_pct") if k in visual_cfg},
               **cfg, "context_length": model.text.context_length, "vocab_size": model.text.vocab_size}
        model = model.visual
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        return cfg
    cfg = {**cfg, "input_size": (embed.in_chans, *embed.img_hw)}
    cfg.setdefault("mean", IMAGENET_MEAN)
    cfg.setdefault("std", IMAGENET_STD)
    for key in ("mean", "std"):
        if len(cfg[key]) != embed.in_chans:
            cfg[key] = (sum(cfg[key]) / len(cfg[key]),) * embed.in_chans
    return cfg


def create_model(name: str | None = None, pretrained: bool = False, *,
                 pretrained_cfg_overlay: dict[str, Any] | None = None,
                 checkpoint_path: str | os.PathLike | None = None, init: str | None = None,
                 init_kwargs: dict[str, Any] | None = None, features_only: bool = False,
                 out_indices: int | list[int] | tuple[int, ...] | None = None, **kwargs) -> nn.Module:
    """Builds a registered model: `create_model('crate_alpha_b16', num_classes=10, img_size=32)`.

    Args:
        pretrained: load the weights named by the model's pretrained_cfg (downloaded once into the cache).
        pretrained_cfg_overlay: entries that replace those of the registered pretrained_cfg (e.g. `url`, `file`).
        checkpoint_path: a local weight file (safetensors, or a .pth in our or an official layout) to load, or a
            directory holding `model.safetensors` (a run's best/ or last/, a `save_pretrained` directory) or a run
            directory. When the file describes its model (vitlab runs and `save_pretrained`; older runs through
            their config.json), `name` may be omitted and the stored constructor kwargs fill in those not passed;
            a segmentation run gives its `SegmentationModel` (backbone + head).
        init: None for the family's default initialisation, or 'mimetic' (Trockman & Kolter 2023; any name given to
            `register_init`).
        init_kwargs: keyword arguments for the chosen init, e.g. `dict(alpha_qk=0.7, beta_qk=0.7, seed=0)`.
        features_only: return a feature extractor (`FeatureGetterNet`, image models only) whose forward gives the
            (B, d, H/P, W/P) maps of the blocks `out_indices` selects (an int n: the last n, timm's ViT default 3;
            or block indices), after any weights are loaded; `.feature_info.channels()` / `.reduction()`.
        **kwargs: constructor overrides (num_classes, img_size, patch_size, embed_dim, depth, num_heads, ...;
            language models: vocab_size, block_size, n_layer, n_head, n_embd, dropout, ...).
    """
    if out_indices is not None and not features_only:
        raise ValueError(f"out_indices={out_indices!r} is only used with features_only=True")
    segmentation = None
    if checkpoint_path is not None:
        name, checkpoint_path, kwargs, segmentation = _from_described_weights(name, checkpoint_path, kwargs)
    elif name is None:
        raise TypeError("create_model() needs a model name, or a checkpoint_path whose weights describe their model")
    try:
        canonical = resolve_model_name(name)
    except ValueError as err:  # a name read from the weights' description: say which file gave it
        raise ValueError(f"{checkpoint_path}: its model description: {err}" if checkpoint_path else str(err)) from None
    if segmentation is not None and features_only:
        raise ValueError(f"features_only=True needs an image model; {checkpoint_path} holds a segmentation model")
    cfg = {**_CFGS[canonical], **(pretrained_cfg_overlay or {})}
    if features_only and cfg.get("task") in ("lm", "clip"):
        raise ValueError(f"features_only=True needs an image model; {canonical!r} is a {cfg['task']!r} model")
    # on the meta device first (module objects, no memory): a size no real model has, or weights whose tensors do
    # not fit the model described, is refused before anything is allocated
    with torch.device("meta"):
        probe = _build(canonical, name, kwargs, segmentation, checkpoint_path)
    if checkpoint_path:
        from ._pretrained import load_pretrained

        load_pretrained(probe, checkpoint_path=checkpoint_path)  # on a meta model: the shapes, read off the header
    model = _build(canonical, name, kwargs, None, checkpoint_path)
    model.pretrained_cfg = model.default_cfg = _fit_cfg_to_model({**cfg, "architecture": canonical}, model)
    model.vitlab_kwargs = dict(kwargs)  # what rebuilds it: saved in self-describing weights (see _hub.model_spec)
    from ._hub import describe_architecture

    model.pretrained_cfg["label"] = describe_architecture(canonical, kwargs)  # the model as built, for titles
    if isinstance(init, str) and init in _INITS:
        _INITS[init](model, **(init_kwargs or {}))
    elif init is not None:
        hint = "" if _INITS else (" (the inits register when vitlab.init is imported: `import vitlab.init` first, "
                                      "or call vitlab.create_model, which does)")
        raise ValueError(f"unknown init {init!r}; expected {' or '.join(['None', *map(repr, _INITS)])}{hint}")
    elif init_kwargs:
        raise ValueError("init_kwargs given without init")
    if segmentation is not None:
        model = _segmentation(model, segmentation)
    if pretrained or checkpoint_path:
        from ._pretrained import load_pretrained

        load_pretrained(model, checkpoint_path=checkpoint_path)
    if features_only:
        from ._features import DEFAULT_OUT_INDICES, FeatureGetterNet

        return FeatureGetterNet(model, DEFAULT_OUT_INDICES if out_indices is None else out_indices)
    return model


def _segmentation(backbone: nn.Module, segmentation: dict[str, Any]) -> nn.Module:
    from .segmentation import SegmentationModel

    return SegmentationModel(backbone, segmentation["num_classes"], segmentation.get("head", "upernet"),
                             **(segmentation.get("head_kwargs") or {}))


def _build(canonical: str, name: str, kwargs: dict[str, Any], segmentation: dict[str, Any] | None,
           checkpoint_path) -> nn.Module:
    """The registered builder's model (with the segmentation head when given); a constructor error names the
    weights whose description gave the kwargs, and a model of more than MAX_PARAMETERS is refused."""
    where = f"{checkpoint_path}: its model description" if checkpoint_path else f"create_model({name!r})"
    try:
        model = _MODELS[canonical](**kwargs)
        if segmentation is not None:
            model = _segmentation(model, segmentation)
    except TypeError as err:
        raise TypeError(f"{where}: {err}") from None
    except ValueError as err:
        if not checkpoint_path:
            raise
        raise ValueError(f"{where}: {err}") from None
    from ._hub import describe_architecture

    head = f" + {segmentation.get('head', 'upernet')} head" if segmentation is not None else ""
    check_model_size(model, f"{where}: {describe_architecture(canonical, kwargs)}{head}")
    return model


def check_model_size(model: nn.Module, label: str) -> None:
    """A ValueError starting with `label` when `model` (built on the meta device: nothing allocated) has more than
    MAX_PARAMETERS parameters, far beyond any real model (ViT-22B has 2.2e10)."""
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{label} has {count:.3g} parameters, more than {MAX_PARAMETERS:.0e}, far beyond any real "
                         "model (a typo in a size?)")


def _from_described_weights(name: str | None, checkpoint_path, kwargs: dict[str, Any]):
    """(name, weights file, kwargs, segmentation entry or None) for `create_model(name, checkpoint_path=...)`: the
    file's description (see `_hub.resolve_source`) supplies the name when none is given and, when it describes
    the same architecture, the constructor kwargs the caller did not pass (nested dicts key by key)."""
    from ._hub import merge_kwargs, resolve_source

    source = resolve_source(checkpoint_path)
    spec = source.spec
    if spec is None:
        if name is None:
            raise ValueError(f"{checkpoint_path}: the weights do not say which model they belong to (no vitlab "
                             "metadata, no config.json); pass the model name: create_model(NAME, "
                             "checkpoint_path=...)")
        return name, source.weights, kwargs, None
    if name is not None and resolve_model_name(name) != resolve_model_name(spec["architecture"]):
        return name, source.weights, kwargs, None  # another architecture: the caller's kwargs only (fine-tuning)
    return spec["architecture"], source.weights, merge_kwargs(spec["kwargs"], kwargs), spec.get("segmentation")
