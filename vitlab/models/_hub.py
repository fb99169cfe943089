"""Self-describing weights: every model `create_model` builds knows its registry name and the constructor kwargs it
was built with (`model.vitlab_kwargs`), so a weight file can carry them and rebuild the model on its own.

The description ("spec") is plain JSON, never code:

    {"format": 1, "architecture": "vit_tiny_patch4_32", "kwargs": {"patch_size": 7, "num_classes": 10, ...},
     "segmentation": {"num_classes": 5, "head": "upernet", "head_kwargs": {...}},   # segmentation models only
     "label": "vit_tiny_patch4_32(patch_size=7, ...)"}

It travels in a `model.safetensors` header (metadata key `vitlab_model`, written by the training engine and by
`save_pretrained`) and, in the Hugging Face layout of `save_pretrained`, as `config.json` beside the weights. Runs
written before it existed are described from their `config.json` (and the weights' shapes where the run's data set
the sizes).

Why not `huggingface_hub.PyTorchModelHubMixin`: it serialises the arguments of the class's `__init__`, but vitlab
models are made by registry builders (a `partial` of the class with the family's sizes, or a function), a CLIP model
is given two built towers and a segmentation model a built backbone: none of that is JSON, and the registry name and
`pretrained_cfg` would be lost. The registry name + the builder's kwargs round-trip every registered model exactly,
so the Hub layout is written here by hand (config.json + model.safetensors) and `huggingface_hub` is used only to
download and upload it.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .weights import read_weights, resolve_weights_path, unwrap_state_dict

__all__ = ["METADATA_KEY", "HubMixin", "model_spec", "describe_architecture", "read_spec", "resolve_source",
           "merge_kwargs", "save_pretrained", "from_pretrained", "push_to_hub", "load", "WeightSource"]

METADATA_KEY = "vitlab_model"
SPEC_FORMAT = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


# -- describing a model -------------------------------------------------------------------------------------------
def _jsonable(value: Any, where: str) -> Any:
    """`value` as JSON types (tuples become lists); anything else is a TypeError naming the kwarg."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}={value!r} is not a finite number and cannot be stored as JSON")
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"constructor argument {where}={value!r} ({type(value).__name__}) cannot be stored as JSON; "
                    "a self-describing weight file needs JSON kwargs (numbers, strings, lists, dicts)")


def _registered_defaults(name: str) -> dict[str, Any]:
    """The kwargs a registered builder uses when none are passed: a partial's keywords over its target's defaults,
    or a function's own defaults."""
    from ._registry import _MODELS, resolve_model_name

    fn = _MODELS[resolve_model_name(name)]
    keywords: dict[str, Any] = {}
    while isinstance(fn, partial):
        keywords = {**fn.keywords, **keywords}
        fn = fn.func
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        params = []
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return {**defaults, **keywords}


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  (1 == (1,) never; (32, 32) == [32, 32])
    return norm(a) == norm(b)


def describe_architecture(name: str, kwargs: dict[str, Any] | None = None) -> str:
    """`vit_tiny_patch4_32(patch_size=7, embed_dim=96, depth=4)`: the registered name and, in the order given, only
    the kwargs that differ from the registered defaults (nested dicts, e.g. a CLIP model's image_kwargs, compared
    key by key). The plain name when nothing differs."""
    from ._registry import resolve_model_name

    canonical = resolve_model_name(name)
    defaults = _registered_defaults(canonical)
    parts = []
    for key, value in (kwargs or {}).items():
        default = defaults.get(key, inspect.Parameter.empty)
        if isinstance(value, dict) and isinstance(default, dict):
            value = {k: v for k, v in value.items() if not (k in default and _same(default[k], v))}
            if not value:
                continue
        elif isinstance(value, dict) and not value and default is None:
            continue
        elif default is not inspect.Parameter.empty and _same(default, value):
            continue
        parts.append(f"{key}={value!r}")
    return f"{canonical}({', '.join(parts)})" if parts else canonical


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON description that rebuilds `model` (see the module docstring). Raises ValueError for a model not
    built by `create_model` / `create_segmentation_model` (its kwargs are unknown) and TypeError for non-JSON
    kwargs."""
    from .segmentation import SegmentationModel

    segmentation = None
    if isinstance(model, SegmentationModel):
        segmentation = {"num_classes": model.num_classes, "head": model.head_type,
                        "head_kwargs": _jsonable(dict(getattr(model, "head_kwargs", {})), "head_kwargs")}
        model = model.backbone
    kwargs = getattr(model, "vitlab_kwargs", None)
    architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
    if kwargs is None or architecture is None:
        raise ValueError(f"this {type(model).__name__} was not built by vitlab.create_model, so its constructor "
                         "kwargs are unknown; build it with vitlab.create_model(name, **kwargs) to save it "
                         "self-described")
    kwargs = _jsonable(dict(kwargs), "kwargs")
    spec = {"format": SPEC_FORMAT, "architecture": architecture, "kwargs": kwargs}
    if segmentation is not None:
        spec["segmentation"] = segmentation
    spec["label"] = describe_architecture(architecture, kwargs) + (
        f" + {segmentation['head']} head" if segmentation else "")
    return spec


def _check_spec(spec: Any, source: str) -> dict[str, Any]:
    if not (isinstance(spec, dict) and isinstance(spec.get("architecture"), str)
            and isinstance(spec.get("kwargs", {}), dict)):
        raise ValueError(f"{source}: the model description is not a vitlab spec (a JSON object with 'architecture' "
                         "and 'kwargs')")
    seg = spec.get("segmentation")
    if seg is not None and not (isinstance(seg, dict) and isinstance(seg.get("num_classes"), int)):
        raise ValueError(f"{source}: the segmentation entry of the model description is malformed")
    return {"kwargs": {}, **spec}


# -- reading a description ----------------------------------------------------------------------------------------
class WeightSource:
    """A resolved weight location: the weights file, its model description (None when nothing describes it) and
    the run directory holding it (None outside a run)."""

    def __init__(self, weights: Path, spec: dict[str, Any] | None, run_dir: Path | None):
        self.weights, self.spec, self.run_dir = weights, spec, run_dir

    @property
    def label(self) -> str:
        if self.spec is not None and self.spec.get("label"):
            return self.spec["label"]
        return self.weights.stem


def _spec_from_metadata(weights: Path) -> dict[str, Any] | None:
    if weights.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{weights}: not a readable safetensors file ({err})") from None
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        return _check_spec(json.loads(text), str(weights))
    except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested deeper than json can parse
        raise ValueError(f"{weights}: metadata {METADATA_KEY!r} is not JSON ({err})") from None


def _read_json(path: Path, strict: bool = False) -> Any:
    """The JSON in `path`; None when it is missing or (not `strict`) unreadable. `strict`: a file that is there but
    is not JSON (or nests deeper than json can parse) is a ValueError naming it."""
    try:
        text = path.read_bytes()
    except OSError:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if strict:
            raise ValueError(f"{path}: not a JSON model description ({err})") from None
        return None


def _run_dir_of(weights: Path) -> Path | None:
    """The run directory of `<run>/best|last/model.safetensors` (it holds a config.json with a 'config' entry)."""
    candidate = weights.parent.parent
    config = _read_json(candidate / "config.json")
    return candidate if isinstance(config, dict) and isinstance(config.get("config"), dict) else None


def resolve_source(path: str | os.PathLike) -> WeightSource:
    """Where the weights of `path` are and what model they belong to. `path`: a weight file, a directory holding
    `model.safetensors` (a run's best/ or last/, or a `save_pretrained` directory), or a run directory (its best/,
    else last/). The description comes from the file's metadata, else a `save_pretrained` config.json beside it,
    else (runs written before self-describing weights) the run's config.json."""
    weights = resolve_weights_path(path)
    spec = _spec_from_metadata(weights)
    hub_config = _read_json(weights.parent / CONFIG_NAME, strict=True) if spec is None else None
    if isinstance(hub_config, dict) and "architecture" in hub_config and "kwargs" in hub_config:
        spec = _check_spec(hub_config, str(weights.parent / CONFIG_NAME))
    run_dir = _run_dir_of(weights)
    if spec is None and run_dir is not None:
        spec = spec_from_run_config(run_dir, weights)
    return WeightSource(weights, spec, run_dir)


def read_spec(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model description of a weight file / checkpoint directory / run / `save_pretrained` directory, or None."""
    return resolve_source(path).spec


# -- runs written before self-describing weights ------------------------------------------------------------------
def shape_kwargs(state_dict: dict[str, torch.Tensor], name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Image-model constructor kwargs (depth, num_classes, in_chans, patch_size, img_size) read off a vitlab/timm
    layout state dict, for the keys `given` does not set (a run's model_kwargs win, as in training)."""
    from ._registry import create_model

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
        patch = patch or create_model(name, **given).patch_embed.patch_size  # the family default
        found["in_chans"] = kernel.shape[1] // (patch * patch)
    pos = state_dict.get("pos_embed")  # (1, prefix + grid², d)
    if pos is not None and patch:
        grid = math.isqrt(pos.shape[1] - int("cls_token" in state_dict))
        found["img_size"] = grid * patch
    return {k: v for k, v in found.items() if k not in given}


def _sub(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def spec_from_run_config(run_dir: Path, weights: Path) -> dict[str, Any] | None:
    """The description of an older run's weights: the run's config.json (model, model_kwargs, head, head_kwargs)
    with the sizes its data set (classes, channels, image size, vocabulary, context) read from segmentation.json or
    the weights' shapes. None when the config names no registered model."""
    from ._registry import get_pretrained_cfg, is_model, resolve_model_name

    config = (_read_json(run_dir / "config.json") or {}).get("config") or {}
    name = config.get("model")
    if not isinstance(name, str) or not is_model(name):
        return None
    name = resolve_model_name(name)
    kwargs = dict(config.get("model_kwargs") or {})
    task = get_pretrained_cfg(name).get("task")
    state = unwrap_state_dict(read_weights(weights), str(weights))
    spec: dict[str, Any] = {"format": SPEC_FORMAT, "architecture": name}
    if config.get("head") is not None:
        meta = _read_json(run_dir / "segmentation.json") or {}
        data = {"in_chans": meta.get("in_chans"), "img_size": meta.get("image_size")}
        kwargs = merge_kwargs({k: v for k, v in data.items() if v is not None}, kwargs)
        classes = meta.get("classes")
        spec["segmentation"] = {"num_classes": len(classes) if classes else None, "head": config["head"],
                                "head_kwargs": dict(config.get("head_kwargs") or {})}
        if spec["segmentation"]["num_classes"] is None:
            return None
    elif task == "lm":
        wte, wpe = state.get("transformer.wte.weight", state.get("lm_head.weight")), state.get("transformer.wpe.weight")
        data = {"vocab_size": wte.shape[0] if wte is not None else None,
                "block_size": wpe.shape[0] if wpe is not None else None}
        kwargs = merge_kwargs({k: v for k, v in data.items() if v is not None}, kwargs)
    elif task == "clip":
        image = dict(kwargs.get("image_kwargs") or {})
        image_model = kwargs.get("image_model")
        found = shape_kwargs(_sub(state, "visual."), image_model or "vit_tiny_patch4_32", image)
        image.update({k: v for k, v in found.items() if k in ("in_chans", "img_size")})
        text = dict(kwargs.get("text_kwargs") or {})
        if "text.token_embedding.weight" in state and "vocab_size" not in text:
            text["vocab_size"] = state["text.token_embedding.weight"].shape[0]
        kwargs = {**kwargs, "image_kwargs": image, "text_kwargs": text}
    else:
        kwargs = {**kwargs, **shape_kwargs(state, name, kwargs)}
    spec["kwargs"] = kwargs
    spec["label"] = describe_architecture(name, kwargs) + (
        f" + {config['head']} head" if config.get("head") is not None else "")
    return spec


def merge_kwargs(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` overridden by `overrides`; nested dicts (a CLIP model's image_kwargs / text_kwargs) merge key by
    key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# -- Hugging Face layout ------------------------------------------------------------------------------------------
def _state_for_file(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied parameter stored once (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    out = {}
    for key, value in model.state_dict().items():
        ident = value.untyped_storage().data_ptr() if value.numel() else id(value)
        if ident in seen and value.numel():
            continue
        seen[ident] = key
        out[key] = value.detach().contiguous().cpu()
    return out


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Writes `save_directory/config.json` (the model description, see `model_spec`) and `model.safetensors` (the
    weights, with the same description in their metadata), the layout `from_pretrained` and the Hugging Face Hub
    read. Returns the directory."""
    from safetensors.torch import save_file

    from .._version import __version__

    spec = model_spec(model)
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{WEIGHTS_NAME}.tmp-{os.getpid()}"
    save_file(_state_for_file(model), str(tmp), metadata={METADATA_KEY: json.dumps(spec), "format": "pt"})
    os.replace(tmp, directory / WEIGHTS_NAME)
    config = {"library_name": "vitlab", "vitlab_version": __version__, **spec}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    return directory


def _looks_like_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not source.startswith((".", "/"))


def _download(repo_id: str, revision: str | None = None, **hub_kwargs) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError(f"loading {repo_id!r} from the Hugging Face Hub needs huggingface_hub "
                          "(pip install huggingface_hub)") from None
    weights = hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, **hub_kwargs)
    hf_hub_download(repo_id, CONFIG_NAME, revision=revision, **hub_kwargs)
    return Path(weights).parent


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None, hub_kwargs: dict | None = None,
                    **kwargs) -> nn.Module:
    """The model of a `save_pretrained` directory, any self-described weight file / checkpoint / run directory, or
    a Hugging Face Hub repo id (`owner/name`, downloaded once into the Hub cache). `kwargs` override the stored
    constructor kwargs (nested dicts key by key). Returned in eval mode."""
    path = Path(source)
    if not path.exists():
        if not _looks_like_hub_id(str(source)):
            raise FileNotFoundError(f"{source}: no such file or directory (nor a Hub repo id 'owner/name')")
        path = _download(str(source), revision, **(hub_kwargs or {}))
    return load(path, **kwargs)


def push_to_hub(model: nn.Module, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload vitlab model", revision: str | None = None) -> str:
    """Creates (if needed) the Hub repo `repo_id` and uploads `save_pretrained`'s files plus a short model card;
    returns the commit URL. Needs network access and a Hub token (`huggingface-cli login` or `token=`)."""
    import huggingface_hub

    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder)
        spec = model_spec(model)
        (Path(folder) / "README.md").write_text(
            f"---\nlibrary_name: vitlab\ntags:\n- vitlab\n- {spec['architecture']}\n---\n\n# {spec['label']}\n\n"
            "Load with `vitlab.from_pretrained(\"" + repo_id + "\")`.\n")
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 revision=revision)
    return str(getattr(info, "commit_url", info))


def load(source: str | os.PathLike, **kwargs) -> nn.Module:
    """Rebuilds and loads the model of a run directory, its best/ or last/ directory, a weights file, or a
    `save_pretrained` directory, in eval mode. `kwargs` override the stored constructor kwargs."""
    from ._registry import create_model

    return create_model(checkpoint_path=source, **kwargs).eval()


class HubMixin:
    """`save_pretrained(dir)`, `push_to_hub(repo_id)` and `Class.from_pretrained(dir_or_repo_id)` on every vitlab
    model (see `vitlab.models._hub`)."""

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        return save_pretrained(self, save_directory)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs) -> nn.Module:
        model = from_pretrained(source, **kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{source} holds a {type(model).__name__}, not a {cls.__name__}; use "
                            "vitlab.from_pretrained to load any model")
        return model
