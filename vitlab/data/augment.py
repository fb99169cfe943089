"""Batched image augmentation on the training device.

One call augments a whole batch of uint8 images where they live (CPU or GPU): no per-image Python, no DataLoader
workers. The pipeline, in order (each stage optional, configured by :class:`AugmentConfig`):

1. uint8 → float in [0, 1]
2. pad-and-random-crop (reflect padding, airbench style) *or* Inception-style random-resized crop
3. horizontal flip (p = 0.5)
4. RandAugment(n, m), per image (torchvision's op list and magnitudes, see :func:`rand_augment`)
5. colour jitter (brightness / contrast / saturation, torchvision formulas)
6. normalisation with the dataset mean / std
7. random erasing (Cutout) on the normalised image, erased value 0 (= the mean colour), as torchvision
8. mixup / cutmix with soft targets; label smoothing folded into the targets

This is the order of the CIFAR pipeline in docs/augment.md (locuslab/convmixer-cifar10: RandomResizedCrop, flip,
RandAugment, ColorJitter, ToTensor, Normalize, RandomErasing). kornia does the crops, flip, colour jitter and erasing
and supplies the RandAugment image operations; the per-image RandAugment selection and mixup / cutmix are written here
in a few vectorised lines (why: docs/augment.md, "Why not kornia's RandAugment / MixUp").

Seeding: kornia draws from torch's global RNG. When ``generator`` is passed, :func:`seeded_rng` draws one seed from it,
forks the global CPU RNG (and the CUDA RNG of the images' device), seeds them, runs the pipeline and restores them, so
equal generator states give bit-identical output (on CPU; CUDA kernels may differ by rounding) and the global RNG is
left untouched.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import kornia.augmentation as K
import kornia.enhance as KE
import torch
from kornia.geometry.transform import warp_affine
from torch import Tensor, nn

__all__ = ["AugmentConfig", "DeviceAugment", "soft_targets", "rand_augment", "mix_batch", "seeded_rng"]

RANDAUGMENT_OPS: tuple[str, ...] = (
    "identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",  # geometric (one affine warp)
    "brightness", "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize",
)
_GEOMETRIC = {name: i for i, name in enumerate(RANDAUGMENT_OPS) if 1 <= i <= 5}
_MAX_MAGNITUDE = 30  # torchvision: num_magnitude_bins = 31, magnitudes 0 … 30


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False,
                 high_open: bool = False) -> None:
    """Raise ValueError naming the AugmentConfig field and its allowed range when ``value`` lies outside it."""
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above or value != value:  # value != value catches NaN
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"AugmentConfig.{name} must be in {interval}, got {value!r}")


@dataclass
class AugmentConfig:
    """What :class:`DeviceAugment` does; every stage defaults to off.

    Fields:
        random_crop_padding: pad every side by this many pixels, then crop back to the input size at a random offset
            (0 = off). ``random_crop_padding_mode`` is "reflect" (airbench's choice, the default) or "constant" (zeros,
            torchvision's ``RandomCrop(32, padding=4)``).
        random_resized_crop: Inception-style crop (area fraction in ``rrc_scale``, aspect ratio in ``rrc_ratio``,
            log-uniform), resized bilinearly back to the input size. Exclusive with ``random_crop_padding``.
        hflip: horizontal flip with probability 0.5.
        randaugment_n / randaugment_m: RandAugment with n operations per image (0 = off) at magnitude m on
            torchvision's 0 … 30 scale (fraction m / 30 of each operation's maximum). timm's ``rand-mX`` means X / 10
            of the maximum, i.e. m = 3·X here (timm's m9 ≈ m = 27).
        color_jitter: brightness, contrast and saturation factors uniform in [1 − s, 1 + s] (torchvision
            ``ColorJitter(s, s, s)``), applied in a random order; 0 = off.
        random_erasing: per-image probability of erasing one rectangle (area 2 %–33 %, aspect 0.3–3.3) with 0 after
            normalisation (torchvision ``RandomErasing``; the "Cutout" of the mimetic pipeline uses 0.25).
        mixup_alpha / cutmix_alpha: Beta(α, α) for the per-image mixing weight λ (0 = off). When both are on, each
            batch uses cutmix with probability ``mix_switch_prob`` (timm's ``switch_prob``, 0.5) and mixup otherwise.
        mix_prob: per-image probability of being mixed at all.
        label_smoothing: ε in the soft target (1 − ε)·onehot + ε / num_classes.
        test_flip: evaluation only: each image's logits are the mean of the image's and its horizontal mirror's
            (test-time augmentation, as airbench); one more forward per evaluated image.
    """

    random_crop_padding: int = 0
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = False
    randaugment_n: int = 0
    randaugment_m: int = 9
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    label_smoothing: float = 0.0
    mix_switch_prob: float = 0.5
    random_crop_padding_mode: str = "reflect"
    test_flip: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ValueError naming the field and the allowed values."""
        for name in ("random_crop_padding", "randaugment_n", "randaugment_m"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"AugmentConfig.{name} must be an int, got {getattr(self, name)!r}")
        _check_range("random_crop_padding", self.random_crop_padding, 0, math.inf, high_open=True)
        if self.random_crop_padding_mode not in ("reflect", "constant"):
            raise ValueError("AugmentConfig.random_crop_padding_mode must be 'reflect' or 'constant', "
                             f"got {self.random_crop_padding_mode!r}")
        if self.random_crop_padding > 0 and self.random_resized_crop:
            raise ValueError("AugmentConfig.random_crop_padding and AugmentConfig.random_resized_crop are alternative "
                             "crops: set random_crop_padding = 0 or random_resized_crop = False")
        if len(self.rrc_scale) != 2 or len(self.rrc_ratio) != 2:
            raise ValueError("AugmentConfig.rrc_scale and AugmentConfig.rrc_ratio must be (low, high) pairs")
        _check_range("rrc_scale[0]", self.rrc_scale[0], 0.0, 1.0, low_open=True)
        _check_range("rrc_scale[1]", self.rrc_scale[1], self.rrc_scale[0], 1.0)
        _check_range("rrc_ratio[0]", self.rrc_ratio[0], 0.0, math.inf, low_open=True, high_open=True)
        _check_range("rrc_ratio[1]", self.rrc_ratio[1], self.rrc_ratio[0], math.inf, high_open=True)
        _check_range("randaugment_n", self.randaugment_n, 0, math.inf, high_open=True)
        _check_range("randaugment_m", self.randaugment_m, 0, _MAX_MAGNITUDE)
        _check_range("color_jitter", self.color_jitter, 0.0, 1.0, high_open=True)
        for name in ("random_erasing", "mix_prob", "mix_switch_prob"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        for name in ("mixup_alpha", "cutmix_alpha"):
            _check_range(name, getattr(self, name), 0.0, math.inf, high_open=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)

    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix can change a batch."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0


def soft_targets(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Label-smoothed one-hot targets: (1 − ε)·onehot(y) + ε / num_classes (PyTorch's and timm's convention).

    labels: (B,) int64 → (B, num_classes) float32 on the labels' device; each row sums to 1.
    """
    _check_range("label_smoothing", smoothing, 0.0, 1.0, high_open=True)
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    onehot = torch.zeros(labels.shape[0], num_classes, device=labels.device)  # (B, K)
    onehot.scatter_(1, labels.long()[:, None], 1.0)  # not F.one_hot: its range check syncs with the GPU
    return onehot * (1.0 - smoothing) + smoothing / num_classes  # (B, K)


@contextlib.contextmanager
def seeded_rng(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Run the body with torch's global RNG seeded from ``generator``, then restore the global RNG.

    kornia (and :func:`rand_augment` / :func:`mix_batch`) draw from the global RNG; this makes them follow ``generator``.
    One int64 is drawn from ``generator`` per call, so equal generator states give equal draws, and the generator
    advances by one draw. The CPU RNG is always forked and seeded (kornia samples parameters on the CPU unless its
    module was moved); for CUDA images the RNG of that device is forked and seeded too. ``None``: the global RNG is
    used as is. A CPU generator avoids one device→host sync per call.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _randaugment_geometric(x: Tensor, op: Tensor, sign: Tensor, frac: float) -> Tensor:
    """Shear / translate / rotate the images whose op is geometric, in one batched affine warp about the centre.

    x: (B, C, H, W) float; op, sign: (B,). Magnitudes (torchvision): shear 0.3·frac, translate 150/331·frac of the
    side, rotation 30·frac degrees, each with a random sign; nearest-neighbour sampling, zero fill.
    """
    batch, _, height, width = x.shape
    dtype = x.dtype
    shear = 0.3 * frac * sign.to(dtype)  # (B,)
    angle = math.radians(30.0 * frac) * sign.to(dtype)  # (B,)
    is_rot = op == _GEOMETRIC["rotate"]
    cos = torch.where(is_rot, angle.cos(), torch.ones_like(angle))  # (B,)
    sin = torch.where(is_rot, angle.sin(), torch.zeros_like(angle))  # (B,)
    a01 = torch.where(op == _GEOMETRIC["shear_x"], shear, torch.zeros_like(shear)) - sin
    a10 = torch.where(op == _GEOMETRIC["shear_y"], shear, torch.zeros_like(shear)) + sin
    linear = torch.stack([torch.stack([cos, a01], -1), torch.stack([a10, cos], -1)], -2)  # (B, 2, 2)
    shift = 150.0 / 331.0 * frac * sign.to(dtype)  # (B,)
    zero = torch.zeros_like(shift)
    translation = torch.stack([torch.where(op == _GEOMETRIC["translate_x"], shift * width, zero),
                               torch.where(op == _GEOMETRIC["translate_y"], shift * height, zero)], -1)  # (B, 2)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], device=x.device, dtype=dtype)  # (2,)
    offset = centre - linear @ centre + translation  # (B, 2): rotate / shear about the centre, then translate
    matrix = torch.cat([linear, offset[:, :, None]], -1)  # (B, 2, 3)
    warped = warp_affine(x, matrix, (height, width), mode="nearest", padding_mode="zeros", align_corners=True)
    is_geometric = ((op >= 1) & (op <= 5)).view(batch, 1, 1, 1)
    return torch.where(is_geometric, warped, x)  # the others stay bit-exact


def _autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 1]; constant channels stay unchanged (torchvision / PIL).

    kornia's normalize_min_max maps a constant channel to 0 instead, hence these four lines.
    """
    low = x.amin(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    high = x.amax(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), 1.0 / (high - low).clamp_min(1e-12))
    return ((x - torch.where(flat, torch.zeros_like(low), low)) * scale).clamp(0.0, 1.0)


def _randaugment_intensity(x: Tensor, op: Tensor, sign: Tensor, frac: float) -> Tensor:
    """Apply the intensity op each image chose (kornia.enhance kernels, torchvision magnitudes).

    x: (B, C, H, W) float in [0, 1]; op, sign: (B,). Enhance factors 1 ± 0.9·frac; posterize to
    8 − round(4·frac) bits; solarize above 1 − frac. On one channel "color" (saturation) is the identity, as in
    torchvision; every other op works per channel.
    """
    factor = 1.0 + 0.9 * frac * sign.to(x.dtype)  # (B,)
    bits = 8 - round(4 * frac)  # torchvision: 8 - round(m / 7.5) (m / 7.5 is never a tie for integer m)
    index = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
    operations = {
        "brightness": lambda t: KE.adjust_brightness_accumulative(t, factor),
        "color": lambda t: KE.adjust_saturation_with_gray_subtraction(t, factor) if t.shape[1] == 3 else t,
        "contrast": lambda t: KE.adjust_contrast_with_mean_subtraction(t, factor),
        "sharpness": lambda t: KE.sharpness(t, factor) if min(t.shape[-2:]) >= 3 else t,  # 3×3 kernel
        "posterize": lambda t: KE.posterize(t, bits),
        "solarize": lambda t: KE.solarize(t, 1.0 - frac),
        "autocontrast": _autocontrast,
        "equalize": KE.equalize,
    }
    for name, function in operations.items():
        chosen = (op == index[name]).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        x = torch.where(chosen, function(x), x)  # every op runs on the full batch: no host sync, static shapes
    return x


def rand_augment(x: Tensor, num_ops: int, magnitude: int) -> Tensor:
    """RandAugment (Cubuk et al. 2020) with torchvision's semantics, batched: each image independently draws
    ``num_ops`` operations uniformly (with replacement) from the 14 in :data:`RANDAUGMENT_OPS` and applies them at
    ``magnitude`` ∈ [0, 30] (fraction magnitude / 30 of each op's maximum), with a random sign per image for the
    signed ops.

    x: (B, C, H, W) float in [0, 1], any C (1 and 3 tested) → same shape. Draws from the global RNG of x's device.
    """
    if num_ops <= 0:
        return x
    _check_range("randaugment_m", magnitude, 0, _MAX_MAGNITUDE)
    frac = magnitude / _MAX_MAGNITUDE
    batch = x.shape[0]
    for _ in range(num_ops):
        op = torch.randint(len(RANDAUGMENT_OPS), (batch,), device=x.device)  # (B,)
        sign = torch.randint(0, 2, (batch,), device=x.device) * 2 - 1  # (B,) ±1
        x = _randaugment_geometric(x, op, sign, frac)
        x = _randaugment_intensity(x, op, sign, frac)
    return x


def mix_batch(x: Tensor, targets: Tensor, config: AugmentConfig) -> tuple[Tensor, Tensor]:
    """Mixup or cutmix, per image, each image mixed with its neighbour in the batch (``roll(1)``; never itself).

    x: (B, C, H, W) float; targets: (B, K) soft. λ ~ Beta(α, α) per image (1 for images not drawn with ``mix_prob``).
    Mixup: x ← λ·x + (1 − λ)·x_partner. Cutmix: a box with sides ⌊side·√(1 − λ)⌋, placed wholly inside the image, is
    pasted from the partner and λ is recomputed as the exact kept-area fraction. Targets: λ·t + (1 − λ)·t_partner.
    Cutmix vs mixup is drawn once per batch (``mix_switch_prob`` = probability of cutmix when both are on).
    """
    if not config.mixing or x.shape[0] < 2:
        return x, targets
    batch, _, height, width = x.shape
    use_cutmix = config.cutmix_alpha > 0 and (
        config.mixup_alpha <= 0 or bool(torch.rand(()) < config.mix_switch_prob))  # CPU draw: no device sync
    alpha = config.cutmix_alpha if use_cutmix else config.mixup_alpha
    concentration = torch.full((batch,), float(alpha), device=x.device)
    lam = torch.distributions.Beta(concentration, concentration).sample()  # (B,)
    apply = torch.rand(batch, device=x.device) < config.mix_prob  # (B,)
    lam = torch.where(apply, lam, torch.ones_like(lam))  # (B,)
    partner_x, partner_t = x.roll(1, 0), targets.roll(1, 0)  # (B, C, H, W), (B, K)
    if use_cutmix:
        cut = (1.0 - lam).sqrt()  # (B,)
        cut_h, cut_w = (cut * height).floor(), (cut * width).floor()  # (B,)
        top = (torch.rand(batch, device=x.device) * (height - cut_h + 1)).floor()  # (B,)
        left = (torch.rand(batch, device=x.device) * (width - cut_w + 1)).floor()  # (B,)
        rows = torch.arange(height, device=x.device, dtype=lam.dtype)  # (H,)
        cols = torch.arange(width, device=x.device, dtype=lam.dtype)  # (W,)
        in_rows = (rows >= top[:, None]) & (rows < (top + cut_h)[:, None])  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + cut_w)[:, None])  # (B, W)
        box = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
        x = torch.where(box, partner_x, x)
        lam = 1.0 - cut_h * cut_w / (height * width)  # (B,) exact kept-area fraction
    else:
        weight = lam.to(x.dtype).view(batch, 1, 1, 1)
        x = x * weight + partner_x * (1.0 - weight)
    lam = lam.to(targets.dtype)[:, None]  # (B, 1)
    return x, targets * lam + partner_t * (1.0 - lam)


class DeviceAugment(nn.Module):
    """The training-time augmentation of :class:`AugmentConfig`, batched on the images' device.

    ``forward(images, labels, generator)``: images (B, C, H, W) uint8 on any device, labels (B,) int64 →
    (float32 normalised images (B, C, H, W) on the same device, soft targets (B, num_classes) float32 with label
    smoothing and mixup / cutmix folded in). ``eval_transform(images)``: uint8 → normalised float, no randomness.
    ``mean`` / ``std`` are per channel on the [0, 1] scale (e.g. CIFAR-10 (0.4914, 0.4822, 0.4465)); their length
    fixes the channel count. Every stage works on 1 and 3 channels (1 channel: saturation is the identity).
    """

    def __init__(self, config: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...], num_classes: int):
        super().__init__()
        config.validate()
        if len(mean) == 0 or len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel and equal lengths, got {mean!r} and {std!r}")
        if any(not s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.config = config
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.num_classes = int(num_classes)
        self.flip = K.RandomHorizontalFlip(p=0.5) if config.hflip else None
        strength = config.color_jitter
        self.jitter = K.ColorJitter(strength, strength, strength if len(mean) == 3 else 0.0, 0.0, p=1.0) \
            if strength > 0 else None
        self.erase = K.RandomErasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0, p=config.random_erasing) \
            if config.random_erasing > 0 else None
        self._crops: dict[tuple[int, int], nn.Module] = {}  # built per image size on first use
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _crop(self, height: int, width: int) -> nn.Module | None:
        """The kornia crop for this image size (pad-and-crop or random-resized crop), or None when off."""
        config = self.config
        if config.random_crop_padding == 0 and not config.random_resized_crop:
            return None
        if (height, width) not in self._crops:
            if config.random_resized_crop:
                crop = K.RandomResizedCrop((height, width), scale=config.rrc_scale, ratio=config.rrc_ratio, p=1.0)
            else:
                crop = K.RandomCrop((height, width), padding=config.random_crop_padding, p=1.0,
                                    padding_mode=config.random_crop_padding_mode)
            self._crops[(height, width)] = crop
        return self._crops[(height, width)]

    def _normalise(self, x: Tensor) -> Tensor:
        """(x − mean) / std per channel; x: (B, C, H, W) float in [0, 1]."""
        key = (x.device, x.dtype)
        if key not in self._stats:
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
            std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
            self._stats[key] = (mean, std)
        mean, std = self._stats[key]
        return (x - mean) / std

    def _check_images(self, images: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[1] != len(self.mean):
            raise ValueError(f"images have {images.shape[1]} channels but mean / std have {len(self.mean)}")

    def eval_transform(self, images: Tensor) -> Tensor:
        """uint8 (B, C, H, W) → float32 (images / 255 − mean) / std, same device, no randomness."""
        self._check_images(images)
        return self._normalise(images.float().div_(255.0))

    def forward(self, images: Tensor, labels: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment one batch. images: (B, C, H, W) uint8; labels: (B,) int64 (moved to the images' device).

        Returns (B, C, H, W) float32 normalised images and (B, num_classes) float32 soft targets. ``generator``
        (CPU preferred) makes the call reproducible: see :func:`seeded_rng`.
        """
        self._check_images(images)
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        labels = labels.to(images.device, non_blocking=True)
        config = self.config
        with seeded_rng(generator, images.device):
            x = images.float().div_(255.0)  # (B, C, H, W) in [0, 1]
            crop = self._crop(images.shape[2], images.shape[3])
            if crop is not None:
                x = crop(x)
            if self.flip is not None:
                x = self.flip(x)
            x = rand_augment(x, config.randaugment_n, config.randaugment_m)
            if self.jitter is not None:
                x = self.jitter(x)
            x = self._normalise(x)
            if self.erase is not None:
                x = self.erase(x)
            targets = soft_targets(labels, self.num_classes, config.label_smoothing)  # (B, K)
            x, targets = mix_batch(x, targets, config)
        return x.contiguous(), targets

    def extra_repr(self) -> str:
        return f"config={self.config}, mean={self.mean}, std={self.std}, num_classes={self.num_classes}"
