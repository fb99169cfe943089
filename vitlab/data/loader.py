"""The two loaders: `DeviceLoader` for datasets that fit on the training device (airbench style), `EncodedLoader`
for encoded ones (ImageFolder, shards) decoded by DataLoader workers. Both yield uint8 (B, C, H, W) batches on the
device and resume exactly.

DeviceLoader: the whole uint8 dataset is moved to ``device`` once; every epoch a seeded permutation is drawn and
batches are sliced from it with one gather each. No DataLoader workers, no per-image Python, no host→device copy per
batch.
Augmentation is separate (:class:`vitlab.data.augment.DeviceAugment`), applied to the uint8 batches this yields.
"""
from __future__ import annotations

import os
import signal
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from ._locate import DatasetFormatError
from .encoded import DecodedOrFailure, DecodeFailure

__all__ = ["DeviceLoader", "EncodedLoader", "epoch_seed", "sample_seed", "default_num_workers", "STOP_SIGNALS",
           "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # preemption; SLURM's --signal: training stops at a step boundary


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the worker ignores `STOP_SIGNALS`. A scheduler signals the whole process group
    (SLURM: `kill -TERM -- -PGID`); the training process finishes its step and checkpoints, and needs its workers
    alive for that. A worker left behind by a main process that died exits by itself (torch's parent watchdog
    checks every few seconds); SIGKILL still ends it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)



def default_num_workers(cap: int = 8) -> int:
    """DataLoader workers per training process: the CPUs this process may use (its affinity mask, which SLURM and
    taskset narrow; else `os.cpu_count()`) shared among the processes torchrun started on this node
    (`LOCAL_WORLD_SIZE`), at most `cap` and at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(cap, cpus // local))

_GOLDEN = 0x9E3779B97F4A7C15  # odd 64-bit constant: (seed, epoch) pairs map to distinct generator seeds


def epoch_seed(seed: int, epoch: int) -> int:
    """The CPU generator seed of one epoch's permutation: (seed·φ + epoch) mod 2⁶⁴, distinct for distinct pairs."""
    return (int(seed) * _GOLDEN + int(epoch)) % 2**64


class DeviceLoader:
    """airbench-style loader: the whole uint8 dataset lives on ``device``; each epoch a seeded permutation slices
    batches; no DataLoader workers.

    Args:
        images: (N, C, H, W) uint8. labels: (N,) integer class indices (stored as int64), or dense integer targets
            (N, ...) such as segmentation masks (N, H, W), kept in their own dtype (uint8 masks stay 1 byte a pixel).
        batch_size: the batch size *per rank*; the global batch under DDP is batch_size · world_size.
        shuffle: permute every epoch (permutation of epoch e drawn by a CPU ``torch.Generator`` seeded with
            :func:`epoch_seed` (seed, e), so it is the same on every device, every rank and after a restart).
            False: the dataset order.
        drop_last: drop the incomplete last batch (training). With drop_last every rank yields
            ⌊⌊N / world_size⌋ / batch_size⌋ full batches.
        device: where the data and the yielded batches live.
        seed: base seed of the permutations.
        rank, world_size: DDP position. Rank r takes the shard ``permutation[r::world_size]``: shards are disjoint,
            together they are the permutation, and at every step the ranks' batches together are one contiguous
            global batch of the permutation. Without drop_last (evaluation) shard sizes differ by at most one and
            the ranks may yield different numbers of batches; no sample is repeated (unlike DistributedSampler's
            padding), so all-reduce metric sums once after the loop, not per batch.

    Iteration yields the remaining batches of the current epoch, ``(images (B, C, H, W) uint8, labels (B,) int64)``,
    both on ``device``, then moves to the start of the next epoch. Breaking out of a loop keeps the position, and the
    next iteration continues from it. Exact resume: :meth:`state_dict` is (seed, epoch, batches already yielded in
    that epoch), the same on every rank, so rank 0's copy restores all ranks, also on another number of ranks with
    the same global batch; after :meth:`load_state_dict` the remaining batches are identical to those of an
    uninterrupted run (the same samples in every global batch when the number of ranks changed).
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool, drop_last: bool,
                 device: torch.device | str, seed: int = 0, rank: int = 0, world_size: int = 1):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() < 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must have shape ({images.shape[0]},) or ({images.shape[0]}, ...), got "
                             f"{tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        self.device = torch.device(device)
        self.images = images.to(self.device)  # (N, C, H, W) uint8, resident for the whole run
        self.labels = labels.to(self.device, torch.int64 if labels.dim() == 1 else labels.dtype)  # (N,) or (N, ...)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        if self.drop_last and len(self) == 0:
            raise ValueError(f"{self.num_samples} samples make no full batch of {self.batch_size} per rank on "
                             f"{self.world_size} rank(s) with drop_last=True")
        self.epoch = 0
        self.position = 0  # batches of `epoch` already yielded

    @property
    def num_samples(self) -> int:
        """N, the dataset size."""
        return int(self.images.shape[0])

    def _shard_size(self) -> int:
        """Samples this rank draws batches from in one epoch."""
        if self.drop_last:
            return self.num_samples // self.world_size  # equal on every rank
        return len(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        shard = self._shard_size()
        return shard // self.batch_size if self.drop_last else -(-shard // self.batch_size)

    def permutation(self, epoch: int) -> Tensor:
        """The order of epoch ``epoch`` over the whole dataset: (N,) int64 on ``device`` (the same on every rank)."""
        if not self.shuffle:
            return torch.arange(self.num_samples, device=self.device)
        generator = torch.Generator(device="cpu").manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator).to(self.device, non_blocking=True)

    def shard(self, epoch: int) -> Tensor:
        """This rank's indices for epoch ``epoch``, (shard size,) int64 on ``device``, in yield order."""
        return self.permutation(epoch)[self.rank::self.world_size][: self._shard_size()]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        indices = self.shard(self.epoch)  # (S,)
        for step in range(self.position, len(self)):
            batch = indices[step * self.batch_size: (step + 1) * self.batch_size]  # (B,)
            self.position = step + 1  # counted when yielded: a checkpoint taken now resumes at the next batch
            yield self.images[batch], self.labels[batch]  # (B, C, H, W) uint8, (B,) int64
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of epoch ``epoch``. Calling it with the current epoch does nothing, so the usual
        ``loader.set_epoch(e)`` at the top of an epoch loop keeps a mid-epoch position restored by
        :meth:`load_state_dict`."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """(seed, epoch, position) and the settings that must match on resume. Plain ints and bools."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "shuffle": self.shuffle,
                "num_samples": self.num_samples, "batch_size": self.batch_size, "world_size": self.world_size,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the dataset size, global batch (batch_size · world_size), shuffle and
        drop_last must match (otherwise the remaining batches could not be the same), the seed is taken from
        ``state``. The world size may differ (elastic resume): global batch j of an epoch is positions
        [j·G, (j+1)·G) of the permutation whatever the number of ranks sharing it."""
        _check_resumable("DeviceLoader", self, state, ("num_samples", "shuffle", "drop_last"))
        position = int(state["position"])
        most = len(self) if self.drop_last else -(-(-(-self.num_samples // self.world_size)) // self.batch_size)
        if not 0 <= position <= most:  # without drop_last rank 0 (whose state is saved) may have one batch more
            raise ValueError(f"DeviceLoader state position {position} is outside [0, {most}]")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), position


def _check_resumable(kind: str, loader, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    """`keys` and the global batch (batch_size · world_size) of a saved loader `state` equal `loader`'s: the
    conditions under which the remaining global batches are those of the uninterrupted run (the world size, and so
    the per-rank batch, may differ)."""
    for key in keys:
        if key in state and state[key] != getattr(loader, key):
            raise ValueError(f"{kind} state has {key}={state[key]!r} but this loader has {key}="
                             f"{getattr(loader, key)!r}; exact resume needs them equal")
    batch, ranks = state.get("batch_size", loader.batch_size), state.get("world_size", loader.world_size)
    if batch * ranks != loader.batch_size * loader.world_size:
        raise ValueError(f"{kind} state has a global batch of {batch * ranks} ({batch} per rank x {ranks} rank(s)) "
                         f"but this loader has {loader.batch_size * loader.world_size} ({loader.batch_size} x "
                         f"{loader.world_size}); exact resume needs the same global batch")


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The crop seed of the sample at `position` of epoch `epoch`'s order: distinct for distinct triples."""
    return (epoch_seed(seed, epoch) << 40) | int(position)


def _collate(items: list) -> tuple[Tensor, Tensor, list]:
    """Stacks the decoded samples of one batch; `DecodeFailure`s are passed on by message, not stacked. A label is
    an int (classification: labels (B,) int64) or a tensor (segmentation: (H, W) masks stacked to (B, H, W)
    int64)."""
    failures = [item.message for item in items if isinstance(item, DecodeFailure)]
    good = [item for item in items if not isinstance(item, DecodeFailure)]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), failures
    images = torch.stack([image for image, _ in good])  # (B, 3, S, S) uint8
    if isinstance(good[0][1], Tensor):
        labels = torch.stack([label for _, label in good]).to(torch.int64)  # (B, H, W)
    else:
        labels = torch.tensor([label for _, label in good], dtype=torch.int64)  # (B,)
    return images, labels, failures


class EncodedLoader:
    """Batches of an `EncodedImageDataset` (ImageFolder, shards), decoded by DataLoader workers, with a seeded,
    resumable, rank-sharded order: the same contract as :class:`DeviceLoader` (iteration, `set_epoch`,
    `state_dict` / `load_state_dict` with exact resume), so the engine treats both alike.

    The order of epoch e is a pure function of (seed, e) and the dataset's sample counts: a permutation of all
    samples, or for sharded data with ``shuffle_buffer`` > 1 the order a streaming reader with a shuffle buffer
    gives (:func:`vitlab.data.shards.buffered_order`). Global batches of ``batch_size · world_size`` consecutive
    samples are dealt to the ranks (batch j to rank j mod world_size), and each rank's batches to its workers, so no
    sample is read twice. Every sample carries its own crop seed (:func:`sample_seed`), so the crops do not depend
    on the number of workers, and after :meth:`load_state_dict` the remaining batches are identical to those of an
    uninterrupted run. Unreadable images: ``dataset.on_error`` 'raise' → `DatasetFormatError` naming the file, in
    the main process; 'skip' → left out of their batch, counted in ``skipped`` and warned about.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool, drop_last: bool, device: torch.device | str,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0, shuffle_buffer: int = 0):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        self.dataset, self.device = dataset, torch.device(device)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_workers, self.shuffle_buffer = int(num_workers), int(shuffle_buffer)
        if self.drop_last and len(self) == 0:
            raise ValueError(f"{len(dataset)} samples make no full batch of {self.batch_size} per rank on "
                             f"{self.world_size} rank(s) with drop_last=True")
        self.epoch, self.position, self.skipped = 0, 0, 0

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        """Batches per epoch on this rank (rank 0 when they differ: evaluation without drop_last)."""
        n, global_batch = self.num_samples, self.batch_size * self.world_size
        usable = n - n % global_batch if self.drop_last else n
        return len(range(self.rank * self.batch_size, usable, global_batch))

    def order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s order of all samples, (N,) int64, the same on every rank."""
        n = self.num_samples
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng(epoch_seed(self.seed, epoch))
        sizes = getattr(self.dataset, "shard_sizes", None)
        if sizes is not None and self.shuffle_buffer > 1:
            from .shards import buffered_order

            return buffered_order(sizes, self.shuffle_buffer, rng)
        return rng.permutation(n).astype(np.int64)

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of epoch `epoch`, each a list of (sample index, crop seed)."""
        order, size, ranks = self.order(epoch), self.batch_size, self.world_size
        usable = len(order) - len(order) % (size * ranks) if self.drop_last else len(order)
        out = []
        for start in range(self.rank * size, usable, size * ranks):
            out.append([(int(order[j]), sample_seed(self.seed, epoch, j)) for j in range(start, min(start + size,
                                                                                               usable))])
        return out

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self.batches(self.epoch)[self.position:]
        loader = torch.utils.data.DataLoader(DecodedOrFailure(self.dataset), batch_sampler=batches,
                                             num_workers=self.num_workers, collate_fn=_collate,
                                             worker_init_fn=ignore_stop_signals,
                                             pin_memory=self.device.type == "cuda")
        for images, labels, failures in loader:
            self.position += 1
            if failures:
                if self.dataset.on_error == "raise":
                    more = f" (and {len(failures) - 1} more in this batch)" if len(failures) > 1 else ""
                    raise DatasetFormatError(f"{failures[0]}{more}; data_errors=skip leaves unreadable images out")
                self.skipped += len(failures)
                for message in failures:
                    warnings.warn(f"skipped: {message}", stacklevel=2)
            if len(labels):
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of epoch `epoch` (the current epoch: keep a restored mid-epoch position)."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "shuffle": self.shuffle,
                "num_samples": self.num_samples, "batch_size": self.batch_size, "world_size": self.world_size,
                "drop_last": self.drop_last, "shuffle_buffer": self.shuffle_buffer, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the dataset size, global batch (batch_size · world_size) and shuffle
        settings must match (else the remaining batches could not be the same). The world size may differ (elastic
        resume): global batch j is positions [j·G, (j+1)·G) of the epoch's order, with the same crop seeds, whatever
        the number of ranks sharing it."""
        _check_resumable("loader", self, state, ("num_samples", "shuffle", "drop_last", "shuffle_buffer"))
        if not 0 <= int(state["position"]) <= len(self):
            raise ValueError(f"loader state position {state['position']} is outside [0, {len(self)}]")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self.skipped = int(state.get("skipped", 0))
