"""The timm >= 1.0 model contract over the whole registry, at tiny sizes: stochastic depth and head dropout, the
dynamic_img_size flag and non-square img_size, features_only, default_cfg, list_models(pretrained=True), stem
channel adaptation at load time, the language models' (logits, loss) and classifier methods, and profile() on
every family, group_matcher (layer-wise lr decay) and set_grad_checkpointing."""
import re

import pytest
import torch

import vitlab
from vitlab.convert import adapt_input_conv
from vitlab.models import create_model, get_pretrained_cfg, list_models
from vitlab.models._layers import DropPath, drop_path_rates
from vitlab.models._registry import _MODELS
from vitlab.train.optim import layer_ids

TINY = dict(embed_dim=32, depth=2, num_heads=2)
IMAGE_MODELS = [n for n in list_models() if get_pretrained_cfg(n).get("task") not in ("lm", "clip")]
LM_MODELS = [n for n in list_models() if get_pretrained_cfg(n).get("task") == "lm"]
TINY_LM = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=50, block_size=16)


def tiny_image_model(name, **kwargs):
    patch = _MODELS[name].keywords.get("patch_size", 16)
    return create_model(name, img_size=2 * patch, **{**TINY, **kwargs})


def images(model, batch=2, seed=0):
    embed = model.patch_embed
    return torch.randn(batch, embed.in_chans, *embed.img_hw, generator=torch.Generator().manual_seed(seed))


# -- 1. drop_path_rate / drop_rate -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_drop_rates_leave_eval_and_default_unchanged(name):
    torch.manual_seed(0)
    plain = tiny_image_model(name)
    torch.manual_seed(0)
    regular = tiny_image_model(name, drop_path_rate=0.3, drop_rate=0.5)
    assert plain.state_dict().keys() == regular.state_dict().keys()
    regular.load_state_dict(plain.state_dict())
    x = images(plain)
    torch.testing.assert_close(regular.eval()(x), plain.eval()(x), rtol=0, atol=0)  # eval: identity
    plain.train()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain.eval()(x), rtol=0, atol=0)  # default 0: training = eval
        regular.train()
        assert not torch.equal(regular(x), plain(x))  # the rates act in training
    rates = [b.drop_path1.drop_prob for b in regular.blocks]
    assert rates == pytest.approx([0.0, 0.3])  # linear 0 → rate
    assert regular.head_drop.p == 0.5


def test_drop_path_schedule_and_expectation():
    assert drop_path_rates(0.1, 5) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert drop_path_rates(0.2, 1) == [0.0]
    with pytest.raises(ValueError, match="drop_path_rate"):
        drop_path_rates(1.0, 3)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(20000, 1, 4))
    kept = (out[:, 0, 0] != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.02 and torch.allclose(out[out != 0], torch.tensor(1 / 0.75))
    assert out.eq(out[:, :1]).all()  # one draw per sample


def test_crate_drops_only_residual_branches():
    crate = create_model("crate_tiny_patch4_32", drop_path_rate=0.2, **TINY)
    alpha = create_model("crate_alpha_tiny_patch4_32", drop_path_rate=0.2, **TINY)
    assert isinstance(crate.blocks[1].drop_path1, DropPath)
    assert isinstance(crate.blocks[1].drop_path2, torch.nn.Identity)  # ISTA replaces the stream: never dropped
    assert alpha.blocks[1].drop_path2.drop_prob == pytest.approx(0.2)


# -- 2. dynamic_img_size and non-square img_size -----------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_dynamic_img_size_flag(name):
    dynamic = tiny_image_model(name).eval()
    strict = tiny_image_model(name, dynamic_img_size=False).eval()
    strict.load_state_dict(dynamic.state_dict())
    P = dynamic.patch_embed.patch_size
    bigger = torch.randn(1, 3, 3 * P, 4 * P)
    assert dynamic(bigger).shape == (1, dynamic.num_classes)
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        strict(bigger)
    x = images(dynamic, 1)
    torch.testing.assert_close(strict(x), dynamic(x))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "crate_tiny_patch16_224", "crate_alpha_tiny_patch16_224",
                                  "vit_tiny_patch2_32"])
def test_non_square_img_size(name):
    model = create_model(name, img_size=(32, 64), **TINY).eval()
    P = model.patch_embed.patch_size
    assert model.pretrained_cfg["input_size"] == (3, 32, 64)
    assert model.pos_embed.shape == (1, 1 + (32 // P) * (64 // P), 32)
    assert model(torch.randn(2, 3, 32, 64)).shape == (2, model.num_classes)
    maps = model.forward_intermediates(torch.randn(1, 3, 32, 64), intermediates_only=True)
    assert maps[-1].shape == (1, 32, 32 // P, 64 // P)
    with pytest.raises(ValueError, match="img_size"):
        create_model(name, img_size=(32, 33), **TINY)


def test_non_square_dynamic_matches_resampled_table():
    """A (32, 64) input to a square model equals a non-square model built with the resampled table."""
    square = create_model("vit_tiny_patch16_224", img_size=32, **TINY).eval()
    wide = create_model("vit_tiny_patch16_224", img_size=(32, 64), **TINY).eval()
    state = square.state_dict()
    state["pos_embed"] = square._position_table((2, 4)).detach()
    wide.load_state_dict(state)
    x = torch.randn(2, 3, 32, 64)
    torch.testing.assert_close(wide(x), square(x))


# -- 3. features_only ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_features_only(name):
    torch.manual_seed(0)
    model = tiny_image_model(name, depth=4).eval()
    torch.manual_seed(0)
    features = tiny_image_model(name, depth=4, features_only=True).eval()
    P = model.patch_embed.patch_size
    x = images(model)
    maps = features(x)
    assert len(maps) == 3  # timm's ViT default: the last three blocks
    assert features.out_indices == (1, 2, 3)
    assert features.feature_info.channels() == [32] * 3 and features.feature_info.reduction() == [P] * 3
    assert all(m.shape == (2, 32, 2, 2) for m in maps)
    expected = model.forward_intermediates(x, indices=3, intermediates_only=True)
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want)
    assert len(features.model.blocks) == 4 and isinstance(features.model.head, torch.nn.Identity)


def test_features_only_out_indices_and_errors():
    features = create_model("vit_tiny_patch4_32", features_only=True, out_indices=(0, -2), depth=4,
                            embed_dim=32, num_heads=2)
    assert features.out_indices == (0, 2) and len(features.model.blocks) == 3
    assert features.feature_info.module_name() == ["blocks.0", "blocks.2"]
    assert [m.shape for m in features(torch.randn(1, 3, 32, 64))] == [(1, 32, 8, 16)] * 2
    with pytest.raises(ValueError, match="features_only"):
        create_model("vit_tiny_patch4_32", out_indices=2)
    with pytest.raises(ValueError, match="image model"):
        create_model("gpt_char_tiny", features_only=True)


# -- 4. default_cfg and list_models(pretrained=True) -----------------------------------------------------------------
def test_default_cfg_and_pretrained_listing():
    model = create_model("vit_tiny_patch4_32", depth=1)
    assert model.default_cfg is model.pretrained_cfg
    with_weights = list_models(pretrained=True)
    assert with_weights and set(with_weights) <= set(list_models())
    for name in list_models():
        cfg = get_pretrained_cfg(name)
        assert (name in with_weights) == bool(cfg.get("url") or cfg.get("file"))
    assert "crate_alpha_base_patch16_224" in with_weights and "vit_tiny_patch4_32" not in with_weights
    assert list_models("gpt2*", pretrained=True) == ["gpt2", "gpt2_large", "gpt2_medium", "gpt2_xl"]


# -- 5. stem input channels at load time ---------------------------------------------------------------------------
def test_adapt_input_conv_rules():
    kernel = torch.randn(8, 3, 4, 4)
    assert torch.allclose(adapt_input_conv(1, kernel), kernel.sum(1, keepdim=True))
    four = adapt_input_conv(4, kernel)
    assert torch.allclose(four, torch.cat([kernel, kernel[:, :1]], 1) * 0.75)
    one = kernel[:, :1]
    assert torch.allclose(adapt_input_conv(3, one), one.repeat(1, 3, 1, 1) / 3)
    assert adapt_input_conv(3, kernel) is kernel


@pytest.mark.parametrize("name", ["vit_tiny_patch4_32", "crate_alpha_tiny_patch4_32"])
@pytest.mark.parametrize("source, target", [(1, 3), (3, 1)])
def test_checkpoint_loads_across_in_chans(tmp_path, name, source, target):
    src = create_model(name, in_chans=source, **TINY).eval()
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    dst = create_model(name, in_chans=target, checkpoint_path=str(path), **TINY).eval()
    gray = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(dst(gray.expand(-1, target, -1, -1)), src(gray.expand(-1, source, -1, -1)),
                               rtol=1e-4, atol=1e-5)


def test_checkpoint_loads_across_patch_size_and_in_chans(tmp_path):
    from safetensors.torch import save_file

    src = create_model("crate_alpha_tiny_patch4_32", **TINY)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    dst = create_model("crate_alpha_tiny_patch4_32", patch_size=8, in_chans=1, checkpoint_path=str(path), **TINY)
    assert dst.patch_embed.proj.weight.shape == (32, 1, 8, 8) and dst.pos_embed.shape == (1, 17, 32)
    wide = create_model("crate_alpha_tiny_patch4_32", img_size=(32, 64), checkpoint_path=str(path), **TINY).eval()
    torch.testing.assert_close(wide.pos_embed, src._position_table((8, 16)))  # resampled to the 8 × 16 grid


# -- 6. language models ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LM_MODELS)
def test_lm_targets_loss_and_classifier(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY_LM).eval()
    idx = torch.randint(0, 50, (2, 8))
    targets = torch.randint(0, 50, (2, 8))
    logits = model(idx)
    assert logits.shape == (2, 8, 50)
    same, loss = model(idx, targets)
    torch.testing.assert_close(same, logits)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1)))
    targets[:, :4] = -1  # ignored positions (nanoGPT's ignore_index)
    _, partial = model(idx, targets)
    torch.testing.assert_close(partial, torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 50),
                                                                          targets[:, 4:].reshape(-1)))
    with pytest.raises(ValueError, match="targets"):
        model(idx, targets[:, :4])
    assert model.get_classifier() is model.lm_head
    torch.testing.assert_close(model.forward_head(model.forward_features(idx)), logits)
    assert model.forward_head(model.forward_features(idx), pre_logits=True).shape == (2, 8, 32)
    old = model.lm_head.weight.detach().clone()
    model.reset_classifier(60)
    assert model.vocab_size == 60 and model.lm_head.weight.shape == (60, 32)
    assert model.transformer.wte.weight is model.lm_head.weight  # still tied
    torch.testing.assert_close(model.lm_head.weight[:50].detach(), old)
    assert model(torch.randint(0, 60, (1, 4))).shape == (1, 4, 60)


# -- 7. profile over every family -----------------------------------------------------------------------------------
def _tiny_registered(name):
    task = get_pretrained_cfg(name).get("task")
    if task == "lm":
        return create_model(name, **TINY_LM)
    if name == "clip":
        return create_model(name, image_model="vit_tiny_patch4_32", embed_dim=16, image_kwargs=TINY,
                            text_kwargs=dict(width=32, layers=1, heads=2, vocab_size=40, context_length=8))
    if task == "clip":
        return create_model(name, embed_dim=16, image_kwargs=dict(img_size=28, **TINY),
                            text_kwargs=dict(width=32, layers=1, heads=2, vocab_size=40, context_length=8))
    return tiny_image_model(name, depth=1)


def _family(name):
    cfg = get_pretrained_cfg(name)
    model_fn = _MODELS[name]
    return cfg.get("task", "image"), getattr(model_fn, "func", model_fn).__name__


_FAMILIES = {}
for _name in list_models():
    _FAMILIES.setdefault(_family(_name), _name)


@pytest.mark.parametrize("name", sorted(_FAMILIES.values()))
def test_profile_every_family(name):
    model = _tiny_registered(name)
    report = vitlab.profile(model, batch_size=2, warmup=0, iters=1)
    assert report.forward_flops > 0 and report.train_flops > report.forward_flops
    assert report.infer_images_per_s > 0 and report.train_images_per_s > 0
    task = get_pretrained_cfg(name).get("task")
    assert report.unit == {"lm": "sequence", "clip": "image-text pair"}.get(task, "image")
    if task == "lm":
        assert report.input_size == (16,)


# -- 8. group_matcher and set_grad_checkpointing ------------------------------------------------------------------
STEM = ("cls_token", "pos_embed", "patch_embed")


def expected_layer(name, depth):
    """timm's ViT grouping written out by name: the stem is 0, blocks.i is i + 1, the rest (final norm, head) last."""
    block = re.match(r"blocks\.(\d+)\.", name)
    return int(block.group(1)) + 1 if block else 0 if name.split(".")[0] in STEM else depth + 1


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_group_matcher_assigns_every_parameter_one_layer(name):
    depth = 3
    model = tiny_image_model(name, depth=depth)
    names = [n for n, _ in model.named_parameters()]
    ids = layer_ids(model)  # what layer-wise lr decay uses
    assert list(ids) == names
    assert ids == {n: expected_layer(n, depth) for n in names}
    assert sorted(set(ids.values())) == list(range(depth + 2))  # stem, every block in order, the final group
    for coarse in (False, True):
        matcher = model.group_matcher(coarse=coarse)
        assert list(matcher) == ["stem", "blocks"] and isinstance(matcher["stem"], str)
        blocks = matcher["blocks"]
        specs = [(blocks, None)] if isinstance(blocks, str) else blocks  # timm: a regex or (regex, suffix) pairs
        assert all(isinstance(p, str) and (s is None or isinstance(s, tuple)) for p, s in specs)
        block_regex = specs[0][0]
        for n in names:
            in_stem, in_block = re.match(matcher["stem"], n), re.match(block_regex, n)
            assert not (in_stem and in_block), n  # never claimed by two groups
            assert bool(in_stem) == (expected_layer(n, depth) == 0), n
            assert (int(in_block.group(1)) + 1 if in_block else None) == (
                expected_layer(n, depth) if n.startswith("blocks.") else None), n


def loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    outputs = out if isinstance(out, tuple) else (out,)  # CLIP: (image features, text features, scale)
    sum(y.float().square().mean() for y in outputs).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_checkpointing_changes_nothing(model, inputs, blocks):
    """Training-mode forward and backward with and without `set_grad_checkpointing(True)`: the same outputs and
    gradients, and every block in `blocks` really recomputed (it runs twice per step)."""
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
    model.train()
    out, grads = loss_and_grads(model, inputs)
    assert calls == [1] * len(blocks)
    model.set_grad_checkpointing(True)
    out_ckpt, grads_ckpt = loss_and_grads(model, inputs)
    assert calls == [3] * len(blocks)  # each block ran again in backward: checkpointing is really on
    torch.testing.assert_close(out_ckpt, out, rtol=1e-6, atol=1e-7)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    torch.testing.assert_close(grads_ckpt, grads, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_grad_checkpointing_image_models(name):
    torch.manual_seed(0)
    model = tiny_image_model(name, drop_path_rate=0.0, drop_rate=0.0)
    assert_checkpointing_changes_nothing(model, (images(model),), model.get_blocks())


@pytest.mark.parametrize("name", LM_MODELS)
def test_grad_checkpointing_language_models(name):
    torch.manual_seed(0)
    model = create_model(name, dropout=0.0, **TINY_LM)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    assert_checkpointing_changes_nothing(model, (idx,), model.get_blocks())


def test_grad_checkpointing_clip_both_towers():
    torch.manual_seed(0)
    model = _tiny_registered("clip")
    text = torch.randint(1, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    blocks = [*model.visual.get_blocks(), *model.text.transformer.resblocks]
    assert_checkpointing_changes_nothing(model, (images(model.visual), text), blocks)


# -- parity with timm itself ------------------------------------------------------------------------------------------
def test_drop_path_schedule_and_head_drop_equal_timm():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("vit_tiny_patch16_224", depth=5, drop_path_rate=0.2, drop_rate=0.3)
    model = create_model("vit_tiny_patch16_224", depth=5, drop_path_rate=0.2, drop_rate=0.3)
    theirs = [getattr(b.drop_path1, "drop_prob", 0.0) for b in reference.blocks]  # timm: Identity at rate 0
    assert [b.drop_path1.drop_prob for b in model.blocks] == pytest.approx(theirs)
    assert [b.drop_path2.drop_prob for b in model.blocks] == pytest.approx(theirs)
    assert model.head_drop.p == reference.head_drop.p == 0.3
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_non_square_img_size_and_features_only_equal_timm():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("vit_tiny_patch16_224", depth=3, img_size=(32, 64)).eval()
    model = create_model("vit_tiny_patch16_224", depth=3, img_size=(32, 64)).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 64)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    ref_features = timm.create_model("vit_tiny_patch16_224", depth=3, img_size=(32, 64), features_only=True).eval()
    features = create_model("vit_tiny_patch16_224", depth=3, img_size=(32, 64), features_only=True).eval()
    assert features.feature_info.channels() == ref_features.feature_info.channels()
    assert features.feature_info.reduction() == ref_features.feature_info.reduction()
    features.model.load_state_dict(ref_features.model.state_dict())
    for ours, theirs in zip(features(x), ref_features(x), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_adapt_input_conv_equals_timm():
    timm = pytest.importorskip("timm")
    from timm.models import adapt_input_conv as timm_adapt

    kernel = torch.randn(8, 3, 4, 4)
    for in_chans in (1, 2, 4, 7):
        torch.testing.assert_close(adapt_input_conv(in_chans, kernel), timm_adapt(in_chans, kernel.clone()))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "crate_tiny_patch16_224", "crate_alpha_tiny_patch16_224"])
def test_group_matcher_groups_as_timm(name):
    """timm's own group_parameters on our group_matcher: the ViT's groups equal timm's ViT's, fine and coarse, and
    every family's equal layer_ids' but for the final norm: its `(99999,)` suffix is timm's MATCH_PREV_GROUP, so timm
    puts it with the last block (L), where layer_ids, as BEiT and MAE, puts it with the head (L + 1)."""
    timm = pytest.importorskip("timm")
    from timm.models import group_parameters

    depth = 3
    model = create_model(name, depth=depth)
    expected = {n: depth if n.startswith("norm.") else i for n, i in layer_ids(model).items()}
    for coarse in (False, True):
        theirs = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        assert theirs == expected
        if name.startswith("vit_"):
            reference = timm.create_model(name, depth=depth)
            assert theirs == group_parameters(reference, reference.group_matcher(coarse=coarse), reverse=True)
