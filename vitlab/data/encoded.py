"""`EncodedImageDataset`: the contract of every dataset whose images are stored encoded (JPEG, PNG, WebP ...) and
decoded on access in DataLoader workers: ImageFolder trees (`ImageFolderDataset`) and WebDataset shards
(`ShardDataset`).

The decode stage is owned here, once: `decode_image(source, self.crop, rng)` reads the bytes, decodes, crops and
resizes to a fixed `size × size` uint8 image. `self.crop` (a `DecodeCrop`) says which crop: the training
random-resized crop or the evaluation resize + centre crop. Nothing after it crops again: the training engine builds
the device augmentation without a crop for these datasets (`vitlab.train.tasks.classification.plan_augmentation`).

Items are addressed as `dataset[(index, seed)]`: the seed of the sample's crop comes with the index, so a crop
depends only on (run seed, epoch, position), never on which worker decodes it, and a resumed run decodes the same
crops. `dataset[index]` uses seed 0 (evaluation, inspection).
"""
from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import torch

from ._locate import DatasetFormatError
from .decode import DecodeCrop, ImageDecodeError, decode_image

__all__ = ["EncodedImageDataset", "DecodeFailure", "DecodedOrFailure", "ON_ERROR", "check_images"]

ON_ERROR = ("raise", "skip")


class DecodeFailure(NamedTuple):
    """What a loader worker passes on instead of an image it could not read (`decoded_or_failure`): the message
    names the file or shard member. The loader raises it cleanly in the main process ('raise') or counts and logs
    it ('skip'), so no worker traceback is pasted into the error."""
    message: str


class DecodedOrFailure(torch.utils.data.Dataset):
    """The view of an `EncodedImageDataset` that loader workers read: `DatasetFormatError` becomes a
    `DecodeFailure` value."""

    def __init__(self, dataset: "EncodedImageDataset"):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        try:
            return self.dataset[item]
        except DatasetFormatError as err:
            return DecodeFailure(str(err))


class EncodedImageDataset(torch.utils.data.Dataset):
    """Base of the datasets decoded on access. Subclasses give `__len__`, `source(index) -> (bytes or path, label,
    name)` and `targets`. `__getitem__((index, seed))` → (uint8 (3, S, S), label); an unreadable image raises
    `DatasetFormatError` naming it.

    Args:
        classes: class names, label i ↔ classes[i].
        crop: the decode stage (size, train crop or eval crop).
        on_error: 'raise' (an unreadable image stops the run with its name) or 'skip' (counted, logged, left out of
            its batch).
        mean, std: per-channel normalisation statistics in [0, 1] units (ImageNet's by default).
    """

    in_chans = 3

    def __init__(self, classes: list[str], name: str, crop: DecodeCrop, on_error: str = "raise",
                 mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225)):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.classes, self.name, self.crop, self.on_error = list(classes), name, crop, on_error
        self.mean, self.std = tuple(mean), tuple(std)
        self.files: list[tuple[str, str]] = []  # (path, verified digest) read, as `load_dataset` fills it in

    # -- what subclasses provide ------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def source(self, index: int) -> tuple[bytes | memoryview | str, int, str]:
        """(encoded bytes or a file path, label, a name for messages) of sample `index`."""
        raise NotImplementedError

    @property
    def targets(self) -> list[int]:
        """The labels of all samples, in order (no decoding)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.crop.size

    @property
    def train(self) -> bool:
        return self.crop.train

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, 0)
        data, label, name = self.source(int(index))
        rng = random.Random(int(seed)) if self.crop.train else None
        try:
            array = decode_image(data, self.crop, rng)  # (S, S, 3) uint8
        except (ImageDecodeError, OSError) as err:  # OSError: a file that vanished or cannot be read
            raise DatasetFormatError(f"{name}: unreadable image: {err}") from None
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous(), label  # (3, S, S)


def _failure_messages(items: list) -> list[str]:
    return [item.message for item in items if isinstance(item, DecodeFailure)]


def check_images(dataset: EncodedImageDataset, num_workers: int = 0, batch_size: int = 64,
                 progress: bool | None = None) -> list[str]:
    """Decodes every sample of `dataset` as training would (its own decode stage) and returns the messages of the
    unreadable ones, each naming the file or shard member: a checked scan to run before a long job
    (`vitlab check-data`). Uses `num_workers` DataLoader workers; `progress`: a tqdm bar (None: on a terminal)."""
    from tqdm import tqdm

    indices = list(range(len(dataset)))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = torch.utils.data.DataLoader(DecodedOrFailure(dataset), batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=_failure_messages)
    failures: list[str] = []
    with tqdm(total=len(dataset), unit="img", desc=f"checking {dataset.name}",
              disable=not progress if progress is not None else None) as bar:
        for batch, messages in zip(batches, loader):
            failures += messages
            bar.update(len(batch))
    return failures
