"""Normalisation constants and the pretrained_cfg builders shared by every model family (image and language)."""
from __future__ import annotations

from typing import Any

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


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
