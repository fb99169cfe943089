"""Language modelling on the same engine: token shards (vitlab.text) → (B, T) windows, next-token cross-entropy,
validation loss and perplexity. `LMTask` implements `vitlab.train.tasks.Task`, so `vitlab train` runs it on the
engine that trains the image tasks.

Training windows are nanoGPT's `get_batch`: `batch` random offsets into the training tokens, x = tokens[o : o+T],
y = tokens[o+1 : o+T+1]. The offsets of the global batch n of epoch e (batch_size · world_size windows) come from a
generator seeded with (seed, e, n) and rank r takes the r-th slice of them, so a resumed run draws exactly the batches
the uninterrupted run would have, and a run on R processes trains on the same global batches as on one. An "epoch" is
tokens / (global batch · T) batches. Evaluation reads the whole split (or its first `eval_subset` windows) in
non-overlapping windows of T tokens: every token after the first is predicted exactly once, so the loss is the
split's mean next-token cross-entropy in nats, and perplexity = exp(loss). With `eval_batches` = N it is nanoGPT's
estimate instead (`estimate_loss`, eval_iters = N): N batches of the training micro-batch (batch_size /
grad_accum_steps windows, rank r taking slice r of each) at random offsets of the split, drawn afresh at every
evaluation by a generator seeded with (seed, the training loader's epoch and position), so a resumed run evaluates
on the very windows the uninterrupted run did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..distributed import DistInfo, all_reduce_sum, lockstep
from ._contract import check_model_family, per_rank_batch, refuse_freeze_text, refuse_head

__all__ = ["LMTask", "TokenWindows", "build_lm_task", "is_text_dataset"]

_IN_MEMORY_BYTES = 1 << 30  # token arrays up to 1 GiB are held as one tensor (on the device); larger stay memmapped
_EVAL_STREAM = 0xE7A1  # tells the random evaluation offsets' generator apart from the training batches' ones


def is_text_dataset(name: str) -> bool:
    from ...text import TEXT_DATASETS

    return name in TEXT_DATASETS or name.startswith("textfile:")


def _as_tensor(tokens: np.ndarray, device: torch.device) -> torch.Tensor | None:
    if tokens.nbytes > _IN_MEMORY_BYTES:
        return None
    return torch.from_numpy(np.asarray(tokens).astype(np.int64)).to(device)  # (n,)


def _windows(tokens: np.ndarray, tensor: torch.Tensor | None, starts: np.ndarray, block: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), each (B, T) int64 on `device`: x = tokens[s:s+T], y = tokens[s+1:s+T+1]."""
    if tensor is not None:
        index = torch.from_numpy(starts).to(device)[:, None] + torch.arange(block + 1, device=device)  # (B, T+1)
        rows = tensor[index]  # (B, T+1)
    else:
        rows = torch.from_numpy(np.stack([tokens[s:s + block + 1] for s in starts]).astype(np.int64)).to(device)
    return rows[:, :-1], rows[:, 1:]


class TokenWindows:
    """Random training windows, resumable (`state_dict` / `load_state_dict`); rank r of R takes slice r of each
    global batch."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1):
        if len(tokens) < block_size + 2:
            raise ValueError(f"{len(tokens)} training tokens are too few for block_size {block_size}")
        self.tokens, self.tensor = tokens, _as_tensor(tokens, device)
        self.batch_size, self.block_size, self.device = batch_size, block_size, device
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return max(1, len(self.tokens) // (self.batch_size * self.block_size * self.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def batch(self, epoch: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch, position])
        every = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.batch_size * self.world_size)
        starts = every[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]  # (B,) this rank's slice
        return _windows(self.tokens, self.tensor, starts, self.block_size, self.device)

    def __iter__(self):
        while self.position < len(self):
            batch = self.batch(self.epoch, self.position)
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0


@dataclass
class LMTask:
    """Next-token prediction on a prepared text dataset (see the module docstring)."""
    train: TokenWindows
    eval_tokens: np.ndarray
    eval_tensor: torch.Tensor | None  # eval_tokens on the device (None beyond 1 GiB: read from the memmap)
    eval_windows: int  # windows of block_size tokens evaluated (all ranks together)
    eval_batch_size: int
    vocab_size: int
    block_size: int
    tokenizer: Any
    root: Any  # the prepared folder (shards, meta.json, tokenizer files)
    dataset: str
    train_size: int  # tokens
    files: list = field(default_factory=list)  # (source path, verified digest) of the files the text came from
    eval_batches: int = 0  # > 0: that many random micro-batches per evaluation (nanoGPT's estimate); 0: eval_windows
    config: TrainConfig | None = None
    name = "lm"
    unit = "tokens"
    primary = ("eval_loss", "min")  # best/ keeps the lowest validation loss

    def check_model(self, name: str) -> None:
        check_model_family(self.config, name, "lm")
        refuse_head(self.config)

    def prepare_model(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        refuse_freeze_text(config)
        return model

    def notes(self) -> list[str]:
        return []

    def model_kwargs(self) -> dict:
        return {"vocab_size": self.vocab_size, "block_size": self.block_size}

    def example_input(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, self.block_size, dtype=torch.long, device=device)

    def samples_per_batch(self, batch_size: int) -> int:
        return batch_size * self.block_size  # tokens per optimiser step (global)

    @property
    def eval_size(self) -> int:
        return self.eval_windows * self.block_size  # tokens predicted per evaluation

    def describe(self) -> str:
        how = f" ({self.eval_batches} random batches per evaluation)" if self.eval_batches else ""
        return (f"{self.dataset}: {self.train_size} train / {self.eval_size} eval tokens{how}, vocabulary "
                f"{self.vocab_size} ({self.tokenizer.name}), context {self.block_size}")

    def save_assets(self, out_dir) -> None:
        """The tokenizer goes with the run (`vitlab generate` needs nothing else)."""
        self.tokenizer.save(out_dir / "tokenizer")

    def loss(self, model: nn.Module, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        x, y = batch  # (B, T), (B, T)
        logits = model(x)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())  # mean over B·T tokens

    @torch.no_grad()
    def evaluate(self, model: nn.Module, info: DistInfo, autocast) -> dict[str, float]:
        """Mean next-token loss (nats) over the evaluation windows, perplexity, and bits per token."""
        mine = self._eval_starts(info)  # this rank's window starts
        sums = torch.zeros(2, dtype=torch.float64, device=info.device)  # loss sum, tokens
        starts = range(0, len(mine), self.eval_batch_size)
        for i, counted in lockstep(starts, len(starts), info):
            x, y = _windows(self.eval_tokens, self.eval_tensor, mine[i:i + self.eval_batch_size], self.block_size,
                            info.device)
            with autocast:
                logits = model(x).float()  # (B, T, V)
            if not counted:  # a pass that keeps FSDP's ranks in step (lockstep)
                continue
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
            sums += torch.stack([loss.double(), torch.tensor(float(y.numel()), dtype=torch.float64,
                                                             device=info.device)])
        loss, count = all_reduce_sum(sums, info).tolist()
        mean = loss / count
        return {"eval_loss": mean, "perplexity": math.exp(min(mean, 700)), "bits_per_token": mean / math.log(2)}

    def _eval_starts(self, info: DistInfo) -> np.ndarray:
        """Rank `info.rank`'s window starts: every eval window in turn (whole split), or `eval_batches` random global
        micro-batches, slice r of each, from a generator seeded with (seed, loader epoch, loader position)."""
        if not self.eval_batches:
            return np.arange(info.rank, self.eval_windows, info.world_size) * self.block_size
        per_rank, train = self.train.batch_size, self.train
        rng = np.random.default_rng([train.seed, _EVAL_STREAM, train.epoch, train.position])
        every = rng.integers(0, len(self.eval_tokens) - self.block_size,
                             size=(self.eval_batches, per_rank * info.world_size))  # (N, global micro-batch)
        return every[:, info.rank * per_rank:(info.rank + 1) * per_rank].reshape(-1)  # (N · per_rank,)


def build_lm_task(config: TrainConfig, info: DistInfo) -> LMTask:
    """Prepares (or reuses) the token shards of `config.dataset` with `config.tokenizer` (rank 0 first), and
    builds the training windows and the evaluation split (`eval_split`; 'val' for the validation split)."""
    from ...text import prepare_text

    def prepare():
        return prepare_text(config.dataset, tokenizer=config.tokenizer, data_dir=config.data_dir,
                            download=config.download)

    if info.enabled and not info.is_main:
        torch.distributed.barrier()  # rank 0 prepares; the others read its files
    prepared = prepare()
    if info.enabled and info.is_main:
        torch.distributed.barrier()
    block = config.block_size
    per_rank = per_rank_batch(config, info)
    train_tokens = prepared.tokens(config.train_split)
    eval_split = config.eval_split
    eval_tokens = prepared.tokens(eval_split)
    windows = (len(eval_tokens) - 1) // block
    if windows < 1:
        raise ValueError(f"the {eval_split} split has {len(eval_tokens)} tokens, fewer than block_size {block} + 1")
    windows = min(windows, config.eval_subset) if config.eval_subset else windows
    if config.eval_batches:  # random micro-batches of per_rank windows on each rank
        windows = config.eval_batches * per_rank * info.world_size
    return LMTask(train=TokenWindows(train_tokens, per_rank, block, info.device, config.seed, info.rank,
                                     info.world_size),
                  eval_tokens=eval_tokens, eval_tensor=_as_tensor(eval_tokens, info.device), eval_windows=windows,
                  eval_batch_size=max(per_rank, 64),
                  vocab_size=prepared.vocab_size, block_size=block, tokenizer=prepared.tokenizer,
                  root=prepared.root, dataset=config.dataset, train_size=len(train_tokens),
                  files=list(prepared.files), eval_batches=config.eval_batches, config=config)
