"""Key maps from the official CRATE, CRATE-α and CRATE-α-CLIPA PyTorch layouts, Hugging Face ViT, and GPT-2
(Hugging Face and nanoGPT) to this library's keys, registered with `vitlab.models.weights.register_layout` on import
(so `load_checkpoint` and `create_model(pretrained=True)` read these files).

See ../shared/design/official_layouts.md §1-2, 5-7. Both official CRATE models keep their weights under
`transformer.layers.{i}` with `.0` the MSSA sub-block and `.1` the ISTA / ODL sub-block. Our GPT already uses the
GPT-2 names (nanoGPT's nn.Linear layout), so GPT-2 files need only HF's Conv1D weights transposed.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Mapping

import torch
from torch import nn

from ..models.weights import LAYOUTS, Layout, detect_layout, register_layout

__all__ = ["LAYOUTS", "detect_layout"]

Renames = list[tuple[str, str]]

# Ma-Lab-Berkeley/CRATE model/crate.py
_CRATE_RENAMES: Renames = [
    (r"pos_embedding", "pos_embed"),
    (r"cls_token", "cls_token"),
    (r"to_patch_embedding\.1\.(weight|bias)", r"patch_embed.norm_in.\1"),
    (r"to_patch_embedding\.2\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"to_patch_embedding\.3\.(weight|bias)", r"patch_embed.norm_out.\1"),
    (r"transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.qkv\.weight", r"blocks.\1.attn.subspace.weight"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"transformer\.layers\.(\d+)\.1\.norm\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"transformer\.layers\.(\d+)\.1\.fn\.weight", r"blocks.\1.ista.D"),
    (r"mlp_head\.0\.(weight|bias)", r"norm.\1"),
    (r"mlp_head\.1\.(weight|bias)", r"head.\1"),
]

# UCSC-VLAA/CRATE-alpha torch_inference/model/crate_alpha.py
_CRATE_ALPHA_RENAMES: Renames = [
    (r"pos_embedding", "pos_embed"),
    (r"cls_token", "cls_token"),
    (r"conv1\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.qkv\.weight", r"blocks.\1.attn.subspace.weight"),
    (r"transformer\.layers\.(\d+)\.0\.fn\.to_out\.0\.weight", r"blocks.\1.attn.proj.weight"),
    (r"transformer\.layers\.(\d+)\.1\.norm\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"transformer\.layers\.(\d+)\.1\.fn\.(D|D1)", r"blocks.\1.ista.\2"),
    (r"mlp_head\.0\.(weight|bias)", r"norm.\1"),
    (r"mlp_head\.1\.(weight|bias)", r"head.\1"),
]


# UCSC-VLAA/CRATE-alpha torch_inference/model/clipa_model.py, image tower (under `visual.`). The text tower's keys
# are open_clip's, which ours are too: they only move under `text.` (see _from_crate_alpha_clipa).
_CLIPA_VISUAL_RENAMES: Renames = [
    (r"visual\.conv1\.weight", "visual.patch_embed.proj.weight"),
    (r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight", r"visual.blocks.\1.attn.qkv.weight"),
    (r"visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.weight", r"visual.blocks.\1.attn.proj.weight"),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"visual.blocks.\1.norm1.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"visual.blocks.\1.norm2.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc", r"visual.blocks.\1.ista.D"),  # (d, 4d) dictionary D
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj", r"visual.blocks.\1.ista.D1"),  # (d, 4d) decoder D1
    (r"visual\.ln_post\.(weight|bias)", r"visual.norm.\1"),
]


# Hugging Face transformers ViT (ViTModel / ViTForImageClassification), pre-v5 and v5 names (official_layouts §7)
_HF_VIT_RENAMES: Renames = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)",
     r"blocks.\1.attn.proj.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
]
_HF_QKV = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)"
                     r"\.(weight|bias)")


def _rename(state_dict: Mapping[str, torch.Tensor], renames: Renames) -> dict[str, torch.Tensor]:
    """Applies the first full-match rename to each key; keys no rule matches keep their name (and are then reported
    as unexpected by the strict check)."""
    compiled = [(re.compile(pattern), repl) for pattern, repl in renames]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                key = pattern.sub(repl, key)
                break
        out[key] = value
    return out


def _from_crate(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    out = _rename(state_dict, _CRATE_RENAMES)
    # The official `to_out` is an Identity (no keys) when heads == 1 and dim_head == dim.
    for i, block in enumerate(getattr(model, "blocks", [])):
        proj = getattr(getattr(block, "attn", None), "proj", None)
        key = f"blocks.{i}.attn.proj.weight"
        if proj is not None and key not in out and f"blocks.{i}.attn.subspace.weight" in out \
                and block.attn.num_heads == 1:
            out[key] = torch.eye(proj.weight.shape[0], dtype=proj.weight.dtype)
            out[f"blocks.{i}.attn.proj.bias"] = torch.zeros(proj.weight.shape[0], dtype=proj.weight.dtype)
    return out


def _from_crate_alpha(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    return _rename(state_dict, _CRATE_ALPHA_RENAMES)


def _from_crate_alpha_clipa(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official CRATE-α-CLIPA keys → our `CLIP(CRATEAlpha(attention='mha'), TextTransformer)`.

    Image tower: the renames above; `class_embedding` (d,) → `cls_token` (1, 1, d); `positional_embedding`
    (N+1, d) → `pos_embed` (1, N+1, d); `proj` (d, E), applied as x @ proj → `visual_proj.weight` (E, d).
    `in_proj_weight` rows are q | k | v head-major, exactly our fused `qkv`; ODL's c_fc / c_proj are D / D1 (same
    ISTA steps). Text tower: every other key gains the `text.` prefix, except `logit_scale` (kept) and
    `text_projection`: declared (w, E) but applied as x @ text_projectionᵀ by the official code, where ours applies
    x @ text_projection, so ours is its transpose — which exists only when w = E (the official code cannot run
    another shape either).
    """
    out = {}
    for key, value in _rename(state_dict, _CLIPA_VISUAL_RENAMES).items():
        if key == "visual.class_embedding":
            out["visual.cls_token"] = value.reshape(1, 1, -1)  # (1, 1, d)
        elif key == "visual.positional_embedding":
            out["visual.pos_embed"] = value.reshape(1, *value.shape[-2:])  # (1, N+1, d)
        elif key == "visual.proj":
            out["visual_proj.weight"] = value.t()  # (E, d): nn.Linear computes x @ Wᵀ = x @ proj
        elif key == "text_projection":
            if value.ndim != 2 or value.shape[0] != value.shape[1]:
                raise ValueError(f"text_projection has shape {tuple(value.shape)}: the official CRATE-α-CLIPA code "
                                 "applies it transposed (x @ text_projectionᵀ), which needs text width == embed dim; "
                                 "a non-square one cannot come from a working official model")
            out["text.text_projection"] = value.t()  # ours: x @ text_projection
        elif key == "logit_scale" or key.startswith(("visual.", "visual_proj.")):
            out[key] = value
        else:
            out["text." + key] = value  # token_embedding, positional_embedding, transformer.resblocks, ln_final
    return out


def _from_hf_vit(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """HF keys → ours: separate query / key / value (or q/k/v_proj) are stacked into the fused `qkv` (rows
    q | k | v, as timm); the `vit.` prefix and the pooler of a bare ViTModel (which our models do not have) go."""
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rest = {}
    for key, value in state_dict.items():
        key = key.removeprefix("vit.")
        if key.startswith("pooler."):
            continue
        match = _HF_QKV.fullmatch(key)
        if match:
            layer, long_name, short_name, kind = match.groups()
            parts.setdefault((layer, kind), {})[(long_name or short_name)[0]] = value
        else:
            rest[key] = value
    out = _rename(rest, _HF_VIT_RENAMES)
    for (layer, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer}: query/key/value {kind} incomplete (found {sorted(qkv)})")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def _hf_layer_norm_eps(model: nn.Module) -> None:
    """transformers' ViTConfig default layer_norm_eps is 1e-12 (timm and vitlab: 1e-6); use it so that HF weights
    give HF's logits."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = 1e-12


def _crate_alpha_head_eps(model: nn.Module) -> None:
    """The PyTorch port's head LayerNorm has eps 1e-5 (the JAX encoder_norm that trained the weights: 1e-6); use
    the port's value so that its published files give the port's logits exactly."""
    if isinstance(getattr(model, "norm", None), nn.LayerNorm):
        model.norm.eps = 1e-5


# GPT-2: Hugging Face GPT2LMHeadModel / GPT2Model (official_layouts §6) and nanoGPT (§5)
_GPT2_CONV1D = re.compile(r"transformer\.h\.\d+\.(?:attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
_GPT2_BUFFER = re.compile(r"(?:transformer\.)?h\.\d+\.attn\.(?:bias|masked_bias)")  # causal-mask buffers


def _gpt2_c_attn(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    return next((state_dict[k] for k in ("transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight")
                 if k in state_dict), None)


def _is_gpt2_hf(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """HF Conv1D layout: c_attn weight (d, 3d) = (in, out); ours / nanoGPT's nn.Linear is (3d, d)."""
    w = _gpt2_c_attn(state_dict)
    return w is not None and w.ndim == 2 and w.shape[1] == 3 * w.shape[0]


def _is_nanogpt_variant(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """GPT-2 keys in nn.Linear layout that still need work: the `transformer.` prefix is missing, or nanoGPT's
    causal-mask buffers `attn.bias` (PyTorch < 2.0) are present. Plain nanoGPT keys are ours ('vitlab')."""
    w = _gpt2_c_attn(state_dict)
    if w is None or _is_gpt2_hf(state_dict):
        return False
    return "h.0.attn.c_attn.weight" in state_dict or any(_GPT2_BUFFER.fullmatch(k) for k in state_dict)


def _from_gpt2(state_dict: Mapping[str, torch.Tensor], model: nn.Module, transpose: bool) -> dict[str, torch.Tensor]:
    """GPT-2 keys → ours: adds the `transformer.` prefix (GPT2Model files lack it), drops the causal-mask buffers
    `attn.bias` / `attn.masked_bias`, and (HF) transposes the four Conv1D weights attn.c_attn, attn.c_proj,
    mlp.c_fc, mlp.c_proj from (in, out) to nn.Linear's (out, in). A missing `lm_head.weight` is the tied
    `transformer.wte.weight` (filled in by load_checkpoint)."""
    out = {}
    for key, value in state_dict.items():
        if _GPT2_BUFFER.fullmatch(key):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key
        out[key] = value.t() if transpose and _GPT2_CONV1D.fullmatch(key) and value.ndim == 2 else value
    return out


# registered with vitlab.models.weights (load_checkpoint, detect_layout), in detection order
register_layout(Layout("crate_alpha_clipa_official", "visual.transformer.resblocks.0.mlp.c_fc",
                       _from_crate_alpha_clipa))
register_layout(Layout("crate_official", "to_patch_embedding.2.weight", _from_crate))
register_layout(Layout("crate_alpha_official", "conv1.weight", _from_crate_alpha, _crate_alpha_head_eps))
register_layout(Layout("hf_vit", "embeddings.patch_embeddings.projection.weight", _from_hf_vit, _hf_layer_norm_eps))
register_layout(Layout("gpt2_hf", None, partial(_from_gpt2, transpose=True), detect=_is_gpt2_hf))
register_layout(Layout("nanogpt", None, partial(_from_gpt2, transpose=False), detect=_is_nanogpt_variant))
