"""The language models: GPT-2 (nanoGPT layout, HF names), causal CRATE and causal CRATE-α.

Causality, GPT-2 key names and HF logits, nanoGPT checkpoints, pinned parameter counts, generation, mimetic init.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.convert import CheckpointMismatchError, detect_layout, load_checkpoint, read_weights
from vitlab.interpret import weight_products
from vitlab.models import CRATELM, GPT, CRATEAlphaLM

FAMILIES = ["gpt2", "crate_lm_base", "crate_alpha_lm_base"]
TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny(name: str, **extra):
    return vitlab.create_model(name, **{**TINY, **extra}).eval()


# ----------------------------------------------------------------------------------------------------------------
# Causality and attention maps


@pytest.mark.parametrize("name", FAMILIES)
def test_changing_token_t_never_changes_earlier_logits(name):
    model = tiny(name)
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        logits = model(idx)  # (2, 12, 50)
        assert logits.shape == (2, 12, 50) and torch.isfinite(logits).all()
        for t in (11, 5):  # the last token and a middle one
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % 50
            other = model(changed)
            torch.testing.assert_close(other[:, :t], logits[:, :t], rtol=0, atol=1e-6)
            assert (other[:, t:] - logits[:, t:]).abs().amax(dim=-1).min() > 1e-4  # every later position moved


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_maps_are_causal_and_match_the_fused_path(name):
    model = tiny(name)
    idx = torch.randint(0, 50, (2, 10))
    maps = model.forward_attention(idx)
    assert maps.shape == (2, 2, 2, 10, 10)  # (B, L, H, T, T)
    assert torch.all(maps.triu(1) == 0)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 2, 10))
    assert torch.all(maps[..., 0, 0] == 1)  # the first token sees only itself
    # the explicit (masked softmax) path computes the same function as SDPA's is_causal
    x = model._embed(idx)
    with torch.no_grad():
        for block in model.transformer.h:
            x, _ = block.forward_with_attention(x)
        torch.testing.assert_close(model.lm_head(model.transformer.ln_f(x)), model(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_training_step_gives_finite_gradients_everywhere(name):
    model = tiny(name).train()
    idx = torch.randint(0, 50, (2, 16))
    loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    assert abs(loss.item() - math.log(50)) < 1.0  # a fresh model predicts about uniformly
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert model.lm_head.weight.grad is model.transformer.wte.weight.grad  # one tied Parameter


def test_causal_option_of_the_shared_attention():
    from vitlab.models._layers import Attention

    attn = Attention(32, 2, causal=True).eval()
    x = torch.randn(2, 7, 32)
    out, probs = attn.forward_with_attention(x)
    assert torch.all(probs.triu(1) == 0) and probs.shape == (2, 2, 7, 7)
    torch.testing.assert_close(out, attn(x), rtol=1e-5, atol=1e-6)
    full = Attention(32, 2).eval()
    full.load_state_dict(attn.state_dict())
    assert not torch.allclose(full(x)[:, :-1], out[:, :-1])  # without the mask earlier tokens see the future


def test_causal_flag_threads_through_the_shared_blocks():
    assert all(block.attn.causal for block in tiny("crate_lm_base").transformer.h)
    assert all(block.attn.causal for block in tiny("crate_alpha_lm_base").transformer.h)
    vision = vitlab.create_model("crate_alpha_tiny_patch4_32", depth=1)
    assert not vision.blocks[0].attn.causal  # image models keep full attention


# ----------------------------------------------------------------------------------------------------------------
# GPT-2 keys, HF and nanoGPT checkpoints


def nanogpt_table(V=50257, T=1024, d=768, L=12):
    """official_layouts.md §5 (nanoGPT GPT, bias=True)."""
    table = {"transformer.wte.weight": (V, d), "transformer.wpe.weight": (T, d)}
    for i in range(L):
        p = f"transformer.h.{i}."
        table.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "attn.c_attn.weight": (3 * d, d),
                      p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                      p + "ln_2.weight": (d,), p + "ln_2.bias": (d,), p + "mlp.c_fc.weight": (4 * d, d),
                      p + "mlp.c_fc.bias": (4 * d,), p + "mlp.c_proj.weight": (d, 4 * d), p + "mlp.c_proj.bias": (d,)})
    table.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,), "lm_head.weight": (V, d)})
    return table


def test_gpt2_keys_and_shapes_equal_nanogpt():
    with torch.device("meta"):
        model = vitlab.create_model("gpt2")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == nanogpt_table()
    assert model.lm_head.weight is model.transformer.wte.weight
    small = tiny("gpt2")
    sd = small.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()  # same storage
    assert small.double().lm_head.weight is small.transformer.wte.weight  # tying survives dtype moves
    assert isinstance(small, GPT) and small.transformer.h[0].attn.c_attn.weight.shape == (96, 32)


def test_crate_lm_keys():
    keys = set(tiny("crate_alpha_lm_base").state_dict())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.norm1.weight",
            "transformer.h.1.attn.subspace.weight", "transformer.h.1.attn.proj.weight", "transformer.h.1.ista.D",
            "transformer.h.1.ista.D1", "transformer.ln_f.bias", "lm_head.weight"} <= keys
    assert "transformer.h.0.attn.proj.bias" not in keys  # CRATE-α: bias-free output projection
    crate = tiny("crate_lm_base")
    assert "transformer.h.0.attn.proj.bias" in crate.state_dict() and crate.transformer.h[0].ista.D1 is None
    assert crate.transformer.h[0].ista.D.shape == (32, 32) and not crate.transformer.h[0].residual_sparse_coding
    assert crate.transformer.ln_f.eps == 1e-5 and tiny("crate_alpha_lm_base").transformer.ln_f.eps == 1e-6


HF_KW = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=16)
OUR_KW = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=16)


def hf_gpt2(transformers):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_KW)).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # O(1) logits, so that a wrong transpose or activation shows far above atol
        for name, p in hf.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "ln_" in name and "weight" in name else 0.0))
    return hf


@pytest.mark.parametrize("fmt", ["pth", "save_pretrained"])
def test_hugging_face_gpt2_gives_hugging_face_logits(fmt, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = hf_gpt2(transformers)
    if fmt == "pth":
        path = tmp_path / "pytorch_model.pth"
        torch.save(hf.state_dict(), path)  # lm_head.weight and transformer.wte.weight both present
    else:
        hf.save_pretrained(tmp_path)  # safetensors, the tied lm_head.weight left out
        path = tmp_path / "model.safetensors"
        assert "lm_head.weight" not in read_weights(path)
    assert detect_layout(read_weights(path)) == "gpt2_hf"
    model = vitlab.create_model("gpt2", checkpoint_path=str(path), **OUR_KW).eval()
    idx = torch.randint(0, 97, (3, 16))
    with torch.no_grad():
        expected = hf(idx).logits
        assert expected.abs().max() > 1
        torch.testing.assert_close(model(idx), expected, rtol=0, atol=1e-5)
    assert model.lm_head.weight is model.transformer.wte.weight
    # the registered cfg's route (pretrained=True reads `file` / `url` with file_layout 'gpt2_hf')
    same = vitlab.create_model("gpt2", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **OUR_KW)
    with torch.no_grad():
        torch.testing.assert_close(same.eval()(idx), expected, rtol=0, atol=1e-5)


def test_hugging_face_gpt2model_keys_without_prefix_and_old_buffers():
    transformers = pytest.importorskip("transformers")
    hf = hf_gpt2(transformers)
    bare = dict(hf.transformer.state_dict())  # GPT2Model: no `transformer.`, no lm_head
    assert "wte.weight" in bare and "lm_head.weight" not in bare
    for i in range(2):  # transformers 4.x files carry the causal-mask buffers
        bare[f"h.{i}.attn.bias"] = torch.ones(1, 1, 16, 16).tril()
        bare[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    model = load_checkpoint(vitlab.create_model("gpt2", **OUR_KW).eval(), bare)
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.forward_features(idx), hf.transformer(idx).last_hidden_state,
                                   rtol=0, atol=1e-5)


def test_nanogpt_ckpt_loads(tmp_path):
    source = tiny("gpt2", activation="gelu")
    sd = {"_orig_mod." + k: v for k, v in source.state_dict().items()}  # torch.compile'd model
    ckpt = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "iter_num": 250,
            "best_val_loss": torch.tensor(1.47), "model_args": dict(n_layer=2, n_head=2, n_embd=32, block_size=16,
                                                                   bias=True, vocab_size=50, dropout=0.0),
            "config": {"dataset": "shakespeare_char", "learning_rate": 1e-3}}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    assert detect_layout(read_weights(path)["model"]) == "vitlab"
    model = vitlab.create_model("gpt2", checkpoint_path=str(path), activation="gelu", **TINY).eval()
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), source(idx), rtol=0, atol=0)
    # nanoGPT on PyTorch < 2.0 also saves the causal-mask buffer `attn.bias`
    old = {**source.state_dict(), **{f"transformer.h.{i}.attn.bias": torch.ones(1, 1, 16, 16).tril() for i in
                                     range(2)}}
    assert detect_layout(old) == "nanogpt"
    load_checkpoint(tiny("gpt2", activation="gelu"), {"model": old, "iter_num": 1})


def test_tied_head_may_be_stored_once_and_must_agree():
    source = tiny("crate_alpha_lm_base")
    sd = {k: v.clone() for k, v in source.state_dict().items() if k != "lm_head.weight"}  # safetensors-style
    model = load_checkpoint(tiny("crate_alpha_lm_base"), sd)
    assert torch.equal(model.lm_head.weight, source.lm_head.weight)
    untied = {**sd, "lm_head.weight": torch.zeros_like(sd["transformer.wte.weight"])}
    with pytest.raises(CheckpointMismatchError, match="tied"):
        load_checkpoint(tiny("crate_alpha_lm_base"), untied)


def test_checkpoint_mismatch_is_readable():
    sd = tiny("gpt2").state_dict()
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(tiny("gpt2", vocab_size=60, n_layer=3), sd)
    message = str(err.value)
    assert "transformer.wte.weight: checkpoint (50, 32) vs model (60, 32)" in message
    assert "transformer.h.2.attn.c_attn.weight" in message  # missing layer
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint"):
        load_checkpoint(tiny("crate_lm_base"), sd)  # another family


# ----------------------------------------------------------------------------------------------------------------
# Sizes


PARAMS = {  # total (tied head counted once), and nanoGPT's num_params() (without wpe)
    "gpt2": (124_439_808, 123_653_376),  # nanoGPT / HF: 124,439,808
    "gpt2_medium": (354_823_168, 353_774_592),
    "gpt2_large": (774_030_080, 772_719_360),
    "gpt2_xl": (1_557_611_200, 1_555_972_800),
    "crate_lm_base": (60_665_088, 59_878_656),  # paper: CRATE-B 60M
    "crate_alpha_lm_small": (57_738_752, 57_214_464),  # paper: CRATE-α-S 57M
    "crate_alpha_lm_base": (122_003_712, 121_217_280),  # paper: CRATE-α-B 120M (no natural layout gives 120M)
    "gpt_char_tiny": (804_096, 795_904),  # bias-free, as nanoGPT's train.py: its "0.80M"
    "crate_lm_char_tiny": (813_440, 805_248),
    "crate_alpha_lm_char_tiny": (838_528, 830_336),
}


def formula(model) -> int:
    """(V + T)·d embeddings + per-layer count + ln_f 2d (official_layouts.md, crate_lm.py docstring)."""
    V, T, d, L = model.vocab_size, model.block_size, model.n_embd, model.n_layer
    if isinstance(model, GPT) and model.transformer.ln_f.bias is None:  # bias=False: LayerNorm weights only
        return (V + T) * d + L * (12 * d * d + 2 * d) + d
    per_layer = {GPT: 12 * d * d + 13 * d, CRATELM: 3 * d * d + 5 * d, CRATEAlphaLM: 10 * d * d + 4 * d}[type(model)]
    return (V + T) * d + L * per_layer + 2 * d


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    with torch.device("meta"):
        model = vitlab.create_model(name)
    total, non_embedding = PARAMS[name]
    print(f"{name}: {total:,} parameters ({non_embedding:,} without wpe)")
    assert sum(p.numel() for p in model.parameters()) == formula(model) == model.num_params(False) == total
    assert model.num_params() == non_embedding


def test_paper_sizes_and_equal_tiny_models():
    assert round(PARAMS["gpt2"][0] / 1e6) == 124 and round(PARAMS["crate_lm_base"][1] / 1e6) == 60
    assert round(PARAMS["crate_alpha_lm_small"][1] / 1e6) == 57
    assert abs(PARAMS["crate_alpha_lm_base"][0] / 120e6 - 1) < 0.02
    names = ("gpt_char_tiny", "crate_lm_char_tiny", "crate_alpha_lm_char_tiny")
    tiny_counts = [PARAMS[n][0] for n in names]
    assert max(tiny_counts) / min(tiny_counts) < 1.05  # within 5%: the GPT 804 k, CRATE 813 k, CRATE-α 839 k
    with torch.device("meta"):
        configs = {n: vitlab.create_model(n) for n in names}
    assert [(m.n_layer, m.n_head, m.n_embd, m.vocab_size, m.block_size) for m in configs.values()] == [
        (4, 4, 128, 65, 64), (16, 4, 128, 65, 64), (5, 4, 128, 65, 64)]


# ----------------------------------------------------------------------------------------------------------------
# Generation, context, errors


def test_generate():
    model = tiny("gpt2")
    prompt = torch.randint(0, 50, (2, 5))
    a = model.generate(prompt, 7, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 7, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 12) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    top = model.generate(prompt, 4, top_k=3, generator=torch.Generator().manual_seed(1))
    assert top.shape == (2, 9)
    greedy = model.generate(prompt, 4, temperature=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(4):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, expected)
    assert torch.equal(model.generate(prompt, 4, top_k=1, generator=torch.Generator().manual_seed(5)), greedy)
    long = torch.randint(0, 50, (2, 40))  # longer than block_size 16: each step sees the last 16 tokens
    out = model.generate(long, 3, temperature=0)
    assert out.shape == (2, 43) and torch.equal(out[:, :40], long)
    assert torch.equal(out[:, 40:], model.generate(long[:, -16:], 3, temperature=0)[:, 16:])
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 1, temperature=-1)


@pytest.mark.parametrize("name", FAMILIES)
def test_too_long_input_is_refused_with_both_lengths(name):
    model = tiny(name)
    with pytest.raises(ValueError, match=r"length 17.*block size.*16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_crop_block_size():
    model = tiny("crate_lm_base")
    idx = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        before = model(idx)
        model.crop_block_size(8)
        torch.testing.assert_close(model(idx), before, rtol=0, atol=0)
    assert model.block_size == 8 and model.transformer.wpe.weight.shape == (8, 32)
    with pytest.raises(ValueError, match="block size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="crop_block_size"):
        model.crop_block_size(9)


# ----------------------------------------------------------------------------------------------------------------
# Init, weight decay, registry, mimetic


def test_init_follows_each_family():
    gpt = vitlab.create_model("gpt2", n_layer=8, n_embd=256, n_head=4, vocab_size=500, block_size=64)
    assert abs(gpt.transformer.h[0].attn.c_attn.weight.std().item() - 0.02) < 1e-3
    assert abs(gpt.transformer.h[0].mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 3e-4
    assert gpt.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
    alpha = vitlab.create_model("crate_alpha_lm_small", n_layer=1, n_embd=128, n_head=2, vocab_size=500,
                                block_size=64)
    D = alpha.transformer.h[0].ista.D
    assert D.shape == (128, 512) and 0.9 * (6 / 128) ** 0.5 < D.abs().max() <= (6 / 128) ** 0.5
    assert abs(alpha.transformer.h[0].attn.subspace.weight.std().item() - 0.02) < 2e-3
    for model in (alpha, vitlab.create_model("crate_lm_char_tiny", n_layer=1)):
        assert abs(model.transformer.wte.weight.std().item() - 0.02) < 2e-3
        assert abs(model.transformer.wpe.weight.std().item() - 0.02) < 3e-3


def test_no_weight_decay():
    gpt = tiny("gpt2")
    names = {n for n, _ in gpt.named_parameters()}
    assert gpt.no_weight_decay() == {n for n, p in gpt.named_parameters() if p.ndim < 2}
    assert names - gpt.no_weight_decay() == {"transformer.wte.weight", "transformer.wpe.weight"} | {
        f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                    "mlp.c_proj")}
    alpha = tiny("crate_alpha_lm_base")
    decayed = {n for n, _ in alpha.named_parameters()} - alpha.no_weight_decay()
    assert decayed == {"transformer.wte.weight", "transformer.wpe.weight"} | {
        f"transformer.h.{i}.attn.{m}.weight" for i in range(2) for m in ("subspace", "proj")}
    crate = tiny("crate_lm_base")
    assert "transformer.h.0.ista.D" not in crate.no_weight_decay()


def test_registry():
    assert set(vitlab.list_models("gpt*")) == {"gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl", "gpt_char_tiny"}
    assert set(vitlab.list_models("crate_alpha_lm*")) == {"crate_alpha_lm_small", "crate_alpha_lm_base",
                                                          "crate_alpha_lm_char_tiny"}
    assert set(vitlab.list_models("crate_lm*")) == {"crate_lm_base", "crate_lm_char_tiny"}
    lm = set(vitlab.list_models(["gpt*", "*_lm_*"]))
    aliases = set(vitlab.list_models(include_aliases=True)) - set(vitlab.list_models())
    assert not aliases & lm and not any(a.startswith(("gpt", "crate_lm", "crate_alpha_lm")) for a in aliases)
    model = vitlab.create_model("crate_alpha_lm_char_tiny", vocab_size=80, block_size=32)
    assert isinstance(model, CRATEAlphaLM) and model.transformer.wpe.weight.shape == (32, 128)
    cfg = model.pretrained_cfg
    assert cfg["task"] == "lm" and cfg["architecture"] == "crate_alpha_lm_char_tiny"
    assert (cfg["vocab_size"], cfg["block_size"]) == (80, 32)
    assert vitlab.get_pretrained_cfg("gpt2")["file_layout"] == "gpt2_hf"
    ablated = vitlab.create_model("crate_alpha_lm_small", overcomplete_ratio=1, decoupled_dictionary=False,
                                  residual_sparse_coding=False, **TINY)
    assert ablated.transformer.h[0].ista.D.shape == (32, 32) and ablated.transformer.h[0].ista.D1 is None
    with pytest.raises(ValueError, match="no pretrained weights"):
        vitlab.create_model("crate_lm_char_tiny", pretrained=True)


def test_mimetic_init_signs_on_gpt():
    model = vitlab.create_model("gpt_char_tiny", n_layer=2)
    assert vitlab.mimetic_init_(model, sign_qk=-1, sign_vo=+1, seed=0) == 2
    for layer in weight_products(model):
        assert layer.layout == "fused c_attn" and layer.qk.shape == (4, 128, 128)
        assert torch.all(layer.qk_diag < 0) and layer.vo_diag > 0
    model = vitlab.create_model("gpt_char_tiny", n_layer=2, init="mimetic", init_kwargs=dict(seed=0))
    for layer in weight_products(model):
        assert torch.all(layer.qk_diag > 0) and layer.vo_diag < 0
    # by hand, from the nanoGPT layout: c_attn rows q | k | v, head-major; W_q⁽ʰ⁾ W_k⁽ʰ⁾ᵀ = q_hᵀ k_h
    W = model.transformer.h[0].attn.c_attn.weight.detach()  # (3d, d)
    q, k = W[:128], W[128:256]
    assert (q[:32].T @ k[:32]).diagonal().mean() > 0.2


@pytest.mark.parametrize("name", ["crate_lm_char_tiny", "crate_alpha_lm_char_tiny"])
def test_mimetic_init_on_crate_lms(name):
    model = vitlab.create_model(name, n_layer=2)
    assert vitlab.mimetic_init_(model, seed=0) == 2
    for layer in weight_products(model):
        assert layer.tied and torch.all(layer.qk_diag > 0.2)
    with pytest.raises(ValueError, match="sign_qk=-1 is impossible"):
        vitlab.mimetic_init_(model, sign_qk=-1, seed=0)
