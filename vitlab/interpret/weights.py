"""Weight-structure figures like Figure 1 of the mimetic-initialization paper (Trockman & Kolter, ICML 2023).

Paper convention (x a row vector of width d, q = x W_q, heads of width dh, attention width D = H·dh):
    per head h:   W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ  (d, d), rank dh   — pre-trained ViTs show a positive diagonal
    per layer:    W_v W_proj       (d, d)            — pre-trained ViTs show a negative diagonal
nn.Linear stores the transposes, and `find_attention_layers` exposes every supported layout (vitlab ViT / CRATE /
CRATE-α, timm, Hugging Face, nn.MultiheadAttention, GPT-2) as (out, in) views, so with `q_h` the dh rows of head h
of `view.q` (dh, d):  W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ = q_hᵀ · k_h  and  W_v W_proj = v_weightᵀ · proj_weightᵀ.
For CRATE's tied attention (q = k = v = U) the QK product is U_hᵀ U_h, positive semi-definite.

Figures use a diverging colormap centred at 0 with SYMMETRIC LIMITS PER PANEL by default: each heatmap spans
[−m, m] with m = max |entry| of the block it shows (written in its title as ±m), because the magnitudes differ by
orders of magnitude between a default init (std 0.02 weights), a mimetic init and a trained layer; colours then
show structure, and the numbers in the titles (the mean diagonal over all d entries) compare panels.
A colour bar beside the panels reads −m … +m (each panel's own m); `shared_limits=True` uses one m for the whole
figure and its colour bar reads in the products' own units.

Style and saving are vitlab's shared ones (`vitlab._figures`): the format follows the file name (.png at
`WEIGHTS_DPI`, a 256-colour palette PNG; .pdf / .svg vector), cropped tight so no title is cut.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._figures import save_figure, styled, value_colorbar

from ..init import find_attention_layers
from ._load import load_model

__all__ = ["LayerProducts", "weight_products", "format_stats", "plot_weight_products", "init_products",
           "plot_init_comparison", "plot_checkpoint"]

_CMAP = "RdBu_r"  # diverging: red positive, blue negative, white 0
_MAX_ROWS = 12  # default number of layers drawn (evenly spaced, first and last included, when a model has more)
WEIGHTS_DPI = 200  # heatmap grids: 300 dpi would make a 12-layer figure several MB for no visible gain
_MAX_HEADS = 6  # default number of heads drawn per layer (the first ones)


@dataclass
class LayerProducts:
    """The weight products of one attention layer (float32, CPU), in the paper's convention.

    `qk`: (H, d, d), qk[h] = W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ (tied CRATE attention: U_hᵀ U_h). `vo`: (d, d) = W_v W_proj.
    """

    name: str
    layout: str
    qk: torch.Tensor
    vo: torch.Tensor
    tied: bool = False

    @property
    def num_heads(self) -> int:
        return self.qk.shape[0]

    @property
    def dim(self) -> int:
        return self.qk.shape[-1]

    @property
    def qk_diag(self) -> torch.Tensor:
        """(H,) mean of diag(W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ) per head (≈ +0.395 after mimetic init at d = 192, H = 3)."""
        return self.qk.diagonal(dim1=-2, dim2=-1).mean(-1)

    @property
    def qk_offdiag(self) -> torch.Tensor:
        """(H,) mean of the off-diagonal entries of W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ per head."""
        d = self.dim
        return (self.qk.sum((-2, -1)) - self.qk.diagonal(dim1=-2, dim2=-1).sum(-1)) / (d * d - d)

    @property
    def vo_diag(self) -> float:
        """Mean of diag(W_v W_proj) (≈ −0.40 after mimetic init)."""
        return self.vo.diagonal().mean().item()

    @property
    def vo_offdiag(self) -> float:
        d = self.dim
        return ((self.vo.sum() - self.vo.trace()) / (d * d - d)).item()

    def stats(self) -> dict[str, Any]:
        """Summary numbers: per-head qk mean diagonal / off-diagonal, and vo mean diagonal / off-diagonal."""
        return {"name": self.name, "qk_diag": self.qk_diag.tolist(), "qk_offdiag": self.qk_offdiag.tolist(),
                "vo_diag": self.vo_diag, "vo_offdiag": self.vo_offdiag}


@torch.no_grad()
def weight_products(module: nn.Module, strict: bool = True) -> list[LayerProducts]:
    """W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ per head and W_v W_proj of every self-attention layer of `module`, in `modules()` order.

    Any layout `vitlab.init.find_attention_layers` accepts; computed in float32 on the CPU, no grad. `strict=False`
    skips (with a warning) attention-like modules in unknown layouts instead of raising UnsupportedAttentionError.
    """
    out = []
    for view in find_attention_layers(module, strict=strict):
        H, dh, d = view.num_heads, view.head_dim, view.dim
        q = view.q.detach().float().cpu().reshape(H, dh, d)  # (H, dh, d)  rows of head h = (W_q⁽ʰ⁾)ᵀ
        k = view.k.detach().float().cpu().reshape(H, dh, d)  # (H, dh, d)  rows of head h = (W_k⁽ʰ⁾)ᵀ
        qk = q.transpose(1, 2) @ k  # (H, d, d)  W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ
        v = view.v.detach().float().cpu()  # (D, d) = W_vᵀ
        proj = view.proj.detach().float().cpu()  # (d, D) = W_projᵀ
        vo = v.T @ proj.T  # (d, D) @ (D, d) = (d, d)  W_v W_proj
        out.append(LayerProducts(view.name, view.layout, qk, vo, view.tied))
    return out


def format_stats(products: Sequence[LayerProducts], label: str = "", layers: Sequence[int] | None = None) -> str:
    """One line per layer (`layers`, negative from the end, default all): mean diagonal of W_q W_kᵀ per head, of
    W_v W_proj, and the mean off-diagonals."""
    lines = [f"{label}layer  mean diag(W_q W_k^T) per head  |  mean diag(W_v W_proj)  |  mean off-diag qk / vo"]
    chosen = range(len(products)) if layers is None else _select_layers(len(products), layers)
    for i in chosen:
        p = products[i]
        heads = " ".join(f"{x:+.4f}" for x in p.qk_diag.tolist())
        lines.append(f"{label}{i:5d}  {heads}  |  {p.vo_diag:+.4f}  |  {p.qk_offdiag.mean().item():+.5f} / "
                     f"{p.vo_offdiag:+.5f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Plotting


def _select_layers(n: int, layers: Sequence[int] | None) -> list[int]:
    """Chosen layer indices (negative ones count from the end); default: all, or 12 evenly spaced."""
    if layers is None:
        if n <= _MAX_ROWS:
            return list(range(n))
        return sorted({round(i * (n - 1) / (_MAX_ROWS - 1)) for i in range(_MAX_ROWS)})
    chosen = []
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} out of range: the model has {n} attention layers (0 … {n - 1})")
        chosen.append(i % n)
    if not chosen:
        raise ValueError("no layers chosen")
    return chosen


def _limit(blocks: Sequence[torch.Tensor]) -> float:
    """m of the symmetric colour range [−m, m]: the largest |entry| shown (a tiny floor for all-zero blocks)."""
    return max(max(b.abs().max().item() for b in blocks), 1e-12)


def _draw_panel(ax, block: torch.Tensor, limit: float, title: str):
    """One heatmap of a (max_dim, max_dim) block; returns the image (for a colorbar)."""
    image = ax.imshow(block.numpy(), cmap=_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=6.5, pad=2)
    return image


def _draw_grid(fig, products: Sequence[LayerProducts], layers: list[int], heads: int, max_dim: int,
               shared_limit: float | None):
    """Rows = `layers`, columns = the first `heads` W_q W_kᵀ heatmaps + W_v W_proj, each the top-left
    max_dim × max_dim block. Titles: mean diagonal over all d entries, and ±m where limits are per panel."""
    axes = fig.subplots(len(layers), heads + 1, squeeze=False)
    image = None
    for row, index in zip(axes, layers):
        p = products[index]
        blocks = [p.qk[h, :max_dim, :max_dim] for h in range(heads)] + [p.vo[:max_dim, :max_dim]]
        diags = p.qk_diag.tolist()[:heads] + [p.vo_diag]
        names = [f"$W_qW_k^T$ h{h}" for h in range(heads)] + ["$W_vW_{proj}$"]
        for ax, block, diag, name in zip(row, blocks, diags, names):
            limit = shared_limit if shared_limit is not None else _limit([block])
            scale = "" if shared_limit is not None else f"  ±{limit:.2g}"
            image = _draw_panel(ax, block, limit, f"{name}{scale}\ndiag {diag:+.3f}")
        row[0].set_ylabel(f"layer {index}", fontsize=7)
    if shared_limit is not None:
        fig.colorbar(image, ax=axes, orientation="horizontal", shrink=0.5, aspect=40, pad=0.01,
                     label="product entry").ax.tick_params(labelsize=6)
    else:
        value_colorbar(fig, axes, _CMAP, -1, 1, "entry / m  (m = ±limit in each panel's title)", ticks=(-1, 0, 1),
                       ticklabels=("−m", "0", "+m"), orientation="horizontal").ax.tick_params(labelsize=6)
    return axes


def _heads_shown(products: Sequence[LayerProducts], max_heads: int | None) -> int:
    n = min(p.num_heads for p in products)
    return n if max_heads is None else max(1, min(n, max_heads))


@styled
def plot_weight_products(products: Sequence[LayerProducts], path: str | os.PathLike, title: str | None = None,
                         layers: Sequence[int] | None = None, max_dim: int = 64, max_heads: int | None = _MAX_HEADS,
                         shared_limits: bool = False, dpi: int = WEIGHTS_DPI) -> Path:
    """One figure (PNG, PDF or SVG by `path`'s suffix): a row per layer (`layers`, default all, or 12 evenly
    spaced for deeper models), columns = the
    W_q⁽ʰ⁾W_k⁽ʰ⁾ᵀ heatmap of each head (the first `max_heads`) + the W_v W_proj heatmap, each showing the top-left
    `max_dim` × `max_dim` block as in the paper's Figure 1. Diverging colormap centred at 0; limits per panel
    (±m in the title) unless `shared_limits`. Returns the path."""
    from matplotlib.figure import Figure

    if not products:
        raise ValueError("no layers to plot")
    chosen = _select_layers(len(products), layers)
    heads = _heads_shown(products, max_heads)
    shared = None
    if shared_limits:
        shared = _limit([b[..., :max_dim, :max_dim] for i in chosen for b in (products[i].qk[:heads],
                                                                               products[i].vo)])
    fig = Figure(figsize=(1.3 * (heads + 1) + 0.4, 1.4 * len(chosen) + 0.5 + 0.3 * shared_limits),
                 layout="constrained")
    _draw_grid(fig, products, chosen, heads, max_dim, shared)
    d = products[0].dim
    fig.suptitle(f"{title or 'attention weight products'}\n(top-left {min(max_dim, d)}×{min(max_dim, d)} of "
                 f"{d}×{d}; {heads} of {products[0].num_heads} heads)", fontsize=8)
    return save_figure(fig, path, dpi, palette=True)


def _fresh_model(model_name: str, seed: int, **kwargs) -> nn.Module:
    """create_model under a forked, seeded global RNG (the caller's RNG state is left as it was)."""
    from ..models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(model_name, **kwargs)


def init_products(model_name: str, seed: int = 0, **model_kwargs) -> dict[str, list[LayerProducts]]:
    """{'default': products at the family's default init, 'mimetic': products after mimetic_init_(seed=seed)}
    of the same architecture `vitlab.create_model(model_name, **model_kwargs)`."""
    default = _fresh_model(model_name, seed, **model_kwargs)
    mimetic = _fresh_model(model_name, seed, init="mimetic", init_kwargs={"seed": seed}, **model_kwargs)
    return {"default": weight_products(default), "mimetic": weight_products(mimetic)}


@styled
def plot_init_comparison(model_name: str, path: str | os.PathLike, seed: int = 0,
                         layers: Sequence[int] | None = None, max_dim: int = 64, max_heads: int | None = _MAX_HEADS,
                         dpi: int = WEIGHTS_DPI, title: str | None = None,
                         **model_kwargs) -> dict[str, list[LayerProducts]]:
    """The paper's Figure 1 side by side: the same architecture at its default init (left) and after mimetic init
    (right), rows = `layers` (default first, middle and last), columns = per-head W_q W_kᵀ + W_v W_proj (top-left
    `max_dim` block, limits per panel). Writes one figure to `path` (format by suffix); returns the products of
    both models."""
    from matplotlib.figure import Figure

    products = init_products(model_name, seed, **model_kwargs)
    n = len(products["default"])
    chosen = _select_layers(n, layers if layers is not None else sorted({0, n // 2, n - 1}))
    heads = _heads_shown(products["default"], max_heads)
    fig = Figure(figsize=(2 * (1.3 * (heads + 1)) + 0.8, 1.45 * len(chosen) + 0.9), layout="constrained")
    for sub, (kind, label) in zip(fig.subfigures(1, 2, wspace=0.04),
                                  (("default", "default init"), ("mimetic", f"mimetic init (seed {seed})"))):
        _draw_grid(sub, products[kind], chosen, heads, max_dim, None)
        sub.suptitle(label, fontsize=8, fontweight="bold")
    d = products["default"][0].dim
    fig.suptitle(f"{title or model_name}: $W_qW_k^T$ per head and $W_vW_{{proj}}$ at initialization "
                 f"(top-left {min(max_dim, d)}×{min(max_dim, d)} of {d}×{d})", fontsize=8.5)
    save_figure(fig, path, dpi, palette=True)
    return products


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: run directories, plain weight files (+ a model name), `init:MODEL`


def plot_checkpoint(checkpoint: str, path: str | os.PathLike | None = None, model: str | None = None,
                    model_kwargs: dict[str, Any] | None = None, layers: Sequence[int] | None = None,
                    max_dim: int = 64, seed: int = 0, title: str | None = None,
                    ) -> tuple[Path, dict[str, list[LayerProducts]]]:
    """What `vitlab plot-weights` does: `checkpoint` is a run directory / weight file (see `load_model`)
    or `init:MODEL` (default vs mimetic init, `plot_init_comparison`). Default `path`: ./weights_<label>.png.
    Returns (PNG path, {label: products})."""
    if checkpoint.startswith("init:"):
        name = checkpoint[len("init:"):]
        if model is not None and model != name:
            raise ValueError(f"init:{name} names the model already; --model {model} contradicts it")
        path = Path(path or f"weights_init_{name}.png")
        products = plot_init_comparison(name, path, seed=seed, layers=layers, max_dim=max_dim, title=title,
                                        **(model_kwargs or {}))
        return path, products
    net, label = load_model(checkpoint, model, model_kwargs)
    products = weight_products(net)
    architecture = getattr(net, "pretrained_cfg", {}).get("architecture", type(net).__name__)
    path = plot_weight_products(products, path or f"weights_{label}.png", layers=layers, max_dim=max_dim,
                                title=title or f"{architecture} — {checkpoint}")
    return path, {label: products}
