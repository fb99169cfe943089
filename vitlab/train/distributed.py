"""torchrun-launched data parallelism: DDP by default, FSDP2 (`fully_shard` per block) opt-in. Only rank 0 writes."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..data.loader import STOP_SIGNALS
from ..models import get_blocks

__all__ = ["sync_batchnorm", "DistInfo", "setup_distributed", "teardown_distributed", "wrap_model", "all_reduce_sum", "eval_batch_size", "lockstep",
           "StopSignals", "STOP_SIGNALS", "agree_on_failure", "FAILURE_WAIT_S"]

FAILURE_WAIT_S = 20.0  # how long a failed rank waits for the others to fail alike before it stops alone



@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistInfo:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; initialises NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} needs a CUDA GPU, but torch {torch.__version__} sees none; use device=cpu "
                         "or device=auto")
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, dev)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA, BatchNorm layers (the segmentation heads') become SyncBatchNorm, so batch statistics are over the
    global batch as mmsegmentation's SyncBN (in place for children; the parameters are the same tensors). Elsewhere
    (SyncBatchNorm is CUDA-only) each rank keeps its own statistics."""
    if device.type != "cuda" or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """DDP (gradients all-reduced, averaged) or FSDP2 (parameters sharded per block of `model.get_blocks()`, the
    `vitlab.models.TransformerBlocks` contract, and at the root; a model without it is refused by name). On CUDA,
    BatchNorm becomes SyncBatchNorm first (`sync_batchnorm`)."""
    if not info.enabled:
        return model
    model = sync_batchnorm(model, info.device)
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in get_blocks(model, "distributed='fsdp' (one fully_shard unit per block)"):
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {strategy!r}")


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def eval_batch_size(num_samples: int, per_rank: int, info: DistInfo) -> int:
    """Evaluation batch per rank: at least the training one and 256, but no more than an even share of the split,
    so that every rank gets a batch (see `lockstep`)."""
    return max(1, min(max(per_rank, 256), -(-num_samples // info.world_size)))


def lockstep(batches: Iterable, count: int, info: DistInfo) -> Iterator[tuple[Any, bool]]:
    """(batch, counted) over this rank's `count` evaluation batches, then its last batch again with counted=False
    until this rank has made as many forward passes as the rank with the most. Ranks' shares of an evaluation split
    differ by up to one batch; under FSDP every forward all-gathers the parameters from all ranks, so a rank that
    stopped early would leave the others waiting forever. One all-reduce; nothing changes on a single process."""
    if not info.enabled:
        yield from ((batch, True) for batch in batches)
        return
    most = torch.tensor([count], dtype=torch.int64, device=info.device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    last, done = None, 0
    for batch in batches:
        last, done = batch, done + 1
        yield batch, True
    if done < most.item() and last is None:
        raise RuntimeError(f"rank {info.rank} has no evaluation batch while another rank has {most.item()}: the "
                           f"evaluation split is too small to give each of the {info.world_size} processes a batch; "
                           "use a larger eval_subset (0: all) or fewer processes")
    for _ in range(most.item() - done):
        yield last, False


def agree_on_failure(info: DistInfo, phase: str, message: str, wait_s: float | None = None) -> tuple[bool, str]:
    """For a rank whose `phase` (e.g. "evaluation/step-30") raised, while the other ranks may be anywhere, even
    inside a collective this rank will never join: no collective is used, only the process group's key-value store
    (torchrun's). The rank publishes `message`, then waits up to `wait_s` (`FAILURE_WAIT_S`) for every rank to have
    failed in the same phase. Returns (every rank failed, the first published message). Every rank that calls it
    gets the same answer (one atomic decision in the store), so if every rank failed they may go on with
    collectives together (e.g. a checkpoint); otherwise each must stop without one: a peer blocked in a collective
    with this rank is released when this process exits (gloo: the connection closes; NCCL: torchrun stops the
    ranks once one has exited)."""
    store = dist.distributed_c10d._get_default_store()
    prefix = f"vitlab/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{phase}/"  # restarts share the store
    order = store.add(prefix + "failed", 1)
    store.set(prefix + str(order), message)
    deadline = time.monotonic() + (FAILURE_WAIT_S if wait_s is None else wait_s)
    while store.add(prefix + "failed", 0) < info.world_size and time.monotonic() < deadline:
        time.sleep(0.05)
    everyone = store.add(prefix + "failed", 0) >= info.world_size
    decision = store.compare_set(prefix + "decision", "", "together" if everyone else "alone")
    store.wait([prefix + "1"])
    return decision == b"together", store.get(prefix + "1").decode()


class StopSignals:
    """SIGTERM / SIGUSR1 caught as a flag (`received`: the signal number, 0 if none) that the training loop reads at
    its next step boundary, instead of dying mid-step. Python handlers live in the main thread only: elsewhere
    `install` does nothing. `agree` all-reduces the flag (and other per-rank decisions) so every rank acts alike."""

    def __init__(self, rank: int = 0):
        self.rank, self.received, self.previous = rank, 0, {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _on_signal(self, signum, frame) -> None:
        self.received = signum
        os.write(2, f"[rank {self.rank}] received {signal.Signals(signum).name}: finishing this optimiser step, then "
                    "writing last/ and exiting\n".encode())  # os.write: safe inside a handler, unlike print

    def agree(self, info: DistInfo, *flags: bool) -> list[float]:
        """[any rank signalled, then each of `flags` set on any rank] (> 0 means yes); one all-reduce under
        torchrun, none in a single process."""
        values = [float(self.received > 0), *map(float, flags)]
        if info.enabled:
            values = all_reduce_sum(torch.tensor(values, device=info.device), info).tolist()
        return values
