"""Vision Transformer (Dosovitskiy et al. 2021) with timm's state-dict keys, and the mimetic paper's small-image
ViTs (Trockman & Kolter 2023: ViT-Tiny, patch 2, 32 px, class token, 2-D sin-cos positions)."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ._base import ImageTransformer
from ._constants import CIFAR10_MEAN, CIFAR10_STD, INCEPTION_MEAN, INCEPTION_STD, model_cfg
from ._layers import Attention, DropPath, Mlp
from ._registry import register_model
from .weight_init import trunc_normal_, trunc_normal_linear_init_

__all__ = ["Block", "VisionTransformer"]



class Block(nn.Module):
    """Pre-norm transformer block: x + drop_path(attn(norm1 x)); x + drop_path(mlp(norm2 x)).

    `drop_path`: stochastic-depth probability of both residual branches (training only)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))  # (B, N, d)
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def forward_with_attention(self, x: torch.Tensor):
        out, attn = self.attn.forward_with_attention(self.norm1(x))
        x = x + self.drop_path1(out)
        return x + self.drop_path2(self.mlp(self.norm2(x))), attn


class VisionTransformer(ImageTransformer):
    """timm's VisionTransformer contract and keys (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.i.*`,
    `norm`, `head`) with timm's default init: Linear trunc-normal std 0.02, learned positions std 0.02, class token
    std 1e-6, conv stem PyTorch default. `patch_embed`: 'conv' (timm's patchify convolution) or 'convstem' (Xiao et
    al. 2021's stride-2 3×3 convolutions, `ConvStem`: a power-of-two patch). `drop_rate`, `drop_path_rate`,
    `dynamic_img_size`: see `ImageTransformer`."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, pos_embed: str = "learn", class_token: bool = True,
                 global_pool: str = "token", norm_eps: float = 1e-6, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dynamic_img_size: bool = True, patch_embed: str = "conv"):
        if patch_embed not in ("conv", "convstem"):
            raise ValueError(f"patch_embed must be 'conv' or 'convstem' for a ViT, got {patch_embed!r}")
        super().__init__(
            block_fn=lambda i, drop_path: Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, drop_path),
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_embed=patch_embed, pos_embed=pos_embed,
            class_token=class_token, global_pool=global_pool, norm_eps=norm_eps, drop_rate=drop_rate,
            drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size)
        self.init_weights()

    def init_weights(self) -> None:
        if self.pos_embed_type == "learn":
            trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)  # ±2σ
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(trunc_normal_linear_init_)


_SMALL_IMAGE = dict(img_size=32, num_classes=10, pos_embed="sincos", class_token=True)
_IMAGENET = model_cfg(224, INCEPTION_MEAN, INCEPTION_STD, crop_pct=0.9, paper="Dosovitskiy et al. 2021, timm")
_CIFAR = model_cfg(32, CIFAR10_MEAN, CIFAR10_STD, num_classes=10,
                   paper="Trockman & Kolter 2023, mimetic initialization (CIFAR ViT-Tiny)")

# name, short alias, patch_size, embed_dim, depth, num_heads, the 32-px CIFAR setting (sin-cos, 10 classes)
_VARIANTS = [
    ("vit_tiny_patch16_224", "vit_t16", 16, 192, 12, 3, False),
    ("vit_small_patch16_224", "vit_s16", 16, 384, 12, 6, False),
    ("vit_base_patch16_224", "vit_b16", 16, 768, 12, 12, False),
    ("vit_large_patch16_224", "vit_l16", 16, 1024, 24, 16, False),
    ("vit_tiny_patch2_32", "vit_t2_32", 2, 192, 12, 3, True),
    ("vit_tiny_patch4_32", "vit_t4_32", 4, 192, 12, 3, True),
]
for _name, _alias, _patch, _dim, _depth, _heads, _small in _VARIANTS:
    register_model(partial(VisionTransformer, patch_size=_patch, embed_dim=_dim, depth=_depth, num_heads=_heads,
                           **(_SMALL_IMAGE if _small else {})),
                   name=_name, alias=_alias, cfg=_CIFAR if _small else _IMAGENET)
