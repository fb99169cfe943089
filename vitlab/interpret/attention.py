"""What a vision transformer looks at: class-token attention per layer and head, attention rollout, and patch
features (tokens or attention keys) with their PCA picture. Works on every vitlab image model (ViT, CRATE, CRATE-α),
including official CRATE / CRATE-α weights loaded through `vitlab.convert.load_checkpoint`.

Conventions: `attn` is (B, L, H, N, N) softmax probabilities from `model.forward_attention`, token 0 the class token
(`num_prefix_tokens` = 1); patch maps are (…, h, w) on the patch grid, row-major like the patch sequence.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import get_blocks

__all__ = ["grid_shape", "record_attention", "cls_attention", "attention_rollout", "patch_features", "pca_rgb"]


def grid_shape(model: nn.Module) -> tuple[int, int]:
    """(h, w) of the model's patch grid."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise TypeError(f"{type(model).__name__} has no patch_embed.grid_size: attention maps need a vitlab image "
                        "model (ViT, CRATE, CRATE-α); load foreign weights into one with vitlab.convert.load_checkpoint")
    return (grid, grid) if isinstance(grid, int) else tuple(grid)


@torch.no_grad()
def record_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of every block, (B, L, H, N, N), for normalised images (B, C, H_img, W_img)."""
    if not hasattr(model, "forward_attention"):
        raise TypeError(f"{type(model).__name__} has no forward_attention: attention maps need a vitlab image model")
    grid_shape(model)
    was_training = model.training
    model.eval()
    try:
        return model.forward_attention(images).float()
    finally:
        model.train(was_training)


def _check_attn(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> None:
    if attn.ndim != 5 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be (B, layers, heads, N, N), got {tuple(attn.shape)}")
    if attn.shape[-1] != num_prefix_tokens + grid[0] * grid[1]:
        raise ValueError(f"attention over {attn.shape[-1]} tokens does not fit a {grid[0]}×{grid[1]} grid with "
                         f"{num_prefix_tokens} prefix token(s)")


def cls_attention(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Attention of the class-token query to each patch key, (B, L, H, h, w): the map DINO and CRATE show. Rows are
    the raw softmax weights (they sum to 1 with the class token's weight on itself)."""
    _check_attn(attn, grid, num_prefix_tokens)
    if num_prefix_tokens < 1:
        raise ValueError("class-token attention needs a model with a class token (class_token=True)")
    B, L, H = attn.shape[:3]
    return attn[:, :, :, 0, num_prefix_tokens:].reshape(B, L, H, *grid)  # (B, L, H, h, w)


def attention_rollout(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1,
                      head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): per layer fuse the heads, add the identity for the residual path
    (Â = ½A + ½I, rows renormalised), multiply the layers R = Â_L ⋯ Â_1, and read the class token's row over the
    patches. Returns (B, h, w), each map summing to at most 1."""
    _check_attn(attn, grid, num_prefix_tokens)
    fuse = {"mean": lambda a: a.mean(dim=2), "max": lambda a: a.amax(dim=2), "min": lambda a: a.amin(dim=2)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {sorted(fuse)}, got {head_fusion!r}")
    a = fuse[head_fusion](attn.double())  # (B, L, N, N)
    if residual:
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)  # Â = ½A + ½I
    a = a / a.sum(dim=-1, keepdim=True)  # rows renormalised
    rollout = a[:, 0]  # (B, N, N)
    for layer in range(1, a.shape[1]):
        rollout = a[:, layer] @ rollout  # R = Â_l R
    B = attn.shape[0]
    return rollout[:, 0, num_prefix_tokens:].reshape(B, *grid).float()  # (B, h, w)


@torch.no_grad()
def patch_features(model: nn.Module, images: torch.Tensor, layer: int = -1, kind: str = "tokens") -> torch.Tensor:
    """Per-patch features after block `layer` (negative counts from the end), (B, h·w, D).

    kind='tokens': the block's output tokens z (width d). kind='keys': that block's attention keys, heads
    concatenated (width H·dh), the features MaskCut / CutLER cut on; for CRATE and CRATE-α, whose q = k = v = U_[K]ᵀ z
    (MSSA, eq. 9), these are the tokens' coordinates in the learned subspaces.
    """
    if kind not in ("tokens", "keys"):
        raise ValueError(f"kind must be 'tokens' or 'keys', got {kind!r}")
    grid_shape(model)
    blocks = get_blocks(model, "patch_features")
    depth = len(blocks)
    index = layer + depth if layer < 0 else layer
    if not 0 <= index < depth:
        raise ValueError(f"layer {layer} out of range for a model with {depth} blocks")
    was_training = model.training
    model.eval()
    try:
        if kind == "tokens":  # timm's dense-feature contract: the block's output patch tokens
            return model.forward_intermediates(images, indices=[index], output_fmt="NLC", stop_early=True,
                                               intermediates_only=True)[0].float()  # (B, h·w, d)
        x = model._embed(images)  # (B, N, d)
        for block in blocks[:index]:
            x = block(x)  # (B, N, d)
        _, k, _ = blocks[index].attn._qkv(blocks[index].norm1(x))  # (B, H, N, dh) the block's attention keys
        x = k.transpose(1, 2).flatten(2)  # (B, N, H·dh)
    finally:
        model.train(was_training)
    return x[:, model.num_prefix_tokens:].float()  # (B, h·w, D)


def pca_rgb(features: torch.Tensor, grid: tuple[int, int], components: int = 3) -> torch.Tensor:
    """Projects every patch of the batch onto the batch's first `components` principal directions and rescales each
    component to [0, 1] (min-max over the batch, so colours compare across images): (B, h, w, components), the
    "PCA of patch features as RGB" picture of DINO / CRATE. The sign of each direction is fixed so that the largest
    projection is positive (deterministic colours)."""
    B, N, D = features.shape
    if N != grid[0] * grid[1]:
        raise ValueError(f"{N} patch features do not fit a {grid[0]}×{grid[1]} grid")
    if components > min(B * N, D):
        raise ValueError(f"cannot take {components} components of {B * N} patches × {D} features")
    x = features.reshape(B * N, D).double()
    x = x - x.mean(dim=0)  # centred
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # principal directions: rows of vh
    proj = x @ vh[:components].T  # (B·N, c)
    flip = proj.gather(0, proj.abs().argmax(dim=0, keepdim=True)).sign()  # (1, c)
    proj = proj * torch.where(flip == 0, 1.0, flip)
    low, high = proj.amin(dim=0), proj.amax(dim=0)
    proj = (proj - low) / (high - low).clamp_min(1e-12)  # each component in [0, 1]
    return proj.reshape(B, *grid, components).float()  # (B, h, w, c)
