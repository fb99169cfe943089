"""Batched device augmentation and the in-memory device loader: shapes, ranges, target formulas, seeded determinism,
exact resume and DDP sharding. CPU only, small batches."""
import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.data.augment import (RANDAUGMENT_OPS, AugmentConfig, DeviceAugment, _randaugment_geometric,
                                 _randaugment_intensity, soft_targets)
from vitlab.data.loader import DeviceLoader

MEAN = {1: (0.2860,), 3: (0.4914, 0.4822, 0.4465)}
STD = {1: (0.3530,), 3: (0.2470, 0.2435, 0.2616)}
CLASSES = 10

# one entry per stage that changes the images; each must leave its mark on a seeded batch
IMAGE_OPTIONS = {
    "random_crop": dict(random_crop_padding=4),
    "random_crop_zero": dict(random_crop_padding=4, random_crop_padding_mode="constant"),
    "random_resized_crop": dict(random_resized_crop=True),
    "hflip": dict(hflip=True),
    "randaugment": dict(randaugment_n=2, randaugment_m=9),
    "color_jitter": dict(color_jitter=0.4),
    "random_erasing": dict(random_erasing=1.0),
    "mixup": dict(mixup_alpha=0.8),
    "cutmix": dict(cutmix_alpha=1.0),
}
CIFAR_PIPELINE = dict(random_resized_crop=True, rrc_scale=(0.75, 1.0), rrc_ratio=(1.0, 1.0), hflip=True,
                      randaugment_n=1, randaugment_m=8, color_jitter=0.1, random_erasing=0.25, label_smoothing=0.1,
                      mixup_alpha=0.8, cutmix_alpha=1.0)


def _batch(channels: int, batch: int = 16, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    return images, labels


def _augment(channels: int, **options) -> DeviceAugment:
    return DeviceAugment(AugmentConfig(**options), MEAN[channels], STD[channels], CLASSES)


def _normalised_range(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(MEAN[channels]).view(1, -1, 1, 1), torch.tensor(STD[channels]).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


# ----------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, value", [
    ("random_crop_padding", -1), ("randaugment_n", -1), ("randaugment_m", 31), ("color_jitter", 1.0),
    ("random_erasing", 1.5), ("mixup_alpha", -0.1), ("cutmix_alpha", float("nan")), ("mix_prob", -0.5),
    ("label_smoothing", 1.0), ("mix_switch_prob", 2.0), ("rrc_scale", (0.0, 1.0)), ("rrc_ratio", (2.0, 1.0)),
    ("random_crop_padding_mode", "wrap"), ("randaugment_m", 9.5),
])
def test_bad_config_names_the_field(field, value):
    name = field.split("[")[0]
    with pytest.raises(ValueError, match=f"AugmentConfig.{name}"):
        AugmentConfig(**{field: value})


def test_crops_are_exclusive():
    with pytest.raises(ValueError, match="random_crop_padding and AugmentConfig.random_resized_crop"):
        AugmentConfig(random_crop_padding=4, random_resized_crop=True)


def test_bad_inputs_are_rejected():
    augment = _augment(3)
    images, labels = _batch(3)
    with pytest.raises(ValueError, match="uint8"):
        augment(images.float(), labels)
    with pytest.raises(ValueError, match="channels"):
        augment(images[:, :1], labels)
    with pytest.raises(ValueError, match="labels"):
        augment(images, labels[:3])


# ----------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("option", [*IMAGE_OPTIONS, "cifar_pipeline"])
def test_every_option_shapes_dtypes_and_effect(option, channels):
    options = CIFAR_PIPELINE if option == "cifar_pipeline" else IMAGE_OPTIONS[option]
    augment = _augment(channels, **options)
    images, labels = _batch(channels)
    out, targets = augment(images, labels, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    assert targets.shape == (len(labels), CLASSES) and targets.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))
    low, high = _normalised_range(channels)
    eps = 1e-5  # erasing writes 0 (the mean), mixup / cutmix combine in-range images: all stay in range
    assert (out >= low - eps).all() and (out <= high + eps).all()
    assert not torch.equal(out, augment.eval_transform(images)), f"{option} left the batch unchanged"


def test_no_options_is_eval_transform_and_onehot():
    augment = _augment(3)
    images, labels = _batch(3)
    out, targets = augment(images, labels)
    torch.testing.assert_close(out, augment.eval_transform(images), rtol=0, atol=0)
    torch.testing.assert_close(targets, F.one_hot(labels, CLASSES).float(), rtol=0, atol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_transform_is_plain_normalisation(channels):
    augment = _augment(channels, **CIFAR_PIPELINE)
    images, _ = _batch(channels)
    mean = torch.tensor(MEAN[channels]).view(1, -1, 1, 1)
    std = torch.tensor(STD[channels]).view(1, -1, 1, 1)
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(augment.eval_transform(images), expected)
    torch.testing.assert_close(augment.eval_transform(images), augment.eval_transform(images), rtol=0, atol=0)


def test_random_crop_is_a_window_of_the_reflect_padded_image():
    augment = _augment(1, random_crop_padding=3)
    images, labels = _batch(1, batch=8, size=8)
    out, _ = augment(images, labels, generator=torch.Generator().manual_seed(0))
    padded = F.pad(augment.eval_transform(images), (3, 3, 3, 3), mode="reflect")  # (B, 1, 14, 14)
    for i in range(len(images)):  # a test may loop per image; the library does not
        windows = padded[i, 0].unfold(0, 8, 1).unfold(1, 8, 1).reshape(-1, 8, 8)  # (49, 8, 8)
        assert (windows - out[i, 0]).abs().amax(dim=(1, 2)).min() < 1e-6


def test_hflip_flips_some_images_and_keeps_the_rest():
    augment = _augment(3, hflip=True)
    images, labels = _batch(3, batch=32)
    out, _ = augment(images, labels, generator=torch.Generator().manual_seed(0))
    plain = augment.eval_transform(images)
    same = (out == plain).flatten(1).all(1)
    flipped = (out == plain.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and same.any() and flipped.any()


# ----------------------------------------------------------------------------------------------------- RandAugment


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", RANDAUGMENT_OPS)
def test_each_randaugment_op_on_one_and_three_channels(op, channels):
    x = _batch(channels, batch=4)[0].float() / 255
    index = torch.full((4,), RANDAUGMENT_OPS.index(op))
    sign = torch.tensor([1, -1, 1, -1])
    out = _randaugment_intensity(_randaugment_geometric(x, index, sign, 0.5), index, sign, 0.5)
    assert out.shape == x.shape and (out >= 0).all() and (out <= 1).all()
    unchanged = op == "identity" or (op == "color" and channels == 1)  # saturation of a grey image: identity
    assert torch.equal(out, x) == unchanged


def test_randaugment_magnitudes_follow_torchvision():
    x = torch.full((2, 3, 8, 8), 0.5)
    sign = torch.tensor([1, -1])

    def run(op, frac, images=x):
        index = torch.full((len(images),), RANDAUGMENT_OPS.index(op))
        return _randaugment_intensity(_randaugment_geometric(images, index, sign[: len(images)], frac), index,
                                      sign[: len(images)], frac)

    out = run("brightness", 1.0)  # factor 1 ± 0.9
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.95, 0.05]))
    post = run("posterize", 8 / 30, torch.full((2, 1, 2, 2), 0.49))  # m = 8 → 7 bits: 124.95 → 124
    torch.testing.assert_close(post * 255, torch.full_like(post, 124.0))
    sol = run("solarize", 0.5, torch.tensor([0.4, 0.6]).view(2, 1, 1, 1).expand(2, 1, 2, 2))  # threshold 0.5
    torch.testing.assert_close(sol[:, 0, 0, 0], torch.tensor([0.4, 0.4]))
    flat = run("autocontrast", 0.5)  # constant channels stay as they are
    torch.testing.assert_close(flat, x)
    dot = torch.zeros(1, 1, 32, 32)
    dot[0, 0, 16, 8] = 1.0
    moved = run("translate_x", 1.0, dot)  # 150/331 of the width = 14.5 px
    col = int(moved[0, 0, 16].argmax())
    assert abs(abs(col - 8) - 150 / 331 * 32) <= 0.5 and moved.sum() == 1


def test_randaugment_draws_ops_per_image():
    augment = _augment(3, randaugment_n=1, randaugment_m=15)
    images = _batch(3, batch=1, size=16)[0].expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    out, _ = augment(images, torch.zeros(64, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    distinct = torch.unique(out.flatten(1), dim=0).shape[0]
    assert distinct >= 10, distinct  # per-batch op selection would give at most 2 (one op, two signs)


# ----------------------------------------------------------------------------------------------------- targets


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_soft_targets_formula_and_cross_entropy(smoothing):
    labels = torch.tensor([0, 3, 9, 3])
    targets = soft_targets(labels, CLASSES, smoothing)
    expected = torch.full((4, CLASSES), smoothing / CLASSES)
    expected[torch.arange(4), labels] = 1 - smoothing + smoothing / CLASSES
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    logits = torch.randn(4, CLASSES)
    torch.testing.assert_close(F.cross_entropy(logits, targets),
                               F.cross_entropy(logits, labels, label_smoothing=smoothing))


def _constant_batch(batch: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant 8·i + 20 and has class i: pixels and targets both say which images were mixed."""
    values = (8 * torch.arange(batch) + 20).to(torch.uint8)
    images = values.view(batch, 1, 1, 1).expand(batch, 3, 12, 12).contiguous()
    return images, torch.arange(batch)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_targets_match_the_mixed_images(smoothing):
    images, labels = _constant_batch()
    augment = DeviceAugment(AugmentConfig(mixup_alpha=0.8, label_smoothing=smoothing), MEAN[3], STD[3], 24)
    out, targets = augment(images, labels, generator=torch.Generator().manual_seed(0))
    own, partner = augment.eval_transform(images), augment.eval_transform(images.roll(1, 0))
    lam = ((out - partner) / (own - partner))[:, 0, 0, 0]  # recovered from the pixels, (B,)
    assert ((lam > 0.02) & (lam < 0.98)).sum() > 10  # mixing happened
    expected = lam[:, None] * soft_targets(labels, 24, smoothing) + (1 - lam[:, None]) * soft_targets(
        labels.roll(1), 24, smoothing)
    torch.testing.assert_close(targets, expected, atol=1e-4, rtol=0)


def test_cutmix_target_weight_is_the_pasted_area():
    images, labels = _constant_batch()
    augment = DeviceAugment(AugmentConfig(cutmix_alpha=1.0), MEAN[3], STD[3], 24)
    out, targets = augment(images, labels, generator=torch.Generator().manual_seed(0))
    own, partner = augment.eval_transform(images), augment.eval_transform(images.roll(1, 0))
    from_partner = (out == partner)[:, 0].float().mean((1, 2))  # pasted area fraction, (B,)
    assert ((out == own) | (out == partner)).all()  # every pixel is one of the two images, no blending
    assert (from_partner > 0).sum() > 10
    torch.testing.assert_close(targets[torch.arange(24), labels.roll(1)], from_partner)
    torch.testing.assert_close(targets[torch.arange(24), labels], 1 - from_partner)
    torch.testing.assert_close(targets.sum(1), torch.ones(24))


def test_mix_switch_and_mix_prob():
    images, labels = _constant_batch()
    config = AugmentConfig(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.5)
    augment = DeviceAugment(config, MEAN[3], STD[3], 24)
    own = augment.eval_transform(images)
    kinds, unmixed = set(), []
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        out, targets = augment(images, labels, generator=generator)
        pure = (out == own).flatten(1).all(1)  # rows left alone
        unmixed.append(pure.float().mean().item())
        torch.testing.assert_close(targets[pure], F.one_hot(labels[pure], 24).float())
        blended = ~((out == own) | (out == augment.eval_transform(images.roll(1, 0)))).all()
        kinds.add("mixup" if blended else "cutmix")
    assert kinds == {"mixup", "cutmix"}
    assert 0.3 < sum(unmixed) / len(unmixed) < 0.8  # about mix_prob = 0.5 of the rows unmixed (cut may be empty)


# ----------------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("channels", [1, 3])
def test_seeded_determinism(channels):
    augment = _augment(channels, **CIFAR_PIPELINE)
    images, labels = _batch(channels, batch=32)
    first = augment(images, labels, generator=torch.Generator().manual_seed(7))
    state = torch.get_rng_state()
    second = augment(images, labels, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is restored
    other = augment(images, labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])
    generator = torch.Generator().manual_seed(7)  # a generator advances: consecutive batches differ
    assert torch.equal(augment(images, labels, generator=generator)[0], first[0])
    assert not torch.equal(augment(images, labels, generator=generator)[0], first[0])


def test_global_rng_path_follows_manual_seed():
    augment = _augment(3, **CIFAR_PIPELINE)
    images, labels = _batch(3)
    torch.manual_seed(3)
    first = augment(images, labels)
    torch.manual_seed(3)
    assert torch.equal(augment(images, labels)[0], first[0])


# ----------------------------------------------------------------------------------------------------- loader


def _dataset(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.arange(n)  # label = sample id, to track order


def _epoch_ids(loader: DeviceLoader) -> list[list[int]]:
    return [labels.tolist() for _, labels in loader]


def test_loader_covers_every_sample_once_and_shuffles_per_epoch():
    images, labels = _dataset()
    loader = DeviceLoader(images, labels, batch_size=8, shuffle=True, drop_last=False, device="cpu", seed=1)
    assert len(loader) == 7
    epochs = []
    for _ in range(3):
        batches = [(x, y) for x, y in loader]
        assert [len(y) for _, y in batches] == [8] * 6 + [2]
        ids = torch.cat([y for _, y in batches])
        assert sorted(ids.tolist()) == list(range(50))
        for x, y in batches:  # images travel with their labels
            assert x.dtype == torch.uint8 and torch.equal(x[:, 0, 0, 0].long(), y)
        epochs.append(ids.tolist())
    assert epochs[0] != epochs[1] != epochs[2] and loader.epoch == 3


def test_loader_unshuffled_order_and_drop_last():
    images, labels = _dataset()
    loader = DeviceLoader(images, labels, batch_size=8, shuffle=False, drop_last=True, device="cpu")
    assert len(loader) == 6
    assert sum(_epoch_ids(loader), []) == list(range(48))


def test_loader_deterministic_by_seed():
    images, labels = _dataset()

    def ids(seed):
        return _epoch_ids(DeviceLoader(images, labels, 8, True, True, "cpu", seed=seed))

    assert ids(5) == ids(5) and ids(5) != ids(6)
    loader = DeviceLoader(images, labels, 8, True, True, "cpu", seed=5)
    loader.set_epoch(2)  # random access by epoch, as DistributedSampler.set_epoch
    reference = DeviceLoader(images, labels, 8, True, True, "cpu", seed=5)
    for _ in range(2):  # run through epochs 0 and 1
        _epoch_ids(reference)
    assert _epoch_ids(loader) == _epoch_ids(reference)


def test_loader_resume_mid_epoch_reproduces_the_remaining_batches():
    images, labels = _dataset()
    full = DeviceLoader(images, labels, 6, True, True, "cpu", seed=3)
    uninterrupted = _epoch_ids(full) + _epoch_ids(full)
    run = DeviceLoader(images, labels, 6, True, True, "cpu", seed=3)
    _epoch_ids(run)
    seen = []
    for _, y in run:  # stop after 3 batches of the second epoch
        seen.append(y.tolist())
        if len(seen) == 3:
            state = run.state_dict()
            break
    resumed = DeviceLoader(images, labels, 6, True, True, "cpu", seed=99)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the usual call at the top of the epoch loop keeps the position
    rest = _epoch_ids(resumed)
    assert seen + rest == uninterrupted[len(uninterrupted) // 2:]
    assert resumed.epoch == 2 and resumed.position == 0
    with pytest.raises(ValueError, match="global batch of 6"):
        DeviceLoader(images, labels, 5, True, True, "cpu").load_state_dict(state)


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shards_are_disjoint_and_cover_the_permutation(drop_last):
    images, labels = _dataset(53)
    world = 4
    loaders = [DeviceLoader(images, labels, 4, True, drop_last, "cpu", seed=2, rank=r, world_size=world)
               for r in range(world)]
    shards = [sum(_epoch_ids(loader), []) for loader in loaders]
    flat = sum(shards, [])
    assert len(flat) == len(set(flat))  # disjoint
    permutation = loaders[0].permutation(0).tolist()
    if drop_last:
        assert len({len(loader) for loader in loaders}) == 1 and len(loaders[0]) == 3  # ⌊⌊53 / 4⌋ / 4⌋
        global_batch = 4 * world
        for step in range(3):  # at every step the ranks' batches together are the next global batch
            union = sorted(sum((shard[4 * step: 4 * step + 4] for shard in shards), []))
            assert union == sorted(permutation[step * global_batch: (step + 1) * global_batch])
        assert sorted(flat) == sorted(permutation[: len(loaders[0]) * global_batch])
    else:
        assert sorted(flat) == list(range(53))
    with pytest.raises(ValueError, match="rank"):
        DeviceLoader(images, labels, 4, True, drop_last, "cpu", rank=4, world_size=4)


def test_loader_rejects_bad_inputs():
    images, labels = _dataset(10)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(images.float(), labels, 4, True, True, "cpu")
    with pytest.raises(ValueError, match="labels"):
        DeviceLoader(images, labels[:5], 4, True, True, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(images, labels, 0, True, True, "cpu")
    with pytest.raises(ValueError, match="no full batch"):
        DeviceLoader(images, labels, 11, True, True, "cpu")
    assert math.ceil(10 / 4) == len(DeviceLoader(images, labels, 4, True, False, "cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_runs_on_device_and_is_seedable():
    images, labels = _batch(3, batch=64, size=32)
    loader = DeviceLoader(images, labels, 32, True, True, "cuda", seed=0)
    augment = _augment(3, **CIFAR_PIPELINE)
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda
    out, targets = augment(x, y, generator=torch.Generator().manual_seed(0))
    again, _ = augment(x, y, generator=torch.Generator().manual_seed(0))
    assert out.is_cuda and targets.is_cuda and out.shape == x.shape
    torch.testing.assert_close(out, again)
