"""The one skeleton shared by the causal language models (GPT-2, CRATE LM, CRATE-α LM), in nanoGPT's layout and
parameter names: token embedding `transformer.wte` + learned positions `transformer.wpe` → dropout → blocks
`transformer.h.{i}` → final LayerNorm `transformer.ln_f` → `lm_head`, whose weight IS `transformer.wte.weight`
(weight tying: one Parameter under two names). The families differ only in the block they stack and their init.

`model(idx)` returns the logits (B, T, V); `model(idx, targets)` returns nanoGPT's `(logits, loss)`, the loss the
mean cross-entropy over every position whose target is not -1. The image models' contract names exist too:
`forward_features`, `forward_head(x, pre_logits=False)`, `get_classifier()` (the tied `lm_head`) and
`reset_classifier(vocab_size)` (resizes the tied token table and head).

Shapes: B batch, T tokens (T ≤ block_size), V vocab_size, d n_embd, L n_layer, H n_head.
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._constants import check_depth
from ._contract import run_blocks
from ._hub import HubMixin

__all__ = ["CausalLM"]


class CausalLM(HubMixin, nn.Module):
    """Args:
        block_fn: `block_fn(index) -> nn.Module`; each block maps (B, T, d) → (B, T, d) causally and has
            `forward_with_attention(x) -> (x, attn (B, H, T, T))`.
        vocab_size, block_size: V and the longest context T (the size of the position table).
        n_layer, n_head, n_embd: depth L, heads H, width d.
        dropout: on the summed embeddings (the blocks apply their own).
        norm_eps, norm_bias: the final LayerNorm `ln_f`.
    """

    def __init__(self, *, block_fn: Callable[[int], nn.Module], vocab_size: int, block_size: int, n_layer: int,
                 n_head: int, n_embd: int, dropout: float = 0.0, norm_eps: float = 1e-5, norm_bias: bool = True):
        super().__init__()
        if vocab_size < 1 or block_size < 1:
            raise ValueError(f"vocab_size and block_size must be positive, got {vocab_size} and {block_size}")
        for name, value in (("n_head", n_head), ("n_embd", n_embd)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        check_depth("n_layer", n_layer)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.num_heads, self.num_features = n_head, n_embd  # the names the image models use
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([block_fn(i) for i in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd, eps=norm_eps, bias=norm_bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (nanoGPT, GPT-2): one Parameter
        self.grad_checkpointing = False

    # --------------------------------------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (the tied head counted once). nanoGPT's convention: `non_embedding=True` leaves out the
        position table wpe; the token table stays in, because it is also the output layer."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters not decayed: nanoGPT's rule, every parameter with fewer than 2 dimensions
        (biases, LayerNorm weights). The tied embedding matrix is decayed."""
        return {name for name, p in self.named_parameters() if p.ndim < 2}

    def crop_block_size(self, block_size: int) -> None:
        """Shrinks the context to `block_size` (e.g. GPT-2's 1024 → 256) by keeping the first rows of wpe."""
        if not 0 < block_size <= self.block_size:
            raise ValueError(f"crop_block_size: {block_size} must be in 1..{self.block_size} (the current block_size)")
        self.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    def init_embeddings_(self, std: float = 0.02) -> None:
        """GPT-2's embedding init: token table (= the tied head) and position table N(0, std)."""
        nn.init.normal_(self.transformer.wte.weight, std=std)
        nn.init.normal_(self.transformer.wpe.weight, std=std)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_blocks(self) -> nn.ModuleList:
        """The repeated blocks, in forward order (the `TransformerBlocks` contract; state-dict prefix
        `transformer.h.`)."""
        return self.transformer.h

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: when on, the training forward recomputes each block in backward instead of storing its
        activations (less memory, about one more forward of compute; identical results)."""
        self.grad_checkpointing = enable

    # --------------------------------------------------------------------------------------------------------
    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"expected token indices of shape (B, T), got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"cannot forward a sequence of length {T}: the block size (context length) is only "
                             f"{self.block_size}; crop the input to its last {self.block_size} tokens")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, d)
        pos_emb = self.transformer.wpe(pos)  # (T, d)
        return self.transformer.drop(tok_emb + pos_emb)  # (B, T, d)

    def forward_features(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token indices → (B, T, d) hidden states after ln_f."""
        x = run_blocks(self.transformer.h, self._embed(idx), self.grad_checkpointing)  # (B, T, d)
        return self.transformer.ln_f(x)  # (B, T, d)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, T, d) hidden states after ln_f → (B, T, V) logits (or `x` itself with `pre_logits`)."""
        return x if pre_logits else self.lm_head(x)  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """(B, T) token indices → (B, T, V) next-token logits; position t sees tokens 0..t only.

        With `targets` (B, T) (the next token at each position; -1 = ignored, nanoGPT's convention) returns
        `(logits, loss)`, the loss the mean cross-entropy over the positions not ignored. Without targets it
        returns the logits alone (not nanoGPT's `(logits, None)`), so `model(idx)` works as any classifier's."""
        logits = self.forward_head(self.forward_features(idx))  # (B, T, V)
        if targets is None:
            return logits
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-1)  # mean over the B·T positions whose target is not -1
        return logits, loss

    def get_classifier(self) -> nn.Module:
        """The output layer, `lm_head` (its weight is the token table `transformer.wte.weight`)."""
        return self.lm_head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Resizes the vocabulary to `num_classes` tokens: the tied token table / head keeps its first
        min(V, V') rows and new rows are drawn N(0, 0.02) (GPT-2's embedding init). `global_pool` must be None (a
        language model predicts at every position and pools nothing)."""
        if global_pool is not None:
            raise ValueError(f"a language model has no pooling; global_pool must be None, got {global_pool!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f"num_classes (the new vocab_size) must be an int >= 1, got {num_classes!r}")
        old = self.lm_head.weight.detach()  # (V, d)
        weight = old.new_empty(num_classes, self.n_embd).normal_(std=0.02)  # (V', d)
        keep = min(num_classes, old.shape[0])
        weight[:keep] = old[:keep]
        self.lm_head = nn.Linear(self.n_embd, num_classes, bias=False, device=old.device, dtype=old.dtype)
        self.lm_head.weight = nn.Parameter(weight)
        self.transformer.wte = nn.Embedding(num_classes, self.n_embd, device=old.device, dtype=old.dtype)
        self.transformer.wte.weight = self.lm_head.weight  # keep the tying
        self.vocab_size = num_classes

    @torch.no_grad()
    def forward_attention(self, idx: torch.Tensor) -> torch.Tensor:
        """Causal softmax attention probabilities of every block: (B, L, H, T, T); row t is zero beyond column t."""
        x = self._embed(idx)  # (B, T, d)
        maps = []
        for block in self.transformer.h:
            x, attn = block.forward_with_attention(x)  # (B, T, d), (B, H, T, T)
            maps.append(attn)
        return torch.stack(maps, dim=1)  # (B, L, H, T, T)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Appends `max_new_tokens` sampled tokens to `idx` (B, T) and returns (B, T + max_new_tokens).

        Each step sees at most the last block_size tokens. temperature 0 picks the argmax (greedy); otherwise the
        logits are divided by `temperature`, kept to the `top_k` largest (if given) and sampled with
        torch.multinomial, so a seeded `generator` (on the model's device) makes the output reproducible. Call
        `model.eval()` first when the model has dropout.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.shape[1] <= self.block_size else idx[:, -self.block_size:]  # (B, ≤ block_size)
            logits = self(idx_cond)[:, -1, :]  # (B, V)
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature  # (B, V)
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
                probs = F.softmax(logits, dim=-1)  # (B, V)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
        return idx
