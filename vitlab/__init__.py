"""vitlab: transformers you can read — ViT, CRATE, CRATE-α, their causal language models beside GPT-2, and mimetic
initialization.

`import vitlab` is cheap (no torch): the public names below are imported on first use (PEP 562), so
`vitlab --help` and `vitlab --version` start in a fraction of a second while `vitlab.create_model` works as usual."""
from importlib import import_module as _import_module

from ._version import __version__

_EXPORTS = {  # public name -> the submodule that defines it
    "create_model": ".models", "list_models": ".models", "register_model": ".models", "is_model": ".models",
    "get_pretrained_cfg": ".models", "load": ".models", "save_pretrained": ".models", "from_pretrained": ".models",
    "push_to_hub": ".models", "describe_architecture": ".models", "mimetic_init_": ".init",
    "norm_matched_init_": ".init",
    "UnsupportedAttentionError": ".init", "load_checkpoint": ".convert", "CheckpointMismatchError": ".convert",
    "profile": "._profile", "Profile": "._profile", "count_flops": "._profile",
}
__all__ = [*_EXPORTS, "__version__"]


# imported with vitlab.models: they register the 'mimetic' init and the official checkpoint layouts with it, so that
# `vitlab.create_model(..., init="mimetic")` and `create_model(name, pretrained=True)` of official weights work
_PLUGINS = (".init", ".convert")


def __getattr__(name: str):
    if name in _EXPORTS:
        if _EXPORTS[name] == ".models":
            for plugin in _PLUGINS:
                _import_module(plugin, __name__)
        value = getattr(_import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
