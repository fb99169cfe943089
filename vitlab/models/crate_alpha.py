"""CRATE-α, Yang et al., "Scaling White-Box Transformers for Vision" (NeurIPS 2024; official UCSC-VLAA/CRATE-alpha,
JAX training code and a PyTorch inference port).

A CRATE-α layer is MSSA followed by overcomplete dictionary learning (ODL, eqs. 5-7):
  z ← z + MSSA(LN1(z))                               (bias-free shared projection U)
  A¹ = ReLU(η Dᵀh − ηλ),  A² = ReLU(A¹ − η Dᵀ(D A¹ − h) − ηλ),  h = LN2(z),  D ∈ R^{d×4d}
  z ← z + D1 A²

The three changes from CRATE are constructor switches (`overcomplete_ratio`, `decoupled_dictionary`,
`residual_sparse_coding`), so the paper's ablation (B/32: CRATE 68.5 → +overcomplete 73.8 → +decoupled 75.8 →
+residual 76.5) is configuration only:
    create_model('crate_alpha_base_patch32_224', overcomplete_ratio=1, decoupled_dictionary=False,
                 residual_sparse_coding=False)
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ._base import ImageTransformer
from ._constants import CIFAR10_MEAN, CIFAR10_STD, model_cfg
from ._layers import init_dictionary_
from ._registry import register_model
from .crate import CrateBlock

__all__ = ["CRATEAlpha", "init_crate_alpha_blocks_"]


def init_crate_alpha_blocks_(blocks) -> None:
    """The official (JAX) CRATE-α block init: MSSA kernels U (or, for attention='mha' blocks, the fused q | k | v
    kernel) and the output projection N(0, 0.02); dictionaries D and D1 uniform ±√(6/d) (Flax kaiming-uniform with
    fan-in d); LayerNorms ones / zeros (as built)."""
    for block in blocks:
        in_proj = block.attn.subspace if hasattr(block.attn, "subspace") else block.attn.qkv
        nn.init.normal_(in_proj.weight, std=0.02)
        if in_proj.bias is not None:
            nn.init.zeros_(in_proj.bias)
        nn.init.normal_(block.attn.proj.weight, std=0.02)
        if block.attn.proj.bias is not None:
            nn.init.zeros_(block.attn.proj.bias)
        for dictionary in (block.ista.D, block.ista.D1):
            if dictionary is not None:
                init_dictionary_(dictionary, fan_in=dictionary.shape[0])  # ±√(6/d), Flax fan-in = d


class CRATEAlpha(ImageTransformer):
    """CRATE-α classifier following the official JAX model (the code that produced the paper's numbers):
    Conv2d stem with bias, class token (std 1e-6), learned positions (std 0.02) or 2-D sin-cos, block LayerNorm
    eps 1e-6, final LayerNorm (JAX `encoder_norm`, eps 1e-6) then the class token then a Linear head.
    Init: attention and head kernels N(0, 0.02), D and D1 uniform ±√(6/d) (Flax fan-in d), stem Kaiming-uniform.

    Two switches exist for the official CRATE-α-CLIPA image tower (`vitlab.models.clip`): `attention='mha'` puts
    ordinary multi-head attention (separate bias-free q / k / v, key `attn.qkv`) in front of each ODL block instead
    of MSSA, and `patch_embed_bias=False` drops the conv stem's bias (the CLIPA `conv1` has none).

    `drop_path_rate` drops both residual branches (MSSA and ODL; with `residual_sparse_coding=False` only MSSA's);
    `drop_rate`, `dynamic_img_size`: see `ImageTransformer`.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 overcomplete_ratio: int = 4, decoupled_dictionary: bool = True, residual_sparse_coding: bool = True,
                 pos_embed: str = "learn", global_pool: str = "token", ista_step_size: float = 0.1,
                 ista_lambda: float = 0.1, attention: str = "mssa", patch_embed_bias: bool = True,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, dynamic_img_size: bool = True):
        super().__init__(
            block_fn=lambda i, drop_path: CrateBlock(
                embed_dim, num_heads, overcomplete_ratio=overcomplete_ratio,
                decoupled_dictionary=decoupled_dictionary, residual_sparse_coding=residual_sparse_coding,
                attn_proj_bias=False, norm_eps=1e-6, ista_step_size=ista_step_size, ista_lambda=ista_lambda,
                attention=attention, drop_path=drop_path),
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_embed="conv",
            patch_embed_bias=patch_embed_bias, pos_embed=pos_embed, class_token=True, global_pool=global_pool,
            norm_eps=1e-6, drop_rate=drop_rate, drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size)
        self.init_weights()

    def init_weights(self) -> None:
        if self.pos_embed_type == "learn":
            nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.kaiming_uniform_(self.patch_embed.proj.weight)  # Flax kaiming_uniform, fan-in 3·P·P
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        init_crate_alpha_blocks_(self.blocks)
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """The official mask: only the matrix kernels of attention (MSSA's `subspace`, or MHA's `qkv`), stem and
        head are decayed; the dictionaries D and D1, LayerNorms, biases, class token and position embedding are
        not."""
        decayed = {"patch_embed.proj.weight", "head.weight"}
        for i in range(len(self.blocks)):
            decayed |= {f"blocks.{i}.attn.subspace.weight", f"blocks.{i}.attn.qkv.weight",
                        f"blocks.{i}.attn.proj.weight"}
        return {name for name, _ in self.named_parameters() if name not in decayed}


_PAPER = "Yang et al. 2024, CRATE-α (official UCSC-VLAA/CRATE-alpha)"
# Official PyTorch-port weights (ImageNet-21K pre-trained, ImageNet-1K fine-tuned): 81.2 / 83.9 top-1.
_HF = "https://huggingface.co/UCSC-VLAA/CRATE-alpha/resolve/main/torch/"
_OFFICIAL_WEIGHTS = {"crate_alpha_base_patch16_224": "crate_alpha_B16.pth",
                     "crate_alpha_large_patch14_224": "crate_alpha_L14.pth"}


# name, short alias, patch_size, img_size (32: CIFAR, 10 classes), embed_dim, depth, num_heads
_VARIANTS = [
    ("crate_alpha_tiny_patch32_224", "crate_alpha_t32", 32, 224, 192, 12, 3),
    ("crate_alpha_tiny_patch16_224", "crate_alpha_t16", 16, 224, 192, 12, 3),
    ("crate_alpha_tiny_patch14_224", "crate_alpha_t14", 14, 224, 192, 12, 3),
    ("crate_alpha_tiny_patch8_224", "crate_alpha_t8", 8, 224, 192, 12, 3),
    ("crate_alpha_tiny_patch4_32", "crate_alpha_t4_32", 4, 32, 192, 12, 3),
    ("crate_alpha_small_patch32_224", "crate_alpha_s32", 32, 224, 576, 12, 12),
    ("crate_alpha_small_patch16_224", "crate_alpha_s16", 16, 224, 576, 12, 12),
    ("crate_alpha_small_patch14_224", "crate_alpha_s14", 14, 224, 576, 12, 12),
    ("crate_alpha_small_patch8_224", "crate_alpha_s8", 8, 224, 576, 12, 12),
    ("crate_alpha_small_patch4_32", "crate_alpha_s4_32", 4, 32, 576, 12, 12),
    ("crate_alpha_base_patch32_224", "crate_alpha_b32", 32, 224, 768, 12, 12),
    ("crate_alpha_base_patch16_224", "crate_alpha_b16", 16, 224, 768, 12, 12),
    ("crate_alpha_base_patch14_224", "crate_alpha_b14", 14, 224, 768, 12, 12),
    ("crate_alpha_base_patch8_224", "crate_alpha_b8", 8, 224, 768, 12, 12),
    ("crate_alpha_base_patch4_32", "crate_alpha_b4_32", 4, 32, 768, 12, 12),
    ("crate_alpha_large_patch32_224", "crate_alpha_l32", 32, 224, 1024, 24, 16),
    ("crate_alpha_large_patch16_224", "crate_alpha_l16", 16, 224, 1024, 24, 16),
    ("crate_alpha_large_patch14_224", "crate_alpha_l14", 14, 224, 1024, 24, 16),
    ("crate_alpha_large_patch8_224", "crate_alpha_l8", 8, 224, 1024, 24, 16),
    ("crate_alpha_large_patch4_32", "crate_alpha_l4_32", 4, 32, 1024, 24, 16),
    ("crate_alpha_huge_patch32_224", "crate_alpha_h32", 32, 224, 1280, 32, 16),
    ("crate_alpha_huge_patch16_224", "crate_alpha_h16", 16, 224, 1280, 32, 16),
    ("crate_alpha_huge_patch14_224", "crate_alpha_h14", 14, 224, 1280, 32, 16),
    ("crate_alpha_huge_patch8_224", "crate_alpha_h8", 8, 224, 1280, 32, 16),
    ("crate_alpha_huge_patch4_32", "crate_alpha_h4_32", 4, 32, 1280, 32, 16),
]
for _name, _alias, _patch, _img, _dim, _depth, _heads in _VARIANTS:
    if _img == 32:
        _cfg = model_cfg(32, CIFAR10_MEAN, CIFAR10_STD, num_classes=10, paper=_PAPER)
    else:
        _cfg = model_cfg(224, paper=_PAPER)
        if _name in _OFFICIAL_WEIGHTS:
            _cfg.update(url=_HF + _OFFICIAL_WEIGHTS[_name], file_layout="crate_alpha_official")
    register_model(partial(CRATEAlpha, patch_size=_patch, **(dict(img_size=32, num_classes=10) if _img == 32 else {}),
                           embed_dim=_dim, depth=_depth, num_heads=_heads), name=_name, alias=_alias, cfg=_cfg)
