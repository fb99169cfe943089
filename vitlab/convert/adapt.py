"""Fitting pre-trained weights to a model with another patch size or image size (CRATE-α's cheap scaling recipe:
pre-train at /32, fine-tune at /16 or /8): the conv stem kernel is resized bilinearly and the learned position grid
is resampled as timm does (`resample_position_embedding`); the class-token slot is kept."""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from ..models import resample_position_embedding

__all__ = ["resize_patch_kernel", "resize_position_grid", "adapt_state_dict"]


def resize_patch_kernel(kernel: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(d, C, P, P) conv stem kernel → (d, C, P', P'), bilinear (crate.md, ImageNet-1K fine-tuning)."""
    if kernel.shape[-1] == patch_size:
        return kernel
    resized = F.interpolate(kernel.float(), size=(patch_size, patch_size), mode="bilinear", align_corners=False)
    return resized.to(kernel.dtype)


def resize_position_grid(pos_embed: torch.Tensor, num_patches: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(1, prefix + g², d) → (1, prefix + g'², d) with g'² = num_patches, bicubic on the g × g grid."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old, new = math.isqrt(grid.shape[1]), math.isqrt(num_patches)
    if old * old != grid.shape[1] or new * new != num_patches:
        raise ValueError(f"position tables must cover square grids: {grid.shape[1]} → {num_patches} patches")
    if old == new:
        return pos_embed
    grid = resample_position_embedding(grid, (old, old), (new, new))  # (1, g'², d), timm's bicubic + antialias
    return torch.cat([prefix, grid], dim=1)  # (1, prefix + g'², d)


def _image_towers(model: torch.nn.Module):
    """(key prefix, module) of the model itself and of every image transformer inside it (e.g. a CLIP model's
    `visual.`): the modules with a patch embedding and a position table."""
    for name, module in model.named_modules():
        if hasattr(module, "patch_embed") and isinstance(getattr(module, "pos_embed", None), torch.Tensor):
            yield (name + "." if name else ""), module


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Resizes `patch_embed.proj.weight` (conv stems only) and `pos_embed` to the model's patch grid, for the model
    itself and for any image tower inside it (`visual.patch_embed.proj.weight`, `visual.pos_embed` of a CLIP
    model)."""
    out = dict(state_dict)
    ours = model.state_dict()
    for prefix, tower in _image_towers(model):
        kernel_key, pos_key = prefix + "patch_embed.proj.weight", prefix + "pos_embed"
        kernel = out.get(kernel_key)
        if kernel is not None and kernel.ndim == 4 and kernel_key in ours and kernel.shape != ours[kernel_key].shape:
            out[kernel_key] = resize_patch_kernel(kernel, tower.patch_embed.patch_size)
        pos = out.get(pos_key)
        if pos is not None and pos_key in ours and pos.shape != ours[pos_key].shape:
            out[pos_key] = resize_position_grid(pos, tower.patch_embed.num_patches, tower.num_prefix_tokens)
    return out
