"""Training and evaluation batches from a TrainConfig.

Small datasets (TensorImageDataset) live on the training device and are sliced by `DeviceLoader` (airbench style);
ImageFolder datasets are decoded by DataLoader workers into fixed-size uint8 crops. Both yield uint8 (B, C, H, W)
batches on the device, which `DeviceAugment` turns into normalised float images and soft targets, and both can
save and restore their position for exact resume.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageFolderDataset, TensorImageDataset, load_dataset
from ..data.augment import DeviceAugment
from ..data.loader import DeviceLoader
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum

__all__ = ["TrainData", "build_data", "FolderLoader", "soft_cross_entropy"]


class FolderLoader:
    """A DataLoader over an ImageFolderDataset with a seeded, resumable, rank-sharded permutation per epoch."""

    def __init__(self, dataset: ImageFolderDataset, batch_size: int, shuffle: bool, drop_last: bool,
                 device: torch.device, seed: int, rank: int, world_size: int, num_workers: int):
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.device, self.seed, self.rank, self.world_size = device, seed, rank, world_size
        self.num_workers = num_workers
        self.epoch, self.position = 0, 0

    def _indices(self) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(n))
        global_batch = self.batch_size * self.world_size
        usable = n - n % global_batch if self.drop_last else n
        return [i for j, i in enumerate(order[:usable]) if (j // self.batch_size) % self.world_size == self.rank]

    def __len__(self) -> int:
        n, per_rank = len(self.dataset), self.batch_size * self.world_size
        return n // per_rank if self.drop_last else -(-n // per_rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __iter__(self):
        indices = self._indices()[self.position * self.batch_size:]
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.dataset, indices),
                                             batch_size=self.batch_size, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda", drop_last=self.drop_last)
        for images, labels in loader:
            self.position += 1
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()  # (,)


@dataclass
class TrainData:
    """Image classification for the engine. The engine talks to its data through `model_kwargs`, `loss`,
    `evaluate`, `example_input`, `unit`, `samples_per_batch` and `primary` (the metric `best/` follows); `LMData`
    (vitlab/train/lm.py) has the same interface for language modelling."""
    train: DeviceLoader | FolderLoader
    eval: DeviceLoader | FolderLoader
    augment: DeviceAugment
    num_classes: int
    in_chans: int
    image_size: int
    train_size: int
    eval_size: int
    unit = "images"
    primary = ("top1", "max")  # best/ keeps the highest top-1

    def model_kwargs(self) -> dict:
        return {"num_classes": self.num_classes, "in_chans": self.in_chans, "img_size": self.image_size}

    def example_input(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, self.in_chans, self.image_size, self.image_size, device=device)

    def samples_per_batch(self, batch_size: int) -> int:
        return batch_size  # images per optimiser step (global)

    def describe(self) -> str:
        return f"{self.train_size} train / {self.eval_size} eval images"

    def save_assets(self, out_dir) -> None:
        """Nothing beyond config.json is needed to rebuild an image run."""

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        """Augments one uint8 micro-batch on the device (soft targets), then soft-target cross-entropy."""
        images, targets = self.augment(*batch, generator=generator)
        return soft_cross_entropy(model(images), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, info: DistInfo, autocast) -> dict[str, float]:
        """Loss, top-1 and top-5 (%) over the whole evaluation split (summed across ranks)."""
        sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # loss, top1, top5, count
        self.eval.set_epoch(0)
        for images, labels in self.eval:
            with autocast:
                logits = model(self.augment.eval_transform(images)).float()  # (B, classes)
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, 5)
            hits = top5 == labels[:, None]
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                 hits[:, 0].sum().double(), hits.any(-1).sum().double(),
                                 torch.tensor(float(len(labels)), dtype=torch.float64, device=info.device)])
        loss, top1, top5, count = all_reduce_sum(sums, info).tolist()
        return {"eval_loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def _subset(dataset: TensorImageDataset, n: int) -> TensorImageDataset:
    if not n or n >= len(dataset):
        return dataset
    return TensorImageDataset(images=dataset.images[:n], labels=dataset.labels[:n], classes=dataset.classes,
                              name=dataset.name, mean=dataset.mean, std=dataset.std)


def _loader(dataset, batch_size: int, train: bool, config: TrainConfig, info: DistInfo):
    seed = config.seed if train else 0
    if isinstance(dataset, TensorImageDataset):
        return DeviceLoader(dataset.images, dataset.labels, batch_size=batch_size, shuffle=train, drop_last=train,
                            device=info.device, seed=seed, rank=info.rank, world_size=info.world_size)
    return FolderLoader(dataset, batch_size, train, train, info.device, seed, info.rank, info.world_size,
                        config.num_workers)


def build_data(config: TrainConfig, info: DistInfo):
    """The run's data: `LMData` for a text dataset (vitlab/train/lm.py), else `TrainData` (images): both splits
    loaded and placed, the augmentation built from the training split's statistics."""
    from .lm import build_lm_data, is_text_dataset

    if is_text_dataset(config.dataset):
        return build_lm_data(config, info)
    common = dict(data_dir=config.data_dir, download=config.download and info.is_main, image_size=config.image_size)
    train_set = load_dataset(config.dataset, config.train_split, train_transform=True, **common)
    eval_set = load_dataset(config.dataset, config.eval_split, train_transform=False, **common)
    if isinstance(train_set, TensorImageDataset):
        train_set, eval_set = _subset(train_set, config.train_subset), _subset(eval_set, config.eval_subset)
    per_rank = config.batch_size // (info.world_size * config.grad_accum_steps)
    if per_rank * info.world_size * config.grad_accum_steps != config.batch_size or per_rank < 1:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by world size {info.world_size} × "
                         f"grad_accum_steps {config.grad_accum_steps}")
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(train_set)} images, fewer than batch_size {config.batch_size}")
    augment = DeviceAugment(config.augment, mean=train_set.mean, std=train_set.std,
                            num_classes=train_set.num_classes).to(info.device)
    return TrainData(train=_loader(train_set, per_rank, True, config, info),
                     eval=_loader(eval_set, max(per_rank, 256), False, config, info), augment=augment,
                     num_classes=train_set.num_classes, in_chans=train_set.in_chans,
                     image_size=train_set.image_size, train_size=len(train_set), eval_size=len(eval_set))
