"""Weight initialisers the model families share.

`trunc_normal_` is the truncated normal of every truncated-normal init in vitlab (the ViT's Linear layers and
learned position table). It draws torch.nn.init.trunc_normal_'s distribution by the inverse CDF, as timm's
`trunc_normal_` does, in one pass over the tensor. torch 2.13's own draws a normal and redraws the whole tensor
while any value is out of bounds (several passes, each a normal draw plus a mask), which made it most of a ViT-B's
`create_model` time; `benchmarks/create_model.py` measures both.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["trunc_normal_", "trunc_normal_linear_init_"]


def _standard_normal_cdf(x: float) -> float:
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fills `tensor` in place with N(mean, std²) truncated to [a, b] (absolute bounds, as torch.nn.init.trunc_normal_,
    whose signature and distribution this is) and returns it.

    Inverse CDF, no loop: u ~ U[Φ(α), Φ(β)] with α = (a − mean)/std, β = (b − mean)/std, then
    x = mean + std·Φ⁻¹(u) = mean + std·√2·erfinv(2u − 1), clamped to [a, b] against rounding (the bounds hold
    exactly, in the tensor's dtype). The arithmetic is float32 (float64 for a float64 tensor; 16-bit tensors are
    filled through a float32 copy), which resolves the distribution finely when [a, b] holds a fair share of the
    mass (the ±2σ of the models' inits: 95 %); a bound far in one tail (e.g. [3σ, 4σ]) is sampled on a coarser grid.
    Random numbers come from `generator` (default: torch's global one, so `torch.manual_seed` fixes the result);
    one uniform draw per element. A meta tensor is returned as is (nothing to fill)."""
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"trunc_normal_: the bounds must be finite with a < b, got a={a}, b={b}")
    if not (math.isfinite(std) and std > 0 and math.isfinite(mean)):
        raise ValueError(f"trunc_normal_: needs a finite mean and std > 0, got mean={mean}, std={std}")
    if not tensor.is_floating_point():
        raise TypeError(f"trunc_normal_: needs a floating-point tensor, got {tensor.dtype}")
    if tensor.is_meta:
        return tensor
    low, high = _standard_normal_cdf((a - mean) / std), _standard_normal_cdf((b - mean) / std)
    with torch.no_grad():
        wide = tensor.dtype in (torch.float32, torch.float64)
        work = tensor if wide else torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
        work.uniform_(2 * low - 1, 2 * high - 1, generator=generator)  # 2u − 1, u ~ U[Φ(α), Φ(β)]
        work.erfinv_().mul_(std * math.sqrt(2.0)).add_(mean)  # mean + std·Φ⁻¹(u)
        if work is not tensor:
            tensor.copy_(work)
        return tensor.clamp_(a, b)


def trunc_normal_linear_init_(module: nn.Module, std: float = 0.02) -> None:
    """The ViT's init for Linear layers: normal(std) weights truncated at ±2σ, zero bias. (timm's
    `init_weights_vit_timm` calls its `trunc_normal_(w, std=.02)` with the default absolute bounds ±2, i.e. ±100σ:
    in effect an untruncated normal. vitlab truncates at ±2σ, as it always has.)"""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
