"""`create_model(name, features_only=True)`: an image model turned into a feature extractor, timm's
`FeatureGetterNet` semantics (timm >= 1.0 builds ViT feature extractors this way): the model is pruned after the
last block asked for, and its forward returns the list of (B, d, H/P, W/P) maps of the chosen blocks, taken by the
model's own `forward_intermediates`.

`out_indices` as timm: an int n takes the last n blocks (timm's ViT default: 3), a sequence names blocks (negative
from the end). `feature_info` describes the outputs: `channels()`, `reduction()`, `module_name()`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["FeatureInfo", "FeatureGetterNet", "DEFAULT_OUT_INDICES"]

DEFAULT_OUT_INDICES = 3  # timm's ViT default: the last three blocks


class FeatureInfo:
    """The feature maps a feature extractor returns, in order: one dict per map with `num_chs`, `reduction` (input
    pixels per map pixel) and `module` (the block that produced it), as timm's `FeatureInfo`."""

    def __init__(self, feature_info: Sequence[dict[str, Any]], out_indices: Sequence[int]):
        self.info = [dict(feature_info[i], index=i) for i in out_indices]
        self.out_indices = tuple(out_indices)

    def get(self, key: str) -> list[Any]:
        return [entry[key] for entry in self.info]

    def channels(self) -> list[int]:
        return self.get("num_chs")

    def reduction(self) -> list[int]:
        return self.get("reduction")

    def module_name(self) -> list[str]:
        return self.get("module")

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)


class FeatureGetterNet(nn.Module):
    """Wraps an `ImageTransformer`: `forward(x (B, C, H, W)) -> [(B, d, H/P, W/P), ...]`, one map per out index.

    Args:
        model: the image model; it is pruned in place (blocks after the last index, the head and, unless `norm`,
            the final norm are dropped).
        out_indices: an int n = the last n blocks, or a sequence of block indices (negative from the end).
        norm: pass each map through the model's final norm (timm's `feature_cls='getter'` default: False).
        output_fmt: 'NCHW' (default) or 'NLC' (B, H/P·W/P, d).
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = DEFAULT_OUT_INDICES,
                 norm: bool = False, output_fmt: str = "NCHW"):
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "prune_intermediate_layers"):
            raise TypeError(f"features_only needs an image model with forward_intermediates and "
                            f"prune_intermediate_layers (vitlab's ViT, CRATE, CRATE-α); got {type(model).__name__}")
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        all_info = list(model.feature_info)
        taken = model.prune_intermediate_layers(out_indices, prune_norm=not norm, prune_head=True)
        self.model = model
        self.out_indices = tuple(taken)
        self.norm, self.output_fmt = norm, output_fmt
        self.feature_info = FeatureInfo(all_info, taken)
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})
        self.default_cfg = self.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), norm=self.norm,
                                                output_fmt=self.output_fmt, intermediates_only=True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def get_blocks(self) -> nn.Sequential:
        return self.model.get_blocks()
