"""Sampling from a trained language model: `vitlab generate RUN_DIR --prompt ...`.

The run directory holds everything needed: config.json (the architecture), the weights (best/ or last/) and the
tokenizer the run trained with (tokenizer/). Sampling is nanoGPT's: the last block_size tokens as context,
logits / temperature, optional top-k, one multinomial draw per token from a seeded generator (so a seed gives the
same text every time); temperature 0 takes the argmax.

A nanoGPT checkpoint (`ckpt.pt`, or the out_dir holding it) works too: its `model_args` give the GPT and its
`model` entry the weights (layout 'nanogpt' of `vitlab.convert`). Its tokenizer is GPT-2's BPE (read from local
files) when the vocabulary is GPT-2's; nanoGPT's meta.pkl (character-level runs) is a pickle and is never read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..convert import load_checkpoint
from ..models import create_model
from .config import config_from_dict
from .checkpoint import resolve_checkpoint

__all__ = ["load_language_model", "generate_text", "load_nanogpt_checkpoint"]


def load_language_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, Any]:
    """(model with the run's weights in eval mode, its tokenizer, its TrainConfig) from a run directory, its best/
    or last/ folder, or the weights file inside one."""
    from ..text import load_tokenizer

    nano = _nanogpt_file(path)
    if nano is not None:
        return _load_nanogpt(nano, device)
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


_NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")
_GPT2_VOCAB = 50257  # nanoGPT pads it to 50304 for speed; the extra ids are never sampled here


def _nanogpt_file(path: str | os.PathLike) -> Path | None:
    """The nanoGPT checkpoint `path` names (a .pt file, or a folder with ckpt.pt and no vitlab config.json)."""
    path = Path(path)
    if path.is_dir() and (path / "ckpt.pt").is_file() and not (path / "config.json").is_file():
        return path / "ckpt.pt"
    if path.is_file() and path.suffix in (".pt", ".pth") and not (path.parent.parent / "config.json").is_file():
        return path
    return None


def load_nanogpt_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(vitlab GPT holding the weights, the checkpoint's entries other than 'model' and 'optimizer') from nanoGPT's
    `ckpt.pt` {'model': state dict, 'model_args': {...}, 'iter_num': ...} (read with weights_only=True; the GPT is
    built from `model_args` with nanoGPT's exact GELU, any vocabulary size)."""
    from ..convert import read_weights, unwrap_state_dict

    ckpt = read_weights(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_args"), dict) or "model" not in ckpt:
        raise ValueError(f"{path}: not a vitlab run and not a nanoGPT checkpoint ({{'model': ..., 'model_args': ...}}); "
                         "`vitlab generate` takes a language-model run directory or nanoGPT's ckpt.pt")
    args = {k: ckpt["model_args"][k] for k in _NANOGPT_ARGS if k in ckpt["model_args"]}
    model = create_model("gpt2", activation="gelu", **args)  # nanoGPT's MLP uses nn.GELU() (exact, not tanh)
    load_checkpoint(model, unwrap_state_dict(ckpt["model"], str(path)), layout="auto")
    return model, {k: v for k, v in ckpt.items() if k not in ("model", "optimizer")}


def _load_nanogpt(path: Path, device) -> tuple[nn.Module, Any, Any]:
    """(GPT with nanoGPT's weights, GPT-2 tokenizer, None) from nanoGPT's ckpt.pt (`load_nanogpt_checkpoint`); only
    GPT-2's vocabulary, whose tokenizer vitlab reads from local files."""
    from ..text.tokenizers import GPT2Tokenizer

    model, info = load_nanogpt_checkpoint(path)
    vocab = model.vocab_size
    if not _GPT2_VOCAB <= vocab <= 50304:
        raise ValueError(f"{path}: a nanoGPT model with a {vocab}-token vocabulary (e.g. shakespeare_char): its "
                         "tokenizer is in nanoGPT's meta.pkl, a pickle, which vitlab does not load (unpickling can run "
                         "code). vitlab generates from nanoGPT checkpoints with GPT-2's vocabulary (50257 or 50304)")
    tokenizer = GPT2Tokenizer.from_local_files()
    if vocab > tokenizer.vocab_size:  # padded vocabulary: never sample the padding ids
        def mask_padding(module, inputs, logits):
            return logits.index_fill(-1, torch.arange(tokenizer.vocab_size, vocab, device=logits.device),
                                     float("-inf"))

        model.register_forward_hook(mask_padding)
    return model.to(device).eval(), tokenizer, None


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
