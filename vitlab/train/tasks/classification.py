"""Image classification (`ClassificationTask`): training and evaluation batches from a TrainConfig, and who owns
each augmentation stage.

Small datasets (TensorImageDataset) live on the training device and are sliced by `DeviceLoader` (airbench style);
encoded datasets (ImageFolder trees, WebDataset shards) are decoded by DataLoader workers (`EncodedLoader`) into
fixed-size uint8 crops. Both yield uint8 (B, C, H, W) batches on the device, which `DeviceAugment` turns into
normalised float images and soft targets, and both save and restore their position for exact resume.

One owner per stage (`plan_augmentation`): for encoded data the decoder crops and resizes (the random-resized crop
when the config asks for one: cropping before the resize, at decode time, is the cheap place) and the device
augmentation is built without a crop; for in-memory data the device does the crop. No image is cropped twice.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...data import DecodeCrop, EncodedImageDataset, TensorImageDataset, dataset_info, load_dataset
from ...data.augment import AugmentConfig, DeviceAugment
from ...data.segmentation import SEGMENTATION_DATASETS
from ...data.loader import DeviceLoader, EncodedLoader
from ..config import TrainConfig
from ..distributed import DistInfo, all_reduce_sum, eval_batch_size, lockstep
from ._contract import check_model_family, per_rank_batch, refuse_freeze_text, refuse_head

__all__ = ["ClassificationTask", "build_classification_task", "AugmentationPlan", "plan_augmentation", "config_plan",
           "soft_cross_entropy"]


@dataclass(frozen=True)
class AugmentationPlan:
    """Where each stage of the image pipeline runs. `train_decode` / `eval_decode`: the decode stage of encoded
    datasets (None for in-memory ones); `device`: what `DeviceAugment` does after it."""
    train_decode: DecodeCrop | None
    eval_decode: DecodeCrop | None
    device: AugmentConfig

    def stages(self) -> list[tuple[str, str]]:
        """The training pipeline in order, as (stage, owner) pairs."""
        out: list[tuple[str, str]] = []
        if self.train_decode is not None:
            crop = "random_resized_crop" if self.train_decode.train else "resize_center_crop"
            out += [("decode", "loader workers"), (crop, "decoder")]
        a = self.device
        optional = [("random_resized_crop", a.random_resized_crop), ("random_crop_padding", a.random_crop_padding),
                    ("hflip", a.hflip), ("randaugment", a.randaugment_n), ("color_jitter", a.color_jitter),
                    ("normalise", True), ("random_erasing", a.random_erasing), ("mixup_cutmix", a.mixing)]
        return out + [(name, "device") for name, on in optional if on]

    def random_crops(self) -> list[tuple[str, str]]:
        """The stages that crop at random (at most one in a sound pipeline)."""
        return [stage for stage in self.stages() if stage[0] in ("random_resized_crop", "random_crop_padding")]


def plan_augmentation(augment: AugmentConfig, encoded: bool, image_size: int | None,
                      crop_pct: float = 0.875) -> AugmentationPlan:
    """The owners of the stages for `augment` on encoded (decoded in workers) or in-memory data.

    Encoded data: the decoder does the random-resized crop (`rrc_scale`, `rrc_ratio`) when asked, else a resize of
    the short side to image_size / crop_pct + centre crop (0.875: 256 → 224, timm's and the official CRATE-α eval;
    1.0: the whole short side), to `image_size` (default 224); the device does everything else, without a crop of
    its own."""
    if not encoded:
        return AugmentationPlan(None, None, augment)
    size = image_size or 224
    train = DecodeCrop(size=size, train=augment.random_resized_crop, scale=tuple(augment.rrc_scale),
                       ratio=tuple(augment.rrc_ratio), crop_pct=crop_pct)
    return AugmentationPlan(train, DecodeCrop(size=size, train=False, crop_pct=crop_pct),
                            dataclasses.replace(augment, random_resized_crop=False))


def config_plan(config: TrainConfig) -> AugmentationPlan:
    """`plan_augmentation` for a config, without loading any data (what `build_classification_task` will do). Image–text data
    (`image_text:ROOT`) is encoded; a class-captioned CLIP dataset is placed as the images it captions."""
    from ...data.image_text import CLASS_CAPTIONED_DATASETS, is_image_text_dataset

    if is_image_text_dataset(config.dataset):
        encoded = True
    else:
        encoded = not dataset_info(CLASS_CAPTIONED_DATASETS.get(config.dataset, config.dataset)).in_memory
    return plan_augmentation(config.augment, encoded, config.image_size, config.crop_pct)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()  # (,)


@dataclass
class ClassificationTask:
    """Image classification (`vitlab.train.tasks.Task`): soft-target cross-entropy on device-augmented batches;
    evaluation top-1, top-5 and loss; `best/` keeps the highest top-1."""
    train: DeviceLoader | EncodedLoader
    eval: DeviceLoader | EncodedLoader
    augment: DeviceAugment
    num_classes: int
    in_chans: int
    image_size: int
    train_size: int
    eval_size: int
    files: list = field(default_factory=list)  # (path, verified digest) of the files both splits were read from
    config: TrainConfig | None = None
    name = "classification"
    unit = "images"
    primary = ("top1", "max")  # best/ keeps the highest top-1

    def check_model(self, name: str) -> None:
        check_model_family(self.config, name, "image")
        refuse_head(self.config)

    def model_kwargs(self) -> dict:
        return {"num_classes": self.num_classes, "in_chans": self.in_chans, "img_size": self.image_size}

    def prepare_model(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        refuse_freeze_text(config)
        return model

    def example_input(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, self.in_chans, self.image_size, self.image_size, device=device)

    def samples_per_batch(self, batch_size: int) -> int:
        return batch_size  # images per optimiser step (global)

    def describe(self) -> str:
        return f"{self.train_size} train / {self.eval_size} eval images"

    def notes(self) -> list[str]:
        """Encoded images are decoded at one size: said in capitals, since a forgotten image_size costs a run."""
        if self.config is None or config_plan(self.config).train_decode is None:
            return []
        how = (f"image_size={self.config.image_size}" if self.config.image_size else
               "image_size not set: the 224 px default for encoded images; set image_size=N to change it")
        return [f"IMAGES ARE DECODED AT {self.image_size} x {self.image_size} px ({how})"]

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
        for (images, labels), counted in lockstep(self.eval, len(self.eval), info):
            with autocast:
                images = self.augment.eval_transform(images)
                logits = model(images).float()  # (B, classes)
                if self.augment.config.test_flip:  # mean with the mirrored images' logits (AugmentConfig.test_flip)
                    logits = (logits + model(images.flip(-1)).float()) / 2
            if not counted:  # a pass that keeps FSDP's ranks in step (lockstep)
                continue
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # (B, 5)
            hits = top5 == labels[:, None]
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                                 hits[:, 0].sum().double(), hits.any(-1).sum().double(),
                                 torch.tensor(float(len(labels)), dtype=torch.float64, device=info.device)])
        loss, top1, top5, count = all_reduce_sum(sums, info).tolist()
        return {"eval_loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def _loader(dataset, batch_size: int, train: bool, config: TrainConfig, info: DistInfo):
    seed = config.seed if train else 0
    if isinstance(dataset, TensorImageDataset):
        return DeviceLoader(dataset.images, dataset.labels, batch_size=batch_size, shuffle=train, drop_last=train,
                            device=info.device, seed=seed, rank=info.rank, world_size=info.world_size)
    return EncodedLoader(dataset, batch_size, shuffle=train, drop_last=train, device=info.device, seed=seed,
                         rank=info.rank, world_size=info.world_size, num_workers=config.num_workers,
                         shuffle_buffer=config.shuffle_buffer)


def build_classification_task(config: TrainConfig, info: DistInfo) -> ClassificationTask:
    """Both splits of an image classification dataset, loaded and placed, each augmentation stage given to its one
    owner (`plan_augmentation`), the device augmentation built from the training split's statistics."""
    if config.head is not None:
        raise ValueError(f"head={config.head!r} is for semantic segmentation datasets ({', '.join(SEGMENTATION_DATASETS)}); "
                         f"{config.dataset!r} is not one (leave head unset)")
    if config.data_errors not in ("raise", "skip"):
        raise ValueError(f"data_errors must be 'raise' or 'skip', got {config.data_errors!r}")
    if config.shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {config.shuffle_buffer}")
    plan = config_plan(config)
    common = dict(data_dir=config.data_dir, download=config.download and info.is_main, image_size=config.image_size,
                  on_error=config.data_errors)
    train_set = load_dataset(config.dataset, config.train_split, decode_crop=plan.train_decode, **common)
    eval_set = load_dataset(config.dataset, config.eval_split, decode_crop=plan.eval_decode, **common)
    files = list(dict.fromkeys(train_set.files + eval_set.files))  # (path, digest), before subsetting
    train_set, eval_set = train_set.subset(config.train_subset), eval_set.subset(config.eval_subset)
    per_rank = per_rank_batch(config, info)
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training split has {len(train_set)} images, fewer than batch_size {config.batch_size}")
    if isinstance(train_set, EncodedImageDataset) and eval_set.num_classes != train_set.num_classes:
        raise ValueError(f"the evaluation split has {eval_set.num_classes} classes, the training split "
                         f"{train_set.num_classes}")
    augment = DeviceAugment(plan.device, mean=train_set.mean, std=train_set.std,
                            num_classes=train_set.num_classes).to(info.device)
    return ClassificationTask(train=_loader(train_set, per_rank, True, config, info),
                     eval=_loader(eval_set, eval_batch_size(len(eval_set), per_rank, info), False, config, info),
                     augment=augment,
                     num_classes=train_set.num_classes, in_chans=train_set.in_chans,
                     image_size=train_set.image_size, train_size=len(train_set), eval_size=len(eval_set),
                     files=files, config=config)
