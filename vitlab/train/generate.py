"""Sampling from a trained language model: `vitlab generate RUN_DIR --prompt ...`.

The run directory holds everything needed: config.json (the architecture), the weights (best/ or last/) and the
tokenizer the run trained with (tokenizer/). Sampling is nanoGPT's: the last block_size tokens as context,
logits / temperature, optional top-k, one multinomial draw per token from a seeded generator (so a seed gives the
same text every time); temperature 0 takes the argmax.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from ..convert import load_checkpoint
from ..models import create_model
from .config import config_from_dict
from .evaluate import resolve_checkpoint

__all__ = ["load_language_model", "generate_text"]


def load_language_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, Any]:
    """(model with the run's weights in eval mode, its tokenizer, its TrainConfig) from a run directory, its best/
    or last/ folder, or the weights file inside one."""
    from ..text import load_tokenizer

    weights, run_dir = resolve_checkpoint(path)
    config_file, tokenizer_dir = run_dir / "config.json", run_dir / "tokenizer"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: generation needs the run directory's config.json")
    config = config_from_dict(json.loads(config_file.read_text())["config"])
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(f"{tokenizer_dir} not found: {run_dir} is not a language-model run (its tokenizer "
                                "is saved there when training starts)")
    tokenizer = load_tokenizer(tokenizer_dir)
    model = create_model(config.model, vocab_size=tokenizer.vocab_size, block_size=config.block_size,
                         **config.model_kwargs)
    if model.pretrained_cfg.get("task") != "lm":
        raise ValueError(f"{run_dir}: model {config.model!r} is not a language model")
    load_checkpoint(model, weights)
    return model.to(device).eval(), tokenizer, config


def generate_text(path: str | os.PathLike, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int | None = 200, seed: int = 0, num_samples: int = 1,
                  device: str | torch.device = "cpu") -> list[str]:
    """`num_samples` continuations of `prompt` (prompt included), deterministic for a given seed."""
    if max_new_tokens < 0 or temperature < 0:
        raise ValueError(f"max_new_tokens and temperature must be ≥ 0, got {max_new_tokens} and {temperature}")
    model, tokenizer, _ = load_language_model(path, device)
    if prompt:
        ids = tokenizer.encode(prompt)
    elif tokenizer.eot_id is not None:
        ids = [tokenizer.eot_id]
    else:
        ids = tokenizer.encode("\n")
    if not ids:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
    generator = torch.Generator(device=device).manual_seed(seed)
    context = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    out = []
    for _ in range(num_samples):
        tokens = model.generate(context, max_new_tokens, temperature=temperature, top_k=top_k,
                                generator=generator)  # (1, T + new)
        out.append(tokenizer.decode(tokens[0].tolist()))
    return out
