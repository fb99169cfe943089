"""Training presets as code (big_vision style): each is a function returning a TrainConfig, and its docstring says
how to run it and what it should reach. `vitlab presets` lists them; `vitlab train NAME key=value ...` runs one.

One module per task declares its presets as plain functions and lists them in a module-level `PRESETS` tuple:
`classification`, `lm` (language models), `segmentation`, `clip`. The families import only the config and the
augmentation settings, never this registry; the registry imports each family and registers what it declares,
under the function's name. A new preset is a function in its family's module, added to that module's `PRESETS`.
"""
from __future__ import annotations

from typing import Callable

from ..config import TrainConfig
from . import classification, clip, lm, segmentation

__all__ = ["PRESETS", "register_preset", "get_preset", "list_presets", "describe"]

PRESETS: dict[str, Callable[[], TrainConfig]] = {}


def register_preset(fn: Callable[[], TrainConfig]) -> Callable[[], TrainConfig]:
    PRESETS[fn.__name__] = fn
    return fn


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r}.{hint} `vitlab presets` lists all {len(PRESETS)}.")
    return PRESETS[name]()


def list_presets() -> list[str]:
    return sorted(PRESETS)


def describe(name: str) -> str:
    """The first paragraph of a preset's docstring."""
    return " ".join((PRESETS[name].__doc__ or "").strip().split("\n\n")[0].split())


def _register(*families) -> None:
    for family in families:
        for fn in family.PRESETS:
            if fn.__name__ in PRESETS:
                raise ValueError(f"preset {fn.__name__!r} of {family.__name__} is already declared by "
                                 f"{PRESETS[fn.__name__].__module__}")
            register_preset(fn)


_register(classification, lm, segmentation, clip)
