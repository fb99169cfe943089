"""Normalisation constants, size bounds and the pretrained_cfg builders shared by every model family (image and
language)."""
from __future__ import annotations

import numbers
from typing import Any

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# Sizes no real model reaches, refused before anything is built (a typo or a crafted file would otherwise build
# modules or allocate memory until the machine gives out). The deepest published transformers have about 100 blocks
# per tower (GPT-3 96, ViT-22B 48, ViT-H 32, GPT-2 XL 48); the largest here is ViT-22B-sized, far below 10^11.
MAX_DEPTH = 1000  # blocks per tower
MAX_PARAMETERS = 10**11


def check_depth(name: str, value: Any) -> None:
    """`value` an int in [1, MAX_DEPTH], else a ValueError naming the constructor argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if value > MAX_DEPTH:
        raise ValueError(f"{name}={value} blocks: more than {MAX_DEPTH}, far beyond any real model (a typo?)")


def model_cfg(img_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes: int = 1000, crop_pct: float | None = None,
              first_conv: str = "patch_embed.proj", **kwargs: Any) -> dict[str, Any]:
    """timm-style pretrained_cfg: what a data pipeline needs to feed the model (and where weights live, if any)."""
    if crop_pct is None:
        crop_pct = 0.875 if img_size >= 224 else 1.0
    return dict(url=None, num_classes=num_classes, input_size=(3, img_size, img_size), mean=tuple(mean),
                std=tuple(std), interpolation="bicubic", crop_pct=crop_pct, first_conv=first_conv,
                classifier="head", **kwargs)


def lm_cfg(vocab_size: int, block_size: int, paper: str, url: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """pretrained_cfg of a language model: task 'lm', the vocabulary and context it was registered with (and where
    weights live, if any). No image keys."""
    return dict(task="lm", url=url, vocab_size=vocab_size, block_size=block_size, paper=paper, **kwargs)
