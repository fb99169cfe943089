"""CLIP (Radford et al. 2021) with any vitlab image tower: ViT, CRATE, CRATE-α.

    image tower  f(x) → pooled features (B, d_img) → `visual_proj` (no bias) → (B, D)
    text tower   token + position embeddings → causal pre-norm blocks → `ln_final` → the end-of-text token's
                 features (the largest token id, CLIP's convention) → `text_projection` (d_txt, D) → (B, D)
    logits       exp(logit_scale) · normalize(image) · normalize(text)ᵀ, logit_scale initialised to log(1/0.07) and
                 clamped so the scale never exceeds 100

The text tower's state-dict keys are those of open_clip's `CustomTextCLIP` text tower (`text.token_embedding`,
`text.positional_embedding`, `text.transformer.resblocks.i.{ln_1, attn.in_proj_weight, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}`, `text.ln_final`, `text.text_projection`) and `logit_scale`, so a text tower moves between vitlab and
open_clip as is. Its attention is
`nn.MultiheadAttention`, which `vitlab.init.mimetic_init_` initialises (as the image tower's).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ImageTransformer
from ._registry import create_model

__all__ = ["TextTransformer", "CLIP", "create_clip_model"]


class ResidualAttentionBlock(nn.Module):
    """open_clip's text block: x + attn(ln_1 x, causal), x + mlp(ln_2 x), MLP c_fc → GELU → c_proj."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-5,
                 gelu_approximate: str = "none"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)),
                                              ("gelu", nn.GELU(approximate=gelu_approximate)),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]  # (B, L, w)
        return x + self.mlp(self.ln_2(x))  # (B, L, w)


class TextTransformer(nn.Module):
    """The CLIP text encoder: (B, L) token ids → (B, embed_dim).

    Defaults are OpenAI CLIP's (causal mask, pooled at the end-of-text token = the largest id, exact GELU, LayerNorm
    eps 1e-5). `causal=False, pool='last', gelu_approximate='tanh', norm_eps=1e-6` describe the text tower of the
    official CRATE-α-CLIPA PyTorch port as ../shared/design/official_layouts.md reads it (bidirectional, last
    token); to be checked against the official file when its converter is written.
    """

    def __init__(self, vocab_size: int = 49408, context_length: int = 77, width: int = 512, layers: int = 12,
                 heads: int = 8, embed_dim: int = 512, mlp_ratio: float = 4.0, causal: bool = True,
                 pool: str = "eot", gelu_approximate: str = "none", norm_eps: float = 1e-5):
        super().__init__()
        if pool not in ("eot", "last"):
            raise ValueError(f"pool must be 'eot' (the end-of-text token, the largest id) or 'last', got {pool!r}")
        self.context_length, self.vocab_size, self.width = context_length, vocab_size, width
        self.causal, self.pool = causal, pool
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, norm_eps, gelu_approximate) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=norm_eps)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.register_buffer("attn_mask", torch.full((context_length, context_length), float("-inf")).triu(1),
                             persistent=False)  # (L, L) causal: token i sees j <= i
        self.init_weights()

    def init_weights(self) -> None:
        """open_clip's init: token std 0.02, positions std 0.01, attention / MLP std scaled by depth, projection
        std width^-0.5."""
        width, layers = self.width, len(self.transformer.resblocks)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = (width ** -0.5) * ((2 * layers) ** -0.5), width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        B, L = text.shape
        if L > self.context_length:
            raise ValueError(f"text has {L} tokens, the text tower's context_length is {self.context_length}")
        x = self.token_embedding(text) + self.positional_embedding[:L]  # (B, L, w)
        mask = self.attn_mask[:L, :L].to(x.dtype) if self.causal else None
        for block in self.transformer.resblocks:
            x = block(x, mask)  # (B, L, w)
        x = self.ln_final(x)
        position = text.argmax(dim=-1) if self.pool == "eot" else torch.full((B,), L - 1, device=x.device)
        pooled = x[torch.arange(B, device=x.device), position]  # (B, w) at the end-of-text (or last) token
        return pooled @ self.text_projection  # (B, embed_dim)


class CLIP(nn.Module):
    """open_clip's interface: `encode_image(images, normalize=False)`, `encode_text(text, normalize=False)`,
    `forward(images, text) -> (image_features, text_features, logit_scale.exp())` with normalised features."""

    def __init__(self, visual: ImageTransformer, text: TextTransformer, embed_dim: int,
                 init_logit_scale: float = math.log(1 / 0.07), max_logit_scale: float = 100.0):
        super().__init__()
        if visual.num_classes != 0:
            raise ValueError("the image tower must have no classifier (build it with num_classes=0)")
        self.visual = visual
        self.visual_proj = nn.Linear(visual.num_features, embed_dim, bias=False)
        nn.init.normal_(self.visual_proj.weight, std=visual.num_features ** -0.5)
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_logit_scale = max_logit_scale
        self.embed_dim = embed_dim

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pooled = self.visual.forward_head(self.visual.forward_features(images), pre_logits=True)  # (B, d_img)
        features = self.visual_proj(pooled)  # (B, D)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(text)  # (B, D)
        return F.normalize(features, dim=-1) if normalize else features

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), at most `max_logit_scale` (the clamp acts on the log, as open_clip's training loop)."""
        return self.logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        return self.encode_image(images, normalize=True), self.encode_text(text, normalize=True), self.scale()

    def no_weight_decay(self) -> set[str]:
        """open_clip's rule: no decay for 1-D parameters, embeddings, positions and the logit scale; the image
        tower keeps its family's official mask."""
        names = {f"visual.{n}" for n in self.visual.no_weight_decay()}
        for name, p in self.named_parameters():
            if not name.startswith("visual.") and (p.ndim < 2 or "embedding" in name or name == "logit_scale"):
                names.add(name)
        return names


def create_clip_model(image_model: str, embed_dim: int = 512, image_kwargs: dict | None = None,
                      text_kwargs: dict | None = None) -> CLIP:
    """`create_clip_model('crate_alpha_b16', 512, text_kwargs=dict(width=512, layers=12, heads=8))`: a registered
    image tower (built with `image_kwargs`, its classifier removed) and an open_clip-layout text tower, joined in an
    `embed_dim`-dimensional space."""
    visual = create_model(image_model, **{**(image_kwargs or {}), "num_classes": 0})
    return CLIP(visual, TextTransformer(embed_dim=embed_dim, **(text_kwargs or {})), embed_dim)
