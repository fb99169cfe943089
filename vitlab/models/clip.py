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

Registered models (pretrained_cfg task 'clip'):
  `clip`                                  any registered image tower + a text tower, trainable from scratch:
                                          create_model('clip', image_model='vit_tiny_patch16_224', embed_dim=64,
                                                       image_kwargs=dict(img_size=32), text_kwargs=dict(width=64))
  `crate_alpha_clipa_large_patch14_224`   the official CRATE-α-CLIPA L/14 and H/14 (Yang et al. 2024), loadable
  `crate_alpha_clipa_huge_patch14_224`    from the published .pth files (layout 'crate_alpha_clipa_official')
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ImageTransformer
from ._constants import IMAGENET_MEAN, IMAGENET_STD, check_depth
from ._contract import run_blocks
from ._hub import HubMixin
from ._registry import create_model, register_model
from .crate_alpha import CRATEAlpha

__all__ = ["TextTransformer", "CLIP", "create_clip_model", "CLIPA_TEXT", "crate_alpha_clipa",
           "crate_alpha_clipa_large_patch14_224", "crate_alpha_clipa_huge_patch14_224"]


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
    official CRATE-α-CLIPA PyTorch port (bidirectional, last token), checked against an independent forward of
    the official structure in tests/test_clipa_official.py.
    """

    def __init__(self, vocab_size: int = 49408, context_length: int = 77, width: int = 512, layers: int = 12,
                 heads: int = 8, embed_dim: int = 512, mlp_ratio: float = 4.0, causal: bool = True,
                 pool: str = "eot", gelu_approximate: str = "none", norm_eps: float = 1e-5):
        super().__init__()
        if pool not in ("eot", "last"):
            raise ValueError(f"pool must be 'eot' (the end-of-text token, the largest id) or 'last', got {pool!r}")
        check_depth("layers", layers)
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
        self.grad_checkpointing = False
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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's switch: the training forward recomputes each block in backward (identical results)."""
        self.grad_checkpointing = enable

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        B, L = text.shape
        if L > self.context_length:
            raise ValueError(f"text has {L} tokens, the text tower's context_length is {self.context_length}")
        x = self.token_embedding(text) + self.positional_embedding[:L]  # (B, L, w)
        mask = self.attn_mask[:L, :L].to(x.dtype) if self.causal else None
        x = run_blocks(self.transformer.resblocks, x, self.grad_checkpointing, mask=mask)  # (B, L, w)
        x = self.ln_final(x)
        position = text.argmax(dim=-1) if self.pool == "eot" else torch.full((B,), L - 1, device=x.device)
        pooled = x[torch.arange(B, device=x.device), position]  # (B, w) at the end-of-text (or last) token
        return pooled @ self.text_projection  # (B, embed_dim)


class CLIP(HubMixin, nn.Module):
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

    def forward(self, images: torch.Tensor | None, text: torch.Tensor | None):
        """Normalised (image_features, text_features, exp(logit_scale)); a tower given None is skipped and its
        features are None (open_clip's convention), so evaluation can encode one side through a DDP / FSDP
        wrapper's forward."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.scale()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing in both towers (timm's / open_clip's name; `grad_checkpointing=true` in training):
        each block is recomputed in backward instead of storing its activations, with identical results."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

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


def _generic_clip(image_model: str = "vit_base_patch16_224", embed_dim: int = 512, image_kwargs: dict | None = None,
                  text_kwargs: dict | None = None) -> CLIP:
    """The registered `clip` builder: `create_clip_model` under the registry (no published weights)."""
    return create_clip_model(image_model, embed_dim, image_kwargs, text_kwargs)


register_model(_generic_clip, name="clip", cfg=dict(
    task="clip", url=None, first_conv="visual.patch_embed.proj",
    paper="Radford et al. 2021, CLIP (open_clip layout); image preprocessing from the chosen image tower"))


# ---------------------------------------------------------------------------------------------------------------
# CRATE-α-CLIPA (official UCSC-VLAA/CRATE-alpha, torch_inference/model/clipa_model.py)

# The 'H' text config of the port, shared by L/14 and H/14: BERT WordPiece vocabulary, context 32, width 1024,
# 24 layers, 16 heads, bidirectional, pooled at the last position, tanh-GELU, LayerNorm eps 1e-6.
CLIPA_TEXT = dict(vocab_size=32000, context_length=32, width=1024, layers=24, heads=16, causal=False, pool="last",
                  gelu_approximate="tanh", norm_eps=1e-6)
_CLIPA_HF = "https://huggingface.co/UCSC-VLAA/CRATE-alpha/resolve/main/torch/"
_CLIPA_PAPER = "Yang et al. 2024, CRATE-α (official UCSC-VLAA/CRATE-alpha, CLIPA recipe)"


def crate_alpha_clipa(embed_dim: int = 1024, image_kwargs: dict | None = None, text_kwargs: dict | None = None,
                      **image_overrides) -> CLIP:
    """A CRATE-α-CLIPA model: the image tower is a `CRATEAlpha` with ordinary multi-head attention
    (`attention='mha'`, bias-free q / k / v, as the official `nn.MultiheadAttention(d, H, bias=False)`), a
    bias-free conv stem and no classifier (defaults: L/14 at 224 px); the text tower is `CLIPA_TEXT`.

    The signature is the generic `clip` builder's (what the CLIP training loop passes), plus image-tower overrides
    at the top level for convenience:
        create_model('crate_alpha_clipa_l14', img_size=336)
        create_model('crate_alpha_clipa_l14', embed_dim=64, image_kwargs=dict(embed_dim=64, depth=2, num_heads=4),
                     text_kwargs=dict(width=64, layers=2, heads=4, vocab_size=100, context_length=8))

    Args:
        embed_dim: the joint image-text space E (open_clip's and the official `embed_dim`; 1024), NOT the image
            tower's width, which is `image_kwargs['embed_dim']`.
        image_kwargs: `CRATEAlpha` arguments (img_size, patch_size, embed_dim, depth, num_heads, in_chans, ...).
        text_kwargs: overrides of `CLIPA_TEXT` (`TextTransformer` arguments except its `embed_dim`, which is E).
        **image_overrides: more `CRATEAlpha` arguments (img_size=..., depth=...); a key also in image_kwargs is an
            error.
    """
    image_kwargs = dict(image_kwargs or {})
    both = sorted(set(image_kwargs) & set(image_overrides))
    if both:
        raise ValueError(f"image tower argument(s) {both} given both at the top level and in image_kwargs")
    image = {"img_size": 224, "patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16,
             **image_kwargs, **image_overrides}
    text = {**CLIPA_TEXT, **(text_kwargs or {})}
    if "embed_dim" in (text_kwargs or {}):
        raise ValueError("the text tower's output width is the CLIP embed_dim; do not pass embed_dim in text_kwargs")
    if image.get("num_classes", 0) != 0:
        raise ValueError("a CLIP image tower has no classifier; num_classes must be 0")
    image.update(num_classes=0, attention="mha", patch_embed_bias=False)
    return CLIP(CRATEAlpha(**image), TextTransformer(embed_dim=embed_dim, **text), embed_dim)


def _clipa_cfg(file: str, zero_shot_top1: float) -> dict:
    return dict(
        task="clip", url=_CLIPA_HF + file, file_layout="crate_alpha_clipa_official",
        input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear", crop_pct=1.0,
        first_conv="visual.patch_embed.proj",
        tokenizer="bert", tokenizer_vocab="bert-base-uncased", context_length=32, vocab_size=32000,
        strip_sep_token=True, pad_id=0,
        zero_shot_imagenet_top1=zero_shot_top1, paper=_CLIPA_PAPER)


def crate_alpha_clipa_large_patch14_224(embed_dim: int = 1024, image_kwargs: dict | None = None,
                                        text_kwargs: dict | None = None, **image_overrides) -> CLIP:
    """CRATE-α-CLIPA L/14: image tower d 1024, 24 layers, 16 heads, patch 14 at 224 px; text tower `CLIPA_TEXT`;
    E = 1024. 640,165,889 parameters (image tower 302,956,544, visual_proj 1,048,576, text tower 336,160,768,
    logit_scale 1). Paper: 69.8 % zero-shot ImageNet-1K. Overrides as `crate_alpha_clipa`."""
    return crate_alpha_clipa(embed_dim, image_kwargs, text_kwargs, **image_overrides)


def crate_alpha_clipa_huge_patch14_224(embed_dim: int = 1024, image_kwargs: dict | None = None,
                                       text_kwargs: dict | None = None, **image_overrides) -> CLIP:
    """CRATE-α-CLIPA H/14: image tower d 1280, 32 layers, 16 heads, patch 14 at 224 px; text tower `CLIPA_TEXT`;
    E = 1024. 967,866,369 parameters (image tower 630,394,880, visual_proj 1,310,720,
    text tower 336,160,768, logit_scale 1). Paper: 72.3 % zero-shot ImageNet-1K. Overrides as `crate_alpha_clipa`."""
    huge = {k: v for k, v in dict(embed_dim=1280, depth=32, num_heads=16).items() if k not in image_overrides}
    return crate_alpha_clipa(embed_dim, {**huge, **(image_kwargs or {})}, text_kwargs, **image_overrides)


register_model(crate_alpha_clipa_large_patch14_224, alias="crate_alpha_clipa_l14",
               cfg=_clipa_cfg("crate_alpha_CLIPA_L14.pth", 69.8))
register_model(crate_alpha_clipa_huge_patch14_224, alias="crate_alpha_clipa_h14",
               cfg=_clipa_cfg("crate_alpha_CLIPA_H14.pth", 72.3))
