"""Attention maps, rollout, patch features and their PCA picture (vitlab.interpret.attention), and the emergent
segmentation built on them (vitlab.interpret.segment): mass thresholding, MaskCut, Fashion-MNIST ground truth, mIoU.

Every expected value is written out by hand or computed independently of the code under test (model internals by
hand, matrices by hand, masks drawn by hand); the end-to-end cases use settings whose answer is known."""
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.interpret import segment
from vitlab.interpret.attention import (attention_rollout, cls_attention, grid_shape, patch_features, pca_rgb,
                                        record_attention)
from vitlab.interpret.segment import (SegmentationScores, attention_scores, evaluate_segmentation,
                                      fashion_mnist_foreground, maskcut, mass_threshold, segmentation_scores,
                                      unsupervised_masks, upsample_mask)

FAMILIES = ["vit_tiny_patch4_32", "crate_tiny_patch4_32", "crate_alpha_tiny_patch4_32"]
TINY = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=3)  # 4×4 grid, N = 17


def tiny(name: str, **kwargs) -> torch.nn.Module:
    return vitlab.create_model(name, **{**TINY, **kwargs})


def images(batch: int = 2, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, 16, 16)


# ----------------------------------------------------------------------------------------------------------------
# Recorded attention and the class-token maps
@pytest.mark.parametrize("name", FAMILIES)
def test_record_attention_is_row_stochastic_and_keeps_the_training_flag(name):
    model = tiny(name).train()
    attn = record_attention(model, images(3))
    assert attn.shape == (3, 2, 2, 17, 17) and attn.dtype == torch.float32
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, 2, 17))
    assert model.training  # put back in training mode
    assert grid_shape(model) == (4, 4)


@pytest.mark.parametrize("name", ["vit_tiny_patch4_32", "crate_tiny_patch4_32"])
@torch.no_grad()
def test_record_attention_of_the_first_block_by_hand(name):
    model = tiny(name).eval()
    x = images(2)
    z = model.blocks[0].norm1(model._embed(x))  # (B, N, d)
    attn = model.blocks[0].attn
    d, H, dh = 24, 2, 12
    if name.startswith("vit"):
        W, b = attn.qkv.weight, attn.qkv.bias  # rows q | k, head-major
        q, k = z @ W[:d].T + b[:d], z @ W[d:2 * d].T + b[d:2 * d]
    else:
        q = k = z @ attn.subspace.weight.T  # CRATE: q = k = v = U z
    q, k = (t.reshape(2, 17, H, dh).transpose(1, 2) for t in (q, k))  # (B, H, N, dh)
    expected = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)
    torch.testing.assert_close(record_attention(model, x)[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_maps_need_a_vitlab_image_model():
    seq = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="patch_embed"):
        grid_shape(seq)
    with pytest.raises(TypeError, match="forward_attention"):
        record_attention(seq, images(1))


@pytest.mark.parametrize("name", FAMILIES)
def test_cls_attention_is_the_class_row_over_the_patches(name):
    attn = record_attention(tiny(name), images(2))
    maps = cls_attention(attn, (4, 4))
    assert maps.shape == (2, 2, 2, 4, 4)
    torch.testing.assert_close(maps, attn[..., 0, 1:].reshape(2, 2, 2, 4, 4))
    assert (maps >= 0).all() and (maps <= 1).all()
    sums = maps.sum((-1, -2))
    assert (sums <= 1 + 1e-6).all()
    torch.testing.assert_close(sums, 1 - attn[..., 0, 0])  # the rest is the class token's weight on itself


def test_cls_attention_is_row_major_on_a_rectangular_grid():
    attn = torch.zeros(1, 1, 1, 7, 7)  # class token + a 2×3 grid
    attn[..., 0, :] = torch.tensor([0.3, 0.0, 0.1, 0.0, 0.0, 0.0, 0.6])  # patch 1 = (0, 1), patch 5 = (1, 2)
    maps = cls_attention(attn, (2, 3))
    expected = torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.0, 0.6]])
    torch.testing.assert_close(maps[0, 0, 0], expected)
    with pytest.raises(ValueError, match="does not fit"):
        cls_attention(attn, (3, 3))
    with pytest.raises(ValueError, match="class token"):
        cls_attention(torch.zeros(1, 1, 1, 6, 6), (2, 3), num_prefix_tokens=0)
    with pytest.raises(ValueError, match="layers, heads"):
        cls_attention(torch.zeros(1, 7, 7), (2, 3))


# ----------------------------------------------------------------------------------------------------------------
# Attention rollout
@pytest.mark.parametrize("name", FAMILIES)
def test_rollout_of_a_model_is_a_sub_distribution_over_the_patches(name):
    attn = record_attention(tiny(name), images(3))
    for fusion in ("mean", "max", "min"):
        rollout = attention_rollout(attn, (4, 4), head_fusion=fusion)
        assert rollout.shape == (3, 4, 4) and rollout.dtype == torch.float32
        assert (rollout >= 0).all()
        assert (rollout.sum((-1, -2)) <= 1 + 1e-6).all()
        assert (rollout.sum((-1, -2)) > 0).all()
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(attn, (4, 4), head_fusion="median")


def _two_layer_attention() -> torch.Tensor:
    """(2, 2 layers, 2 heads, 3, 3): class token + 2 patches on a 1×2 grid. Batch item 1 is the identity."""
    layer1_head_a = [[0.4, 0.6, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    layer1_head_b = [[0.0, 0.6, 0.4], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # head mean [[.2,.6,.2],[0,1,0],[.5,0,.5]]
    layer2 = [[0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]  # both heads
    first = torch.tensor([[layer1_head_a, layer1_head_b], [layer2, layer2]])  # (L, H, 3, 3)
    second = torch.eye(3).expand(2, 2, 3, 3)
    return torch.stack([first, second])


def test_rollout_by_hand_on_three_tokens():
    attn = _two_layer_attention()
    # mean fusion, residual: Â = ½A + ½I
    #   Â1 = [[.6, .3, .1], [0, 1, 0], [.25, 0, .75]],  Â2 = [[.75, 0, .25], [0, .75, .25], [.5, 0, .5]]
    #   class row of Â2 Â1 = .75·[.6, .3, .1] + .25·[.25, 0, .75] = [.5125, .225, .2625]
    #   (the other order, Â1 Â2, would give patches [.225, .275])
    torch.testing.assert_close(attention_rollout(attn, (1, 2)),
                               torch.tensor([[[0.225, 0.2625]], [[0.0, 0.0]]]))
    # no residual: class row of A2 A1 = .5·[.2, .6, .2] + .5·[.5, 0, .5] = [.35, .3, .35]
    torch.testing.assert_close(attention_rollout(attn, (1, 2), residual=False),
                               torch.tensor([[[0.3, 0.35]], [[0.0, 0.0]]]))
    # max fusion, rows renormalised: layer 1 max = [[.4, .6, .4], [0, 1, 0], [1, 0, 1]], ½A + ½I has row sums
    #   1.2, 1, 1.5 → Â1 = [[7/12, 3/12, 2/12], [0, 1, 0], [1/3, 0, 2/3]];  Â2 as above
    #   class row patches: .75·[3/12, 2/12] + .25·[0, 2/3] = [3/16, 7/24]
    expected = [float(Fraction(3, 16)), float(Fraction(7, 24))]
    torch.testing.assert_close(attention_rollout(attn, (1, 2), head_fusion="max")[0, 0], torch.tensor(expected))


def test_rollout_of_identity_attention_puts_no_weight_on_patches():
    attn = torch.eye(17).expand(2, 3, 2, 17, 17).clone()
    for residual in (True, False):
        rollout = attention_rollout(attn, (4, 4), residual=residual)
        assert rollout.shape == (2, 4, 4)
        assert torch.equal(rollout, torch.zeros(2, 4, 4))


# ----------------------------------------------------------------------------------------------------------------
# Patch features
@pytest.mark.parametrize("name", FAMILIES)
@torch.no_grad()
def test_patch_features_shapes_and_tokens_by_hand(name):
    model = tiny(name).eval()
    x = images(2)
    tokens = model._embed(x)
    after_first = model.blocks[0](tokens)
    after_last = model.blocks(tokens)
    for layer, expected in ((0, after_first), (1, after_last), (-1, after_last), (-2, after_first)):
        out = patch_features(model, x, layer=layer, kind="tokens")
        assert out.shape == (2, 16, 24)
        torch.testing.assert_close(out, expected[:, 1:])  # the class token is left out
    # keys of block 1, by hand from that block's input, heads concatenated head-major (H·dh = 24)
    block = model.blocks[1]
    z = block.norm1(after_first)
    if name.startswith("vit"):
        keys = z @ block.attn.qkv.weight[24:48].T + block.attn.qkv.bias[24:48]
    else:
        keys = z @ block.attn.subspace.weight.T
    out = patch_features(model, x, layer=-1, kind="keys")
    assert out.shape == (2, 16, 24)
    torch.testing.assert_close(out, keys[:, 1:])
    assert patch_features(model, x, layer=0, kind="keys").shape == (2, 16, 24)
    assert not torch.allclose(patch_features(model, x, layer=0, kind="keys"), out)


def test_keys_width_is_heads_times_head_dim():
    model = tiny("vit_tiny_patch4_32", embed_dim=36, num_heads=3).train()
    out = patch_features(model, images(1), kind="keys")
    assert out.shape == (1, 16, 36)  # H·dh = 3·12
    assert model.training


@pytest.mark.parametrize("layer", [2, 5, -3])
def test_patch_features_out_of_range_layer(layer):
    with pytest.raises(ValueError, match="out of range"):
        patch_features(tiny("vit_tiny_patch4_32"), images(1), layer=layer)


def test_patch_features_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        patch_features(tiny("vit_tiny_patch4_32"), images(1), kind="values")


# ----------------------------------------------------------------------------------------------------------------
# PCA as RGB
@pytest.mark.parametrize("name", FAMILIES)
def test_pca_rgb_range_and_shape(name):
    rgb = pca_rgb(patch_features(tiny(name), images(2)), (4, 4))
    assert rgb.shape == (2, 4, 4, 3) and rgb.dtype == torch.float32
    assert (rgb >= 0).all() and (rgb <= 1).all()
    flat = rgb.reshape(-1, 3)
    torch.testing.assert_close(flat.amin(0), torch.zeros(3))
    torch.testing.assert_close(flat.amax(0), torch.ones(3))


def test_pca_puts_the_one_varying_direction_in_channel_0_with_a_fixed_sign():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2 * 16, generator=g)
    t[5] = 3.0  # the outlier: the largest deviation from the mean is on the high side
    u = F.normalize(torch.randn(8, generator=g), dim=0)
    noise = 1e-4 * torch.randn(2 * 16, 8, generator=g)
    expected = (t - t.min()) / (t.max() - t.min())
    for direction in (u, -u):  # the picture does not depend on the sign of the direction
        features = (t[:, None] * direction + noise).reshape(2, 16, 8)
        channel0 = pca_rgb(features, (4, 4))[..., 0].flatten()
        torch.testing.assert_close(channel0, expected, atol=1e-3, rtol=0)
        assert torch.equal(channel0.argsort(), t.argsort())  # monotone increasing in t
        assert channel0[5] == 1.0


def test_pca_sign_does_not_depend_on_the_svd_sign_convention(monkeypatch):
    features = torch.randn(2, 16, 8)
    plain = pca_rgb(features, (4, 4))
    svd = torch.linalg.svd

    def flipped_svd(x, full_matrices=True):
        u, s, vh = svd(x, full_matrices=full_matrices)
        return -u, s, -vh  # an equally valid decomposition

    monkeypatch.setattr(torch.linalg, "svd", flipped_svd)
    torch.testing.assert_close(pca_rgb(features, (4, 4)), plain)


def test_pca_orders_components_by_variance():
    u, v = torch.linalg.qr(torch.randn(6, 2))[0].T  # orthonormal directions
    rows, cols = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")  # uncorrelated over the grid
    a, b = rows.flatten(), cols.flatten()
    features = (3 * a[:, None] * u + b[:, None] * v).reshape(1, 12, 6)  # variance 6 along u, 1.25 along v
    rgb = pca_rgb(features, (3, 4), components=2)
    assert rgb.shape == (1, 3, 4, 2)
    c0, c1 = rgb[0, ..., 0], rgb[0, ..., 1]
    by_row, by_col = rows / 2, cols / 3
    assert torch.allclose(c0, by_row, atol=1e-5) or torch.allclose(c0, 1 - by_row, atol=1e-5)
    assert torch.allclose(c1, by_col, atol=1e-5) or torch.allclose(c1, 1 - by_col, atol=1e-5)


def test_pca_rgb_errors():
    with pytest.raises(ValueError, match="do not fit"):
        pca_rgb(torch.randn(1, 15, 8), (4, 4))
    with pytest.raises(ValueError, match="components"):
        pca_rgb(torch.randn(1, 4, 2), (2, 2))  # 3 components of 2 features


# ----------------------------------------------------------------------------------------------------------------
# Mass thresholding and upsampling
def test_mass_threshold_by_hand():
    scores = torch.tensor([[5.0, 3.0], [1.0, 1.0]])  # fractions .5, .3, .1, .1
    first = torch.tensor([[True, False], [False, False]])
    two = torch.tensor([[True, True], [False, False]])
    # a patch is kept while the strictly larger ones hold less than `mass`; the crossing patch is included
    assert torch.equal(mass_threshold(scores, 0.6), two)  # .5 < .6 → the .3 patch crosses, kept
    assert torch.equal(mass_threshold(scores, 0.5), first)  # the first patch alone holds exactly .5
    assert torch.equal(mass_threshold(scores, 0.3), first)
    assert torch.equal(mass_threshold(scores, 0.8), two)  # .5 + .3 hold exactly .8
    three = mass_threshold(scores, 0.81)
    assert three.sum() == 3 and three[0].all()  # one of the tied .1 patches
    assert torch.equal(mass_threshold(scores, 1.0), torch.ones(2, 2, dtype=torch.bool))
    # positions come back where they were; scaling the map changes nothing; zeros never reach mass 1
    shuffled = torch.tensor([[0.0, 2.0], [6.0, 2.0]])  # fractions 0, .2, .6, .2
    assert torch.equal(mass_threshold(shuffled, 0.6), torch.tensor([[False, False], [True, False]]))
    scaled = mass_threshold(7 * shuffled, 0.7)  # .6 then one of the tied .2 patches
    assert scaled.sum() == 2 and scaled[1, 0] and not scaled[0, 0]
    assert torch.equal(mass_threshold(shuffled, 1.0), torch.tensor([[False, True], [True, True]]))
    assert torch.equal(mass_threshold(torch.tensor([[4.0, 4.0], [0.0, 0.0]]), 1.0),
                       torch.tensor([[True, True], [False, False]]))


def test_mass_threshold_maps_independently_over_leading_dims():
    scores = torch.tensor([[[[5.0, 3.0], [1.0, 1.0]], [[0.0, 2.0], [6.0, 2.0]]]])  # (1, 2, 2, 2)
    mask = mass_threshold(scores, 0.6)
    assert mask.shape == (1, 2, 2, 2) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], torch.tensor([[True, True], [False, False]]))
    assert torch.equal(mask[0, 1], torch.tensor([[False, False], [True, False]]))


@pytest.mark.parametrize("mass", [0.0, -0.1, 1.01])
def test_mass_threshold_rejects_bad_mass(mass):
    with pytest.raises(ValueError, match="mass"):
        mass_threshold(torch.ones(2, 2), mass)


def test_mass_threshold_rejects_negative_scores():
    with pytest.raises(ValueError, match="non-negative"):
        mass_threshold(torch.tensor([[0.5, -0.1], [0.3, 0.3]]))


def test_upsample_mask_nearest_blocks():
    mask = torch.tensor([[True, False], [False, True]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    up = upsample_mask(mask, (4, 4))
    assert up.dtype == torch.bool and torch.equal(up, expected)
    batched = upsample_mask(torch.stack([mask, ~mask])[None], (4, 4))  # (1, 2, 2, 2) → (1, 2, 4, 4)
    assert batched.shape == (1, 2, 4, 4)
    assert torch.equal(batched[0, 0], expected) and torch.equal(batched[0, 1], ~expected)
    assert torch.equal(upsample_mask(mask, (2, 6)), torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]).bool())


# ----------------------------------------------------------------------------------------------------------------
# MaskCut on synthetic features
def grouped_features(labels: torch.Tensor, seed: int, dim: int = 16, noise: float = 0.01) -> torch.Tensor:
    """(1, h·w, dim): every patch of group g is the unit vector v_g plus small noise. The v_g are orthonormal, so
    cosines are ≈ 1 inside a group and ≈ 0 (< τ = 0.15) across groups: the affinity graph is one clique per group."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, int(labels.max()) + 1, generator=g, dtype=torch.float64))[0].T.float()
    flat = labels.flatten()
    return (basis[flat] + noise * torch.randn(len(flat), dim, generator=g))[None]


def rectangle(rows: slice, cols: slice, size: int = 8) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[rows, cols] = 1
    return mask


@pytest.mark.parametrize("seed", range(5))
def test_maskcut_finds_a_small_object(seed):
    labels = rectangle(slice(2, 5), slice(2, 6))  # 3×4 in the middle of 8×8, touching no corner
    masks = maskcut(grouped_features(labels, seed), (8, 8))
    assert masks.shape == (1, 1, 8, 8) and masks.dtype == torch.bool
    assert torch.equal(masks[0, 0], labels.bool())


@pytest.mark.parametrize("seed", range(3))
def test_maskcut_does_not_depend_on_the_eigenvector_sign(seed, monkeypatch):
    labels = rectangle(slice(4, 7), slice(1, 3))  # 3×2, the small side of the cut
    features = grouped_features(labels, seed)
    original = segment._second_eigenvector
    plain = maskcut(features, (8, 8))
    monkeypatch.setattr(segment, "_second_eigenvector", lambda affinity: -original(affinity))
    flipped = maskcut(features, (8, 8))
    assert torch.equal(plain[0, 0], labels.bool()) and torch.equal(flipped[0, 0], labels.bool())


def _crafted_eigenvector(monkeypatch, vector: list[float]) -> None:
    """Makes maskcut cut with a given eigenvector, to check the rules that turn it into a mask."""
    monkeypatch.setattr(segment, "_second_eigenvector", lambda affinity: np.asarray(vector, dtype=np.float64))


def test_maskcut_splits_the_eigenvector_at_its_mean(monkeypatch):
    x = [0.0] * 16
    x[5] = x[6] = 3.0  # mean 6.2 / 16 = 0.3875
    x[9] = 0.2  # positive, but below the mean: not foreground
    _crafted_eigenvector(monkeypatch, x)
    expected = torch.zeros(16, dtype=torch.bool)
    expected[[5, 6]] = True
    assert torch.equal(maskcut(torch.randn(1, 16, 4), (4, 4))[0, 0].flatten(), expected)


def test_maskcut_foreground_is_the_side_of_the_largest_magnitude(monkeypatch):
    """On a 1×8 strip each side of this cut holds one corner, so only the eigenvector decides."""
    _crafted_eigenvector(monkeypatch, [-3.0, -3.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])  # mean -0.6
    expected = torch.tensor([[True, True, False, False, False, False, False, False]])
    assert torch.equal(maskcut(torch.randn(1, 8, 4), (1, 8))[0, 0], expected)
    _crafted_eigenvector(monkeypatch, [3.0, 3.0, -0.2, -0.2, -0.2, -0.2, -0.2, -0.2])
    assert torch.equal(maskcut(torch.randn(1, 8, 4), (1, 8))[0, 0], expected)


def test_maskcut_side_with_three_corners_is_background(monkeypatch):
    x = [-0.5] * 16
    for i in (0, 1, 2, 3, 4, 8, 12):  # top row and left column: corners 0, 3 and 12
        x[i] = 3.0
    _crafted_eigenvector(monkeypatch, x)
    expected = torch.ones(4, 4, dtype=torch.bool)
    expected[0, :] = expected[:, 0] = False
    assert torch.equal(maskcut(torch.randn(1, 16, 4), (4, 4))[0, 0], expected)


@pytest.mark.parametrize("seed", range(3))
def test_maskcut_large_object_wins_over_the_corners(seed):
    labels = rectangle(slice(1, 7), slice(1, 7))  # 36 patches; the background ring (28) is the small side
    assert torch.equal(maskcut(grouped_features(labels, seed), (8, 8))[0, 0], labels.bool())


def test_maskcut_batch_items_are_independent():
    a, b = rectangle(slice(2, 5), slice(2, 6)), rectangle(slice(5, 7), slice(1, 4))
    features = torch.cat([grouped_features(a, 0), grouped_features(b, 1)])
    masks = maskcut(features, (8, 8))
    assert torch.equal(masks[0, 0], a.bool()) and torch.equal(masks[1, 0], b.bool())


def test_maskcut_further_masks_come_from_the_patches_not_yet_taken():
    labels = rectangle(slice(2, 5), slice(2, 6))
    masks = maskcut(grouped_features(labels, 0), (8, 8), num_masks=3)
    assert masks.shape == (1, 3, 8, 8)
    assert torch.equal(masks[0, 0], labels.bool())
    assert not (masks[0, 0] & masks[0, 1]).any() and not (masks[0, 1] & masks[0, 2]).any()
    assert not (masks[0, 0] & masks[0, 2]).any()


def test_maskcut_two_masks_recover_two_separated_objects():
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[1:3, 1:4] = 1  # object A, 6 patches
    labels[4:7, 4:7] = 2  # object B, 9 patches, its own feature vector
    masks = maskcut(grouped_features(labels, 0), (8, 8), num_masks=2)[0]
    assert not (masks[0] & masks[1]).any()
    assert torch.equal(masks[0] | masks[1], labels > 0)
    assert {int(masks[0].sum()), int(masks[1].sum())} == {6, 9}


def test_maskcut_errors():
    with pytest.raises(ValueError, match="do not fit"):
        maskcut(torch.randn(1, 15, 4), (4, 4))
    with pytest.raises(ValueError, match="num_masks"):
        maskcut(torch.randn(1, 16, 4), (4, 4), num_masks=0)


# ----------------------------------------------------------------------------------------------------------------
# End to end through a model: settings with a known answer
def bright_rectangle(background: float = 0.0, foreground: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised (1, 3, 16, 16) image with a patch-aligned 8×8 rectangle on patch rows 1-2, columns 2-3."""
    x = torch.full((1, 3, 16, 16), background)
    x[..., 4:12, 8:16] = foreground
    target = torch.zeros(1, 16, 16, dtype=torch.bool)
    target[:, 4:12, 8:16] = True
    return x, target


@pytest.mark.parametrize("name, kwargs, tau", [("vit_tiny_patch4_32", {}, 0.5),
                                               ("vit_tiny_patch4_32", dict(pos_embed="learn"), 0.15),
                                               ("crate_alpha_tiny_patch4_32", {}, 0.15)])
def test_maskcut_of_a_fresh_model_recovers_a_bright_rectangle(name, kwargs, tau):
    """Pixels −1 and +1 (uint8 0 and 255 normalised with mean = std = ½): every background patch embeds to the same
    vector up to its position embedding, every object patch to another, so the keys form two clusters. Learned
    positions start small (std 0.02); the fixed sin-cos table is not small, so the ViT default needs τ = 0.5.
    A fresh model is a random draw and the argument holds with high probability, not for every draw: over 20 seeds
    the sin-cos ViT's last layer recovered the rectangle in 19 (first layer 20/20). So 5 seeds, the mask exact in at
    least 4 of them per layer, and always of the right shape."""
    x, target = bright_rectangle(-1.0, 1.0)
    exact = {0: 0, -1: 0}
    for seed in range(5):
        torch.manual_seed(seed)
        model = tiny(name, **kwargs)
        for layer in (0, -1):
            masks = unsupervised_masks(model, x, "maskcut", layer=layer, tau=tau)
            assert masks.shape == (1, 16, 16) and masks.dtype == torch.bool
            exact[layer] += int(torch.equal(masks, target))
    assert min(exact.values()) >= 4, f"exact masks per layer over 5 seeds: {exact}"


@torch.no_grad()
def attend_to_bright_patches(scale: float = 1.5) -> torch.nn.Module:
    """A ViT whose class token attends to bright patches: patch embedding channel 0 = mean brightness (everything else
    zero, no positions), class token = e_1, every head's q₀ = s·LN(z)₁ and k₀ = s·LN(z)₀, and blocks that add
    nothing to the residual stream. Dark patches embed to 0 (LN(0) = 0, so k = 0, logit 0); bright patches to a
    constant vector with LN(z)₀ = √23, and the class token's LN(z)₁ = √23, so its logit is s²·23/√12 ≈ 15."""
    model = tiny("vit_tiny_patch4_32").eval()
    d, H, dh = 24, 2, 12
    model.pos_embed.zero_()
    model.cls_token.zero_()
    model.cls_token[0, 0, 1] = 1.0
    model.patch_embed.proj.weight.zero_()
    model.patch_embed.proj.weight[0] = 1 / 48
    model.patch_embed.proj.bias.zero_()
    for block in model.blocks:
        block.attn.qkv.weight.zero_()
        block.attn.qkv.bias.zero_()
        for h in range(H):
            block.attn.qkv.weight[h * dh, 1] = scale
            block.attn.qkv.weight[d + h * dh, 0] = scale
        for linear in (block.attn.proj, block.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    return model


def test_hand_set_attention_segments_the_bright_rectangle():
    model = attend_to_bright_patches()
    x, target = bright_rectangle(0.0, 1.0)
    object_patches = target[0, ::4, ::4]
    maps = cls_attention(record_attention(model, x), (4, 4))  # (1, L, H, 4, 4)
    for layer in range(2):
        for head in range(2):
            assert torch.allclose(maps[0, layer, head][object_patches], torch.tensor(0.25), atol=1e-5)
            assert maps[0, layer, head][~object_patches].max() < 1e-5
    # the four object patches hold all the mass equally: mass 0.9 keeps them all, mass 0.6 stops after three
    assert torch.equal(unsupervised_masks(model, x, "attention", mass=0.9), target)
    for head in (0, 1):
        assert torch.equal(unsupervised_masks(model, x, "attention", head=head, layer=0, mass=0.9), target)
    three = unsupervised_masks(model, x, "attention", mass=0.6)
    assert three[target].sum() == 3 * 16 and not three[~target].any()
    # rollout: the object patches rank first and hold more than 0.6 of the rollout's patch mass
    rollout = attention_rollout(record_attention(model, x), (4, 4))[0]
    assert set(rollout.flatten().topk(4).indices.tolist()) == set(object_patches.flatten().nonzero()[:, 0].tolist())
    assert torch.equal(unsupervised_masks(model, x, "rollout", mass=0.6), target)


def test_attention_scores_and_unsupervised_masks_errors():
    model = tiny("vit_tiny_patch4_32")
    attn = record_attention(model, images(1))
    torch.testing.assert_close(attention_scores(attn, (4, 4), head=1), cls_attention(attn, (4, 4))[:, -1, 1])
    torch.testing.assert_close(attention_scores(attn, (4, 4), layer=0), cls_attention(attn, (4, 4))[:, 0].mean(1))
    with pytest.raises(ValueError, match="head"):
        attention_scores(attn, (4, 4), head=2)
    with pytest.raises(ValueError, match="method"):
        unsupervised_masks(model, images(1), "kmeans")


# ----------------------------------------------------------------------------------------------------------------
# Scores
def _hand_masks() -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.tensor([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    target = torch.tensor([[[1, 0, 0], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    return pred, target


def test_segmentation_scores_by_hand():
    pred, target = _hand_masks()
    # image 0: foreground ∩ = 1, ∪ = 3; background ∩ = 3 ((0,2), (1,1), (1,2)), ∪ = 5
    # image 1: both empty: foreground ∩ = ∪ = 0 (Jaccard 1); background ∩ = ∪ = 6
    scores = SegmentationScores().update(pred, target)
    assert scores.intersection.tolist() == [9, 1] and scores.union.tolist() == [11, 3]
    np.testing.assert_allclose(scores.iou, [9 / 11, 1 / 3])
    result = segmentation_scores(pred, target)
    assert result["miou"] == pytest.approx((9 / 11 + 1 / 3) / 2)
    assert result["iou_background"] == pytest.approx(9 / 11) and result["iou_foreground"] == pytest.approx(1 / 3)
    assert result["jaccard"] == pytest.approx((1 / 3 + 1) / 2)
    assert result["images"] == 2
    # one image, both empty: everything is 1
    empty = torch.zeros(1, 2, 3, dtype=torch.bool)
    assert segmentation_scores(empty, empty)["jaccard"] == 1.0
    assert segmentation_scores(empty, empty)["iou_background"] == 1.0
    # perfect prediction
    assert segmentation_scores(target, target)["miou"] == 1.0 and segmentation_scores(target, target)["jaccard"] == 1.0
    # everything wrong: inverted masks
    assert segmentation_scores(~target[:1], target[:1])["miou"] == 0.0


def test_segmentation_scores_accumulate_over_updates():
    pred, target = _hand_masks()
    g = torch.Generator().manual_seed(0)
    more_pred, more_target = torch.rand(3, 2, 3, generator=g) > 0.5, torch.rand(3, 2, 3, generator=g) > 0.5
    split = SegmentationScores().update(pred, target).update(more_pred, more_target)
    whole = SegmentationScores().update(torch.cat([pred, more_pred]), torch.cat([target, more_target]))
    assert split.intersection.tolist() == whole.intersection.tolist()
    assert split.union.tolist() == whole.union.tolist()
    assert split.as_dict() == pytest.approx(whole.as_dict())
    assert split.images == 5


def test_segmentation_scores_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        SegmentationScores().update(torch.zeros(1, 2, 3, dtype=torch.bool), torch.zeros(1, 3, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST ground truth
def test_fashion_mnist_foreground_fills_holes_only():
    image = torch.zeros(8, 8, dtype=torch.uint8)
    image[1:6, 1:6] = 200
    image[2:5, 2:5] = 0  # a ring: the 3×3 inside is a hole
    cup = torch.zeros(8, 8, dtype=torch.uint8)
    cup[2:7, 2:7] = 90
    cup[2:6, 3:6] = 0  # a U open to the top: its inside reaches the border's zeros
    expected_ring = torch.zeros(8, 8, dtype=torch.bool)
    expected_ring[1:6, 1:6] = True
    out = fashion_mnist_foreground(torch.stack([image, cup])[:, None])  # (B, 1, H, W)
    assert out.shape == (2, 8, 8) and out.dtype == torch.bool
    assert torch.equal(out[0], expected_ring)
    assert torch.equal(out[1], cup > 0)
    assert torch.equal(fashion_mnist_foreground(torch.stack([image, cup])), out)  # (B, H, W) too


def test_fashion_mnist_foreground_background_is_4_connected():
    image = torch.zeros(7, 7, dtype=torch.uint8)
    image[1:6, 1:6] = 1
    image[2:5, 2:5] = 0  # inside
    image[1, 1] = 0  # a ring corner opened: the inside touches the outside only diagonally
    out = fashion_mnist_foreground(image[None])[0]
    assert out[2:5, 2:5].all()  # still a hole, filled
    assert not out[1, 1]  # the opened corner is connected to the border: background
    assert out.sum() == 24


def test_fashion_mnist_foreground_needs_uint8():
    with pytest.raises(ValueError, match="uint8"):
        fashion_mnist_foreground(torch.zeros(1, 4, 4))


# ----------------------------------------------------------------------------------------------------------------
# Evaluation over a split
def synthetic_split(count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (count, 1, 16, 16) images: a bright textured rectangle on zero; targets from the ground-truth rule."""
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(count, 1, 16, 16, dtype=torch.uint8)
    for i in range(count):
        top, left = (int(v) for v in torch.randint(0, 8, (2,), generator=g))
        height, width = (int(v) for v in torch.randint(4, 9, (2,), generator=g))
        images[i, 0, top:top + height, left:left + width] = torch.randint(
            80, 256, (min(height, 16 - top), min(width, 16 - left)), generator=g, dtype=torch.uint8)
    return images, fashion_mnist_foreground(images)


@pytest.mark.parametrize("name", FAMILIES)
def test_evaluate_segmentation_agrees_with_the_masks_method_by_method(name):
    model = tiny(name, in_chans=1)
    images, targets = synthetic_split(8)
    mean, std = (0.3,), (0.4,)
    result = evaluate_segmentation(model, images, targets, mean, std, batch_size=3)
    assert set(result) == {"attention", "rollout", "maskcut", "attention_head"}
    assert len(result["attention_head"]) == 2
    for scores in [result["attention"], result["rollout"], result["maskcut"], *result["attention_head"]]:
        assert 0 <= scores["miou"] <= 1 and 0 <= scores["jaccard"] <= 1
        assert scores["images"] == 8
    # the same numbers from the masks of each method over the whole split at once
    x = (images.float() / 255 - 0.3) / 0.4
    for mass, tau, result in [(0.6, 0.15, result),
                              (0.4, 0.5, evaluate_segmentation(model, images, targets, mean, std, mass=0.4, tau=0.5))]:
        def scored(method="attention", **kwargs):
            return segmentation_scores(unsupervised_masks(model, x, method, mass=mass, tau=tau, **kwargs), targets)

        assert result["maskcut"] == pytest.approx(scored("maskcut"))
        assert result["attention"] == pytest.approx(scored())
        assert result["rollout"] == pytest.approx(scored("rollout"))
        for head in range(2):
            assert result["attention_head"][head] == pytest.approx(scored(head=head))


@pytest.mark.parametrize("name", FAMILIES)
def test_mass_and_tau_reach_the_masks(name):
    model = tiny(name)
    x = images(4)
    grid = (4, 4)
    attn = record_attention(model, x)
    by_tau, by_mass = [], []
    for tau in (-0.2, 0.1, 0.4, 0.7):
        cut = maskcut(patch_features(model, x, layer=0, kind="keys"), grid, tau=tau)[:, 0]
        masks = unsupervised_masks(model, x, "maskcut", layer=0, tau=tau)
        assert torch.equal(masks, upsample_mask(cut, (16, 16)))
        by_tau.append(masks)
    for mass in (0.2, 0.5, 0.8):
        masks = unsupervised_masks(model, x, "attention", layer=0, mass=mass)
        by_hand = mass_threshold(cls_attention(attn, grid)[:, 0].mean(1), mass)  # block 0, heads averaged
        assert torch.equal(masks, upsample_mask(by_hand, (16, 16)))
        by_mass.append(masks)
    assert any(not torch.equal(by_tau[0], other) for other in by_tau[1:])  # the check above can tell taus apart
    assert by_mass[0].sum() < by_mass[1].sum() < by_mass[2].sum()


def test_maskcut_keeps_an_object_along_an_edge_that_touches_two_corners():
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[:, :2] = 1  # a band down the left edge: two of the four corners (CutLER flips only at three)
    for seed in range(3):
        assert torch.equal(maskcut(grouped_features(labels, seed), (8, 8))[0, 0], labels > 0)


def test_evaluate_segmentation_needs_images_and_matching_masks():
    model = vitlab.create_model("vit_tiny_patch4_32", img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2,
                                in_chans=1)
    with pytest.raises(ValueError, match="0 images"):
        evaluate_segmentation(model, torch.zeros(0, 1, 16, 16, dtype=torch.uint8), torch.zeros(0, 16, 16, dtype=bool),
                              (0.5,), (0.5,))
    with pytest.raises(ValueError, match="2 images and 1 masks"):
        evaluate_segmentation(model, torch.zeros(2, 1, 16, 16, dtype=torch.uint8), torch.zeros(1, 16, 16, dtype=bool),
                              (0.5,), (0.5,))
