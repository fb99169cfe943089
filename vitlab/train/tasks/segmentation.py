"""Semantic segmentation for the training engine: `SegmentationTask` implements `vitlab.train.tasks.Task` for the
datasets of `vitlab.data.segmentation` (ADE20K folders or shards, Fashion-MNIST scenes); `config.model` is the
backbone and `config.head` the head put on it (`prepare_model`).

One owner per stage:
  encoded data (ADE20K): the loader workers decode and apply `SegCrop` once to image and mask together (random
      rescale 0.5–2.0, category-ratio crop, flip, photometric distortion, pad); the device only normalises.
  in-memory data (scenes): the device flips image and mask together (`augment.hflip`) and normalises.
No other augmentation applies to segmentation; asking for one is an error.

Evaluation: 'whole' image or 'slide' windows of `image_size` with stride `eval_stride`; logits resized to the
annotation's size; one confusion matrix summed over ranks gives mIoU, mean accuracy, all-pixel accuracy and per-class
IoU (`vitlab.train.tasks.seg_eval`). `best/` keeps the highest mIoU.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...data.loader import DeviceLoader, EncodedLoader
from ...data.segmentation import SegCrop, load_segmentation_dataset
from ...models import SegmentationModel
from ..checkpoint import write_text_atomic
from ..config import TrainConfig
from ..distributed import DistInfo, all_reduce_sum, eval_batch_size, lockstep
from ._contract import check_model_family, per_rank_batch, refuse_freeze_text
from .seg_eval import ConfusionMatrix, predict_logits, segmentation_metrics

__all__ = ["SegmentationTask", "SegDeviceTransform", "build_segmentation_task"]

_AUGMENT_ALLOWED = {"hflip"}


class SegDeviceTransform(nn.Module):
    """uint8 (B, C, H, W) images and (B, H, W) masks → normalised float images (and, in training with `hflip`, the
    same random horizontal flip of each image and its mask)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], hflip: bool):
        super().__init__()
        self.hflip = hflip
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std  # (B, C, H, W)

    def forward(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None):
        images, masks = self.normalise(images), masks.long()  # (B, C, H, W), (B, H, W)
        if self.hflip:
            flip = torch.rand(images.shape[0], generator=generator) < 0.5  # (B,) drawn on the CPU generator
            flip = flip.to(images.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
        return images, masks


@dataclass
class SegmentationTask:
    """Semantic segmentation for the engine (see the module docstring)."""
    train: DeviceLoader | EncodedLoader
    eval: DeviceLoader | EncodedLoader
    transform: SegDeviceTransform
    num_classes: int
    class_names: list[str]
    ignore_index: int
    in_chans: int
    image_size: int
    train_size: int
    eval_size: int
    eval_mode: str = "whole"
    eval_stride: int = 341
    palette: list = field(default_factory=list)  # RGB 0-255 per class, for overlays
    mean: tuple = ()
    std: tuple = ()
    files: list = field(default_factory=list)
    config: TrainConfig | None = None
    name = "segmentation"
    unit = "images"
    primary = ("miou", "max")  # best/ keeps the highest mIoU

    def check_model(self, name: str) -> None:
        check_model_family(self.config, name, "image")

    def prepare_model(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        """`config.head` on the backbone, whose classifier is pruned; the head is new."""
        refuse_freeze_text(config)
        return SegmentationModel(model, self.num_classes, config.head, **config.head_kwargs)

    def notes(self) -> list[str]:
        return []

    def model_kwargs(self) -> dict:
        """The backbone's input (the head gets `num_classes`)."""
        return {"in_chans": self.in_chans, "img_size": self.image_size}

    def example_input(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, self.in_chans, self.image_size, self.image_size, device=device)

    def samples_per_batch(self, batch_size: int) -> int:
        return batch_size

    def describe(self) -> str:
        return (f"{self.train_size} train / {self.eval_size} eval images, {self.num_classes} classes, "
                f"{self.eval_mode} evaluation")

    def save_assets(self, out_dir) -> None:
        """`segmentation.json`: class names, palette, normalisation and input size, so `vitlab segment --head RUN`
        rebuilds and shows the run without reading its dataset."""
        meta = {"classes": self.class_names, "palette": [list(map(int, c)) for c in self.palette],
                "mean": list(self.mean), "std": list(self.std), "in_chans": self.in_chans,
                "image_size": self.image_size, "ignore_index": self.ignore_index}
        write_text_atomic(Path(out_dir) / "segmentation.json", json.dumps(meta, indent=1))

    def loss(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        images, masks = self.transform(*batch, generator=generator)  # (B, C, H, W), (B, H, W)
        logits = model(images)  # (B, K, H, W)
        return F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, info: DistInfo, autocast) -> dict:
        """mIoU, mean accuracy, all-pixel accuracy (%), per-class IoU and the pixel-mean loss over the whole
        evaluation split, at the annotations' resolution, summed across ranks."""
        confusion = ConfusionMatrix(self.num_classes, self.ignore_index, device=info.device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=info.device)  # loss, pixels
        self.eval.set_epoch(0)
        for (images, masks), counted in lockstep(self.eval, len(self.eval), info):
            masks = masks.long()  # (B, H0, W0)
            with autocast:
                logits = predict_logits(model, self.transform.normalise(images), mode=self.eval_mode,
                                        num_classes=self.num_classes, crop_size=self.image_size,
                                        stride=self.eval_stride, out_size=tuple(masks.shape[-2:])).float()
            if not counted:  # a pass that keeps FSDP's ranks in step (lockstep)
                continue
            valid = (masks != self.ignore_index).sum()
            loss_sum += torch.stack([F.cross_entropy(logits, masks, ignore_index=self.ignore_index,
                                                     reduction="sum").double(), valid.double()])
            confusion.update(logits.argmax(1), masks)
        confusion.all_reduce(info)
        loss, pixels = all_reduce_sum(loss_sum, info).tolist()
        metrics = segmentation_metrics(confusion.matrix, self.class_names)
        per_class = {name: metrics[f"iou_{name}"] for name in self.class_names}
        return {"eval_loss": loss / max(pixels, 1), "miou": metrics["miou"], "macc": metrics["macc"],
                "aacc": metrics["aacc"], "iou_per_class": per_class}


def _check_augment(config: TrainConfig) -> None:
    default = type(config.augment)()
    asked = [f.name for f in dataclasses.fields(config.augment)
             if getattr(config.augment, f.name) != getattr(default, f.name) and f.name not in _AUGMENT_ALLOWED]
    if asked:
        raise ValueError(f"augment.{asked[0]} does not apply to segmentation: ADE20K's pipeline (random rescale, "
                         "category-ratio crop, flip, photometric distortion) is SegCrop's, applied to image and mask "
                         "together in the loader; in-memory scenes take augment.hflip only")


def build_segmentation_task(config: TrainConfig, info: DistInfo) -> SegmentationTask:
    """Both splits of a segmentation dataset, placed like image classification data (in-memory on the device,
    encoded through loader workers, eval batches of one image of its own size)."""
    if config.head is None:
        raise ValueError(f"dataset {config.dataset!r} is semantic segmentation: choose a head, head=linear or "
                         "head=upernet (config.model is the backbone)")
    _check_augment(config)
    per_rank = per_rank_batch(config, info)
    common = dict(data_dir=config.data_dir, on_error=config.data_errors)
    size = config.image_size or 512
    scale = (4 * size, size)  # mmsegmentation's ADE20K (2048, 512) for crop 512, kept in proportion for other crops
    train_set = load_segmentation_dataset(config.dataset, config.train_split,
                                          crop=SegCrop(size=size, train=True, scale=scale), **common)
    eval_set = load_segmentation_dataset(config.dataset, config.eval_split,
                                         crop=SegCrop(size=size, train=False, scale=scale), **common)
    files = list(dict.fromkeys(list(train_set.files) + list(eval_set.files)))
    train_set, eval_set = train_set.subset(config.train_subset), eval_set.subset(config.eval_subset)
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(train_set)} images, fewer than batch_size {config.batch_size}")
    in_memory = hasattr(train_set, "masks")
    common_loader = dict(device=info.device, rank=info.rank, world_size=info.world_size)
    if in_memory:
        train = DeviceLoader(train_set.images, train_set.masks, batch_size=per_rank, shuffle=True, drop_last=True,
                             seed=config.seed, **common_loader)
        evaluation = DeviceLoader(eval_set.images, eval_set.masks, shuffle=False, drop_last=False, seed=0,
                                  batch_size=eval_batch_size(len(eval_set), per_rank, info), **common_loader)
        image_size = train_set.image_size
    else:
        train = EncodedLoader(train_set, per_rank, shuffle=True, drop_last=True, seed=config.seed,
                              num_workers=config.num_workers, shuffle_buffer=config.shuffle_buffer, **common_loader)
        evaluation = EncodedLoader(eval_set, 1, shuffle=False, drop_last=False, seed=0,
                                   num_workers=config.num_workers, shuffle_buffer=0, **common_loader)
        image_size = size
    transform = SegDeviceTransform(train_set.mean, train_set.std, hflip=in_memory and config.augment.hflip)
    return SegmentationTask(train=train, eval=evaluation, transform=transform.to(info.device),
                   num_classes=len(train_set.classes), class_names=list(train_set.classes),
                   ignore_index=train_set.ignore_index, in_chans=train_set.in_chans, image_size=image_size,
                   train_size=len(train_set), eval_size=len(eval_set), eval_mode=config.eval_mode,
                   eval_stride=config.eval_stride, palette=list(train_set.palette), mean=tuple(train_set.mean),
                   std=tuple(train_set.std), files=files, config=config)
