"""Causal CRATE and CRATE-α language models: the GPT-2 skeleton (`CausalLM`: wte + wpe → blocks → ln_f → tied
lm_head, nanoGPT names) with the white-box `CrateBlock` of crate.py, its MSSA made causal.

Each layer is one step of sparse rate reduction on the token sequence, where token t may only use tokens ≤ t:
  compression  z ← z + MSSA_causal(LN1(z))       (CRATE eq. 9, gradient step on R^c(Z; U_[K]) over the prefix)
  sparsify     CRATE:   z ← ISTA(LN2(z))         (eq. 11, complete dictionary D (d, d), no residual)
               CRATE-α: z ← z + D1·ODL(LN2(z))   (CRATE-α eqs. 5-7, D and D1 (d, 4d), residual)
ISTA / ODL act on each token alone, so the only mixing across positions is the causal MSSA.

The paper (Yang et al. 2024, §4 "language", OpenWebText, GPT-2 recipe) reports validation loss GPT-2-B (124M) 2.85,
CRATE-B (60M) 3.37, CRATE-α-S (57M) 3.28, CRATE-α-B (120M) 3.14; no official code or layouts were released, so
the sizes below are derived from those parameter counts (vocab 50257, block 1024, tied head). Per layer:
  GPT-2   12d² + 13d     (c_attn 3d², c_proj d², MLP 8d², biases, two LayerNorms)
  CRATE    3d² +  5d     (U d², proj d² + d, D d², two LayerNorms)
  CRATE-α 10d² +  4d     (U d², proj d² (no bias), D 4d², D1 4d², two LayerNorms)
plus embeddings (V + T)·d = 51,281·d and ln_f 2d. nanoGPT's `num_params()` (the paper's training code prints it)
leaves out wpe (T·d); both counts are given.
"""
from __future__ import annotations

from functools import partial


from ._constants import lm_cfg
from ._lm_base import CausalLM
from ._registry import register_model
from .crate import CrateBlock, init_crate_blocks_
from .crate_alpha import init_crate_alpha_blocks_

__all__ = ["CRATELM", "CRATEAlphaLM"]


class CRATELM(CausalLM):
    """Causal CRATE language model, the official CRATE block (complete ISTA, one step from A⁰ = h, no residual: the
    code replaces the stream; MSSA output projection with bias; LayerNorm eps 1e-5; step η = 0.1, λ = 0.1).

    Args:
        vocab_size, block_size, n_layer, n_head, n_embd: as `GPT`.
        dropout: on the summed embeddings only (the CRATE blocks have none, as the official code).
        ista_step_size, ista_lambda: η and λ of the ISTA step.

    Init: the vision CRATE's block init (PyTorch-default Linear layers, Kaiming-uniform dictionaries D), token and
    position embeddings N(0, 0.02) (GPT-2's; the vision CRATE draws its positions with std 1).

    Sizes: `crate_lm_base` is GPT-2-B's layout (12 layers, 12 heads, d 768): 51,281·768 + 12·(3·768² + 5·768)
    + 2·768 = 60,665,088 parameters (59,878,656 without wpe), the paper's "CRATE-B (60M)".
    """

    def __init__(self, vocab_size: int = 50257, block_size: int = 1024, n_layer: int = 12, n_head: int = 12,
                 n_embd: int = 768, dropout: float = 0.0, ista_step_size: float = 0.1, ista_lambda: float = 0.1):
        super().__init__(
            block_fn=lambda i: CrateBlock(n_embd, n_head, ista_step_size=ista_step_size, ista_lambda=ista_lambda,
                                          causal=True),
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
            dropout=dropout, norm_eps=1e-5)
        self.init_weights()

    def init_weights(self) -> None:
        self.init_embeddings_()
        init_crate_blocks_(self.transformer.h)


class CRATEAlphaLM(CausalLM):
    """Causal CRATE-α language model: MSSA (bias-free output projection) then overcomplete dictionary learning
    (two ISTA steps from A⁰ = 0 against D (d, 4d), decoded by D1, added residually), LayerNorm eps 1e-6.

    Args:
        vocab_size, block_size, n_layer, n_head, n_embd, dropout, ista_step_size, ista_lambda: as `CRATELM`.
        overcomplete_ratio, decoupled_dictionary, residual_sparse_coding: CRATE-α's three changes from CRATE, as
            switches (all off with overcomplete_ratio=1 gives CRATE's block with CRATE-α's init and norms).

    Init: the vision CRATE-α's (JAX) block init (U and proj N(0, 0.02), D and D1 uniform ±√(6/d)), embeddings
    N(0, 0.02). `no_weight_decay`: parameters with fewer than 2 dimensions plus D and D1 (the official mask decays
    only the attention kernels and, here, the tied embedding).

    Sizes (per layer 10d² + 4d, embeddings 51,281·d + ln_f 2d):
      * `crate_alpha_lm_small` — 12 layers, 8 heads, d 512: 26,255,872 + 12·2,623,488 + 1,024 = 57,738,752
        (57,214,464 without wpe). At 12 layers, 120d² + 51,331d = 57M solves to d ≈ 508; 512 (head width 64)
        is the natural width there, and nanoGPT's count rounds to the paper's 57M.
      * `crate_alpha_lm_base` — 14 layers, 12 heads, d 768: 39,385,344 + 14·5,901,312 = 122,003,712 (121,217,280
        without wpe). No natural layout gives 120M exactly: GPT-2-B's own layout (12 × 768) gives 110,201,088, 13
        layers 116,102,400, 14 layers 122,003,712; at 12 layers 120M needs d ≈ 809 (816 = 12 × 68 gives
        121,788,816, a head width nobody uses); an untied head would add V·d = 38.6M (148.8M). We keep GPT-2-B's
        width and head width 64 and take the nearest depth, 14 (+1.7 % of 120M, against −3.2 % for 13).
        `create_model('crate_alpha_lm_base', n_layer=12)` is the 110M same-shape-as-GPT-2 variant.
    """

    def __init__(self, vocab_size: int = 50257, block_size: int = 1024, n_layer: int = 14, n_head: int = 12,
                 n_embd: int = 768, dropout: float = 0.0, overcomplete_ratio: int = 4,
                 decoupled_dictionary: bool = True, residual_sparse_coding: bool = True, ista_step_size: float = 0.1,
                 ista_lambda: float = 0.1):
        super().__init__(
            block_fn=lambda i: CrateBlock(
                n_embd, n_head, overcomplete_ratio=overcomplete_ratio, decoupled_dictionary=decoupled_dictionary,
                residual_sparse_coding=residual_sparse_coding, attn_proj_bias=False, norm_eps=1e-6,
                ista_step_size=ista_step_size, ista_lambda=ista_lambda, causal=True),
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
            dropout=dropout, norm_eps=1e-6)
        self.init_weights()

    def init_weights(self) -> None:
        self.init_embeddings_()
        init_crate_alpha_blocks_(self.transformer.h)

    def no_weight_decay(self) -> set[str]:
        """ndim < 2 (biases, LayerNorms) plus every dictionary D and D1 (CRATE-α's official mask)."""
        dictionaries = {name for name, _ in self.named_parameters() if name.endswith((".ista.D", ".ista.D1"))}
        return super().no_weight_decay() | dictionaries


# ----------------------------------------------------------------------------------------------------------------
# Registry. The char-level CPU configs match nanoGPT's `gpt_char_tiny` (4 layers × 12d² at d 128) in parameters:
# at vocab 65, block 64: GPT 804,096 (bias-free); CRATE 16 layers × 3d² → 813,440 (+1.2 %); CRATE-α 5 layers ×
# 10d² → 838,528 (+4.3 %; 4 layers would give 674,176, −16 %).

_PAPER_CRATE = "Yu et al. 2023, CRATE (causal language model as in Yang et al. 2024, CRATE-α, §4)"
_PAPER_ALPHA = "Yang et al. 2024, CRATE-α (causal language model, §4)"


def _register_all() -> None:
    register_model(partial(CRATELM, n_layer=12, n_head=12, n_embd=768), name="crate_lm_base",
                   cfg=lm_cfg(50257, 1024, paper=_PAPER_CRATE))
    register_model(partial(CRATEAlphaLM, n_layer=12, n_head=8, n_embd=512), name="crate_alpha_lm_small",
                   cfg=lm_cfg(50257, 1024, paper=_PAPER_ALPHA))
    register_model(partial(CRATEAlphaLM, n_layer=14, n_head=12, n_embd=768), name="crate_alpha_lm_base",
                   cfg=lm_cfg(50257, 1024, paper=_PAPER_ALPHA))
    tiny = dict(vocab_size=65, block_size=64, n_head=4, n_embd=128)
    register_model(partial(CRATELM, n_layer=16, **tiny), name="crate_lm_char_tiny",
                   cfg=lm_cfg(65, 64, paper=_PAPER_CRATE))
    register_model(partial(CRATEAlphaLM, n_layer=5, **tiny), name="crate_alpha_lm_char_tiny",
                   cfg=lm_cfg(65, 64, paper=_PAPER_ALPHA))


_register_all()
