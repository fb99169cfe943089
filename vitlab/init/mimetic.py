"""Mimetic initialization of self-attention (Trockman & Kolter, ICML 2023, arXiv 2305.09828) and a norm-matched
random baseline. Spec: shared/design/mimetic.md, "Realisation by SVD".

Paper convention (x a row vector of width d, q = x W_q): initialise so that
    per head h:   W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ ≈ α1·Z1 + s1·β1·I   (s1 = +1 for vision; realised at rank dh)
    per layer:    W_v W_proj     ≈ α2·Z2 + s2·β2·I   (s2 = −1 for vision; exact, full rank when D = d)
with Z i.i.d. mean 0, variance 1/d. nn.Linear stores the transposes (weight = W_qᵀ), and the adapters expose every
layout in that (out, in) convention, so here: q rows of head h = (W_q⁽ʰ⁾)ᵀ = L[:, :dh]ᵀ, k rows = R[:dh, :],
v weight = Lᵀ, proj weight = Rᵀ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._adapters import AttentionView, find_attention_layers

__all__ = ["mimetic_init_", "norm_matched_init_", "mimetic_noise", "mimetic_target", "balanced_factors",
           "psd_factor"]

_F64 = torch.float64


def mimetic_noise(d: int, noise: str = "normal", generator: torch.Generator | None = None) -> torch.Tensor:
    """Z ∈ R^{d×d}, i.i.d. entries with mean 0 and variance 1/d: N(0, 1/d) or U(±√(3/d)). float64, CPU."""
    if noise == "normal":
        return torch.randn(d, d, generator=generator, dtype=_F64) / math.sqrt(d)  # (d, d)
    if noise == "uniform":
        return (torch.rand(d, d, generator=generator, dtype=_F64) * 2 - 1) * math.sqrt(3.0 / d)  # (d, d)
    raise ValueError(f"noise must be 'normal' or 'uniform', got {noise!r}")


def mimetic_target(d: int, alpha: float, beta: float, sign: float, noise: str = "normal",
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's target A = α·Z + s·β·I, (d, d) float64."""
    return alpha * mimetic_noise(d, noise, generator) + sign * beta * torch.eye(d, dtype=_F64)


def balanced_factors(A: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors of the SVD A = U S Vᵀ, batched over leading dims: L = U_r·diag(√S_r) (…, d, r),
    R = diag(√S_r)·V_rᵀ (…, r, d) for the `rank` r largest singular values (all d by default), so L·R = U_r S_r V_rᵀ
    is the best rank-r approximation of A (Eckart–Young; A itself at r = d) and LᵀL = R Rᵀ = diag(S_r).

    Computed from the eigendecomposition A Aᵀ = U S² Uᵀ (one batched `eigh`, about half the cost of an SVD) and
    R = S_r^{-1/2} U_rᵀ A, in A's dtype; columns are ordered by decreasing singular value, like `torch.linalg.svd`.
    A zero singular value gives zero rows of R."""
    d = A.shape[-1]
    r = d if rank is None else rank
    eigenvalues, eigenvectors = torch.linalg.eigh(A @ A.mT)  # ascending, (…, d), (…, d, d)
    S = eigenvalues[..., -r:].flip(-1).clamp_min(0).sqrt()  # (…, r)  top singular values, decreasing
    U = eigenvectors[..., -r:].flip(-1)  # (…, d, r)
    root = S.sqrt()
    inverse_root = torch.where(S > 0, 1 / root.clamp_min(torch.finfo(A.dtype).tiny), torch.zeros_like(root))
    return U * root[..., None, :], inverse_root[..., :, None] * (U.mT @ A)  # L (…, d, r), R (…, r, d)


def psd_factor(A: torch.Tensor, rank: int) -> torch.Tensor:
    """Tied q = k: the rank-`rank` factor F (…, rank, d) with FᵀF the best positive-semi-definite rank-`rank`
    approximation of the symmetric A (…, d, d): top eigenpairs, eigenvalues clipped at 0, F = diag(√λ_top)·E_topᵀ.
    Batched over leading dims (one `eigh` call); rows ordered by decreasing eigenvalue."""
    eigenvalues, eigenvectors = torch.linalg.eigh(A)  # ascending, (…, d), (…, d, d)
    top = eigenvalues[..., -rank:].flip(-1).clamp_min(0)  # (…, rank)
    return top.sqrt()[..., :, None] * eigenvectors[..., -rank:].flip(-1).mT  # (…, rank, d)


@dataclass(frozen=True)
class _Recipe:
    """The options of mimetic_init_, validated once."""

    init_qk: bool
    init_vo: bool
    alpha_qk: float
    beta_qk: float
    sign_qk: float
    alpha_vo: float
    beta_vo: float
    sign_vo: float
    noise: str

    def __post_init__(self) -> None:
        for name in ("sign_qk", "sign_vo"):
            if getattr(self, name) not in (1, -1):
                raise ValueError(f"{name} must be +1 or -1, got {getattr(self, name)!r}")
        if self.noise not in ("normal", "uniform"):
            raise ValueError(f"noise must be 'normal' or 'uniform', got {self.noise!r}")
        if not (self.init_qk or self.init_vo):
            raise ValueError("init_qk and init_vo are both False: nothing to initialise")


def _qk_weights(view: AttentionView, r: _Recipe, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """QK half, one independent target per head: W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ ≈ α1·Z + s1·β1·I at rank dh. The H targets are
    drawn one after the other from `generator` (the draws of the per-head recipe) and factored in ONE batched
    float32 call: the products differ from a float64 factorisation by ~1e-5 of their size (docs/mimetic.md)."""
    d, dh, H = view.dim, view.head_dim, view.num_heads
    Z = torch.stack([mimetic_noise(d, r.noise, generator) for _ in range(H)])  # (H, d, d)
    eye = torch.eye(d, dtype=_F64)
    if view.tied:  # q = k = U_h: U_hᵀU_h ≈ β1·I + α1·Sym(Z), Sym(Z) = (Z + Zᵀ)/√2 keeps the entry variance 1/d
        A = r.beta_qk * eye + r.alpha_qk * (Z + Z.mT) / math.sqrt(2)  # (H, d, d)
        return {"q": psd_factor(A.float(), dh).flatten(0, 1)}  # (D, d)  U = [U_1; …; U_H], shared by q, k, v
    A = r.alpha_qk * Z + r.sign_qk * r.beta_qk * eye  # (H, d, d)
    L, R = balanced_factors(A.float(), dh)  # (H, d, dh), (H, dh, d)
    return {"q": L.mT.flatten(0, 1), "k": R.flatten(0, 1)}  # (D, d) each: rows of head h = (W_q⁽ʰ⁾)ᵀ, (W_k⁽ʰ⁾)ᵀ


def _vo_weights(view: AttentionView, r: _Recipe, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """VO half, once per layer: W_v W_proj = α2·Z + s2·β2·I (exact when D = d, else its best rank-D part). Factored
    in float64: at full rank the smallest singular values (~1e-3) need it."""
    D = view.q.shape[0]
    L, R = balanced_factors(mimetic_target(view.dim, r.alpha_vo, r.beta_vo, r.sign_vo, r.noise, generator), D)
    return {"v": L.T, "proj": R.T}  # v weight (D, d) = W_vᵀ, proj weight (d, D) = W_projᵀ


def _layer_weights(view: AttentionView, r: _Recipe, seeds: list[int]) -> dict[str, torch.Tensor]:
    """New weights of one layer in the (out, in) convention. QK and VO draw from their own generators, so
    switching one half off leaves the other half's weights exactly as in the full recipe. Tied layers (CRATE)
    get no VO: W_v = U is fixed by QK, and solving for proj alone is ill-conditioned (docs/mimetic.md)."""
    weights: dict[str, torch.Tensor] = {}
    if r.init_qk:
        weights.update(_qk_weights(view, r, torch.Generator().manual_seed(seeds[0])))
    if r.init_vo and not view.tied:
        weights.update(_vo_weights(view, r, torch.Generator().manual_seed(seeds[1])))
    return weights


def _norm_matched(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Gaussian matrices with the same Frobenius norm as each mimetic matrix."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, W in weights.items():
        G = torch.randn(W.shape, generator=generator, dtype=_F64)
        out[key] = G * (W.norm() / G.norm())
    return out


@torch.no_grad()
def _write_(view: AttentionView, weights: dict[str, torch.Tensor]) -> None:
    """Copies float64 CPU weights into the parameter views (any device/dtype) and zeroes the matching biases."""
    for key, W in weights.items():
        getattr(view, key).copy_(W)
        bias = view.biases.get(key)
        if bias is not None:
            bias.zero_()


def _layer_seeds(n: int, seed: int | None, generator: torch.Generator | None) -> list[list[int]]:
    """Three seeds per layer (QK, VO, baseline) from `seed`, a CPU `generator`, or torch's global RNG."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (n, 3), generator=generator).tolist()


def _apply(module: nn.Module, recipe: _Recipe, seed: int | None, generator: torch.Generator | None,
           strict: bool, baseline: bool) -> int:
    views = find_attention_layers(module, strict=strict)
    if recipe.init_qk and recipe.sign_qk < 0 and any(v.tied for v in views):
        raise ValueError("sign_qk=-1 is impossible for tied q = k attention (CRATE): U_hᵀU_h is positive "
                         "semi-definite; use init_qk=False or sign_qk=+1")
    count = 0
    for view, seeds in zip(views, _layer_seeds(len(views), seed, generator)):
        weights = _layer_weights(view, recipe, seeds)
        if baseline:
            weights = _norm_matched(weights, seeds[2])
        _write_(view, weights)
        count += bool(weights)
    return count


def mimetic_init_(module: nn.Module, *, init_qk: bool = True, init_vo: bool = True, alpha_qk: float = 0.7,
                  beta_qk: float = 0.7, sign_qk: float = 1, alpha_vo: float = 0.4, beta_vo: float = 0.4,
                  sign_vo: float = -1, noise: str = "normal", seed: int | None = None,
                  generator: torch.Generator | None = None, strict: bool = True) -> int:
    """Mimetic initialization, in place, of every self-attention layer in `module`; returns how many were set.

    QK (per head): W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ = best rank-dh approximation of alpha_qk·Z + sign_qk·beta_qk·I.
    VO (per layer): W_v W_proj = alpha_vo·Z + sign_vo·beta_vo·I exactly (paper defaults α1 = β1 = 0.7, QK +;
    α2 = β2 = 0.4, VO −). Z: i.i.d. variance 1/d, `noise` 'normal' or 'uniform'. The q, k, v, proj biases of
    each initialised half are zeroed; nothing else changes. Each target is factored on the CPU into balanced SVD
    factors (L = U√S, R = √S Vᵀ; QK in float32 batched over the heads of a layer, VO in float64) and copied into
    the parameters, whatever their device and dtype.

    Args:
        init_qk, init_vo: switch each half on or off (the other half's weights stay untouched).
        sign_qk, sign_vo: +1 or -1 (language models may want other signs than vision's +/−).
        seed / generator: deterministic draws (a CPU torch.Generator); neither → torch's global RNG.
        strict: raise UnsupportedAttentionError for attention-like modules in an unknown layout (False: warn, skip).

    Tied q = k = v attention (CRATE MSSA): QK uses the positive-semi-definite variant U_hᵀU_h ≈ β·I + α·Sym(Z)
    (see `psd_factor`); VO is skipped (proj keeps its init). Layouts: `vitlab.init.SUPPORTED_LAYOUTS`.
    """
    recipe = _Recipe(init_qk, init_vo, alpha_qk, beta_qk, sign_qk, alpha_vo, beta_vo, sign_vo, noise)
    return _apply(module, recipe, seed, generator, strict, baseline=False)


def norm_matched_init_(module: nn.Module, *, init_qk: bool = True, init_vo: bool = True, alpha_qk: float = 0.7,
                       beta_qk: float = 0.7, sign_qk: float = 1, alpha_vo: float = 0.4, beta_vo: float = 0.4,
                       sign_vo: float = -1, noise: str = "normal", seed: int | None = None,
                       generator: torch.Generator | None = None, strict: bool = True) -> int:
    """The fair baseline for mimetic_init_: the same parameters (q, k, v, proj of the same halves) get i.i.d.
    Gaussian weights scaled to exactly the per-matrix Frobenius norms that `mimetic_init_` with the same
    arguments would give, and the same biases are zeroed. So any difference is structure, not scale."""
    recipe = _Recipe(init_qk, init_vo, alpha_qk, beta_qk, sign_qk, alpha_vo, beta_vo, sign_vo, noise)
    return _apply(module, recipe, seed, generator, strict, baseline=True)
