"""Layers shared by the ViT, CRATE and CRATE-α models.

Shapes: B batch, N tokens (class token included), d width, H heads, dh = d / H head width,
m = overcomplete_ratio · d dictionary atoms.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PatchEmbed", "ConvStem", "CratePatchEmbed", "sincos_2d_position_embedding", "resample_position_embedding",
    "Attention", "SubspaceAttention", "Mlp", "SparseCoding", "split_fused_qkv", "DropPath", "drop_path_rates",
    "to_2tuple",
]


def to_2tuple(size: int | tuple[int, int] | list[int], name: str = "size") -> tuple[int, int]:
    """`s` → (s, s); a pair (h, w) as is; anything else is a ValueError naming `name`."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"{name} must be an int or a pair (height, width) of ints, got {size!r}")


# ----------------------------------------------------------------------------------------------------------------
# Patch embeddings


class _PatchGrid(nn.Module):
    """Images of `img_size` (an int for square images, or (H, W)) cut into a grid of patch_size patches.

    `img_hw` / `grid_hw` are always (height, width) pairs; `img_size` / `grid_size` are ints for square images (what
    most callers expect) and the pairs otherwise, as they were given.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int):
        super().__init__()
        self.img_hw = to_2tuple(img_size, "img_size")
        self.patch_size, self.in_chans = patch_size, in_chans
        try:
            self.grid_hw = self.feat_size(*self.img_hw)
        except ValueError:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}") from None
        square = self.img_hw[0] == self.img_hw[1]
        self.img_size = self.img_hw[0] if square else self.img_hw
        self.grid_size = self.grid_hw[0] if square else self.grid_hw
        self.num_patches = self.grid_hw[0] * self.grid_hw[1]

    def feat_size(self, height: int, width: int) -> tuple[int, int]:
        """(gh, gw) patch grid of a (height, width) input; any size that is a multiple of the patch."""
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input size {height}×{width} is not a multiple of the patch size {self.patch_size}")
        return height // self.patch_size, width // self.patch_size


class PatchEmbed(_PatchGrid):
    """Conv2d(kernel P, stride P) patchify, tokens in row-major patch order (timm's `patch_embed.proj`)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__(img_size, patch_size, in_chans)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, d, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, d)


class ConvStem(_PatchGrid):
    """A convolutional stem in place of the patchify convolution (Xiao et al. 2021, "Early convolutions help
    transformers see better"): log2(P) blocks of 3×3 convolution, stride 2, padding 1, BatchNorm, ReLU, widths
    d/2^(k−1), ..., d/2, d (k = log2 P), then a 1×1 convolution to d (`proj`). It sees pixels across patch borders,
    which a patchify stem cannot, and costs few FLOPs beside the blocks.

    Each stride-2 block maps a side s to ceil(s / 2), so the grid is ceil(H / P) × ceil(W / P) for any input size
    (28 px with P = 8: 28 → 14 → 7 → 4, a 4 × 4 grid): the last row and column of patches see the zero padding.
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int):
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_embed='convstem' needs a power-of-two patch_size >= 2, got {patch_size}")
        stages = patch_size.bit_length() - 1  # k = log2 P stride-2 blocks
        if embed_dim % 2 ** (stages - 1):
            raise ValueError(f"patch_embed='convstem' with patch_size {patch_size} needs embed_dim divisible by "
                             f"{2 ** (stages - 1)}, got {embed_dim}")
        super().__init__(img_size, patch_size, in_chans)  # the grid from feat_size below
        layers, width = [], in_chans
        for i in range(stages):
            out = embed_dim // 2 ** (stages - 1 - i)
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            width = out
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(width, embed_dim, kernel_size=1)

    def feat_size(self, height: int, width: int) -> tuple[int, int]:
        """(ceil(height / P), ceil(width / P)): k = log2 P stride-2 blocks, each s → ceil(s / 2)."""
        for _ in range(self.patch_size.bit_length() - 1):
            height, width = (height + 1) // 2, (width + 1) // 2
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))  # (B, d, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, N, d)


class CratePatchEmbed(_PatchGrid):
    """Official CRATE patch embedding: patchify → LayerNorm(C·P·P) → Linear(C·P·P, d) → LayerNorm(d).

    Each patch vector is flattened as (row-in-patch, column-in-patch, channel), channel fastest, exactly as the
    official `Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, eps: float = 1e-5):
        super().__init__(img_size, patch_size, in_chans)
        patch_dim = in_chans * patch_size * patch_size
        self.norm_in = nn.LayerNorm(patch_dim, eps=eps)
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        P = self.patch_size
        x = x.reshape(B, C, H // P, P, W // P, P)  # (B, C, gh, P, gw, P)
        x = x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // P) * (W // P), P * P * C)  # (B, N, P·P·C)
        return self.norm_out(self.proj(self.norm_in(x)))  # (B, N, d)


def sincos_2d_position_embedding(grid_size: int | tuple[int, int], dim: int,
                                 temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, shape (gh·gw, dim), rows in row-major patch order.

    The first half of the channels encodes the patch row, the second half its column; each half is [sin | cos] over
    dim/4 frequencies ω_i = 1 / temperature^(i / (dim/4)). `grid_size`: g (a g × g grid) or (gh, gw).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")  # (gh, gw) each
    out_rows = rows.reshape(-1, 1) * omega  # (gh·gw, dim/4)
    out_cols = cols.reshape(-1, 1) * omega  # (gh·gw, dim/4)
    emb = torch.cat([out_rows.sin(), out_rows.cos(), out_cols.sin(), out_cols.cos()], dim=1)  # (gh·gw, dim)
    return emb.float()


def resample_position_embedding(table: torch.Tensor, old_grid: tuple[int, int],
                                new_grid: tuple[int, int]) -> torch.Tensor:
    """A learned (1, gh·gw, d) patch-position table resampled to another grid: bicubic with antialiasing, in
    float32 (timm's `resample_abs_pos_embed`, so a timm model with `dynamic_img_size=True` gives the same tokens)."""
    d = table.shape[-1]
    grid = table.reshape(1, *old_grid, d).permute(0, 3, 1, 2).float()  # (1, d, gh, gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)  # (1, d, h, w)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(table.dtype)  # (1, h·w, d)


# ----------------------------------------------------------------------------------------------------------------
# Attention


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool = False,
                        dropout_p: float = 0.0):
    """softmax(q kᵀ · scale) v with the probabilities returned: (B, H, N, dh), (B, H, N, N). `causal`: token i
    attends only to tokens j ≤ i (the upper triangle is masked to −∞ before the softmax, so it is exactly 0).
    `dropout_p` drops probabilities after the softmax (as SDPA does); the returned ones are those before it."""
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, H, N, N)
    if causal:
        N = attn.shape[-1]
        future = torch.ones(N, N, dtype=torch.bool, device=attn.device).triu(1)  # (N, N) True above the diagonal
        attn = attn.masked_fill(future, float("-inf"))  # (B, H, N, N)
    attn = attn.softmax(dim=-1)
    return F.dropout(attn, dropout_p) @ v if dropout_p else attn @ v, attn


# Longest sequence for which explicit attention trains faster than SDPA's fused kernel on a CPU, by dtype. PyTorch's
# CPU flash-attention backward is slow in bf16 (64 images × 3 heads × 65 tokens: 36 ms against 6 ms explicit), and
# whole bf16 train steps at 64-65 tokens run 1.6-2.6× faster with the explicit form; the kernels cross between 256
# and 512 tokens, past which the fused kernel wins.
# In fp32 the explicit kernel alone is faster at 65 tokens, yet whole models train 2-19% slower with it: fp32 keeps
# SDPA. Measured by benchmarks/attention_cpu.py (kernels, then whole train steps with each form).
_CPU_EXPLICIT_MAX_TOKENS = {torch.bfloat16: 256}


def _explicit_trains_faster(q: torch.Tensor) -> bool:
    """True for a CPU training forward (q needs a gradient) short enough that explicit attention beats SDPA."""
    return (q.device.type == "cpu" and q.requires_grad
            and q.shape[-2] <= _CPU_EXPLICIT_MAX_TOKENS.get(q.dtype, 0))


class _MultiHeadAttention(nn.Module):
    """The plumbing every attention shares: per-head softmax attention of `_qkv(x)` (fused SDPA; explicit when the
    probabilities are wanted, or when it trains faster on a CPU), heads merged head-major, then the output projection
    `_project`.

    `causal=True` lets token i attend only to tokens j ≤ i (language models): SDPA's `is_causal`, or the same mask
    in the explicit path. `attn_dropout` drops attention probabilities in training (in SDPA and in the explicit
    training path alike; `forward_with_attention`, for inspection, never drops).
    """

    def __init__(self, dim: int, num_heads: int, causal: bool = False, attn_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.causal = causal
        self.attn_dropout = attn_dropout

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, N, d)

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        B, H, N, dh = out.shape
        return self._project(out.transpose(1, 2).reshape(B, N, H * dh))  # (B, N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropout_p = self.attn_dropout if self.training else 0.0
        q, k, v = self._qkv(x)  # 3 × (B, H, N, dh)
        if _explicit_trains_faster(q):
            return self._merge(_explicit_attention(q, k, v, self.scale, self.causal, dropout_p)[0])
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.causal))

    def forward_with_attention(self, x: torch.Tensor):
        out, attn = _explicit_attention(*self._qkv(x), self.scale, causal=self.causal)
        return self._merge(out), attn  # (B, N, d), (B, H, N, N)


def split_fused_qkv(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3·d) output of a fused projection, rows q | k | v each head-major → 3 × (B, H, N, dh)."""
    B, N, three_d = qkv.shape
    qkv = qkv.reshape(B, N, 3, num_heads, three_d // (3 * num_heads))  # (B, N, 3, H, dh)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, N, dh)


class Attention(_MultiHeadAttention):
    """Multi-head self-attention with a fused qkv projection (timm's `Attention`, same keys and layout).

    qkv rows are ordered q | k | v, each block head-major: row = s·d + h·dh + j.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 causal: bool = False):
        super().__init__(dim, num_heads, causal=causal)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _qkv(self, x: torch.Tensor):
        return split_fused_qkv(self.qkv(x), self.num_heads)  # 3 × (B, H, N, dh)


class SubspaceAttention(_MultiHeadAttention):
    """MSSA, multi-head subspace self-attention (CRATE eq. 9; CRATE-α §3).

    One bias-free projection U = [U_1; …; U_K] (`subspace`, rows head-major) gives w = U z, which serves as query,
    key AND value: per head softmax(w_k w_kᵀ / √dh) w_k. This is a gradient step on the compression term
    R^c(Z; U_[K]); `proj` maps the concatenated heads back (CRATE: with bias, CRATE-α: without).
    `causal=True`: each token compresses against its past only (the language models).
    """

    def __init__(self, dim: int, num_heads: int, proj_bias: bool = True, causal: bool = False):
        super().__init__(dim, num_heads, causal=causal)
        self.subspace = nn.Linear(dim, dim, bias=False)  # U_[K]
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _qkv(self, x: torch.Tensor):
        B, N, d = x.shape
        w = self.subspace(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, dh) w = U*z
        return w, w, w  # q = k = v


# ----------------------------------------------------------------------------------------------------------------
# Stochastic depth


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Per-block stochastic-depth probabilities rising linearly from 0 (first block) to `drop_path_rate` (last
    block), the schedule of Huang et al. 2016 as timm's ViT uses it."""
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    if depth == 1:
        return [0.0]
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: in training, each sample's branch output is zeroed with probability
    `drop_prob` and the kept ones scaled by 1 / (1 − drop_prob), so the expectation is unchanged; in eval (or at 0)
    the identity."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1) one draw per sample
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


# ----------------------------------------------------------------------------------------------------------------
# Token-wise blocks


class Mlp(nn.Module):
    """fc1 → GELU (exact erf) → fc2, timm's `Mlp` keys."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, N, d)


class SparseCoding(nn.Module):
    """Sparse coding of the tokens against a learned dictionary by ISTA (CRATE eq. 11, CRATE-α eqs. 5-7).

    With row vectors and a dictionary `D` of shape (d, m), a code A ∈ R^m reconstructs h as A Dᵀ; one proximal
    step of the non-negative LASSO  min_A ½‖h − A Dᵀ‖² + λ‖A‖₁, A ≥ 0  is

        A ← ReLU(A − η (A Dᵀ − h) D − η λ).

    * `overcomplete_ratio == 1` is CRATE's complete dictionary (m = d): ONE step from A⁰ = h, and the code itself is
      the output (no decoding).
    * `overcomplete_ratio > 1` is CRATE-α's ODL (m = ratio · d): TWO steps from A⁰ = 0, then the code is decoded
      back to R^d by `D1` (`decoupled_dictionary=True`) or by `D` itself.
    """

    def __init__(self, dim: int, overcomplete_ratio: int = 1, decoupled_dictionary: bool = False,
                 ista_step_size: float = 0.1, ista_lambda: float = 0.1):
        super().__init__()
        if overcomplete_ratio < 1:
            raise ValueError(f"overcomplete_ratio must be >= 1, got {overcomplete_ratio}")
        if decoupled_dictionary and overcomplete_ratio == 1:
            raise ValueError("decoupled_dictionary needs an overcomplete dictionary (overcomplete_ratio > 1): "
                             "CRATE's complete ISTA outputs the code itself and never decodes")
        self.overcomplete_ratio = overcomplete_ratio
        self.decoupled_dictionary = decoupled_dictionary
        self.ista_step_size = ista_step_size  # η
        self.ista_lambda = ista_lambda  # λ
        self.D = nn.Parameter(torch.empty(dim, overcomplete_ratio * dim))  # (d, m) dictionary
        self.D1 = nn.Parameter(torch.empty(dim, overcomplete_ratio * dim)) if decoupled_dictionary else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        eta, lam, D = self.ista_step_size, self.ista_lambda, self.D
        if self.overcomplete_ratio == 1:
            # CRATE eq. 11, from A⁰ = h:  A¹ = ReLU(h + η Dᵀh − η DᵀD h − ηλ)  (column form). In row form
            # h + η (h D − h DᵀD) = h + h K with K = η (D − DᵀD), a d×d matrix formed once per forward (d³ MACs):
            # one GEMM over the T = B·N tokens (T d²) instead of three (3 T d²), cheaper whenever T > d / 2 (every
            # training batch). The identity stays outside the product (exact under bf16).
            flat = h.reshape(-1, h.shape[-1])  # (T, d)
            if 2 * flat.shape[0] <= flat.shape[1]:  # few tokens (one small image at inference): the direct form
                return F.relu(h + eta * (h @ D - (h @ D.t()) @ D) - eta * lam)  # (B, N, d)
            K = eta * torch.addmm(D, D.t(), D, alpha=-1)  # (d, d)   η (D − DᵀD)
            return F.relu(torch.addmm(flat, flat, K.to(flat.dtype)) - eta * lam).view_as(h)  # (B, N, d)
        # CRATE-α eq. 5-6, ODL from A⁰ = 0, as four token GEMMs (4 T d m; the Gram form A¹ (DᵀD) would cost
        # T m² > 2 T d m for m > 2d, benchmarks/crate_algebra.py). η, −ηλ and −h ride inside the GEMMs (addmm's
        # alpha, beta and bias) and the ReLUs run in place, so each step makes one pass over the (T, m) codes.
        flat = h.reshape(-1, h.shape[-1])  # (T, d)
        shift = torch.full((D.shape[1],), -eta * lam, dtype=flat.dtype, device=flat.device)  # (m,)   −ηλ
        A1 = torch.addmm(shift, flat, D, alpha=eta).relu_()  # (T, m)   A¹ = ReLU(η Dᵀh − ηλ)
        R = torch.addmm(flat, A1, D.t(), beta=-1)  # (T, d)   D A¹ − h
        # (T, m)   A² = ReLU(A¹ − η Dᵀ(D A¹ − h) − ηλ)
        A2 = torch.addmm(A1, R, D, alpha=-eta).sub_(eta * lam).relu_()
        decoder = self.D1 if self.D1 is not None else D
        return (A2 @ decoder.t()).view_as(h)  # (B, N, d)   eq. 7: D1 A²


def init_dictionary_(param: torch.Tensor, fan_in: int) -> None:
    """Uniform ±√(6 / fan_in) (Kaiming-uniform, gain √2)."""
    bound = math.sqrt(6.0 / fan_in)
    nn.init.uniform_(param, -bound, bound)
