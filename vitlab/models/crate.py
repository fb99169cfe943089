"""CRATE, the white-box transformer of Yu et al., "White-Box Transformers via Sparse Rate Reduction" (NeurIPS 2023),
exactly as the official code (Ma-Lab-Berkeley/CRATE, `model/crate.py`).

Each layer is one step of sparse rate reduction, max R(Z) − R^c(Z; U_[K]) − λ‖Z‖₀:
  compression  z ← z + MSSA(LN1(z))           (eq. 9: gradient step on R^c)
  sparsify     z ← ISTA(LN2(z))               (eq. 11: proximal step of the non-negative LASSO; no residual)

`CrateBlock` is shared with CRATE-α, whose three changes (overcomplete dictionary, decoupled dictionary, residual)
are its constructor switches.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ._base import ImageTransformer
from ._constants import CIFAR10_MEAN, CIFAR10_STD, model_cfg
from ._layers import Attention, DropPath, SparseCoding, SubspaceAttention, init_dictionary_
from ._registry import register_model

__all__ = ["CrateBlock", "CRATE", "init_crate_blocks_"]


class CrateBlock(nn.Module):
    """One CRATE / CRATE-α layer.

    Args:
        overcomplete_ratio: 1 = CRATE's complete ISTA; 4 = CRATE-α's overcomplete dictionary learning (ODL).
        decoupled_dictionary: decode the sparse code with a separate dictionary D1 (CRATE-α).
        residual_sparse_coding: z ← z + ODL(LN2(z)) (CRATE-α) instead of z ← ISTA(LN2(z)) (CRATE).
        attn_proj_bias: bias on MSSA's output projection (CRATE: yes, CRATE-α: no).
        causal: MSSA attends only to earlier tokens (the causal language models of crate_lm.py); ISTA / ODL is
            token-wise, so this makes the whole block causal.
        attention: 'mssa' (default): CRATE's multi-head subspace self-attention, one shared bias-free projection U
            serving as query, key and value (`attn.subspace`). 'mha': ordinary multi-head attention with separate
            bias-free q / k / v projections (`attn.qkv`, rows q | k | v head-major, scale dh^-0.5), which is what
            the image tower of the official CRATE-α-CLIPA port uses (an `nn.MultiheadAttention(d, H, bias=False)`
            in front of the ODL block). MSSA is the special case q = k = v = U.
        drop_path: stochastic-depth probability (training only) of the residual branches: MSSA's always, and ODL's
            when `residual_sparse_coding`. CRATE's ISTA step replaces the stream instead of adding to it, so there
            is no branch to drop and it always runs.
    """

    def __init__(self, dim: int, num_heads: int, overcomplete_ratio: int = 1, decoupled_dictionary: bool = False,
                 residual_sparse_coding: bool = False, attn_proj_bias: bool = True, norm_eps: float = 1e-5,
                 ista_step_size: float = 0.1, ista_lambda: float = 0.1, causal: bool = False,
                 attention: str = "mssa", drop_path: float = 0.0):
        super().__init__()
        if attention not in ("mssa", "mha"):
            raise ValueError(f"attention must be 'mssa' (CRATE's subspace attention) or 'mha' (separate q/k/v, the "
                             f"CRATE-α-CLIPA image tower), got {attention!r}")
        self.residual_sparse_coding = residual_sparse_coding
        self.attention = attention
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        if attention == "mssa":
            self.attn = SubspaceAttention(dim, num_heads, proj_bias=attn_proj_bias, causal=causal)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias=False, proj_bias=attn_proj_bias, causal=causal)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.ista = SparseCoding(dim, overcomplete_ratio, decoupled_dictionary, ista_step_size, ista_lambda)
        self.drop_path2 = DropPath(drop_path) if residual_sparse_coding else nn.Identity()

    def _sparsify(self, z: torch.Tensor) -> torch.Tensor:
        code = self.ista(self.norm2(z))  # (B, N, d)   ISTA / ODL
        if self.residual_sparse_coding:
            return z + self.drop_path2(code)  # CRATE-α: residual ODL branch
        return code  # CRATE: the code replaces the stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # z^{ℓ+1/2} = z^ℓ + MSSA(z^ℓ | U_[K])   (eq. 9; or MHA); drop_path only while training
        z = x + self.drop_path1(self.attn(self.norm1(x)))  # (B, N, d)
        return self._sparsify(z)  # z^{ℓ+1} = ISTA(z^{ℓ+1/2} | D)   (eq. 11)

    def forward_with_attention(self, x: torch.Tensor):
        out, attn = self.attn.forward_with_attention(self.norm1(x))
        return self._sparsify(x + self.drop_path1(out)), attn


def init_crate_blocks_(blocks) -> None:
    """The official CRATE block init: PyTorch-default Linear layers (as built) and Kaiming-uniform square
    dictionaries D (d, d)."""
    for block in blocks:
        init_dictionary_(block.ista.D, fan_in=block.ista.D.shape[1])  # kaiming_uniform_ on (d, d)


class CRATE(ImageTransformer):
    """CRATE classifier as the official code: LN → Linear → LN patch embedding, learned positions and class token
    (both std 1), LayerNorm eps 1e-5, PyTorch-default Linear init, Kaiming-uniform square dictionaries, ISTA step
    η = 0.1 and λ = 0.1, head LN(d) → Linear on the class token.

    One opt-in difference: global_pool='avg' averages the patch tokens only, where the official pool='mean' also
    averages the class token.

    `drop_path_rate` drops only the MSSA residual branch of each block (CRATE's ISTA step is not residual; see
    `CrateBlock`); `drop_rate`, `dynamic_img_size`: see `ImageTransformer`.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 global_pool: str = "token", ista_step_size: float = 0.1, ista_lambda: float = 0.1,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, dynamic_img_size: bool = True):
        super().__init__(
            block_fn=lambda i, drop_path: CrateBlock(embed_dim, num_heads, ista_step_size=ista_step_size,
                                                     ista_lambda=ista_lambda, drop_path=drop_path),
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_embed="crate", pos_embed="learn",
            class_token=True, global_pool=global_pool, norm_eps=1e-5, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.pos_embed, std=1.0)  # official: torch.randn
        nn.init.normal_(self.cls_token, std=1.0)
        init_crate_blocks_(self.blocks)

    def no_weight_decay(self) -> set[str]:
        """Empty: the official CRATE recipe (Lion, `Lion(model.parameters(), weight_decay=...)`) decays every
        parameter."""
        return set()


_PAPER = "Yu et al. 2023, CRATE (official Ma-Lab-Berkeley/CRATE)"

# name, short alias, patch_size, img_size (32: CIFAR, 10 classes), embed_dim, depth, num_heads
_VARIANTS = [
    ("crate_tiny_patch16_224", "crate_t16", 16, 224, 384, 12, 6),
    ("crate_tiny_patch4_32", "crate_t4_32", 4, 32, 384, 12, 6),
    ("crate_small_patch16_224", "crate_s16", 16, 224, 576, 12, 12),
    ("crate_small_patch4_32", "crate_s4_32", 4, 32, 576, 12, 12),
    ("crate_base_patch16_224", "crate_b16", 16, 224, 768, 12, 12),
    ("crate_base_patch4_32", "crate_b4_32", 4, 32, 768, 12, 12),
    ("crate_large_patch16_224", "crate_l16", 16, 224, 1024, 24, 16),
    ("crate_large_patch4_32", "crate_l4_32", 4, 32, 1024, 24, 16),
]
for _name, _alias, _patch, _img, _dim, _depth, _heads in _VARIANTS:
    _cifar = _img == 32
    register_model(partial(CRATE, patch_size=_patch, **(dict(img_size=32, num_classes=10) if _cifar else {}),
                           embed_dim=_dim, depth=_depth, num_heads=_heads), name=_name, alias=_alias,
                   cfg=model_cfg(32, CIFAR10_MEAN, CIFAR10_STD, num_classes=10, paper=_PAPER) if _cifar
                   else model_cfg(224, paper=_PAPER))
