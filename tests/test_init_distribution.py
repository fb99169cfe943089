"""Initial weights: `vitlab.models.trunc_normal_` (the inverse-CDF truncated normal of issue 25) draws the truncated
normal scipy defines, within its bounds, with one uniform draw per element; and each model family's init is still
the documented one, parameter by parameter, checked against scipy's distributions with a Kolmogorov–Smirnov test."""
import math

import pytest
import torch

import vitlab
from vitlab.models import TextTransformer, trunc_normal_

stats = pytest.importorskip("scipy.stats")

P_MIN = 1e-3  # every sample below is drawn from a fixed seed, so each p-value is a fixed number


def _ks_pvalue(values: torch.Tensor, dist) -> float:
    return float(stats.kstest(values.detach().double().flatten().numpy(), dist.cdf).pvalue)


@pytest.mark.parametrize("mean, std, a, b", [
    (0.0, 0.02, -0.04, 0.04),  # the ViT's Linear layers and position table: ±2σ
    (0.0, 1.0, -2.0, 2.0),  # torch's defaults
    (0.5, 2.0, -1.0, 4.0),  # asymmetric about the mean
    (0.0, 1.0, 0.5, 3.0),  # the mean outside [a, b]
])
def test_trunc_normal_is_scipys_truncated_normal(mean, std, a, b):
    x = trunc_normal_(torch.empty(200_000), mean, std, a, b, generator=torch.Generator().manual_seed(0))
    reference = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    assert _ks_pvalue(x, reference) > P_MIN
    assert x.min().item() >= a and x.max().item() <= b  # the bounds, in float32
    assert x.min().item() < a + 0.01 * (b - a) and x.max().item() > b - 0.01 * (b - a)  # reached, not shrunk
    standard_error = reference.std() / math.sqrt(x.numel())
    assert abs(x.double().mean().item() - reference.mean()) < 5 * standard_error
    assert abs(x.double().std().item() / reference.std() - 1) < 0.01


def test_trunc_normal_draws_one_uniform_per_element_from_the_generator_it_is_given():
    """No rejection loop: the generator advances by exactly one uniform draw per element, and the global generator
    is left alone. torch's own trunc_normal_ (the code it replaces) redraws the out-of-bounds values."""
    tensor, generator, reference = torch.empty(1000, 37), torch.Generator().manual_seed(1), torch.Generator()
    reference.manual_seed(1)
    global_state = torch.get_rng_state()
    trunc_normal_(tensor, std=0.02, a=-0.04, b=0.04, generator=generator)
    torch.empty(1000, 37).uniform_(generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())
    assert torch.equal(torch.get_rng_state(), global_state)
    again = trunc_normal_(torch.empty(1000, 37), std=0.02, a=-0.04, b=0.04, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, tensor)


def test_trunc_normal_16_bit_meta_and_bad_arguments():
    """A 16-bit tensor gets the float32 draw rounded (its bounds: a and b in its dtype)."""
    half = trunc_normal_(torch.empty(50_000, dtype=torch.bfloat16), std=0.02, a=-0.04, b=0.04,
                         generator=torch.Generator().manual_seed(0))
    full = trunc_normal_(torch.empty(50_000), std=0.02, a=-0.04, b=0.04, generator=torch.Generator().manual_seed(0))
    assert half.dtype == torch.bfloat16 and torch.equal(half, full.to(torch.bfloat16))
    assert half.abs().max() <= torch.tensor(0.04, dtype=torch.bfloat16)
    meta = torch.empty(3, device="meta")
    assert trunc_normal_(meta) is meta
    with pytest.raises(ValueError, match="a < b"):
        trunc_normal_(torch.empty(3), a=1.0, b=-1.0)
    with pytest.raises(ValueError, match="finite"):
        trunc_normal_(torch.empty(3), a=-math.inf, b=0.0)
    with pytest.raises(ValueError, match="std > 0"):
        trunc_normal_(torch.empty(3), std=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        trunc_normal_(torch.empty(3, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------------
# Each family's documented init (docstrings of vit.py, crate.py, crate_alpha.py, gpt.py, crate_lm.py, clip.py)

def _normal(std):
    return stats.norm(scale=std)


def _truncated(std):  # ±2σ
    return stats.truncnorm(-2, 2, scale=std)


def _uniform(bound):
    return stats.uniform(loc=-bound, scale=2 * bound)


ZERO = None  # every value exactly 0


D = 64  # width of every image and language model below
IMAGE = dict(embed_dim=D, depth=2, num_heads=2)
LM = dict(vocab_size=500, block_size=64, n_layer=2, n_head=2, n_embd=D)
# model builder → [(parameter names ending so, the distribution of their pooled values)]
FAMILIES = {
    "vit": (lambda: vitlab.create_model("vit_base_patch16_224", **IMAGE), [
        (("qkv.weight", "attn.proj.weight", "fc1.weight", "fc2.weight", "head.weight"), _truncated(0.02)),
        (("pos_embed",), _truncated(0.02)),
        (("cls_token",), _normal(1e-6)),
        (("patch_embed.proj.weight",), _uniform(1 / math.sqrt(3 * 16 * 16))),  # PyTorch's conv default
        (("qkv.bias", "attn.proj.bias", "fc1.bias", "fc2.bias", "head.bias"), ZERO),
    ]),
    "crate": (lambda: vitlab.create_model("crate_base_patch16_224", **IMAGE), [
        (("pos_embed",), _normal(1.0)),
        (("cls_token",), _normal(1.0)),
        (("ista.D",), _uniform(math.sqrt(6 / D))),
        (("attn.subspace.weight", "attn.proj.weight"), _uniform(1 / math.sqrt(D))),  # PyTorch's Linear default
    ]),
    "crate_alpha": (lambda: vitlab.create_model("crate_alpha_base_patch16_224", **IMAGE), [
        (("attn.subspace.weight", "attn.proj.weight", "head.weight"), _normal(0.02)),
        (("pos_embed",), _normal(0.02)),
        (("cls_token",), _normal(1e-6)),
        (("ista.D", "ista.D1"), _uniform(math.sqrt(6 / D))),
        (("patch_embed.proj.weight",), _uniform(math.sqrt(6 / (3 * 16 * 16)))),  # Flax kaiming-uniform
        (("patch_embed.proj.bias", "head.bias"), ZERO),
    ]),
    "gpt": (lambda: vitlab.create_model("gpt2", **LM), [
        (("c_attn.weight", "mlp.c_fc.weight"), _normal(0.02)),
        (("wte.weight",), _normal(0.02)),
        (("wpe.weight",), _normal(0.02)),
        (("c_proj.weight",), _normal(0.02 / math.sqrt(2 * 2))),
        (("c_attn.bias", "c_proj.bias", "c_fc.bias"), ZERO),
    ]),
    "crate_lm": (lambda: vitlab.create_model("crate_lm_base", **LM), [
        (("wte.weight",), _normal(0.02)),
        (("wpe.weight",), _normal(0.02)),
        (("ista.D",), _uniform(math.sqrt(6 / D))),
    ]),
    "crate_alpha_lm": (lambda: vitlab.create_model("crate_alpha_lm_base", **LM), [
        (("attn.subspace.weight", "attn.proj.weight"), _normal(0.02)),
        (("wte.weight",), _normal(0.02)),
        (("wpe.weight",), _normal(0.02)),
        (("ista.D", "ista.D1"), _uniform(math.sqrt(6 / D))),
    ]),
    "clip_text": (lambda: TextTransformer(vocab_size=500, context_length=64, width=D, layers=2, heads=2,
                                          embed_dim=32), [
        (("token_embedding.weight",), _normal(0.02)),
        (("positional_embedding",), _normal(0.01)),
        (("attn.in_proj_weight", "text_projection"), _normal(D ** -0.5)),
        (("attn.out_proj.weight", "mlp.c_proj.weight"), _normal(D ** -0.5 * (2 * 2) ** -0.5)),
        (("mlp.c_fc.weight",), _normal((2 * D) ** -0.5)),
    ]),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_initialises_as_documented(family):
    build, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = build()
    params = dict(model.named_parameters())
    for suffixes, dist in expected:
        chosen = [p for name, p in params.items() if name.endswith(suffixes)]
        assert chosen, f"{family}: no parameter ends with {suffixes}"
        values = torch.cat([p.detach().flatten() for p in chosen])
        if dist is ZERO:
            assert values.abs().max() == 0, f"{family}: {suffixes} are not zero"
            continue
        assert _ks_pvalue(values, dist) > P_MIN, f"{family}: {suffixes} are not {dist.dist.name}{dist.kwds}"
        low, high = dist.support()  # bounds in float64; the tensors hold their float32 rounding
        slack = 1e-6 * max(abs(low), abs(high)) if math.isfinite(high) else 0.0
        assert low - slack <= values.min().item() and values.max().item() <= high + slack, f"{family}: {suffixes}"
    torch.manual_seed(0)
    again = build()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))  # torch.manual_seed fixes it
