"""Attention-layout adapters for mimetic initialization.

Each adapter recognises one way of storing a self-attention layer — by attribute names, class names and weight
shapes, never by importing a foreign library — and returns an `AttentionView`: the q, k, v and output weights as
tensor VIEWS in ONE convention, nn.Linear's (out, in), so the initialiser writes them once for every layout.

Convention (x a row vector of width d, D = H·dh the attention width):
    q = x W_qᵀ + b_q    with `view.q` = W_q of shape (D, d), rows head-major: head h owns rows h·dh … (h+1)·dh − 1
    out = o W_projᵀ     with `view.proj` = W_proj of shape (d, D)
(the paper's W_q is our W_qᵀ; mimetic.py does that bookkeeping).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["AttentionView", "UnsupportedAttentionError", "SUPPORTED_LAYOUTS", "find_attention_layers"]

SUPPORTED_LAYOUTS: tuple[str, ...] = (
    "fused qkv: `qkv` Linear (3·D, d), rows q | k | v head-major, + `proj` Linear (vitlab ViT, timm Attention); "
    "heads from `num_heads`",
    "fused c_attn: `c_attn` as nn.Linear (3·D, d) (nanoGPT, heads from `n_head`) or Hugging Face Conv1D with "
    "weight (d, 3·D) (GPT-2 self-attention, heads from `num_heads`) + `c_proj`",
    "torch.nn.MultiheadAttention with kdim = vdim = embed_dim (`in_proj_weight` q | k | v + `out_proj`)",
    "separate projections: `q_proj`, `k_proj`, `v_proj` + `o_proj` or `out_proj` of equal width (Hugging Face ViT "
    "v5, CLIP, SigLIP; no grouped-query attention); heads from `num_heads` / `num_attention_heads` / `config`",
    "Hugging Face pre-v5 / BERT style: child `attention` or `self` holding `query`, `key`, `value` (heads from "
    "`num_attention_heads`) + sibling `output.dense`",
    "tied q = k = v: `subspace` Linear (D, d) without bias + `proj` (vitlab CRATE / CRATE-α MSSA); QK half only, "
    "positive-semi-definite variant",
)


class UnsupportedAttentionError(TypeError):
    """A module holds attention-like parameters in a layout mimetic initialization does not know (or none at all).
    The message lists the supported layouts."""


def _unsupported_message(problems: list[str]) -> str:
    layouts = "\n".join(f"  - {text}" for text in SUPPORTED_LAYOUTS)
    return "\n".join(problems) + f"\nSupported attention layouts:\n{layouts}"


@dataclass
class AttentionView:
    """One self-attention layer seen through nn.Linear's (out, in) convention.

    `q`, `k`, `v`: (D, d) views, `proj`: (d, D) view; writing into them writes the module's parameters.
    `biases` maps 'q' | 'k' | 'v' | 'proj' to a bias view or None. `tied`: q, k and v are one tensor (CRATE MSSA).
    """

    name: str
    layout: str
    num_heads: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    proj: torch.Tensor
    biases: dict[str, torch.Tensor | None] = field(default_factory=dict)
    tied: bool = False

    @property
    def dim(self) -> int:
        """Model width d."""
        return self.q.shape[1]

    @property
    def head_dim(self) -> int:
        """dh = D / H, the rank of each head's W_q W_kᵀ."""
        return self.q.shape[0] // self.num_heads

    def check(self) -> "AttentionView":
        """Shape sanity shared by every adapter; raises UnsupportedAttentionError for a square-less layout."""
        D, d = self.q.shape
        problem = None
        if self.k.shape != (D, d) or self.v.shape != (D, d):
            problem = f"q/k/v widths differ ({tuple(self.q.shape)}, {tuple(self.k.shape)}, {tuple(self.v.shape)})"
        elif self.proj.shape != (d, D):
            problem = f"output projection {tuple(self.proj.shape)} does not map width {D} back to width {d}"
        elif D % self.num_heads:
            problem = f"attention width {D} is not divisible by {self.num_heads} heads"
        elif D > d:
            problem = f"attention width {D} exceeds model width {d}: W_v W_proj cannot be full rank"
        if problem:
            raise UnsupportedAttentionError(f"{self.name} ({self.layout}): {problem}")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Duck-typed helpers


def _is_conv1d(m: object) -> bool:
    """Hugging Face GPT-2 `Conv1D`: y = x W + b with W (nx, nf), the transpose of nn.Linear's weight."""
    w = getattr(m, "weight", None)
    return (type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and getattr(m, "nf", None) == w.shape[1] and getattr(m, "nx", None) == w.shape[0])


def _is_linear(m: object) -> bool:
    return isinstance(m, nn.Linear) or _is_conv1d(m)


def _weight(m: nn.Module) -> torch.Tensor:
    """The weight as an (out, in) view, whether `m` is an nn.Linear or a transposed Conv1D."""
    return m.weight.t() if _is_conv1d(m) else m.weight


def _bias(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def _child(m: nn.Module, *names: str) -> nn.Module | None:
    """The first direct child among `names` that is a Linear (or Conv1D), else None."""
    for name in names:
        c = m._modules.get(name)
        if _is_linear(c):
            return c
    return None


def _num_heads(m: nn.Module, name: str, layout: str) -> int:
    for attr in ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads"):
        value = getattr(m, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    value = getattr(getattr(m, "config", None), "num_attention_heads", None)
    if isinstance(value, int) and value > 0:
        return value
    raise UnsupportedAttentionError(f"{name} ({layout}): no head count found (looked for num_heads, "
                                    "num_attention_heads, n_head, n_heads, heads, config.num_attention_heads)")


def _split3(t: torch.Tensor | None, D: int) -> list[torch.Tensor | None]:
    """Rows q | k | v of a fused (3·D, …) tensor as three views."""
    return [None] * 3 if t is None else [t[i * D:(i + 1) * D] for i in range(3)]


# ---------------------------------------------------------------------------------------------------------------
# Adapters: (module, name) -> AttentionView | None; raise UnsupportedAttentionError for a known-but-unusable variant


def _fused(m: nn.Module, name: str) -> AttentionView | None:
    for qkv_name, proj_name, layout in (("qkv", "proj", "fused qkv"), ("c_attn", "c_proj", "fused c_attn")):
        qkv, proj = _child(m, qkv_name), _child(m, proj_name)
        if qkv is None or proj is None:
            continue
        W, P = _weight(qkv), _weight(proj)  # (3·D, d), (d_out, D)
        D = P.shape[1]
        if W.shape[0] == D:
            return None  # one projection for q = k = v (official CRATE): not a fused q | k | v, left to the report
        if getattr(m, "is_cross_attention", False):
            raise UnsupportedAttentionError(f"{name} ({layout}): cross-attention (queries and keys from different "
                                            "inputs) has no square W_q W_kᵀ")
        if W.shape[0] != 3 * D:
            raise UnsupportedAttentionError(f"{name} ({layout}): {qkv_name} has {W.shape[0]} outputs, expected "
                                            f"3 × {D} (q | k | v)")
        q, k, v = _split3(W, D)
        separate = [getattr(m, f"{s}_bias", None) for s in "qkv"]  # BEiT/EVA-style q_bias, k_bias, v_bias
        bq, bk, bv = [s if isinstance(s, torch.Tensor) else b for s, b in zip(separate, _split3(_bias(qkv), D))]
        return AttentionView(name, layout, _num_heads(m, name, layout), q, k, v, P,
                             dict(q=bq, k=bk, v=bv, proj=_bias(proj))).check()
    return None


def _multihead(m: nn.Module, name: str) -> AttentionView | None:
    if not isinstance(m, nn.MultiheadAttention):
        return None
    layout = "nn.MultiheadAttention"
    if not m._qkv_same_embed_dim:
        raise UnsupportedAttentionError(f"{name} ({layout}): kdim={m.kdim}, vdim={m.vdim} differ from embed_dim="
                                        f"{m.embed_dim} (separate q/k/v_proj_weight): W_q W_kᵀ is not square")
    D = m.embed_dim
    q, k, v = _split3(m.in_proj_weight, D)  # (D, d) each
    bq, bk, bv = _split3(m.in_proj_bias, D)
    return AttentionView(name, layout, m.num_heads, q, k, v, m.out_proj.weight,
                         dict(q=bq, k=bk, v=bv, proj=_bias(m.out_proj))).check()


def _separate(m: nn.Module, name: str) -> AttentionView | None:
    q, k, v = _child(m, "q_proj"), _child(m, "k_proj"), _child(m, "v_proj")
    out = _child(m, "o_proj", "out_proj")
    if q is None or k is None or v is None or out is None:
        return None
    layout = "separate q_proj/k_proj/v_proj"
    if not (_weight(q).shape == _weight(k).shape == _weight(v).shape):
        raise UnsupportedAttentionError(f"{name} ({layout}): q/k/v widths {_weight(q).shape[0]}, "
                                        f"{_weight(k).shape[0]}, {_weight(v).shape[0]} differ (grouped-query "
                                        "attention shares keys across heads, so per-head W_q W_kᵀ are not "
                                        "independent)")
    return AttentionView(name, layout, _num_heads(m, name, layout), _weight(q), _weight(k), _weight(v),
                         _weight(out), dict(q=_bias(q), k=_bias(k), v=_bias(v), proj=_bias(out))).check()


def _legacy_hf(m: nn.Module, name: str) -> AttentionView | None:
    output = m._modules.get("output")
    dense = _child(output, "dense") if isinstance(output, nn.Module) else None
    if dense is None:
        return None
    for inner_name in ("attention", "self"):
        inner = m._modules.get(inner_name)
        if not isinstance(inner, nn.Module):
            continue
        q, k, v = _child(inner, "query"), _child(inner, "key"), _child(inner, "value")
        if q is None or k is None or v is None:
            continue
        layout = f"Hugging Face pre-v5 {inner_name}.query/key/value + output.dense"
        return AttentionView(name, layout, _num_heads(inner, f"{name}.{inner_name}", layout), _weight(q),
                             _weight(k), _weight(v), _weight(dense),
                             dict(q=_bias(q), k=_bias(k), v=_bias(v), proj=_bias(dense))).check()
    return None


def _tied(m: nn.Module, name: str) -> AttentionView | None:
    U, proj = _child(m, "subspace"), _child(m, "proj")
    if U is None or proj is None:
        return None
    layout = "tied subspace (CRATE MSSA)"
    if _bias(U) is not None:
        raise UnsupportedAttentionError(f"{name} ({layout}): `subspace` has a bias; MSSA's U is bias-free")
    W = _weight(U)  # (D, d)  U = [U_1; …; U_H]
    return AttentionView(name, layout, _num_heads(m, name, layout), W, W, W, _weight(proj),
                         dict(q=None, k=None, v=None, proj=_bias(proj)), tied=True).check()


_ADAPTERS: tuple[Callable[[nn.Module, str], AttentionView | None], ...] = (
    _multihead, _fused, _separate, _legacy_hf, _tied)

# Direct child / parameter names and class names that betray an attention layer nobody claimed.
_ATTENTION_NAMES = frozenset({"qkv", "to_qkv", "Wqkv", "in_proj_weight", "q_proj_weight", "query", "key", "value",
                              "q_proj", "k_proj", "v_proj", "c_attn", "q_attn", "subspace", "q", "kv"})
_ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)


def _looks_like_attention(m: nn.Module) -> bool:
    names = set(m._modules) | set(m._parameters)
    if names & _ATTENTION_NAMES:
        return True
    has_weights = any(p is not None for p in m._parameters.values()) or any(
        _is_linear(c) for c in m._modules.values())
    return bool(_ATTENTION_CLASS.search(type(m).__name__)) and has_weights


def _walk(module: nn.Module) -> Iterator[tuple[str, nn.Module, AttentionView | None, str | None]]:
    """Pre-order walk; yields (name, module, view, problem) for every recognised or suspicious module, skipping
    the sub-modules of a recognised one (so HF's inner `ViTSelfAttention` is not reported twice)."""
    claimed: set[int] = set()
    for name, m in module.named_modules():
        if id(m) in claimed:
            continue
        name = name or type(m).__name__
        view, problem = None, None
        try:
            view = next((v for v in (adapt(m, name) for adapt in _ADAPTERS) if v is not None), None)
        except UnsupportedAttentionError as err:
            problem = str(err)
        if view is None and problem is None and _looks_like_attention(m):
            problem = f"{name} ({type(m).__name__}): attention-like parameters in an unknown layout " \
                      f"(children/parameters: {sorted(set(m._modules) | set(m._parameters))})"
        if view is not None or problem is not None:
            claimed.update(id(s) for s in m.modules())
            yield name, m, view, problem


def find_attention_layers(module: nn.Module, strict: bool = True) -> list[AttentionView]:
    """Every self-attention layer of `module` as an `AttentionView`, in `module.modules()` order.

    Raises UnsupportedAttentionError (listing the supported layouts) when no layer is found, or, with
    `strict=True`, when any attention-like module is in an unsupported layout; `strict=False` skips those.
    """
    views, problems = [], []
    for _, _, view, problem in _walk(module):
        if view is not None:
            views.append(view)
        else:
            problems.append(problem)
    if problems and views and not strict:
        warnings.warn("mimetic init skips unsupported attention-like modules:\n" + "\n".join(problems), stacklevel=3)
    if problems and (strict or not views):
        raise UnsupportedAttentionError(_unsupported_message(
            [f"{len(problems)} attention-like module(s) in {type(module).__name__} cannot be initialised"
             + ("" if strict else " and no supported layer was found") + ":"] + [f"  * {p}" for p in problems]))
    if not views:
        raise UnsupportedAttentionError(_unsupported_message(
            [f"no attention layer found in {type(module).__name__}"]))
    return views
