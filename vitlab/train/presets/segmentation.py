"""Semantic-segmentation presets: `model` is the backbone, `head` the decoder (vitlab/models/segmentation.py).

ADE20K (150 classes, crop 512): the CRATE-α paper reports ADE20K segmentation, but neither its text available to
us nor the official repositories (UCSC-VLAA/CRATE-alpha, Ma-Lab-Berkeley/CRATE) give the head or the recipe, so the
preset is the ViT / BEiT / MAE UPerNet baseline as mmsegmentation runs it (crop 512, 160k iterations of batch 16,
AdamW lr 1e-4, weight decay 0.05, layer decay 0.65, 1,500 warmup iterations, slide evaluation 512 / 341) on the
official CRATE-α-B/16 weights. Differences from mmsegmentation's recipe: cosine instead of polynomial decay, no
auxiliary FCN head.

Fashion-MNIST scenes (vitlab.data.scenes: 2–4 real Fashion-MNIST items on a 64 × 64 canvas, 11 classes with
background): CPU-sized, one per family × head, minutes each on 2 cores; docs/results.md has the measured mIoU.
"""
from __future__ import annotations

from ...data.augment import AugmentConfig
from ..config import TrainConfig

__all__ = ["PRESETS"]


def ade20k_crate_alpha_b16_upernet() -> TrainConfig:
    """CRATE-α-B/16 (official ImageNet-21K → 1K weights) + UPerNet on ADE20K at 512 × 512, the ViT-B UPerNet recipe
    of BEiT / MAE (160k iterations, batch 16, AdamW 1e-4, layer decay 0.65, slide evaluation).

    Run: vitlab train ade20k_crate_alpha_b16_upernet data_dir=/path/to/ADEChallengeData2016/..
    Should reach: not measured here (no ADE20K, no GPU on the development machine); the CRATE-α paper's ADE20K
    number could not be found in a source we can cite, so none is stated."""
    return TrainConfig(model="crate_alpha_base_patch16_224", model_kwargs=dict(img_size=512), pretrained=True,
                       head="upernet", head_kwargs=dict(channels=512), dataset="ade20k", train_split="training",
                       eval_split="validation", image_size=512, eval_mode="slide", eval_stride=341,
                       optimizer="adamw", lr=1e-4, weight_decay=0.05, layer_decay=0.65, betas=(0.9, 0.999),
                       schedule="cosine", steps=160_000, warmup_steps=1500, eval_interval=16_000, batch_size=16,
                       num_workers=8, log_every=50)


def _scenes(model: str, head: str, **head_kwargs) -> TrainConfig:
    """Width 96, depth 4, 3 heads, patch 8 (an 8 × 8 grid on the 64 × 64 canvas); 10 k training scenes once, AdamW
    1e-3, cosine, flips; UPerNet at 32 channels reads all four blocks (its finest level is 32 × 32). Patch 8 and
    32 channels keep a UPerNet run near two minutes on 2 CPU cores (patch 4 with 64 channels: 4 s a step, 10× more)."""
    return TrainConfig(model=model, model_kwargs=dict(patch_size=8, embed_dim=96, depth=4, num_heads=3),
                       head=head, head_kwargs=head_kwargs, dataset="fashion_mnist_scenes", train_split="train",
                       eval_split="test", augment=AugmentConfig(hflip=True), optimizer="adamw", lr=1e-3,
                       weight_decay=0.05, schedule="cosine", warmup_epochs=0.1, epochs=1, batch_size=32, train_subset=10_000,
                       grad_clip=1.0, log_every=50, eval_every=1)


def fashion_scenes_vit_linear() -> TrainConfig:
    """Small ViT + linear head on Fashion-MNIST scenes (64 × 64, 11 classes). Run: vitlab train
    fashion_scenes_vit_linear. Should reach: docs/results.md (the command and machine are there)."""
    return _scenes("vit_tiny_patch4_32", "linear")


def fashion_scenes_vit_upernet() -> TrainConfig:
    """Small ViT + UPerNet (32 channels) on Fashion-MNIST scenes. Run: vitlab train fashion_scenes_vit_upernet.
    Should reach: docs/results.md."""
    return _scenes("vit_tiny_patch4_32", "upernet", channels=32)


def fashion_scenes_crate_linear() -> TrainConfig:
    """Small CRATE + linear head on Fashion-MNIST scenes. Run: vitlab train fashion_scenes_crate_linear.
    Should reach: docs/results.md."""
    return _scenes("crate_tiny_patch4_32", "linear")


def fashion_scenes_crate_upernet() -> TrainConfig:
    """Small CRATE + UPerNet on Fashion-MNIST scenes. Run: vitlab train fashion_scenes_crate_upernet.
    Should reach: docs/results.md."""
    return _scenes("crate_tiny_patch4_32", "upernet", channels=32)


def fashion_scenes_crate_alpha_linear() -> TrainConfig:
    """Small CRATE-α + linear head on Fashion-MNIST scenes. Run: vitlab train fashion_scenes_crate_alpha_linear.
    Should reach: docs/results.md."""
    return _scenes("crate_alpha_tiny_patch4_32", "linear")


def fashion_scenes_crate_alpha_upernet() -> TrainConfig:
    """Small CRATE-α + UPerNet on Fashion-MNIST scenes. Run: vitlab train fashion_scenes_crate_alpha_upernet.
    Should reach: docs/results.md."""
    return _scenes("crate_alpha_tiny_patch4_32", "upernet", channels=32)


PRESETS = (  # the semantic-segmentation presets, registered by vitlab.train.presets under their function names
    ade20k_crate_alpha_b16_upernet, fashion_scenes_vit_linear, fashion_scenes_vit_upernet,
    fashion_scenes_crate_linear, fashion_scenes_crate_upernet, fashion_scenes_crate_alpha_linear,
    fashion_scenes_crate_alpha_upernet)
