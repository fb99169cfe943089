"""Contrastive image–text (CLIP) presets: CRATE-α-CLIPA's two-stage recipe for users with DataComp-scale data, and
CPU-sized Fashion-MNIST CLIPs (captions written from class names × templates) measured in docs/results.md.

CLIPA recipe (Li et al. 2023 "An inverse scaling law for CLIP training", as the CRATE-α paper applies it; the numbers
are those of ../shared/design/crate.md "CLIP"): pre-train at 84 px with 32 text tokens, batch 32k, lr ≈ 1e-3,
weight decay 0.2, 1,600 warmup steps, cosine; then fine-tune at 224 px from those weights with the position
embeddings interpolated (`checkpoint_adapt`). Reported zero-shot ImageNet-1K: CRATE-α-CLIPA-L/14 69.8 %,
H/14 72.3 %. Not given there, and chosen here: the number of samples seen (one pass over your data: set `steps`
for a fixed budget), AdamW betas (0.9, 0.98) (open_clip's default), the decoder's random-resized crop
scale (0.9, 1.0) (open_clip's default), the fine-tune's lr, length and warmup.
"""
from __future__ import annotations

from ...data.augment import AugmentConfig
from ..config import TrainConfig

__all__ = ["PRESETS"]


def _clipa(model: str, image_size: int, **overrides) -> TrainConfig:
    config = dict(model=model, dataset="image_text:data/datacomp1b", train_split="train", eval_split="val",
                  image_size=image_size, tokenizer="bert", context_length=32,
                  augment=AugmentConfig(hflip=False, random_resized_crop=True, rrc_scale=(0.9, 1.0)),
                  zeroshot_dataset="imagenet", zeroshot_split="val", optimizer="adamw", lr=1e-3, weight_decay=0.2,
                  betas=(0.9, 0.98), schedule="cosine", epochs=1, warmup_steps=1600, batch_size=32768,
                  grad_clip=1.0, num_workers=16, precision="auto", log_every=50, eval_every=0.1)
    return TrainConfig(**{**config, **overrides})


def clipa_crate_alpha_l14_pretrain() -> TrainConfig:
    """CRATE-α-CLIPA-L/14 pre-training at 84 px, 32 text tokens (BERT WordPiece), batch 32k, AdamW lr 1e-3,
    weight decay 0.2, 1,600 warmup steps, cosine; zero-shot ImageNet-1K at every evaluation.

    Run: vitlab train clipa_crate_alpha_l14_pretrain dataset=image_text:/path/to/datacomp1b
         data_dir=/path/to/imagenet-root class_names=/path/to/LOC_synset_mapping.txt  (under torchrun on many GPUs)
    The train split is `ROOT/train/*.tar` (img2dataset's webdataset layout: KEY.jpg + KEY.txt) or `ROOT/train.tsv`.
    Should reach (paper, after the 224 px fine-tune): 69.8 % zero-shot ImageNet-1K. Not run here: no DataComp, no
    GPU on the development machine. To train against a frozen, pre-initialised text tower as CLIPA does, start from
    a CLIP checkpoint holding it and add `freeze_text=true checkpoint=...`."""
    return _clipa("crate_alpha_clipa_large_patch14_224", 84)


def clipa_crate_alpha_l14_finetune() -> TrainConfig:
    """CRATE-α-CLIPA-L/14 fine-tuning at 224 px from the 84 px pre-training (its `best/` weights, position
    embeddings interpolated from 6 × 6 to 16 × 16 patches by `checkpoint_adapt`), lr 1e-4 (our choice: the spec
    gives none), 1 pass, 500 warmup steps.

    Run: vitlab train clipa_crate_alpha_l14_finetune dataset=image_text:/path/to/datacomp1b
         checkpoint=runs/clipa_crate_alpha_l14_pretrain/best data_dir=... class_names=...
    Should reach: 69.8 % zero-shot ImageNet-1K (paper). Not run here (no data, no GPU)."""
    return _clipa("crate_alpha_clipa_large_patch14_224", 224, lr=1e-4, warmup_steps=500,
                  checkpoint="runs/clipa_crate_alpha_l14_pretrain/best")


def clipa_crate_alpha_h14_pretrain() -> TrainConfig:
    """CRATE-α-CLIPA-H/14 pre-training at 84 px (as the L/14 preset, larger image tower).

    Run: vitlab train clipa_crate_alpha_h14_pretrain dataset=image_text:/path/to/datacomp1b ...
    Should reach (paper, after the 224 px fine-tune): 72.3 % zero-shot ImageNet-1K. Not run here."""
    return _clipa("crate_alpha_clipa_huge_patch14_224", 84)


def clipa_crate_alpha_h14_finetune() -> TrainConfig:
    """CRATE-α-CLIPA-H/14 fine-tuning at 224 px from the 84 px pre-training (as the L/14 fine-tune).

    Run: vitlab train clipa_crate_alpha_h14_finetune dataset=image_text:/path/to/datacomp1b
         checkpoint=runs/clipa_crate_alpha_h14_pretrain/best ...
    Should reach: 72.3 % zero-shot ImageNet-1K (paper). Not run here."""
    return _clipa("crate_alpha_clipa_huge_patch14_224", 224, lr=1e-4, warmup_steps=500,
                  checkpoint="runs/clipa_crate_alpha_h14_pretrain/best")


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST CLIPs: the image tower of the fashion_mnist_<family> classifier presets (width 96, depth 4, 3 heads,
# patch 7), a 2-layer text tower of width 64, a 64-d joint space; captions `template.format(class name)` from
# vitlab's templates file with the last 5 templates held out of training and used alone for zero-shot evaluation.

_FASHION_IMAGE = dict(patch_size=7, embed_dim=96, depth=4, num_heads=3)
_FASHION_TEXT = dict(width=64, layers=2, heads=2, context_length=32)


def _fashion_clip(image_model: str, **overrides) -> TrainConfig:
    config = dict(model="clip", model_kwargs=dict(image_model=image_model, embed_dim=64, image_kwargs=_FASHION_IMAGE,
                                                  text_kwargs=_FASHION_TEXT),
                  dataset="fashion_mnist_captions", tokenizer="bpe:512", context_length=32, heldout_templates=5,
                  augment=AugmentConfig(hflip=True), optimizer="adamw", lr=2e-3, weight_decay=0.05,
                  schedule="cosine", warmup_epochs=0.2, epochs=3, batch_size=128, grad_clip=1.0, log_every=100,
                  eval_every=1)
    return TrainConfig(**{**config, **overrides})


def fashion_mnist_clip_crate_alpha() -> TrainConfig:
    """A small CRATE-α CLIP on Fashion-MNIST captions (image tower = the fashion_mnist_crate_alpha classifier's),
    3 epochs, AdamW 2e-3 as the classifier; zero-shot test accuracy with 5 held-out templates.

    Run: vitlab train fashion_mnist_clip_crate_alpha
    Should reach: see docs/results.md (study clip_fashion, beside the classifier)."""
    return _fashion_clip("crate_alpha_tiny_patch4_32")


def fashion_mnist_clip_vit() -> TrainConfig:
    """The same CLIP with a small ViT image tower (width 96, depth 4, 3 heads, patch 7).

    Run: vitlab train fashion_mnist_clip_vit
    Should reach: not measured (the study uses the CRATE-α tower)."""
    return _fashion_clip("vit_tiny_patch4_32")


PRESETS = (  # the CLIP presets, registered by vitlab.train.presets under their function names
    clipa_crate_alpha_l14_pretrain, clipa_crate_alpha_l14_finetune, clipa_crate_alpha_h14_pretrain,
    clipa_crate_alpha_h14_finetune, fashion_mnist_clip_crate_alpha, fashion_mnist_clip_vit)
