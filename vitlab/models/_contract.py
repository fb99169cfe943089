"""The contract that scale machinery relies on: a model exposes its repeated transformer blocks, in order, and can
run them under gradient checkpointing. FSDP2 shards per block (`vitlab.train.distributed.wrap_model`), the
interpretability tools walk the blocks, and both ask the model rather than guess an attribute name (`blocks` in the
image models, `transformer.h` in the language models).

Both skeletons implement it: `ImageTransformer` (ViT, CRATE, CRATE-α) and `CausalLM` (GPT-2, causal CRATE,
causal CRATE-α). The method names are timm's (`set_grad_checkpointing`) where timm has one.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.utils.checkpoint
from torch import nn

__all__ = ["TransformerBlocks", "get_blocks", "run_blocks"]


@runtime_checkable
class TransformerBlocks(Protocol):
    """A model built from repeated transformer blocks.

    `get_blocks()` returns the blocks themselves (the very modules in the state dict, not copies), in the order the
    forward pass runs them; each maps (B, N, d) → (B, N, d). `set_grad_checkpointing(enable)` makes the training
    forward recompute each block's activations in the backward pass instead of storing them (results unchanged).
    """

    def get_blocks(self) -> nn.ModuleList | nn.Sequential: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


def get_blocks(model: nn.Module, purpose: str = "this vitlab function") -> nn.ModuleList | nn.Sequential:
    """`model.get_blocks()`, or a TypeError naming the model's class, what `purpose` needs and the contract."""
    if not isinstance(model, TransformerBlocks):
        raise TypeError(f"{type(model).__name__} does not implement vitlab.models.TransformerBlocks, which {purpose} "
                        "needs: a method get_blocks() returning the repeated transformer blocks in forward order (an "
                        "nn.ModuleList or nn.Sequential) and set_grad_checkpointing(enable: bool = True); vitlab's "
                        "ImageTransformer and CausalLM models implement it")
    return model.get_blocks()


def run_blocks(blocks: nn.ModuleList | nn.Sequential, x: torch.Tensor, checkpointing: bool,
               **block_kwargs) -> torch.Tensor:
    """Runs `x` (B, N, d) through `blocks` in order (each called as `block(x, **block_kwargs)`, e.g. a text
    tower's `mask`); with `checkpointing` and autograd on, each block's inner activations are recomputed during
    backward (torch.utils.checkpoint, non-reentrant) instead of kept."""
    use_checkpoint = checkpointing and torch.is_grad_enabled()
    for block in blocks:
        if use_checkpoint:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **block_kwargs)  # (B, N, d)
        else:
            x = block(x, **block_kwargs)  # (B, N, d)
    return x
