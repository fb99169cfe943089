"""Reading weight files safely and loading them, in our layout or an official one, with strict checks: the one
place weight files are read, used by `create_model(pretrained=True / checkpoint_path=...)`, by vitlab.convert and
by everything above.

Files users hand us are untrusted: safetensors files are read as tensors only, and pickled `.pth` files go through
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers (no code runs).

Official layouts (CRATE, CRATE-α, CRATE-α-CLIPA, Hugging Face ViT, GPT-2) are key maps that vitlab.convert
registers here when it is imported (`register_layout`); `vitlab.create_model` imports it, so pretrained official
weights load through it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .adapt import adapt_state_dict

__all__ = ["CheckpointMismatchError", "resolve_weights_path", "read_weights", "unwrap_state_dict", "convert_state_dict",
           "load_checkpoint", "Layout", "LAYOUTS", "register_layout", "detect_layout"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Layout:
    """A foreign key layout: `convert(state_dict, model)` renames its keys to ours, `after_load(model)` runs after a
    successful load (e.g. a LayerNorm eps the weights were trained with)."""
    name: str
    marker: str | None  # a key only this layout has (None: recognised by `detect`)
    convert: Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    after_load: Callable[[nn.Module], None] = lambda model: None
    detect: Callable[[Mapping[str, torch.Tensor]], bool] | None = None  # for layouts told apart by shapes


LAYOUTS: dict[str, Layout] = {}  # filled by vitlab.convert (register_layout), in detection order


def register_layout(layout: Layout) -> Layout:
    """Adds `layout` to LAYOUTS: `load_checkpoint(layout=name)` uses it and `detect_layout` recognises it."""
    if layout.name in LAYOUTS or layout.name in ("auto", "vitlab"):
        raise ValueError(f"checkpoint layout {layout.name!r} is registered twice")
    LAYOUTS[layout.name] = layout
    return layout


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'crate_alpha_clipa_official' (key `visual.transformer.resblocks.0.mlp.c_fc`), 'crate_official',
    'crate_alpha_official', 'hf_vit', 'gpt2_hf' (Conv1D c_attn (d, 3d)), 'nanogpt' (GPT-2 keys in nn.Linear layout
    without the `transformer.` prefix or with mask buffers), or 'vitlab' (our keys, also timm's for the ViT and
    nanoGPT's for GPT): the first registered layout that recognises the keys."""
    for layout in LAYOUTS.values():
        if layout.detect is not None:
            if layout.detect(state_dict):
                return layout.name
        elif layout.marker in state_dict or "vit." + layout.marker in state_dict:
            return layout.name
    return "vitlab"


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model; the message lists every difference."""


_WEIGHTS_FILE = "model.safetensors"


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """The weight file `path` names: the file itself, or a directory's `model.safetensors` (a checkpoint directory
    such as a run's best/ or last/, or a `save_pretrained` / Hugging Face model directory), or a run directory's
    best/, else last/ weights. A checkpoint directory's `.old` stage (left by a crash mid-swap) is used when the
    directory itself is missing."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path, path / "best", path / "last"):
        for directory in (candidate, candidate.with_name(candidate.name + ".old")):
            if (directory / _WEIGHTS_FILE).is_file():
                return directory / _WEIGHTS_FILE
    if path.is_dir():
        raise FileNotFoundError(f"no weights in {path}: expected {_WEIGHTS_FILE} in it (a checkpoint or "
                                "save_pretrained directory) or in its best/ or last/ (a run directory)")
    raise FileNotFoundError(f"checkpoint file not found: {path}")


# safetensors' dtype names (the header's "dtype" field)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as meta tensors of their shapes and dtypes, read off the header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        out = {}
        for key in handle.keys():
            info = handle.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(info.get_dtype(), torch.float32)
            out[key] = torch.empty(info.get_shape(), dtype=dtype, device="meta")
        return out


def read_weights(path: str | os.PathLike, shapes_only: bool = False) -> dict:
    """Loads a weight file: `.safetensors`, or a PyTorch pickle (`.pth`, `.pt`, `.pth.tar`, `.bin`, `.t7`) read with
    `weights_only=True`; a directory is resolved by `resolve_weights_path`. Errors name the file. `shapes_only`: a
    safetensors file gives meta tensors read off its header (no data read); a pickle is read whole."""
    path = Path(path)
    if path.is_dir():
        path = resolve_weights_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _safetensors_shapes(path) if shapes_only else load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable PyTorch weight file; it must hold only tensors and plain "
                         f"containers (loaded with weights_only=True): {err}") from None


def unwrap_state_dict(obj: Mapping, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Finds the tensors in a training checkpoint (`{'state_dict': ...}`, `{'model': ...}`) and strips DDP's
    `module.` and torch.compile's `_orig_mod.` prefixes."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            return unwrap_state_dict(obj[key], source)
    tensors = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor, and no "
                             f"'state_dict' / 'model' entry wraps the weights")
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        tensors[key] = value
    return tensors


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                       layout: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """Returns (state dict in this library's keys, layout name). `layout`: 'auto', 'vitlab' (also timm's ViT), or
    one of the official layouts in `LAYOUTS` (registered by vitlab.convert)."""
    if layout == "auto":
        layout = detect_layout(state_dict)
    if layout == "vitlab":
        return dict(state_dict), layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected 'auto', 'vitlab' or one of "
                         f"{sorted(LAYOUTS)}")
    return LAYOUTS[layout].convert(state_dict, model), layout


def _mismatch_report(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor],
                     allow_missing: frozenset[str]) -> list[str]:
    def listing(title: str, items: list[str]) -> list[str]:
        shown = [f"    {item}" for item in items[:12]]
        more = [f"    ... and {len(items) - 12} more"] if len(items) > 12 else []
        return [f"  {title} ({len(items)}):"] + shown + more if items else []

    missing = [k for k in ours if k not in theirs and k not in allow_missing]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in ours if k in theirs and theirs[k].shape != ours[k].shape]
    return (listing("missing from the checkpoint", missing) + listing("unexpected in the checkpoint", unexpected)
            + listing("shape mismatches", shapes))


def _fill_tied(state_dict: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """A Parameter registered under several names (a language model's lm_head tied to its token embedding) needs
    only one of them in the checkpoint: the others are filled in. Returns a report line for each tied group whose
    names hold different tensors (an untied checkpoint cannot load into a tied model)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    problems = []
    for names in (g for g in groups.values() if len(g) > 1):
        present = [n for n in names if n in state_dict]
        if not present:
            continue
        first = state_dict[present[0]]
        for other in present[1:]:
            differ = state_dict[other].shape != first.shape or (not first.is_meta and not state_dict[other].is_meta
                                                                and not torch.equal(state_dict[other], first))
            if differ:
                problems.append(f"    {present[0]} and {other} differ in the checkpoint but are one (tied) "
                                "parameter in the model")
        for name in names:
            state_dict.setdefault(name, first)
    return ["  tied parameters (%d):" % len(problems)] + problems if problems else []


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping, layout: str = "auto",
                    skip_head: bool | str = False, adapt: bool = False) -> nn.Module:
    """Loads weights into `model` with strict key and shape checks; raises `CheckpointMismatchError` with a full
    report and leaves the model untouched when anything does not fit.

    Args:
        checkpoint: a file path (see `read_weights`), a directory holding `model.safetensors` (a run's best/ or
            last/, a `save_pretrained` directory) or a run directory (see `resolve_weights_path`), or an already
            loaded dict / training checkpoint.
        layout: 'auto' (detected from the keys and shapes), 'vitlab', or one of `vitlab.convert.LAYOUTS`
            ('crate_official', 'crate_alpha_official', 'crate_alpha_clipa_official', 'hf_vit', 'gpt2_hf',
            'nanogpt'). A tied parameter (GPT's
            lm_head.weight = transformer.wte.weight) may appear under one of its names only.
        skip_head: keep the model's own classifier (`head.*`), e.g. to fine-tune on a new number of classes;
            'auto' keeps it only where the checkpoint's head has another shape.
        adapt: resize the conv stem kernel and interpolate the position grid to the model's patch and image size
            (fine-tuning at another patch size or resolution); also for an image tower inside the model (a CLIP
            model's `visual.`).

    A model on the meta device is only checked (the same keys, shapes and adaptations), against a safetensors
    file's header alone: a model described by a file is built this way first, so that sizes that do not fit the
    tensors are refused before memory is allocated for them.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "checkpoint"
    check_only = any(t.is_meta for t in model.state_dict().values())
    raw = read_weights(checkpoint, check_only) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state_dict, layout = convert_state_dict(unwrap_state_dict(raw, source), model, layout)
    if adapt:
        state_dict = adapt_state_dict(state_dict, model)
    ours = model.state_dict()
    head = frozenset(k for k in ours if k.startswith("head."))
    if skip_head == "auto":
        skip_head = any(k in state_dict and state_dict[k].shape != ours[k].shape for k in head) or not any(
            k in state_dict for k in head)
    if skip_head:
        state_dict = {k: v for k, v in state_dict.items() if k not in head}
    state_dict = dict(state_dict)
    problems = _fill_tied(state_dict, model)
    problems += _mismatch_report(ours, state_dict, head if skip_head else frozenset())
    if problems:
        raise CheckpointMismatchError(f"{source} (layout {layout!r}) does not fit {type(model).__name__} "
                                      f"{getattr(model, 'pretrained_cfg', {}).get('architecture', '')}:\n"
                                      + "\n".join(problems))
    if check_only:
        return model
    model.load_state_dict(state_dict, strict=not skip_head)
    if layout in LAYOUTS:
        LAYOUTS[layout].after_load(model)
    return model
