"""Fitting pre-trained weights to a model with another patch size or image size (CRATE-α's cheap scaling recipe:
pre-train at /32, fine-tune at /16 or /8): the conv stem kernel is resized bilinearly and the learned position grid
is resampled as timm does (`resample_position_embedding`); the class-token slot is kept. A model built for another
number of input channels (`in_chans`) gets the stem's input channels adapted (`adapt_input_conv`, timm's rule)."""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from ._layers import resample_position_embedding

__all__ = ["adapt_input_conv", "resize_patch_kernel", "resize_position_grid", "adapt_state_dict"]


def adapt_input_conv(in_chans: int, kernel: torch.Tensor) -> torch.Tensor:
    """(d, C, kh, kw) stem kernel → (d, in_chans, kh, kw), so that an image whose channels are all equal (a gray
    image replicated) gives the same output before and after:

    * in_chans == 1: the sum over the C input channels (an RGB stem applied to gray images);
    * C == 1: the single channel repeated in_chans times and scaled by 1 / in_chans;
    * otherwise (timm's rule for RGB → N channels): the C channels repeated cyclically up to in_chans and scaled by
      C / in_chans.
    """
    if kernel.ndim != 4:
        raise ValueError(f"adapt_input_conv expects a (d, C, kh, kw) conv kernel, got shape {tuple(kernel.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    channels = kernel.shape[1]
    if in_chans == channels:
        return kernel
    dtype = kernel.dtype
    weight = kernel.float()
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)  # (d, 1, kh, kw)
    else:
        repeats = math.ceil(in_chans / channels)
        weight = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (channels / in_chans)  # (d, in_chans, kh, kw)
    return weight.to(dtype)


def resize_patch_kernel(kernel: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(d, C, P, P) conv stem kernel → (d, C, P', P'), bilinear (crate.md, ImageNet-1K fine-tuning)."""
    if kernel.shape[-1] == patch_size:
        return kernel
    resized = F.interpolate(kernel.float(), size=(patch_size, patch_size), mode="bilinear", align_corners=False)
    return resized.to(kernel.dtype)


def resize_position_grid(pos_embed: torch.Tensor, num_patches: int | tuple[int, int],
                         num_prefix_tokens: int = 1) -> torch.Tensor:
    """(1, prefix + g², d) → (1, prefix + gh'·gw', d), bicubic on the g × g grid. `num_patches`: the new grid
    (gh', gw'), or g'² for a square one. The stored table must cover a square grid."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(grid.shape[1])
    if isinstance(num_patches, int):
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"num_patches={num_patches} is not a square; pass the new grid as (gh, gw)")
        num_patches = (side, side)
    if old * old != grid.shape[1]:
        raise ValueError(f"the stored position table must cover a square grid, got {grid.shape[1]} patches")
    if (old, old) == tuple(num_patches):
        return pos_embed
    grid = resample_position_embedding(grid, (old, old), tuple(num_patches))  # (1, gh'·gw', d), timm's bicubic
    return torch.cat([prefix, grid], dim=1)  # (1, prefix + g'², d)


def _image_towers(model: torch.nn.Module):
    """(key prefix, module) of the model itself and of every image transformer inside it (e.g. a CLIP model's
    `visual.`): the modules with a patch embedding and a position table."""
    for name, module in model.named_modules():
        if hasattr(module, "patch_embed") and isinstance(getattr(module, "pos_embed", None), torch.Tensor):
            yield (name + "." if name else ""), module


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Fits `patch_embed.proj.weight` (conv stems only: input channels by `adapt_input_conv`, then the kernel size
    by `resize_patch_kernel`) and `pos_embed` to the model's patch grid, for the model itself and for any image
    tower inside it (`visual.patch_embed.proj.weight`, `visual.pos_embed` of a CLIP model). CRATE's LayerNorm →
    Linear stem is not adapted (a mismatch stays a load error)."""
    out = dict(state_dict)
    ours = model.state_dict()
    for prefix, tower in _image_towers(model):
        kernel_key, pos_key = prefix + "patch_embed.proj.weight", prefix + "pos_embed"
        kernel = out.get(kernel_key)
        if kernel is not None and kernel.ndim == 4 and kernel_key in ours and kernel.shape != ours[kernel_key].shape:
            kernel = adapt_input_conv(tower.patch_embed.in_chans, kernel)
            out[kernel_key] = resize_patch_kernel(kernel, tower.patch_embed.patch_size)
        pos = out.get(pos_key)
        if pos is not None and pos_key in ours and pos.shape != ours[pos_key].shape:
            out[pos_key] = resize_position_grid(pos, tower.patch_embed.grid_hw, tower.num_prefix_tokens)
    return out
