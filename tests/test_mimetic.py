"""Mimetic initialization: pins the weight products of every supported attention layout.

Every product is computed here from the module's RAW parameters in the paper's convention (x a row vector,
q = x W_q, out = o W_proj), independently of the library's adapters, so a swapped transpose, sign or variance in
an adapter fails. Magnitudes at d = 192, H = 3, dh = 64 (measured with the float64 SVD recipe; per-draw spread in
parentheses): mean diag(W_q⁽ʰ⁾W_k⁽ʰ⁾ᵀ) = 0.395 (±0.002), mean diag(W_v W_proj) = −0.400 (±0.002),
std(W_q) = 0.0857, tied CRATE mean diag(U_hᵀU_h) = 0.501.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitlab
from vitlab.init import (SUPPORTED_LAYOUTS, UnsupportedAttentionError, balanced_factors, mimetic_init_,
                         mimetic_target, norm_matched_init_, psd_factor)

D, H, K = 192, 3, 64  # width, heads, head width
QK_DIAG, VO_DIAG, WQ_STD, TIED_DIAG = 0.395, -0.400, 0.0857, 0.501


@dataclass
class Mats:
    """One layer in the paper's convention: q (d, D), k (d, D), v (d, D), proj (D, d); biases by component."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    proj: torch.Tensor
    biases: dict


def _fused_linear(qkv: nn.Linear, proj: nn.Linear) -> Mats:
    W = qkv.weight.detach().double()  # (3D, d), y = x Wᵀ
    b = qkv.bias
    return Mats(W[:D].T, W[D:2 * D].T, W[2 * D:].T, proj.weight.detach().double().T,
                dict(q=None if b is None else b[:D], k=None if b is None else b[D:2 * D],
                     v=None if b is None else b[2 * D:], proj=proj.bias))


def _separate(q: nn.Linear, k: nn.Linear, v: nn.Linear, out: nn.Linear) -> Mats:
    t = lambda m: m.weight.detach().double().T  # noqa: E731
    return Mats(t(q), t(k), t(v), t(out), dict(q=q.bias, k=k.bias, v=v.bias, proj=out.bias))


def _conv1d(attn: nn.Module) -> Mats:
    W = attn.c_attn.weight.detach().double()  # (d, 3D): Conv1D computes y = x W + b, already the paper's W
    b = attn.c_attn.bias
    return Mats(W[:, :D], W[:, D:2 * D], W[:, 2 * D:], attn.c_proj.weight.detach().double(),
                dict(q=b[:D], k=b[D:2 * D], v=b[2 * D:], proj=attn.c_proj.bias))


def _mha(attn: nn.MultiheadAttention) -> Mats:
    W, b = attn.in_proj_weight.detach().double(), attn.in_proj_bias  # (3D, d)
    return Mats(W[:D].T, W[D:2 * D].T, W[2 * D:].T, attn.out_proj.weight.detach().double().T,
                dict(q=b[:D], k=b[D:2 * D], v=b[2 * D:], proj=attn.out_proj.bias))


# ---------------------------------------------------------------------------------------------------------------
# Hand-made modules for layouts without an installed source


def _split_heads(t: torch.Tensor) -> torch.Tensor:
    B, N, _ = t.shape
    return t.view(B, N, H, K).transpose(1, 2)  # (B, H, N, dh), head-major columns as in both originals


class LegacySelfAttention(nn.Module):  # Hugging Face ViT/BERT before transformers v5 (ViTSelfAttention)
    def __init__(self):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = H, K
        self.query, self.key, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(f(x)) for f in (self.query, self.key, self.value))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # (B, N, D)


class LegacyOutput(nn.Module):
    def __init__(self, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, D)


class LegacyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.output = LegacySelfAttention(), LegacyOutput(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))  # ViTSelfOutput: dense (+ dropout)


class LegacyLayer(nn.Module):  # like ViTLayer: `attention` child and an MLP `output.dense` beside it
    def __init__(self):
        super().__init__()
        self.attention, self.output = LegacyAttention(), LegacyOutput(4 * D)


class NanoGPTAttention(nn.Module):  # karpathy/nanoGPT CausalSelfAttention: nn.Linear c_attn (3d, d)
    def __init__(self):
        super().__init__()
        self.n_head, self.n_embd = H, D
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t) for t in self.c_attn(x).split(self.n_embd, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, dh)
        return self.c_proj(y.transpose(1, 2).flatten(2))


# ---------------------------------------------------------------------------------------------------------------
# Layout registry: build() -> (model, attention modules), extract(attn) -> Mats, call(attn, x) -> (B, N, d)


@dataclass
class Layout:
    build: Callable
    extract: Callable
    call: Callable


def _timm():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2)
    return model, [b.attn for b in model.blocks]


def _hf(kind: str):
    transformers = pytest.importorskip("transformers")
    shape = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=2 * D)
    if kind == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=4, **shape))
        return model, [layer.attention for layer in model.layers]
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(image_size=32, patch_size=4, **shape))
        return model, [layer.self_attn for layer in model.encoder.layers]
    model = transformers.GPT2Model(transformers.GPT2Config(n_embd=D, n_layer=2, n_head=H))
    return model, [block.attn for block in model.h]


def _torch_mha():
    layer = nn.TransformerEncoderLayer(D, H, 2 * D, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return model, [layer.self_attn for layer in model.layers]


def _vitlab():
    model = vitlab.create_model("vit_tiny_patch2_32", depth=2)
    return model, [b.attn for b in model.blocks]


def _legacy():
    model = nn.Sequential(LegacyLayer(), LegacyLayer())
    return model, [layer.attention for layer in model]


def _nanogpt():
    model = nn.Sequential(NanoGPTAttention(), NanoGPTAttention())
    return model, list(model)


LAYOUTS = {
    "vitlab_vit": Layout(_vitlab, lambda a: _fused_linear(a.qkv, a.proj), lambda a, x: a(x)),
    "timm_vit": Layout(_timm, lambda a: _fused_linear(a.qkv, a.proj), lambda a, x: a(x)),
    "torch_mha": Layout(_torch_mha, _mha, lambda a, x: a(x, x, x, need_weights=False)[0]),
    "hf_vit_v5": Layout(lambda: _hf("vit"), lambda a: _separate(a.q_proj, a.k_proj, a.v_proj, a.o_proj),
                        lambda a, x: a(x)[0]),
    "hf_clip": Layout(lambda: _hf("clip"), lambda a: _separate(a.q_proj, a.k_proj, a.v_proj, a.out_proj),
                      lambda a, x: a(x)[0]),
    "hf_legacy": Layout(_legacy, lambda a: _separate(a.attention.query, a.attention.key, a.attention.value,
                                                      a.output.dense), lambda a, x: a(x)),
    "hf_gpt2_conv1d": Layout(lambda: _hf("gpt2"), _conv1d, lambda a, x: a(x)[0]),
    "nanogpt": Layout(_nanogpt, lambda a: _fused_linear(a.c_attn, a.c_proj), lambda a, x: a(x)),
}


def _heads(m: Mats):
    """Per-head W_q⁽ʰ⁾ (d, dh) and W_k⁽ʰ⁾ (d, dh): head h owns columns h·dh … (h+1)·dh − 1."""
    return [(m.q[:, h * K:(h + 1) * K], m.k[:, h * K:(h + 1) * K]) for h in range(H)]


def _offdiag_mean(P: torch.Tensor) -> float:
    n = P.shape[0]
    return ((P.sum() - P.diag().sum()) / (n * n - n)).item()


@pytest.fixture(params=list(LAYOUTS))
def layout(request):
    spec = LAYOUTS[request.param]
    model, attns = spec.build()
    return spec, _nonzero_biases_(model).eval(), attns


# ---------------------------------------------------------------------------------------------------------------
# Every layout


def test_qk_and_vo_statistics(layout):
    spec, model, attns = layout
    assert mimetic_init_(model, seed=0) == len(attns) == 2
    qk_diag, qk_off, vo_diag, vo_off = [], [], [], []
    for attn in attns:
        m = spec.extract(attn)
        for Wq, Wk in _heads(m):
            P = Wq @ Wk.T  # (d, d)  W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ
            qk_diag.append(P.diag().mean().item())
            qk_off.append(_offdiag_mean(P))
            S = Wq.T @ Wq  # balanced factors: W_qᵀW_q = W_kᵀW_k = diag(top-dh singular values)
            torch.testing.assert_close(S, torch.diag(S.diag()), atol=1e-5, rtol=0)
            torch.testing.assert_close(Wk.T @ Wk, S, atol=1e-5, rtol=1e-4)
        M = m.v @ m.proj  # (d, d)  W_v W_proj
        vo_diag.append(M.diag().mean().item())
        vo_off.append(_offdiag_mean(M))
        S = m.v.T @ m.v
        torch.testing.assert_close(S, torch.diag(S.diag()), atol=1e-5, rtol=0)
        torch.testing.assert_close(m.proj @ m.proj.T, S, atol=1e-5, rtol=1e-4)
        assert m.q.std().item() == pytest.approx(WQ_STD, abs=0.004)
        for name, bias in m.biases.items():
            assert bias is None or not bias.any(), name
    assert len(qk_diag) == 2 * H
    assert all(abs(x - QK_DIAG) < 0.01 for x in qk_diag), qk_diag
    assert all(abs(x - VO_DIAG) < 0.01 for x in vo_diag), vo_diag
    assert max(map(abs, qk_off + vo_off)) < 0.003


def test_vo_through_forward(layout):
    """One token attends only to itself, so the module's own forward gives x ↦ x W_v W_proj: this checks the VO
    product without trusting any weight convention."""
    spec, model, attns = layout
    mimetic_init_(model, seed=1)
    attn = attns[0]
    with torch.no_grad():
        M = spec.call(attn, torch.eye(D).unsqueeze(1))[:, 0].double()  # (d, 1, d) → (d, d): row i = e_i W_v W_proj
    m = spec.extract(attn)
    torch.testing.assert_close(M, m.v @ m.proj, atol=1e-5, rtol=1e-4)
    assert M.diag().mean().item() == pytest.approx(VO_DIAG, abs=0.01)


def test_determinism_and_signs(layout):
    spec, model, attns = layout
    mimetic_init_(model, seed=3)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    q_first = spec.extract(attns[0]).q.clone()
    mimetic_init_(model, seed=3)
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    mimetic_init_(model, seed=4)
    assert not torch.equal(spec.extract(attns[0]).q, q_first)
    mimetic_init_(model, seed=3, sign_qk=-1, sign_vo=+1)
    m = spec.extract(attns[1])
    assert all(abs((Wq @ Wk.T).diag().mean().item() + QK_DIAG) < 0.01 for Wq, Wk in _heads(m))
    assert (m.v @ m.proj).diag().mean().item() == pytest.approx(-VO_DIAG, abs=0.01)


def test_norm_matched_baseline(layout):
    """Same per-matrix Frobenius norms as mimetic_init_ with the same seed, zero biases, and no structure."""
    spec, model, attns = layout
    mimetic_init_(model, seed=5)
    target = [spec.extract(a) for a in attns]
    target = [{c: getattr(m, c).clone() for c in "q k v proj".split()} for m in target]
    assert norm_matched_init_(model, seed=5) == 2
    for attn, norms in zip(attns, target):
        m = spec.extract(attn)
        for c, W in norms.items():
            assert getattr(m, c).norm().item() == pytest.approx(W.norm().item(), rel=1e-5), c
            assert not torch.allclose(getattr(m, c), W)
        assert all(abs((Wq @ Wk.T).diag().mean().item()) < 0.05 for Wq, Wk in _heads(m))
        assert abs((m.v @ m.proj).diag().mean().item()) < 0.05
        assert all(b is None or not b.any() for b in m.biases.values())


# ---------------------------------------------------------------------------------------------------------------
# The factorisation itself


def test_balanced_factors_exact_at_full_rank():
    g = torch.Generator().manual_seed(0)
    A = mimetic_target(D, 0.7, 0.7, +1, generator=g)  # (d, d)
    L, R = balanced_factors(A)
    torch.testing.assert_close(L @ R, A, atol=1e-12, rtol=0)
    torch.testing.assert_close(L.T @ L, R @ R.T, atol=1e-12, rtol=0)
    Z = (A - 0.7 * torch.eye(D, dtype=A.dtype)) / 0.7
    assert Z.mean().abs().item() < 0.002 and Z.std().item() == pytest.approx(1 / math.sqrt(D), rel=0.02)


def test_full_rank_model_realises_the_target():
    """heads = 1 (dh = d): W_q W_kᵀ = α1·Z + β1·I exactly, so its diagonal mean is β1 and its off-diagonal part is
    α1·Z (std α1/√d); alpha = 0 gives exactly ±β·I."""
    model = vitlab.create_model("vit_tiny_patch2_32", depth=1, num_heads=1)
    mimetic_init_(model, seed=0)
    m = _fused_linear(model.blocks[0].attn.qkv, model.blocks[0].attn.proj)
    P = m.q @ m.k.T
    assert P.diag().mean().item() == pytest.approx(0.7, abs=0.01)
    off = P - torch.diag(P.diag())
    assert off.pow(2).sum().div(D * D - D).sqrt().item() == pytest.approx(0.7 / math.sqrt(D), rel=0.02)
    mimetic_init_(model, seed=0, alpha_qk=0.0, beta_qk=0.5, alpha_vo=0.0, beta_vo=0.3)
    m = _fused_linear(model.blocks[0].attn.qkv, model.blocks[0].attn.proj)
    torch.testing.assert_close(m.q @ m.k.T, 0.5 * torch.eye(D, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.v @ m.proj, -0.3 * torch.eye(D, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("noise", ["normal", "uniform"])
def test_noise_distribution(noise):
    """alpha = 1, beta = 0 at full rank: W_q W_kᵀ = Z itself."""
    model = vitlab.create_model("vit_tiny_patch2_32", depth=1, num_heads=1)
    mimetic_init_(model, seed=0, alpha_qk=1.0, beta_qk=0.0, noise=noise, init_vo=False)
    m = _fused_linear(model.blocks[0].attn.qkv, model.blocks[0].attn.proj)
    Z = m.q @ m.k.T
    assert Z.std().item() == pytest.approx(1 / math.sqrt(D), rel=0.02)
    bound = math.sqrt(3 / D)
    assert (Z.abs().max().item() <= bound + 1e-6) == (noise == "uniform")


def test_qk_through_attention_probabilities():
    """Our Attention and nn.MultiheadAttention, fed the basis tokens e_1 … e_d: log p_ij − mean_j log p_ij equals
    (P_ij − mean_j P_ij)/√dh with P = W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ, whatever the weight convention."""
    vit = vitlab.create_model("vit_tiny_patch2_32", depth=1)
    mha = nn.MultiheadAttention(D, H, batch_first=True)
    mimetic_init_(vit, seed=0)
    mimetic_init_(mha, seed=0)
    x = torch.eye(D).unsqueeze(0)  # (1, N=d, d)
    with torch.no_grad():
        _, p_vit = vit.blocks[0].attn.forward_with_attention(x)  # (1, H, d, d)
        _, p_mha = mha(x, x, x, need_weights=True, average_attn_weights=False)  # (1, H, d, d)
    for probs, m in ((p_vit, _fused_linear(vit.blocks[0].attn.qkv, vit.blocks[0].attn.proj)), (p_mha, _mha(mha))):
        for h, (Wq, Wk) in enumerate(_heads(m)):
            logp = probs[0, h].double().log()
            P = Wq @ Wk.T / math.sqrt(K)
            torch.testing.assert_close(logp - logp.mean(1, keepdim=True), P - P.mean(1, keepdim=True),
                                       atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Options


def _snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(before: dict, model: nn.Module) -> set:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def _nonzero_biases_(model: nn.Module) -> nn.Module:
    """Fill every bias with 0.1, so that zeroing is visible (our ViT and nn.MultiheadAttention start at 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.fill_(0.1)
    return model


def test_half_switches_touch_only_their_half():
    full = vitlab.create_model("vit_tiny_patch2_32", depth=2)
    mimetic_init_(full, seed=7)
    model = _nonzero_biases_(vitlab.create_model("vit_tiny_patch2_32", depth=2))
    before = _snapshot(model)
    assert mimetic_init_(model, seed=7, init_vo=False) == 2
    assert _changed(before, model) == {f"blocks.{i}.attn.qkv.{p}" for i in range(2) for p in ("weight", "bias")}
    for i, (a, b) in enumerate(zip(model.blocks, full.blocks)):
        w, bias = a.attn.qkv.weight, a.attn.qkv.bias
        assert torch.equal(w[:2 * D], b.attn.qkv.weight[:2 * D])  # q, k exactly as in the full recipe
        assert torch.equal(w[2 * D:], before[f"blocks.{i}.attn.qkv.weight"][2 * D:])  # v untouched
        assert not bias[:2 * D].any() and (bias[2 * D:] == 0.1).all()
    model = _nonzero_biases_(vitlab.create_model("vit_tiny_patch2_32", depth=2))
    before = _snapshot(model)
    assert mimetic_init_(model, seed=7, init_qk=False) == 2
    for i, (a, b) in enumerate(zip(model.blocks, full.blocks)):
        w, bias = a.attn.qkv.weight, a.attn.qkv.bias
        assert torch.equal(w[:2 * D], before[f"blocks.{i}.attn.qkv.weight"][:2 * D])  # q, k untouched
        assert torch.equal(w[2 * D:], b.attn.qkv.weight[2 * D:])
        assert torch.equal(a.attn.proj.weight, b.attn.proj.weight)
        assert (bias[:2 * D] == 0.1).all() and not bias[2 * D:].any() and not a.attn.proj.bias.any()


def test_seed_generator_and_global_rng():
    a, b = nn.MultiheadAttention(D, H), nn.MultiheadAttention(D, H)
    mimetic_init_(a, seed=11)
    mimetic_init_(b, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.in_proj_weight, b.in_proj_weight)
    torch.manual_seed(2)
    mimetic_init_(a)
    torch.manual_seed(2)
    mimetic_init_(b)
    assert torch.equal(a.in_proj_weight, b.in_proj_weight)
    mimetic_init_(b)
    assert not torch.equal(a.in_proj_weight, b.in_proj_weight)
    with pytest.raises(ValueError, match="seed or generator"):
        mimetic_init_(a, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("kwargs, match", [(dict(sign_qk=0.5), "sign_qk"), (dict(noise="cauchy"), "noise"),
                                           (dict(init_qk=False, init_vo=False), "nothing")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mimetic_init_(nn.MultiheadAttention(D, H), **kwargs)


def test_any_device_dtype_and_inner_width():
    """bfloat16 parameters, and an attention narrower than the model (D = 96 < d): VO is then the best rank-D
    part of the target."""
    mha = nn.MultiheadAttention(D, H).to(torch.bfloat16)
    mimetic_init_(mha, seed=0)
    assert mha.in_proj_weight.dtype == torch.bfloat16
    assert _mha(mha).q.std().item() == pytest.approx(WQ_STD, abs=0.004)
    narrow = nn.Module()
    narrow.num_heads, narrow.q_proj, narrow.k_proj = 3, nn.Linear(D, 96), nn.Linear(D, 96)
    narrow.v_proj, narrow.o_proj = nn.Linear(D, 96), nn.Linear(96, D)
    assert mimetic_init_(narrow, seed=0) == 1
    P = narrow.q_proj.weight[:32].T @ narrow.k_proj.weight[:32]  # head 0: dh = 32
    assert P.diag().mean().item() == pytest.approx(0.222, abs=0.01)  # dh/d = 1/6, as d = 384 with dh = 64
    M = narrow.v_proj.weight.double().T @ narrow.o_proj.weight.double().T  # (d, d)  W_v W_proj
    assert torch.linalg.matrix_rank(M).item() == 96
    assert M.diag().mean().item() == pytest.approx(-0.302, abs=0.01)  # best rank-96 part of α2·Z − β2·I


def test_create_model_with_mimetic_init():
    model = vitlab.create_model("vit_tiny_patch2_32", init="mimetic", init_kwargs=dict(seed=0))
    ref = vitlab.create_model("vit_tiny_patch2_32")
    assert mimetic_init_(ref, seed=0) == 12
    torch.testing.assert_close(model.state_dict()["blocks.11.attn.qkv.weight"],
                               ref.state_dict()["blocks.11.attn.qkv.weight"], atol=0, rtol=0)
    m = _fused_linear(model.blocks[5].attn.qkv, model.blocks[5].attn.proj)
    assert all(abs((Wq @ Wk.T).diag().mean().item() - QK_DIAG) < 0.01 for Wq, Wk in _heads(m))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(model.blocks[0].attn.qkv.weight.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# CRATE's tied attention


@pytest.mark.parametrize("name", ["crate_tiny_patch4_32", "crate_alpha_tiny_patch4_32"])
def test_crate_tied_psd_variant(name):
    model = vitlab.create_model(name, depth=2, embed_dim=D, num_heads=H).eval()
    before = _snapshot(model)
    assert mimetic_init_(model, seed=0) == 2
    assert _changed(before, model) == {f"blocks.{i}.attn.subspace.weight" for i in range(2)}  # proj: no VO
    diags = []
    for block in model.blocks:
        U = block.attn.subspace.weight.detach().double()  # (D, d) rows head-major; w = x Uᵀ is q, k and v
        for h in range(H):
            P = U[h * K:(h + 1) * K].T @ U[h * K:(h + 1) * K]  # (d, d)  U_hᵀU_h = W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ
            eig = torch.linalg.eigvalsh(P)
            assert eig.min().item() > -1e-8 and (eig > 1e-8).sum().item() == K  # PSD of rank dh
            diags.append(P.diag().mean().item())
            assert abs(_offdiag_mean(P)) < 0.003
    assert all(abs(x - TIED_DIAG) < 0.01 for x in diags), diags
    x = torch.eye(D).unsqueeze(0)
    with torch.no_grad():  # through the module: logits are w_h w_hᵀ/√dh
        _, probs = model.blocks[0].attn.forward_with_attention(x)
    U = model.blocks[0].attn.subspace.weight.detach().double()
    P = U[:K].T @ U[:K] / math.sqrt(K)
    logp = probs[0, 0].double().log()
    torch.testing.assert_close(logp - logp.mean(1, keepdim=True), P - P.mean(1, keepdim=True), atol=1e-4, rtol=0)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_psd_factor_is_the_best_psd_approximation():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    A = 0.7 * torch.eye(D, dtype=torch.float64) + 0.7 * (Z + Z.T) / math.sqrt(2)
    F = psd_factor(A, D)  # full rank: keeps every positive eigenvalue, clips the negative ones
    lam, E = torch.linalg.eigh(A)
    torch.testing.assert_close(F.T @ F, E @ torch.diag(lam.clamp_min(0)) @ E.T, atol=1e-10, rtol=0)
    F = psd_factor(A, K)
    assert torch.linalg.matrix_rank(F.T @ F).item() == K
    torch.testing.assert_close(torch.linalg.eigvalsh(F.T @ F)[-K:], lam[-K:], atol=1e-10, rtol=0)


def test_crate_options():
    model = vitlab.create_model("crate_tiny_patch4_32", depth=1, embed_dim=D, num_heads=H)
    before = _snapshot(model)
    assert mimetic_init_(model, seed=0, init_qk=False) == 0  # VO alone has nothing to write on a tied layer
    assert not _changed(before, model)
    with pytest.raises(ValueError, match="positive"):
        mimetic_init_(model, sign_qk=-1)
    mimetic_init_(model, seed=0)
    U = model.blocks[0].attn.subspace.weight.clone()
    assert norm_matched_init_(model, seed=0) == 1
    assert model.blocks[0].attn.subspace.weight.norm().item() == pytest.approx(U.norm().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Unsupported layouts


class LucidrainsAttention(nn.Module):  # vit-pytorch style: not a supported layout
    def __init__(self):
        super().__init__()
        self.heads = H
        self.to_qkv = nn.Linear(D, 3 * D, bias=False)
        self.to_out = nn.Sequential(nn.Linear(D, D))


def _assert_lists_layouts(err: pytest.ExceptionInfo) -> None:
    assert all(layout in str(err.value) for layout in SUPPORTED_LAYOUTS)


def test_unsupported_layouts_raise_and_list_the_supported_ones():
    with pytest.raises(UnsupportedAttentionError, match="to_qkv") as err:
        mimetic_init_(nn.Sequential(LucidrainsAttention()))
    _assert_lists_layouts(err)
    with pytest.raises(UnsupportedAttentionError, match="no attention layer") as err:
        mimetic_init_(nn.Sequential(nn.Linear(D, D), nn.ReLU()))
    _assert_lists_layouts(err)
    with pytest.raises(UnsupportedAttentionError, match="kdim"):
        mimetic_init_(nn.MultiheadAttention(D, H, kdim=64, vdim=64))
    gqa = nn.Module()
    gqa.num_heads, gqa.q_proj, gqa.k_proj = H, nn.Linear(D, D), nn.Linear(D, K)
    gqa.v_proj, gqa.o_proj = nn.Linear(D, K), nn.Linear(D, D)
    with pytest.raises(UnsupportedAttentionError, match="grouped-query"):
        mimetic_init_(gqa)
    assert issubclass(UnsupportedAttentionError, TypeError)


def test_nothing_is_written_before_an_error():
    model = _nonzero_biases_(nn.Sequential(nn.MultiheadAttention(D, H), LucidrainsAttention()))
    before = _snapshot(model)
    with pytest.raises(UnsupportedAttentionError):
        mimetic_init_(model, seed=0)
    assert not _changed(before, model)
    with pytest.warns(UserWarning, match="to_qkv"):
        assert mimetic_init_(model, seed=0, strict=False) == 1
    assert _changed(before, model) == {"0.in_proj_weight", "0.in_proj_bias", "0.out_proj.weight", "0.out_proj.bias"}


def test_gpt2_cross_attention_is_reported():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2Model(transformers.GPT2Config(n_embd=D, n_layer=1, n_head=H, add_cross_attention=True))
    with pytest.raises(UnsupportedAttentionError, match="cross-attention"):
        mimetic_init_(model)
    with pytest.warns(UserWarning):
        assert mimetic_init_(model, strict=False) == 1


# ---------------------------------------------------------------------------------------------------------------
# Batched factorisation: the same products (and factors, up to each singular vector's sign) as the per-head
# float64 SVD recipe, in one factorisation call per layer and half


def test_batched_balanced_factors_equal_the_per_matrix_svd():
    g = torch.Generator().manual_seed(0)
    A = torch.stack([mimetic_target(D, 0.7, 0.7, +1, generator=g) for _ in range(3)])  # (3, d, d)
    L, R = balanced_factors(A, K)  # (3, d, dh), (3, dh, d)
    assert L.shape == (3, D, K) and R.shape == (3, K, D)
    for a, l, r in zip(A, L, R):
        U, S, Vh = torch.linalg.svd(a)
        torch.testing.assert_close(l @ r, U[:, :K] * S[:K] @ Vh[:K], atol=1e-11, rtol=0)
        sign = (l * U[:, :K]).sum(0).sign()  # (dh,)  the SVD's sign choice per singular vector
        torch.testing.assert_close(l * sign, U[:, :K] * S[:K].sqrt(), atol=1e-9, rtol=0)
        torch.testing.assert_close(r * sign[:, None], S[:K].sqrt()[:, None] * Vh[:K], atol=1e-9, rtol=0)


def test_batched_psd_factor_equals_the_per_matrix_one():
    g = torch.Generator().manual_seed(1)
    Z = torch.randn(2, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    A = 0.7 * torch.eye(D, dtype=torch.float64) + 0.7 * (Z + Z.mT) / math.sqrt(2)  # (2, d, d)
    F = psd_factor(A, K)  # (2, dh, d)
    assert F.shape == (2, K, D)
    for a, f in zip(A, F):
        lam, E = torch.linalg.eigh(a)
        torch.testing.assert_close(f.T @ f, E[:, -K:] * lam[-K:] @ E[:, -K:].T, atol=1e-10, rtol=0)
        assert torch.all(f.norm(dim=1)[:-1] >= f.norm(dim=1)[1:])  # rows by decreasing eigenvalue


def _reference_products(seed: int, layers: int, tied: bool) -> list[list[torch.Tensor]]:
    """The recipe written out per head in float64 with torch.linalg.svd / eigh: three seeds per layer from
    `seed` (QK, VO, baseline), each half drawing its targets Z one after the other from its own generator."""
    seeds = torch.randint(0, 2**62, (layers, 3), generator=torch.Generator().manual_seed(seed)).tolist()
    out = []
    for qk_seed, vo_seed, _ in seeds:
        g, layer = torch.Generator().manual_seed(qk_seed), []
        for _ in range(H):
            Z = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
            if tied:
                lam, E = torch.linalg.eigh(0.7 * torch.eye(D, dtype=torch.float64) + 0.7 * (Z + Z.T) / math.sqrt(2))
                layer.append(E[:, -K:] * lam[-K:].clamp_min(0) @ E[:, -K:].T)
                continue
            U, S, Vh = torch.linalg.svd(0.7 * Z + 0.7 * torch.eye(D, dtype=torch.float64))
            layer.append(U[:, :K] * S[:K] @ Vh[:K])
        if not tied:
            Z = torch.randn(D, D, generator=torch.Generator().manual_seed(vo_seed), dtype=torch.float64)
            layer.append(0.4 * Z / math.sqrt(D) - 0.4 * torch.eye(D, dtype=torch.float64))
        out.append(layer)
    return out


@pytest.mark.parametrize("name", ["vit_tiny_patch2_32", "crate_alpha_tiny_patch4_32"])
def test_products_equal_the_per_head_float64_recipe(name):
    model = vitlab.create_model(name, depth=2, embed_dim=D, num_heads=H)
    mimetic_init_(model, seed=0)
    tied = name.startswith("crate")
    for block, reference in zip(model.blocks, _reference_products(0, 2, tied)):
        W = (block.attn.subspace if tied else block.attn.qkv).weight.detach().double()  # rows q | k | v
        k_off = 0 if tied else D
        got = [W[h * K:(h + 1) * K].T @ W[k_off + h * K:k_off + (h + 1) * K] for h in range(H)]
        if not tied:
            got.append(W[2 * D:].T @ block.attn.proj.weight.detach().double().T)
        for P, ref in zip(got, reference, strict=True):
            assert ((P - ref).norm() / ref.norm()).item() < 1e-5


def test_one_factorisation_call_per_layer_and_half(monkeypatch):
    calls = []
    for fn in ("svd", "eigh"):
        original = getattr(torch.linalg, fn)
        monkeypatch.setattr(torch.linalg, fn, lambda *a, _f=original, _n=fn, **k: calls.append(_n) or _f(*a, **k))
    mimetic_init_(vitlab.create_model("vit_tiny_patch2_32", depth=2), seed=0)
    assert len(calls) == 2 * 2  # per layer: the H heads' QK targets in one call, VO in one
    calls.clear()
    mimetic_init_(vitlab.create_model("crate_tiny_patch4_32", depth=2, embed_dim=D, num_heads=H), seed=0)
    assert len(calls) == 2  # tied: QK only
