"""Language-model presets (registered with the others by `vitlab.train.presets`; `vitlab presets` lists them all).

Sources: nanoGPT's `config/train_shakespeare_char.py` and the CPU command of its README (4 layers, 4 heads, width 128,
context 64, batch 12, 2000 iterations, dropout 0), its `train_gpt2.py` GPT-2 (124M) OpenWebText recipe, which the
CRATE-α paper's language experiments follow (crate.md: "GPT-2 recipe"), and mimetic.md (per-component signs for
language models).
"""
from __future__ import annotations

import dataclasses

from ..config import TrainConfig

__all__ = ["PRESETS", "MIMETIC_LM_VISION", "MIMETIC_LM_GPT2_SIGNS", "MIMETIC_LM_VO_SMALL_BETA"]

# Mimetic init for language models, per component (mimetic.md: make both signs configurable).
MIMETIC_LM_VISION = dict(alpha_qk=0.7, beta_qk=0.7, sign_qk=1, alpha_vo=0.4, beta_vo=0.4, sign_vo=-1)
"""The paper's vision recipe as is: W_q W_kᵀ ≈ 0.7 Z + 0.7 I, W_v W_proj ≈ 0.4 Z − 0.4 I."""
MIMETIC_LM_GPT2_SIGNS = dict(alpha_qk=0.7, beta_qk=0.7, sign_qk=-1, alpha_vo=0.4, beta_vo=0.4, sign_vo=1)
"""The signs pre-trained GPT-2 shows (the paper's Figure 2: QK diagonal negative, VO positive)."""
MIMETIC_LM_VO_SMALL_BETA = dict(init_qk=False, alpha_vo=0.4, beta_vo=0.1, sign_vo=-1)
"""VO only with a small identity (β = 0.1): the QK half keeps the default init, so causal attention is not pushed
toward the diagonal; our choice of β where the papers give no number for language models."""


def _shakespeare_char(model: str, init: str | None = None, init_kwargs: dict | None = None) -> TrainConfig:
    """nanoGPT's CPU run of `train_shakespeare_char.py`: context 64, batch 12, 2000 steps, AdamW lr 1e-3 → 1e-4
    (cosine after 100 warmup steps), β2 0.99, weight decay 0.1 (matrices and embeddings), grad clip 1, dropout 0;
    evaluation every 250 steps over the whole validation split (the last 10% of the text)."""
    return TrainConfig(model=model, dataset="tinyshakespeare", tokenizer="char", block_size=64, batch_size=12,
                       steps=2000, warmup_steps=100, eval_interval=250, lr=1e-3, min_lr=1e-4, betas=(0.9, 0.99),
                       weight_decay=0.1, grad_clip=1.0, optimizer="adamw", schedule="cosine", train_split="train",
                       eval_split="val", init=init, init_kwargs=dict(init_kwargs or {}), log_every=250,
                       model_kwargs={"dropout": 0.0})


def shakespeare_char_gpt() -> TrainConfig:
    """nanoGPT's CPU shakespeare_char run with vitlab's GPT (4 layers, 4 heads, width 128, context 64, batch 12,
    2000 steps, dropout 0; 0.80 M parameters, bias-free with exact GELU as nanoGPT's train.py).

    Run: vitlab train shakespeare_char_gpt
    Should reach: validation loss about 1.88 (nanoGPT's README); measured: docs/language.md."""
    return _shakespeare_char("gpt_char_tiny")


def shakespeare_char_gpt_mimetic() -> TrainConfig:
    """The same GPT with mimetic init of every attention layer (the vision recipe: QK +0.7 I, VO −0.4 I).

    Run: vitlab train shakespeare_char_gpt_mimetic
    Should reach: compare with shakespeare_char_gpt in docs/language.md (3 seeds)."""
    return _shakespeare_char("gpt_char_tiny", "mimetic", MIMETIC_LM_VISION)


def shakespeare_char_gpt_mimetic_vo() -> TrainConfig:
    """The same GPT with the VO-only, small-β mimetic init (W_v W_proj ≈ 0.4 Z − 0.1 I; QK default).

    Run: vitlab train shakespeare_char_gpt_mimetic_vo
    Should reach: see docs/language.md."""
    return _shakespeare_char("gpt_char_tiny", "mimetic", MIMETIC_LM_VO_SMALL_BETA)


def shakespeare_char_crate() -> TrainConfig:
    """Causal CRATE (MSSA + ISTA, 16 layers at width 128: the GPT's parameter count) on shakespeare_char, same
    recipe and steps as shakespeare_char_gpt.

    Run: vitlab train shakespeare_char_crate
    Should reach: see docs/language.md."""
    return _shakespeare_char("crate_lm_char_tiny")


def shakespeare_char_crate_alpha() -> TrainConfig:
    """Causal CRATE-α (MSSA + overcomplete dictionary learning, width 128, the GPT's parameter count) on
    shakespeare_char, same recipe and steps as shakespeare_char_gpt.

    Run: vitlab train shakespeare_char_crate_alpha
    Should reach: see docs/language.md."""
    return _shakespeare_char("crate_alpha_lm_char_tiny")


def _openwebtext(model: str) -> TrainConfig:
    """nanoGPT's GPT-2 (124M) OpenWebText recipe: GPT-2 BPE (vocabulary padded to 50304), context 1024, ~0.5 M
    tokens per step (batch 480 = 12 × 40 accumulation on one GPU; divide the accumulation by the number of GPUs),
    600 000 steps, AdamW lr 6e-4 → 6e-5 (cosine after 2000 warmup steps), β (0.9, 0.95), weight decay 0.1, grad
    clip 1, dropout 0, bf16; validation loss over 200 × 12 windows every 1000 steps."""
    return TrainConfig(model=model, dataset="openwebtext", tokenizer="gpt2", block_size=1024, batch_size=480,
                       grad_accum_steps=40, steps=600_000, warmup_steps=2000, eval_interval=1000, eval_subset=2400,
                       lr=6e-4, min_lr=6e-5, betas=(0.9, 0.95), weight_decay=0.1, grad_clip=1.0, optimizer="adamw",
                       schedule="cosine", train_split="train", eval_split="val", log_every=10,
                       model_kwargs={"vocab_size": 50304, "dropout": 0.0})


def openwebtext_gpt2() -> TrainConfig:
    """GPT-2 (124M) on OpenWebText (nanoGPT's recipe; needs the OpenWebText files and a GPU node).

    Run: torchrun --nproc_per_node 8 -m vitlab train openwebtext_gpt2 grad_accum_steps=5 data_dir=/data
    Should reach: validation loss 2.85 (crate.md; nanoGPT reports ~2.85)."""
    return _openwebtext("gpt2")


def openwebtext_crate_lm_base() -> TrainConfig:
    """Causal CRATE-B (about 60M) on OpenWebText with the GPT-2 recipe.

    Run: torchrun --nproc_per_node 8 -m vitlab train openwebtext_crate_lm_base grad_accum_steps=5 data_dir=/data
    Should reach: validation loss 3.37 (CRATE-α paper)."""
    return _openwebtext("crate_lm_base")


def openwebtext_crate_alpha_lm_small() -> TrainConfig:
    """Causal CRATE-α-S (about 57M) on OpenWebText with the GPT-2 recipe.

    Run: torchrun --nproc_per_node 8 -m vitlab train openwebtext_crate_alpha_lm_small grad_accum_steps=5 data_dir=/data
    Should reach: validation loss 3.28 (CRATE-α paper)."""
    return _openwebtext("crate_alpha_lm_small")


def openwebtext_crate_alpha_lm_base() -> TrainConfig:
    """Causal CRATE-α-B (about 120M) on OpenWebText with the GPT-2 recipe.

    Run: torchrun --nproc_per_node 8 -m vitlab train openwebtext_crate_alpha_lm_base grad_accum_steps=5 data_dir=/data
    Should reach: validation loss 3.14 (CRATE-α paper)."""
    return _openwebtext("crate_alpha_lm_base")


def wikitext103_gpt() -> TrainConfig:
    """A 6-layer GPT (width 512, 8 heads) on WikiText-103 with GPT-2 BPE, context 512, default init: the
    language-model half of the mimetic paper's comparison (needs the WikiText-103 files and a GPU).

    Run: vitlab train wikitext103_gpt data_dir=/data
    Should reach: compare with wikitext103_gpt_mimetic (the mimetic paper reports a small gain)."""
    return dataclasses.replace(_openwebtext("gpt2"), dataset="wikitext103", block_size=512, batch_size=64,
                               grad_accum_steps=1, steps=50_000, warmup_steps=1000, eval_interval=1000,
                               eval_subset=0, lr=6e-4,
                               model_kwargs={"vocab_size": 50304, "n_layer": 6, "n_head": 8, "n_embd": 512,
                                             "dropout": 0.1})


def wikitext103_gpt_mimetic() -> TrainConfig:
    """wikitext103_gpt with mimetic init (vision signs; see MIMETIC_LM_GPT2_SIGNS and MIMETIC_LM_VO_SMALL_BETA in
    vitlab/train/presets/lm.py for the alternatives, `init_kwargs.sign_qk=-1` etc. on the command line).

    Run: vitlab train wikitext103_gpt_mimetic data_dir=/data
    Should reach: compare with wikitext103_gpt."""
    return dataclasses.replace(wikitext103_gpt(), init="mimetic", init_kwargs=dict(MIMETIC_LM_VISION))


PRESETS = (  # the language-model presets, registered by vitlab.train.presets under their function names
    shakespeare_char_gpt, shakespeare_char_gpt_mimetic, shakespeare_char_gpt_mimetic_vo, shakespeare_char_crate,
    shakespeare_char_crate_alpha, openwebtext_gpt2, openwebtext_crate_lm_base, openwebtext_crate_alpha_lm_small,
    openwebtext_crate_alpha_lm_base, wikitext103_gpt, wikitext103_gpt_mimetic)
