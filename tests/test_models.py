"""Every registered model at a tiny size, the paper parameter counts, timm parity and the model contract."""
import pytest
import torch
from safetensors.torch import save_file

import vitlab
from vitlab.convert import load_checkpoint
from vitlab.models import CRATE, CRATEAlpha, VisionTransformer


def tiny(name: str, **extra):
    """The registered configuration shrunk: width 32, depth 2, 2 heads, a 2×2 patch grid, 5 classes."""
    with torch.device("meta"):  # builds without allocating, to read the registered patch size
        patch_size = vitlab.create_model(name).patch_embed.patch_size
    return vitlab.create_model(name, embed_dim=32, depth=2, num_heads=2, num_classes=5,
                               img_size=2 * patch_size, **extra)


# Image models only; the language models (pretrained_cfg task 'lm') have their own suite, tests/test_lm_models.py,
# and the CLIP models (task 'clip') theirs, tests/test_clip_model.py and tests/test_clipa_official.py.
IMAGE_MODELS = [n for n in vitlab.list_models() if vitlab.get_pretrained_cfg(n).get("task") not in ("lm", "clip")]
LM_MODELS = [n for n in vitlab.list_models() if vitlab.get_pretrained_cfg(n).get("task") == "lm"]
CLIP_MODELS = [n for n in vitlab.list_models() if vitlab.get_pretrained_cfg(n).get("task") == "clip"]


def test_language_models_are_registered_apart_from_image_models():
    assert {"gpt2", "gpt_char_tiny", "crate_lm_base", "crate_alpha_lm_small", "crate_alpha_lm_base"} <= set(LM_MODELS)
    assert len(IMAGE_MODELS) + len(LM_MODELS) + len(CLIP_MODELS) == len(vitlab.list_models())
    assert len(IMAGE_MODELS) > 30 and {"clip", "crate_alpha_clipa_large_patch14_224"} <= set(CLIP_MODELS)
    for name in LM_MODELS:
        cfg = vitlab.get_pretrained_cfg(name)
        assert {"vocab_size", "block_size", "paper"} <= set(cfg) and "input_size" not in cfg


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_model_forward_backward_roundtrip(name, tmp_path):
    model = tiny(name)
    img = model.patch_embed.img_size
    x = torch.randn(2, 3, img, img)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = tiny(name)
    assert not torch.equal(fresh(x), out.detach())  # a fresh init differs ...
    load_checkpoint(fresh, path)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)  # ... until the weights load


@pytest.mark.parametrize("name, millions", [
    ("crate_tiny_patch16_224", 6.091), ("crate_small_patch16_224", 13.116), ("crate_base_patch16_224", 22.796),
    ("crate_large_patch16_224", 77.641), ("crate_alpha_base_patch16_224", 72.329),
    ("crate_alpha_large_patch14_224", 253.651),
])
def test_paper_parameter_counts(name, millions):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == millions


def test_crate_alpha_layer_is_10_d_squared():
    d = 96
    one = vitlab.create_model("crate_alpha_tiny_patch16_224", embed_dim=d, depth=1, num_heads=2)
    two = vitlab.create_model("crate_alpha_tiny_patch16_224", embed_dim=d, depth=2, num_heads=2)
    per_layer = sum(p.numel() for p in two.parameters()) - sum(p.numel() for p in one.parameters())
    assert per_layer == 10 * d * d + 4 * d  # U, out, D, D1 + two LayerNorms


@pytest.mark.parametrize("ours, timm_name, shape", [
    ("vit_tiny_patch16_224", "vit_tiny_patch16_224", dict(depth=2)),  # keys per block are the same at any depth
    ("vit_small_patch16_224", "vit_small_patch16_224", dict(depth=2)),
    ("vit_tiny_patch2_32", "vit_tiny_patch16_224", dict(img_size=32, patch_size=2, num_classes=10)),
    ("vit_tiny_patch4_32", "vit_tiny_patch16_224", dict(img_size=32, patch_size=4, num_classes=10)),
])
def test_vit_keys_and_logits_equal_timm(ours, timm_name, shape):
    timm = pytest.importorskip("timm")
    reference = timm.create_model(timm_name, **shape).eval()
    model = vitlab.create_model(ours, **({"depth": shape["depth"]} if "depth" in shape else {})).eval()
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ref_shapes
    model.load_state_dict(reference.state_dict())
    img = shape.get("img_size", 224)
    x = torch.randn(2, 3, img, img)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.forward_features(x), reference.forward_features(x), rtol=1e-5, atol=1e-5)


def test_mimetic_small_image_vit_matches_the_paper_setup():
    model = vitlab.create_model("vit_tiny_patch2_32")
    assert (model.embed_dim, model.depth, model.num_heads, model.patch_embed.patch_size) == (192, 12, 3, 2)
    assert model.cls_token is not None and not model.pos_embed.requires_grad  # fixed 2-D sin-cos
    table = model.pos_embed[0, 1:]  # (256, 192)
    assert torch.all(model.pos_embed[0, 0] == 0)
    assert torch.allclose(table[0, :48], torch.zeros(48)) and torch.allclose(table[0, 48:96], torch.ones(48))
    # row part of patch (r, c) depends on r only, column part on c only
    grid = table.reshape(16, 16, 192)
    assert torch.allclose(grid[:, 0, :96], grid[:, 5, :96]) and torch.allclose(grid[0, :, 96:], grid[7, :, 96:])


@pytest.mark.parametrize("name", ["vit_tiny_patch4_32", "crate_tiny_patch4_32", "crate_alpha_tiny_patch4_32"])
def test_attention_maps(name):
    model = vitlab.create_model(name, depth=3).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = model.forward_attention(x)
    n = 1 + 64
    assert maps.shape == (2, 3, model.num_heads, n, n)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 3, model.num_heads, n))
    # layer 0 recomputed by hand from the block's own weights
    tokens = model._embed(x)
    attn = model.blocks[0].attn
    h = model.blocks[0].norm1(tokens)
    if isinstance(model, VisionTransformer):
        q, k = attn.qkv(h).reshape(2, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)[:2]
    else:  # CRATE's MSSA: the same w = U z is query and key
        q = k = attn.subspace(h).reshape(2, n, attn.num_heads, -1).transpose(1, 2)
    expected = (q @ k.transpose(-2, -1) * attn.head_dim**-0.5).softmax(-1)
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-5, atol=1e-6)
    # the explicit-attention path computes the same function as the fused SDPA path
    y = tokens
    for block in model.blocks:
        y, _ = block.forward_with_attention(y)
    torch.testing.assert_close(model.forward_head(model.norm(y)), model(x), rtol=1e-4, atol=1e-5)


def test_model_contract():
    model = vitlab.create_model("crate_alpha_tiny_patch4_32", depth=2)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 65, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    avg = vitlab.create_model("vit_tiny_patch4_32", depth=1, global_pool="avg")
    assert isinstance(avg.norm, torch.nn.Identity) and avg(x).shape == (2, 10)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == "crate_alpha_tiny_patch4_32" and cfg["input_size"] == (3, 32, 32)


def test_no_weight_decay_follows_the_official_recipes():
    alpha = vitlab.create_model("crate_alpha_tiny_patch16_224", depth=2)
    decayed = {n for n, _ in alpha.named_parameters()} - alpha.no_weight_decay()
    assert decayed == {"patch_embed.proj.weight", "head.weight", "blocks.0.attn.subspace.weight",
                       "blocks.0.attn.proj.weight", "blocks.1.attn.subspace.weight", "blocks.1.attn.proj.weight"}
    assert vitlab.create_model("crate_tiny_patch16_224", depth=1).no_weight_decay() == set()  # Lion on everything
    vit = vitlab.create_model("vit_tiny_patch16_224", depth=1).no_weight_decay()
    assert {"pos_embed", "cls_token", "blocks.0.attn.qkv.bias", "norm.weight"} <= vit
    assert "blocks.0.attn.qkv.weight" not in vit


def test_crate_alpha_ablation_is_configuration():
    kwargs = dict(embed_dim=32, depth=1, num_heads=2, img_size=32, patch_size=16)
    crate_like = vitlab.create_model("crate_alpha_base_patch32_224", overcomplete_ratio=1,
                                     decoupled_dictionary=False, residual_sparse_coding=False, **kwargs)
    ista = crate_like.blocks[0].ista
    assert ista.D.shape == (32, 32) and ista.D1 is None and not crate_like.blocks[0].residual_sparse_coding
    overcomplete = vitlab.create_model("crate_alpha_base_patch32_224", decoupled_dictionary=False,
                                       residual_sparse_coding=False, **kwargs)
    assert overcomplete.blocks[0].ista.D.shape == (32, 128) and overcomplete.blocks[0].ista.D1 is None
    full = vitlab.create_model("crate_alpha_base_patch32_224", **kwargs)
    assert full.blocks[0].ista.D1.shape == (32, 128) and full.blocks[0].residual_sparse_coding
    with pytest.raises(ValueError, match="overcomplete"):
        vitlab.create_model("crate_alpha_base_patch32_224", overcomplete_ratio=1, **kwargs)


def test_crate_alpha_init_follows_jax():
    model = vitlab.create_model("crate_alpha_base_patch16_224", depth=2)
    d = model.embed_dim
    D = model.blocks[0].ista.D
    assert D.abs().max() <= (6 / d) ** 0.5 and D.abs().max() > 0.9 * (6 / d) ** 0.5  # ±√(6/d), fan-in d
    assert abs(model.blocks[0].attn.subspace.weight.std().item() - 0.02) < 0.002
    assert abs(model.pos_embed.std().item() - 0.02) < 0.002


def test_registry():
    assert vitlab.is_model("crate_alpha_b16") and vitlab.is_model("vit_t2_32")
    assert "crate_alpha_b16" not in vitlab.list_models() and "crate_alpha_b16" in vitlab.list_models(
        "crate_alpha_b*", include_aliases=True)
    assert set(vitlab.list_models("vit_*")) == {"vit_tiny_patch16_224", "vit_small_patch16_224",
                                                "vit_base_patch16_224", "vit_large_patch16_224",
                                                "vit_tiny_patch2_32", "vit_tiny_patch4_32"}
    alias = vitlab.create_model("crate_alpha_b16", depth=1)
    assert isinstance(alias, CRATEAlpha) and alias.pretrained_cfg["architecture"] == "crate_alpha_base_patch16_224"
    assert isinstance(vitlab.create_model("crate_t16", depth=1), CRATE)
    with pytest.raises(ValueError, match="crate_alpha_b16"):
        vitlab.create_model("crate_alpha_b61")
    with pytest.raises(TypeError, match="no_such_option"):
        vitlab.create_model("vit_t16", no_such_option=1)
    with pytest.raises(ValueError, match="unknown init"):
        vitlab.create_model("vit_t16", depth=1, init="xavier")
    with pytest.raises(ValueError, match="register"):
        vitlab.register_model(lambda: None, name="vit_tiny_patch16_224")


def test_crate_ista_step_is_one_token_gemm_with_the_three_gemm_values_and_gradients():
    """CRATE eq. 11 is computed as h + h·K with K = η(D − DᵀD) formed once per forward; it must equal the direct
    three-product form h + η(h D − (h Dᵀ) D) − ηλ under ReLU, in value and in both gradients (float64)."""
    import torch.nn.functional as F

    from vitlab.models._layers import SparseCoding, init_dictionary_

    torch.manual_seed(0)
    layer = SparseCoding(48, ista_step_size=0.1, ista_lambda=0.1).double()
    init_dictionary_(layer.D, fan_in=48)
    h = torch.randn(3, 17, 48, dtype=torch.float64, requires_grad=True)
    D = layer.D
    direct = F.relu(h + 0.1 * (h @ D - (h @ D.t()) @ D) - 0.1 * 0.1)  # (3, 17, 48)
    fused = layer(h)
    torch.testing.assert_close(fused, direct, rtol=0, atol=1e-12)
    assert 0.2 < (fused > 0).double().mean() < 0.8  # the ReLU is active on part of the codes: a real test
    g = torch.randn_like(direct)
    for a, b in zip(torch.autograd.grad((fused * g).sum(), (h, D)), torch.autograd.grad((direct * g).sum(), (h, D))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    few = h.detach()[:1, :5]  # 5 tokens <= d / 2: the direct form, the same values
    torch.testing.assert_close(layer(few), direct.detach()[:1, :5], rtol=0, atol=1e-12)
    with torch.autocast("cpu", torch.bfloat16):  # bf16 GEMM, the identity term added outside it
        low = layer.float()(h.detach().float())
    torch.testing.assert_close(low.float(), direct.detach().float(), rtol=0.02, atol=0.02)


def test_vit_conv_stem_is_stride_two_convolutions_with_a_ceil_grid():
    from vitlab.models._layers import ConvStem

    model = vitlab.create_model("vit_tiny_patch4_32", img_size=28, in_chans=1, num_classes=10, patch_size=8,
                                embed_dim=96, depth=2, num_heads=3, patch_embed="convstem")
    stem = model.patch_embed
    assert isinstance(stem, ConvStem) and stem.grid_hw == (4, 4) and stem.num_patches == 16  # 28 → 14 → 7 → 4
    convs = [m for m in stem.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(1, 24, (2, 2)), (24, 48, (2, 2)),
                                                                          (48, 96, (2, 2))]
    assert stem.proj.kernel_size == (1, 1)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    assert model(x).shape == (3, 10)
    model.eval()  # BatchNorm's running statistics: each image alone gives the same logits as the batch
    batched = model(x)
    single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    # each stem position sees its 3x3 neighbourhood across patch borders: a pixel moves the neighbouring token too
    tokens = lambda img: model.patch_embed(img)  # noqa: E731
    base, poked = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    poked[0, 0, 7, 7] = 10.0  # the last pixel of patch (0, 0)
    changed = (tokens(poked) - tokens(base)).abs().sum(-1)[0].reshape(4, 4) > 1e-6
    assert changed[0, 0] and changed[1, 1]  # a patchify stem would change token (0, 0) only
    assert model.forward_features(torch.randn(2, 1, 32, 40)).shape == (2, 1 + 4 * 5, 96)  # any size: ceil grid
    assert vitlab.mimetic_init_(model) == 2
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        vitlab.create_model("vit_tiny_patch4_32", patch_size=7, patch_embed="convstem")
    with pytest.raises(ValueError, match="'conv' or 'convstem'"):
        vitlab.create_model("vit_tiny_patch4_32", patch_embed="crate")


@pytest.mark.parametrize("decoupled", [True, False])
def test_crate_alpha_odl_fused_gemms_give_the_two_ista_steps_values_and_gradients(decoupled):
    """CRATE-α's ODL (eqs. 5-7) runs as four addmm's with η, −ηλ and −h inside them and in-place ReLUs; it must equal
    the two ISTA steps as written, A¹ = ReLU(η h D − ηλ), A² = ReLU(A¹ − η (A¹ Dᵀ − h) D − ηλ), out = A² D1ᵀ, in value
    and in every gradient (float64)."""
    import torch.nn.functional as F

    from vitlab.models._layers import SparseCoding, init_dictionary_

    torch.manual_seed(0)
    layer = SparseCoding(24, overcomplete_ratio=4, decoupled_dictionary=decoupled).double()
    for dictionary in (layer.D, layer.D1):
        if dictionary is not None:
            init_dictionary_(dictionary, fan_in=24)
    h = torch.randn(3, 17, 24, dtype=torch.float64, requires_grad=True)
    D = layer.D
    decoder = layer.D1 if decoupled else D
    A1 = F.relu(0.1 * (h @ D) - 0.1 * 0.1)  # (3, 17, 96)
    A2 = F.relu(A1 - 0.1 * ((A1 @ D.t() - h) @ D) - 0.1 * 0.1)
    direct = A2 @ decoder.t()  # (3, 17, 24)
    assert 0.05 < (A1 > 0).double().mean() < 0.95 and 0.05 < (A2 > 0).double().mean() < 0.95  # both ReLUs active
    fused = layer(h)
    torch.testing.assert_close(fused, direct, rtol=0, atol=1e-12)
    inputs = (h, *[p for p in layer.parameters()])
    g = torch.randn_like(direct)
    for a, b in zip(torch.autograd.grad((fused * g).sum(), inputs), torch.autograd.grad((direct * g).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.autocast("cpu", torch.bfloat16):
        low = layer.float()(h.detach().float())
    torch.testing.assert_close(low.float(), direct.detach().float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name, causal_model", [("vit_tiny_patch16_224", False), ("crate_t16", False),
                                                ("gpt_char_tiny", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_training_attention_path_matches_sdpa(name, causal_model, dtype, monkeypatch):
    """Short CPU training forwards take the explicit attention path (faster there than SDPA's flash backward); its
    outputs and gradients must be SDPA's."""
    from vitlab.models import _layers
    torch.manual_seed(0)
    kwargs = dict(n_layer=2) if causal_model else dict(depth=2, img_size=32, patch_size=8, num_classes=5)
    model = vitlab.create_model(name, **kwargs).train()
    x = torch.randint(0, 60, (2, 40)) if causal_model else torch.randn(2, 3, 32, 32)
    assert _layers._explicit_trains_faster(torch.zeros(1, 1, 17, 8, dtype=dtype, requires_grad=True)) == (
        dtype == torch.bfloat16)
    results = []
    for explicit in (True, False):
        monkeypatch.setattr(_layers, "_explicit_trains_faster", lambda q, explicit=explicit: explicit)
        model.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
        results.append((out.detach().float(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, **(tol if dtype == torch.float32 else dict(atol=5e-2, rtol=1e-1)))


def test_explicit_attention_is_chosen_only_where_it_trains_faster():
    from vitlab.models._layers import _explicit_trains_faster
    short = torch.zeros(1, 1, 65, 8, dtype=torch.bfloat16, requires_grad=True)
    assert _explicit_trains_faster(short)
    assert not _explicit_trains_faster(short.detach())  # inference: SDPA
    assert not _explicit_trains_faster(short.float())  # fp32: SDPA (whole models train faster with it)
    assert _explicit_trains_faster(torch.zeros(1, 1, 197, 8, dtype=torch.bfloat16, requires_grad=True))
    assert not _explicit_trains_faster(torch.zeros(1, 1, 512, 8, dtype=torch.bfloat16, requires_grad=True))
    assert not _explicit_trains_faster(torch.zeros(1, 1, 65, 8, dtype=torch.float64, requires_grad=True))


def test_attention_dropout_on_the_explicit_path_drops_probabilities():
    from vitlab.models._layers import _explicit_attention
    q = torch.randn(2, 2, 10, 4, requires_grad=True)
    torch.manual_seed(0)
    dropped, probs = _explicit_attention(q, q, q, 0.5, dropout_p=0.5)
    torch.manual_seed(0)
    mask = torch.nn.functional.dropout(probs, 0.5)
    torch.testing.assert_close(dropped, mask @ q)
    assert not torch.allclose(dropped, probs @ q)
