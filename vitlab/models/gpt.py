"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") in nanoGPT's layout
(karpathy/nanoGPT `model.py`), with the Hugging Face GPT-2 parameter names, so that OpenAI's weights load
(`vitlab.load_checkpoint(model, 'model.safetensors')` transposes HF's Conv1D weights) and give HF's logits.

    transformer.wte (V, d) ─┐ tied: lm_head.weight is the same Parameter
    transformer.wpe (T, d)  │
    transformer.h.{i}:  x ← x + attn(ln_1(x))        attn.c_attn (3d, d) rows q | k | v head-major, attn.c_proj
                        x ← x + mlp(ln_2(x))         mlp.c_fc (4d, d) → GELU → mlp.c_proj (d, 4d)
    transformer.ln_f → lm_head (V, d), no bias

The skeleton (embeddings, ln_f, tied head, generate, forward_attention, crop_block_size) is `CausalLM`, shared
with the causal CRATE language models (crate_lm.py); the attention plumbing is `_MultiHeadAttention`, shared with
the vision models.

Parameter count (tied head, bias=True): V·d + T·d + L·(12d² + 13d) + 2d; gpt2 = 124,439,808.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ._constants import lm_cfg
from ._layers import _MultiHeadAttention, split_fused_qkv
from ._lm_base import CausalLM
from ._registry import register_model

__all__ = ["GPT", "GPTBlock", "CausalSelfAttention", "GPTMlp"]

_ACTIVATIONS = {"gelu_tanh": partial(nn.GELU, approximate="tanh"), "gelu": nn.GELU}


class CausalSelfAttention(_MultiHeadAttention):
    """nanoGPT's CausalSelfAttention: one nn.Linear c_attn (d → 3d) gives q | k | v (each head-major), causal
    softmax attention per head (SDPA is_causal), heads merged, then c_proj and residual dropout."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0):
        super().__init__(n_embd, n_head, causal=True, attn_dropout=dropout)
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor):
        return split_fused_qkv(self.c_attn(x), self.n_head)  # 3 × (B, H, T, dh)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        return self.resid_dropout(self.c_proj(y))  # (B, T, d)


class GPTMlp(nn.Module):
    """c_fc (d → 4d) → GELU → c_proj (4d → d) → dropout. GPT-2 uses the tanh approximation ('gelu_tanh', HF's
    "gelu_new"); nanoGPT trains with the exact erf GELU ('gelu')."""

    def __init__(self, n_embd: int, bias: bool = True, dropout: float = 0.0, activation: str = "gelu_tanh"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = _ACTIVATIONS[activation]()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.c_fc(x))  # (B, T, 4d)
        return self.dropout(self.c_proj(x))  # (B, T, d)


class GPTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1 x), then x + mlp(ln_2 x). LayerNorm eps 1e-5."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True, dropout: float = 0.0,
                 activation: str = "gelu_tanh"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias=bias, dropout=dropout)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.mlp = GPTMlp(n_embd, bias=bias, dropout=dropout, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, d)
        return x + self.mlp(self.ln_2(x))  # (B, T, d)

    def forward_with_attention(self, x: torch.Tensor):
        out, attn = self.attn.forward_with_attention(self.ln_1(x))  # (B, T, d), (B, H, T, T)
        x = x + out  # (B, T, d)
        return x + self.mlp(self.ln_2(x)), attn


class GPT(CausalLM):
    """GPT-2 / nanoGPT language model: `model(idx (B, T)) -> logits (B, T, vocab_size)`;
    `model(idx, targets) -> (logits, loss)` as nanoGPT (see `CausalLM.forward`).

    Args:
        vocab_size: V (GPT-2: 50257; nanoGPT pads to 50304 for speed).
        block_size: the longest context T (GPT-2: 1024).
        n_layer, n_head, n_embd: depth, heads, width (GPT-2 124M: 12, 12, 768).
        dropout: on embeddings, attention probabilities, and after each c_proj (training only; GPT-2
            pre-training: 0).
        bias: biases in the Linear layers and LayerNorms (GPT-2: True).
        activation: 'gelu_tanh' (GPT-2, so its weights give HF logits) or 'gelu' (exact, nanoGPT).

    Init as nanoGPT: every Linear and Embedding N(0, 0.02), biases 0, each residual projection `c_proj.weight`
    N(0, 0.02/√(2·n_layer)) (GPT-2 paper: scale residual layers by 1/√N), LayerNorms ones / zeros.
    """

    def __init__(self, vocab_size: int = 50257, block_size: int = 1024, n_layer: int = 12, n_head: int = 12,
                 n_embd: int = 768, dropout: float = 0.0, bias: bool = True, activation: str = "gelu_tanh"):
        super().__init__(
            block_fn=lambda i: GPTBlock(n_embd, n_head, bias=bias, dropout=dropout, activation=activation),
            vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
            dropout=dropout, norm_eps=1e-5, norm_bias=bias)
        self.activation = activation
        self.init_weights()

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections (attention and MLP)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.n_layer))


# ----------------------------------------------------------------------------------------------------------------
# Registry: OpenAI's four GPT-2 sizes (nanoGPT's `from_pretrained` table) and nanoGPT's CPU Shakespeare config.

_PAPER = "Radford et al. 2019, GPT-2 (nanoGPT layout, Hugging Face GPT-2 parameter names)"
_HF = "https://huggingface.co/openai-community/{}/resolve/main/model.safetensors"
_SIZES = {  # name: (n_layer, n_head, n_embd, HF repository)
    "gpt2": (12, 12, 768, "gpt2"),  # 124,439,808 parameters
    "gpt2_medium": (24, 16, 1024, "gpt2-medium"),  # 354,823,168
    "gpt2_large": (36, 20, 1280, "gpt2-large"),  # 774,030,080
    "gpt2_xl": (48, 25, 1600, "gpt2-xl"),  # 1,557,611,200
}


def _register_all() -> None:
    for name, (n_layer, n_head, n_embd, repo) in _SIZES.items():
        register_model(partial(GPT, n_layer=n_layer, n_head=n_head, n_embd=n_embd), name=name,
                       cfg=lm_cfg(50257, 1024, paper=_PAPER, url=_HF.format(repo), cache_name=f"{repo}.safetensors",
                                  file_layout="gpt2_hf"))
    # nanoGPT README, "I only have a macbook": shakespeare_char on CPU, with train.py's defaults (bias=False, exact
    # GELU): 804,096 parameters at vocab 65, nanoGPT's "0.80M" (795,904 without wpe).
    register_model(partial(GPT, vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False,
                           activation="gelu"), name="gpt_char_tiny", cfg=lm_cfg(65, 64, paper=_PAPER))


_register_all()
