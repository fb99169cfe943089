"""Zero-shot evaluation of a CLIP model (Radford et al. 2021, §3.1.4): classification from class names × prompt
templates, and image ↔ text retrieval recall@k.

Zero-shot classifier: for class c, the normalised mean over templates t of normalize(encode_text(t.format(c))),
normalised again: W ∈ R^{D × C}. An image's class is argmax_c normalize(encode_image(x)) · W_c.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["zero_shot_classifier", "zero_shot_logits", "retrieval_recall"]


@torch.no_grad()
def zero_shot_classifier(model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                         tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device | str = "cpu"
                         ) -> torch.Tensor:
    """(D, C) class embeddings: each class's prompts `template.format(classname)` encoded, normalised, averaged over
    the templates and normalised again. Templates use `{}` (or `{c}`) for the class name."""
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    for template in templates:
        if "{}" not in template and "{c}" not in template:
            raise ValueError(f"template {template!r} has no {{}} (or {{c}}) where the class name goes")
    weights = []
    for name in classnames:
        prompts = [t.replace("{c}", "{}").format(name) for t in templates]
        features = F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)  # (T, D)
        weights.append(F.normalize(features.mean(dim=0), dim=-1))  # (D,)
    return torch.stack(weights, dim=1)  # (D, C)


@torch.no_grad()
def zero_shot_logits(model: nn.Module, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(B, C) cosine similarities × 100 (CLIP's scale) of normalised image embeddings with the class embeddings."""
    features = F.normalize(model.encode_image(images).float(), dim=-1)  # (B, D)
    return 100.0 * features @ classifier  # (B, C)


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                     texts_per_image: int = 1) -> dict[str, float]:
    """Recall@k (%) both ways for N images and N · texts_per_image captions, caption j belonging to image
    j // texts_per_image (open_clip's retrieval convention): image → text counts an image as found when any of its
    captions is in its top k; text → image when its image is in the caption's top k."""
    image_features = F.normalize(image_features.float(), dim=-1)  # (N, D)
    text_features = F.normalize(text_features.float(), dim=-1)  # (M, D)
    N, M = image_features.shape[0], text_features.shape[0]
    if M != N * texts_per_image:
        raise ValueError(f"{M} captions for {N} images: expected {texts_per_image} per image")
    scores = image_features @ text_features.t()  # (N, M)
    owner = torch.arange(M, device=scores.device) // texts_per_image  # (M,) image of each caption
    out = {}
    for k in ks:
        top_texts = scores.topk(min(k, M), dim=1).indices  # (N, k)
        i2t = (owner[top_texts] == torch.arange(N, device=scores.device)[:, None]).any(dim=1)  # (N,)
        top_images = scores.t().topk(min(k, N), dim=1).indices  # (M, k)
        t2i = (top_images == owner[:, None]).any(dim=1)  # (M,)
        out[f"image_to_text_r{k}"] = 100.0 * i2t.float().mean().item()
        out[f"text_to_image_r{k}"] = 100.0 * t2i.float().mean().item()
    return out
