"""Semantic segmentation on any vitlab image model: a backbone's dense features (`forward_intermediates`, timm's
contract) and a head.

Heads:
  'linear'   the linear probe of dense features: the patch maps of the chosen blocks (default the last, through the
             final norm), concatenated, BatchNorm, a 1×1 convolution to class logits (DINOv2's linear head).
  'upernet'  UPerNet (Xiao et al. 2018) on four blocks turned into a feature pyramid at strides ×4, ×2, ×1, ×½ of the
             patch grid by two 2×2 transposed convolutions / one / identity / 2×2 max-pool, as the ViT, BEiT and MAE
             ADE20K baselines build it; pyramid pooling (scales 1, 2, 3, 6) on the coarsest level, lateral 1×1 and
             3×3 FPN convolutions, top-down sum, fusion of all levels, dropout 0.1, 1×1 classifier.
             (No auxiliary FCN head: mmsegmentation's recipes add one with loss weight 0.4; vitlab does not.)

The logits are upsampled bilinearly (align_corners=False) to the input size, so training and evaluation compare
them with full-resolution masks, as mmsegmentation's EncoderDecoder does.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ImageTransformer
from ._hub import HubMixin
from ._registry import create_model

__all__ = ["SegmentationModel", "LinearHead", "UPerNetHead", "FeaturePyramid", "create_segmentation_model",
           "SEGMENTATION_HEADS", "default_indices"]

SEGMENTATION_HEADS = ("linear", "upernet")


class ConvNormAct(nn.Sequential):
    """Conv (no bias) → BatchNorm → ReLU: mmsegmentation's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class LinearHead(nn.Module):
    """BatchNorm + 1×1 convolution on the concatenated patch maps: (B, Σd, h, w) → (B, K, h, w)."""

    def __init__(self, in_channels: list[int], num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(sum(in_channels))
        self.classifier = nn.Conv2d(sum(in_channels), num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.norm(torch.cat(features, dim=1)))  # (B, K, h, w)


class FeaturePyramid(nn.Module):
    """Four single-scale ViT maps (B, d, h, w) → strides ×4, ×2, ×1, ×½: (B, d, 4h, 4w), (B, d, 2h, 2w), (B, d, h, w),
    (B, d, h/2, w/2) (BEiT / MAE ADE20K)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
                                 nn.ConvTranspose2d(dim, dim, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.keep = nn.Identity()
        self.down2 = nn.MaxPool2d(2)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != 4:
            raise ValueError(f"the feature pyramid takes 4 block outputs, got {len(features)}")
        return [op(x) for op, x in zip((self.up4, self.up2, self.keep, self.down2), features)]


class UPerNetHead(nn.Module):
    """UPerNet decoder on a 4-level pyramid (finest first); returns logits at the finest level (B, K, H/4, W/4 for
    ViT-B/16 at 512)."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        top = in_channels[-1]
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(top, channels, 1))
                                 for s in pool_scales)
        self.ppm_bottleneck = ConvNormAct(top + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(ConvNormAct(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def _pyramid_pooling(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(branch(x), x.shape[-2:]) for branch in self.ppm]  # each (B, c, h, w)
        return self.ppm_bottleneck(torch.cat([x, *pooled], dim=1))  # (B, c, h, w)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral, features)] + [self._pyramid_pooling(features[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the upsampled coarser level
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [_resize(x, size) for x in outs[1:]], dim=1))  # (B, c, H, W)
        return self.classifier(self.dropout(fused))  # (B, K, H, W) at the finest level


def default_indices(head: str, depth: int) -> list[int]:
    """The blocks a head reads: the last for 'linear'; for 'upernet' four evenly spaced ending with the last
    (depth 12: 3, 5, 7, 11, the BEiT / MAE choice)."""
    if head == "linear":
        return [depth - 1]
    if depth < 4:
        raise ValueError(f"the UPerNet head reads 4 blocks; the backbone has {depth}")
    if depth == 12:
        return [3, 5, 7, 11]
    return [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1]


class SegmentationModel(HubMixin, nn.Module):
    """backbone (an `ImageTransformer`, its classifier pruned) + head; `forward` maps (B, C, H, W) images to
    (B, K, H, W) logits. Implements the `TransformerBlocks` contract (the backbone's blocks) and the timm methods the
    engine uses (`no_weight_decay`, `group_matcher` for layer-wise lr decay: the head is the last group).

    Args:
        head: 'linear' or 'upernet'.
        indices: the blocks read (default `default_indices`).
        channels: UPerNet's width (512 for ViT-B as mmsegmentation; smaller for small backbones).
        norm_features: pass the block outputs through the backbone's final norm (default: yes for 'linear', no for
            'upernet', whose pyramid has its own BatchNorm).
    """

    def __init__(self, backbone: ImageTransformer, num_classes: int, head: str = "upernet",
                 indices: list[int] | None = None, channels: int = 512, pool_scales: tuple[int, ...] = (1, 2, 3, 6),
                 dropout: float = 0.1, norm_features: bool | None = None):
        super().__init__()
        if head not in SEGMENTATION_HEADS:
            raise ValueError(f"head must be one of {SEGMENTATION_HEADS}, got {head!r}")
        if not isinstance(backbone, ImageTransformer):
            raise TypeError(f"the backbone must be a vitlab image model (ViT, CRATE, CRATE-α), got "
                            f"{type(backbone).__name__}")
        indices = default_indices(head, len(backbone.blocks)) if indices is None else list(indices)
        self.head_kwargs = {"indices": list(indices), "channels": channels, "pool_scales": list(pool_scales),
                            "dropout": dropout, "norm_features": norm_features}  # rebuilds it (_hub.model_spec)
        if head == "upernet" and len(indices) != 4:
            raise ValueError(f"the UPerNet head reads 4 blocks, got indices={indices}")
        self.indices = backbone.prune_intermediate_layers(indices, prune_head=True)
        self.backbone = backbone
        self.head_type, self.num_classes = head, num_classes
        self.norm_features = head == "linear" if norm_features is None else norm_features
        dims = [backbone.embed_dim] * len(self.indices)
        if head == "linear":
            self.neck = nn.Identity()
            self.head = LinearHead(dims, num_classes)
        else:
            self.neck = FeaturePyramid(backbone.embed_dim)
            self.head = UPerNetHead(dims, num_classes, channels, tuple(pool_scales), dropout)
        self.pretrained_cfg = {**getattr(backbone, "pretrained_cfg", {}), "task": "segmentation",
                               "num_classes": num_classes, "head": head}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The patch maps the head reads: (B, d, H/P, W/P) per index (UPerNet: after the pyramid)."""
        features = self.backbone.forward_intermediates(x, indices=self.indices, norm=self.norm_features,
                                                       stop_early=True, intermediates_only=True)
        return self.neck(features) if self.head_type == "upernet" else features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images of any size → (B, K, H, W) logits. A size that is not a multiple of the
        patch is padded at the bottom and right with zeros (the mean colour) and the logits cropped back."""
        H, W = x.shape[-2:]
        P = self.backbone.patch_embed.patch_size
        padded = F.pad(x, (0, -W % P, 0, -H % P))  # (B, C, H', W'), H' and W' patch multiples
        logits = self.head(self.forward_features(padded))  # (B, K, h, w)
        return _resize(logits, padded.shape[-2:])[..., :H, :W]  # (B, K, H, W)

    # -- contracts ------------------------------------------------------------------------------------------
    def get_blocks(self) -> nn.Sequential:
        return self.backbone.get_blocks()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """The backbone's own mask (prefixed) and the head's 1-D parameters (norms, biases)."""
        names = {f"backbone.{n}" for n in self.backbone.no_weight_decay()}
        return names | {n for n, p in self.named_parameters() if p.ndim <= 1 and not n.startswith("backbone.")}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The backbone's groups under `backbone.`; neck and head come after the last block."""
        inner = self.backbone.group_matcher(coarse)
        prefix = lambda pattern: "|".join("^backbone\\." + p.lstrip("^") for p in pattern.split("|"))
        return dict(stem=prefix(inner["stem"]), blocks=[(prefix(p), i) for p, i in inner["blocks"]])


def create_segmentation_model(backbone: str | ImageTransformer, num_classes: int, head: str = "upernet",
                              head_kwargs: dict[str, Any] | None = None, **backbone_kwargs) -> SegmentationModel:
    """`create_segmentation_model('crate_alpha_b16', 150, 'upernet', img_size=512)`: a registered backbone (or one
    already built, e.g. with pretrained weights loaded) with a segmentation head."""
    if isinstance(backbone, str):
        backbone = create_model(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise ValueError("backbone keyword arguments apply to a backbone given by name only")
    return SegmentationModel(backbone, num_classes, head, **(head_kwargs or {}))

