"""Image–caption pairs for CLIP training (issue 13): a CSV / TSV table of image paths and captions (open_clip's
`CsvDataset` convention: a header row naming the columns, `filepath` and `title` by default, tab-separated).

Items follow the `EncodedImageDataset` contract (vitlab/data/encoded.py): `dataset[(index, seed)]` → (uint8 image
(3, S, S) decoded, cropped and resized once by `crop`, caption token ids (L,) int64 from `tokenizer`), so
`vitlab.data.loader.EncodedLoader` batches them into (B, 3, S, S) and (B, L). The table is read with Python's `csv`
module (nothing in it is executed); relative image paths are relative to the table's folder.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

import torch

from ._locate import DatasetFormatError, MissingFileError
from ._sources import IMAGENET_MEAN, IMAGENET_STD
from .decode import DecodeCrop
from .encoded import EncodedImageDataset

__all__ = ["CsvImageTextDataset", "read_caption_table"]


def read_caption_table(path: str | os.PathLike, image_key: str = "filepath", caption_key: str = "title",
                       separator: str = "\t") -> list[tuple[str, str]]:
    """[(absolute image path, caption)] from a table with a header row; errors name the file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"caption table not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=separator)
        missing = [k for k in (image_key, caption_key) if k not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFormatError(f"{path}: header {reader.fieldnames} has no column {missing[0]!r} (expected "
                                     f"columns {image_key!r} and {caption_key!r}, separated by {separator!r})")
        rows = []
        for line, row in enumerate(reader, start=2):
            image, caption = row[image_key], row[caption_key]
            if not image or caption is None:
                raise DatasetFormatError(f"{path}, line {line}: empty {image_key!r} or missing {caption_key!r}")
            rows.append((str((path.parent / image).resolve()), caption))
    if not rows:
        raise DatasetFormatError(f"{path}: no rows after the header")
    return rows


class CsvImageTextDataset(EncodedImageDataset):
    """Image–caption pairs from a caption table (see the module docstring); `tokenizer(list[str]) -> (N, L)`."""

    def __init__(self, table: str | os.PathLike, tokenizer: Callable[[list[str]], torch.Tensor], crop: DecodeCrop,
                 image_key: str = "filepath", caption_key: str = "title", separator: str = "\t",
                 on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        super().__init__([], f"captions:{Path(table).name}", crop, on_error, mean, std)
        self.pairs = read_caption_table(table, image_key, caption_key, separator)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def captions(self) -> list[str]:
        return [caption for _, caption in self.pairs]

    @property
    def targets(self) -> list[str]:
        return self.captions

    def source(self, index: int) -> tuple[str, torch.Tensor, str]:
        path, caption = self.pairs[index]
        tokens = self.tokenizer([caption])[0].long()  # (L,)
        return path, tokens, path
