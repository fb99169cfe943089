"""timm's dense-feature contract on every image model: forward_intermediates, prune_intermediate_layers, inputs of
any patch multiple (position tables rebuilt per grid and cached outside autograd)."""
import pytest
import torch

import vitlab
from vitlab.models._base import feature_take_indices

IMAGE_MODELS = [n for n in vitlab.list_models() if vitlab.get_pretrained_cfg(n).get("task") not in ("lm", "clip")]


def tiny(name: str, **extra):
    with torch.device("meta"):
        patch = vitlab.create_model(name).patch_embed.patch_size
    return vitlab.create_model(name, embed_dim=32, depth=3, num_heads=2, num_classes=5, img_size=2 * patch,
                               **extra).eval()


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_model_has_timm_dense_features(name):
    model = tiny(name)
    P = model.patch_embed.patch_size
    x = torch.randn(2, 3, 2 * P, 3 * P)  # not the native grid: positions are rebuilt for 2 × 3
    final, maps = model.forward_intermediates(x, indices=[0, -1])
    assert final.shape == (2, 1 + 6, 32) and [m.shape for m in maps] == [(2, 32, 2, 3)] * 2
    tokens = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True, norm=True)
    assert len(tokens) == 2 and tokens[0].shape == (2, 6, 32)
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), model.forward_intermediates(
        x, indices=[2], output_fmt="NLC", intermediates_only=True)[0])
    native = torch.randn(2, 3, 2 * P, 2 * P)
    _, (last,) = model.forward_intermediates(native, indices=1, norm=True, output_fmt="NLC")
    torch.testing.assert_close(last, model.forward_features(native)[:, 1:])  # token-pool models norm every token
    assert model.forward_intermediates(native, indices=[1], stop_early=True, intermediates_only=True)[0].shape \
        == (2, 32, 2, 2)


def test_forward_intermediates_equal_timm():
    timm = pytest.importorskip("timm")
    reference = timm.create_model("vit_tiny_patch16_224", depth=4, img_size=64, dynamic_img_size=True).eval()
    model = vitlab.create_model("vit_tiny_patch16_224", depth=4, img_size=64).eval()
    model.load_state_dict(reference.state_dict())
    for size in ((64, 64), (96, 128)):  # native grid, then a resampled learned table (bicubic + antialias, as timm)
        x = torch.randn(2, 3, *size)
        for kwargs in (dict(indices=[1, 3]), dict(indices=2, norm=True, output_fmt="NLC"),
                       dict(indices=None, return_prefix_tokens=True)):
            ours, theirs = model.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
            flat = lambda items: [t for item in items for t in (item if isinstance(item, tuple) else (item,))]
            for a, b in zip(flat(ours[1]), flat(theirs[1]), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    pruned_ours, pruned_theirs = model.prune_intermediate_layers([1]), reference.prune_intermediate_layers([1])
    assert pruned_ours == pruned_theirs == [1]
    assert len(model.blocks) == len(reference.blocks) == 2 and model.num_classes == reference.num_classes == 0
    assert model.feature_info == [dict(num_chs=192, reduction=16, module=f"blocks.{i}") for i in range(2)]


def test_take_indices_follow_timm():
    assert feature_take_indices(12, None) == (list(range(12)), 11)
    assert feature_take_indices(12, 4) == ([8, 9, 10, 11], 11)
    assert feature_take_indices(12, [3, 5, -1]) == ([3, 5, 11], 11)
    for bad in (0, 13, [12], [-13], []):
        with pytest.raises(ValueError, match="out of range|1 <= n|empty"):
            feature_take_indices(12, bad)


def test_sincos_positions_are_computed_for_the_grid():
    model = vitlab.create_model("vit_tiny_patch4_32", depth=1).eval()  # 8 × 8 native grid
    with torch.no_grad():
        table = model._position_table((8, 8))
        assert table is model.pos_embed
        wide = model._position_table((8, 12))
    from vitlab.models._layers import sincos_2d_position_embedding
    torch.testing.assert_close(wide[0, 1:], sincos_2d_position_embedding((8, 12), 192))
    # rows 0..7 at column c of the wider grid are the native table's entries at column c (same row/col codes)
    torch.testing.assert_close(wide[0, 1:].reshape(8, 12, -1)[:, :8], model.pos_embed[0, 1:].reshape(8, 8, -1))


def test_learned_position_table_follows_the_weights():
    model = vitlab.create_model("crate_alpha_tiny_patch16_224", depth=1, img_size=32).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        before = model.forward_features(x)
        model.pos_embed.mul_(2)  # an in-place update (an optimiser step, a weight load)
        after = model.forward_features(x)
    assert not torch.allclose(before, after)
    model.train()
    out = model.forward_features(x).sum()
    out.backward()  # in training the resampled table is part of the graph
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def _fresh_copy_output(model, x):
    """The output of a newly built model with `model`'s current weights (nothing carried over but the weights)."""
    fresh = vitlab.create_model("vit_tiny_patch4_32", depth=1, num_classes=3, pos_embed="learn").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        return fresh(x)


@pytest.mark.parametrize("update", ["fused_adamw", "foreach_adamw", "data_copy", "load_state_dict"])
def test_other_grid_after_an_in_place_update_equals_a_fresh_model(update):
    """Issue 23 point 1: an evaluation at another grid, then an update of the position table that does not bump
    its version counter (torch's fused CPU AdamW, `.data` writes), then an evaluation at that grid again: the
    output must be that of a freshly built model with the same weights, not one from a stale resampled table."""
    torch.manual_seed(0)
    # a learned table at an 8 × 8 grid
    model = vitlab.create_model("vit_tiny_patch4_32", depth=1, num_classes=3, pos_embed="learn").eval()
    x = torch.randn(2, 3, 48, 48)  # a 12 × 12 grid: the table is resampled
    with torch.no_grad():
        model(x)
    if update in ("fused_adamw", "foreach_adamw"):
        optimiser = torch.optim.AdamW(model.parameters(), lr=0.1, **{update.split("_")[0]: True})
        model.train()
        model(torch.randn(2, 3, 32, 32)).sum().backward()  # a training step at the native grid
        optimiser.step()
        model.eval()
    elif update == "data_copy":
        model.pos_embed.data.copy_(torch.randn_like(model.pos_embed))
    else:
        state = model.state_dict()
        state["pos_embed"] = torch.randn_like(state["pos_embed"])
        model.load_state_dict(state)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, _fresh_copy_output(model, x), rtol=0, atol=0)


def test_input_not_a_patch_multiple_is_a_clear_error():
    model = vitlab.create_model("vit_tiny_patch4_32", depth=1)
    with pytest.raises(ValueError, match="30×32 is not a multiple of the patch size 4"):
        model(torch.randn(1, 3, 30, 32))
