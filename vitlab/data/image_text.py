"""Image–caption pairs for CLIP training (issue 13): a CSV / TSV table of image paths and captions (open_clip's
`CsvDataset` convention: a header row naming the columns, `filepath` and `title` by default, tab-separated).

Items follow the `EncodedImageDataset` contract (vitlab/data/encoded.py): `dataset[(index, seed)]` → (uint8 image
(3, S, S) decoded, cropped and resized once by `crop`, caption token ids (L,) int64 from `tokenizer`), so
`vitlab.data.loader.EncodedLoader` batches them into (B, 3, S, S) and (B, L). The table is read with Python's `csv`
module (nothing in it is executed); relative image paths are relative to the table's folder.

`CaptionShardDataset` reads the same pairs from tar shards in the layout img2dataset and DataComp write: the members
of one sample share a key, `<key>.jpg|jpeg|png|webp` is the image as stored and `<key>.txt` its UTF-8 caption; other
members (`<key>.json`, ...) are ignored. Each shard is indexed once from its tar headers (`vitlab.data.shard_index`,
the index of the three shard kinds: the captions read on the way, no image decoded) and images are then read by
offset. `write_caption_shards` writes such
shards; `load_image_text_dataset` finds a split as a table or as shards.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from ._locate import DatasetFormatError, MissingFileError
from ._sources import CLASS_CAPTIONED_DATASETS, IMAGE_TEXT_PREFIX, IMAGENET_MEAN, IMAGENET_STD
from .decode import DecodeCrop
from .encoded import EncodedImageDataset
from ._subset import Subset
from .shard_index import (NAME, SHARD_IMAGE_EXTENSIONS, VALUE, Column, ShardedDataset, ShardIndex, ShardKind,
                          TarMember, image_extension, index_tar)
from .shard_set import check_complete, staged_shard_set, write_tar_shards
from .shards import expand_shard_urls

__all__ = ["CsvImageTextDataset", "read_caption_table", "CaptionShardDataset", "CLASS_CAPTIONED_DATASETS",
           "index_caption_shard", "caption_shard_urls", "write_caption_shards", "caption_table_to_shards",
           "load_image_text_dataset", "is_image_text_dataset", "IMAGE_TEXT_PREFIX", "CAPTION_EXTENSION", "IMAGE_TEXT"]

Tokenizer = Callable[[list[str]], torch.Tensor]  # list of N captions -> (N, L) token ids
CAPTION_EXTENSION = "txt"


def _utf8_error_position(path: Path) -> str:
    """'line L, byte offset B' of the first byte of `path` that is not UTF-8 (the error path only)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return f"line {line}, byte offset {err.start}"
    return "a byte"


# The longest field (caption or path) a caption table may hold; csv's default of 131072 bytes is too small for long
# captions. csv.field_size_limit is process-wide, so it is raised once, here, to this documented bound.
MAX_CAPTION_FIELD_BYTES = 16 * 2**20


def read_caption_table(path: str | os.PathLike, image_key: str = "filepath", caption_key: str = "title",
                       separator: str = "\t") -> list[tuple[str, str]]:
    """[(absolute image path, caption)] from a UTF-8 table with a header row; errors name the file, row and column.
    A field may hold up to MAX_CAPTION_FIELD_BYTES characters."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"caption table not found: {path}")
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CAPTION_FIELD_BYTES))
    rows, line = [], 1
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=separator)
            missing = [k for k in (image_key, caption_key) if k not in (reader.fieldnames or [])]
            if missing:
                raise DatasetFormatError(f"{path}: header {reader.fieldnames} has no column {missing[0]!r} (expected "
                                         f"columns {image_key!r} and {caption_key!r}, separated by {separator!r})")
            for line, row in enumerate(reader, start=2):
                image, caption = row[image_key], row[caption_key]
                if not image or caption is None:
                    raise DatasetFormatError(f"{path}, line {line}: empty {image_key!r} or missing {caption_key!r}")
                rows.append((str((path.parent / image).resolve()), caption))
    except UnicodeDecodeError:
        where = _utf8_error_position(path)
        raise DatasetFormatError(f"{path}: {where} is not UTF-8; save the table as UTF-8") from None
    except csv.Error as err:
        raise DatasetFormatError(f"{path}, row {line + 1}: {err} (a field may hold up to "
                                 f"{MAX_CAPTION_FIELD_BYTES} characters)") from None
    if not rows:
        raise DatasetFormatError(f"{path}: no rows after the header")
    return rows


class CsvImageTextDataset(Subset, EncodedImageDataset):
    """Image–caption pairs from a caption table (see the module docstring); `tokenizer(list[str]) -> (N, L)`.
    Interchangeable with `CaptionShardDataset`: the same items, `captions`, `targets`, `source` and `subset`."""

    def __init__(self, table: str | os.PathLike, tokenizer: Tokenizer, crop: DecodeCrop,
                 image_key: str = "filepath", caption_key: str = "title", separator: str = "\t",
                 on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, pairs: list[tuple[str, str]] | None = None):
        super().__init__([], f"captions:{Path(table).name}", crop, on_error, mean, std)
        self.table = str(table)
        self.pairs = pairs if pairs is not None else read_caption_table(table, image_key, caption_key, separator)
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"CsvImageTextDataset({self.name}: {len(self)} image–caption pairs, {self.crop})"

    @property
    def captions(self) -> list[str]:
        return [caption for _, caption in self.pairs]

    @property
    def targets(self) -> list[str]:
        return self.captions

    def source(self, index: int) -> tuple[str, torch.Tensor, str]:
        path, caption = self.pairs[index]
        tokens = self.tokenizer([caption])[0].long()  # (L,)
        return path, tokens, f"{self.table}, row {index + 2}: {path}"  # the name errors give: table, row and image

    def _select(self, rows) -> "CsvImageTextDataset":
        copy = CsvImageTextDataset(self.table, self.tokenizer, self.crop, on_error=self.on_error, mean=self.mean,
                                   std=self.std, pairs=[self.pairs[i] for i in rows.tolist()])
        copy.name, copy.files = self.name, self.files
        return copy


# ---------------------------------------------------------------------------------------------------------------
# shards: <key>.jpg|jpeg|png|webp + <key>.txt

def _caption(member: TarMember, data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path}: member {member.name}: caption is not UTF-8 text ({err})") from None


def _unpaired(kind: ShardKind, path: str, key: str, found: dict[str, TarMember]) -> str:
    if "image" in found:
        return f"{path}: image member {found['image'].name} has no caption member {key}.{CAPTION_EXTENSION}"
    return f"{path}: caption member {key}.{CAPTION_EXTENSION} has no image member {key}.jpg|jpeg|png|webp"


IMAGE_TEXT = ShardKind(
    "image_text",
    (Column("image", SHARD_IMAGE_EXTENSIONS), Column("members", SHARD_IMAGE_EXTENSIONS, keep=NAME),
     Column("captions", (CAPTION_EXTENSION,), keep=VALUE, read=_caption)),
    cut_hint="; on_error='skip' keeps its complete samples", missing_hint="on_error='skip' reads the others",
    no_samples="{name}: no image–caption pairs in the shards {urls}", shards_noun="caption shards",
    other_keys_are_samples=False, missing_member=_unpaired)


def index_caption_shard(path: str | os.PathLike, on_error: str = "raise") -> ShardIndex:
    """One caption shard's index (`index_tar`): `image` (offset, size), `members` (the image member's name) and
    `captions` of each pair (a caption that is not UTF-8 is an error naming the shard and member, or is skipped)."""
    return index_tar(path, IMAGE_TEXT, on_error)


def caption_shard_urls(shards: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The shard files of a folder (its `*.tar`, sorted), a brace pattern (`/data/{00000..00012}.tar`), one `.tar`
    file or a list of files. A folder without shards is `MissingFileError` naming what was looked for."""
    if not isinstance(shards, (str, os.PathLike)):
        return [str(u) for u in shards]
    spec = os.path.expanduser(str(shards))
    if os.path.isdir(spec):
        check_complete(spec)
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
        if not urls:
            raise MissingFileError(f"{spec}: no caption shards (looked for {os.path.join(spec, '*.tar')})")
        return urls
    urls = expand_shard_urls(spec)
    if not any(os.path.isfile(u) for u in urls):
        shown = ", ".join(urls[:3]) + (f" ... ({len(urls)} names)" if len(urls) > 3 else "")
        raise MissingFileError(f"caption shards {spec!r}: no such folder, and the pattern matches no file "
                               f"(looked for {shown})")
    return urls


class CaptionShardDataset(ShardedDataset, EncodedImageDataset):
    """Image–caption pairs from tar shards (see the module docstring), addressable by a global index (shard by
    shard). Items and attributes as `CsvImageTextDataset`'s; `shard_sizes` lets `EncodedLoader` stream them.

    Args:
        shards: a folder of `*.tar`, a brace pattern, or a list of shard files (`caption_shard_urls`).
        tokenizer: `tokenizer(list[str]) -> (N, L)` token ids.
        crop, on_error, mean, std: see `EncodedImageDataset`; on_error also covers the indexing errors (missing
            shards, unpaired members, non-UTF-8 captions, cut tars).
        indexes: precomputed `ShardIndex`es (else each shard is indexed now).
    """

    KIND = IMAGE_TEXT

    def __init__(self, shards: str | os.PathLike | Iterable[str | os.PathLike], tokenizer: Tokenizer,
                 crop: DecodeCrop, on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, name: str | None = None,
                 indexes: list[ShardIndex] | None = None):
        if name is None:
            name = f"caption_shards:{Path(shards).name}" if isinstance(shards, (str, os.PathLike)) else "caption_shards"
        super().__init__([], name, crop, on_error, mean, std)
        self._open_shards(caption_shard_urls(shards), on_error, indexes, self.name)
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return (f"CaptionShardDataset({self.name}: {len(self)} image–caption pairs in {len(self.shards)} shards, "
                f"{self.crop})")

    @property
    def captions(self) -> list[str]:
        return [caption for ix in self.shards for caption in ix.captions]

    @property
    def targets(self) -> list[str]:
        return self.captions

    def source(self, index: int) -> tuple[bytes, torch.Tensor, str]:
        shard, row = self._locate(index)
        tokens = self.tokenizer([shard.captions[row]])[0].long()  # (L,)
        return self._read(shard, "image", row), tokens, f"{shard.path}: member {shard.members[row]}"

    def _with_shards(self, indexes: list[ShardIndex]) -> "CaptionShardDataset":
        copy = CaptionShardDataset([ix.path for ix in indexes], self.tokenizer, self.crop, self.on_error, self.mean,
                                   self.std, self.name, indexes)
        copy.files = self.files
        return copy


# ---------------------------------------------------------------------------------------------------------------
# writing shards

def _image_member(image: str | os.PathLike | bytes) -> tuple[bytes, str]:
    """(bytes, extension) of one image: JPEG / PNG / WebP as stored, any other format re-encoded as PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        data = Path(image).read_bytes()
        if Path(image).suffix.lower().lstrip(".") not in SHARD_IMAGE_EXTENSIONS:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                buffer = io.BytesIO()
                img.convert("RGB").save(buffer, format="PNG")
            return buffer.getvalue(), "png"
    return data, image_extension(data)


def write_caption_shards(pairs: Iterable[tuple[str | os.PathLike | bytes, str]], out_dir: str | os.PathLike,
                         shard_size: int = 1000, prefix: str = "", overwrite: bool = False) -> list[Path]:
    """Writes (image path or encoded bytes, caption) pairs as shards `<out_dir>/<prefix>00000.tar ...` in the order
    given, `shard_size` pairs each: `<key>.<jpg|png|webp>` (the image as stored) and `<key>.txt` (the caption,
    UTF-8), keys the pair's position zero-padded to 9 digits. The whole set is written into a staging folder and
    moved in when complete (`vitlab.data.shard_set`): never a part of it. Returns the shard paths. `out_dir` must
    hold no `<prefix>*.tar` unless `overwrite`."""
    out_dir = Path(out_dir)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    existing = sorted(out_dir.glob(f"{prefix}*.tar")) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds shards ({existing[0].name} ...); overwrite=True replaces "
                              "them")

    def samples():  # (tar members, 0) per pair: these shards close by count only
        for i, (image, caption) in enumerate(pairs):
            data, ext = _image_member(image)
            yield {"__key__": f"{i:09d}", ext: data, CAPTION_EXTENSION: str(caption).encode("utf-8")}, 0

    with staged_shard_set(out_dir, [f"{prefix}*.tar"]) as staging:
        shards = write_tar_shards(staging, samples(), lambda s: f"{prefix}{s:05d}.tar", shard_size)
        if not shards:
            raise ValueError("write_caption_shards: no (image, caption) pairs to write")
    return [out_dir / shard.path.name for shard in shards]


def caption_table_to_shards(table: str | os.PathLike, out_dir: str | os.PathLike, shard_size: int = 1000,
                            image_key: str = "filepath", caption_key: str = "title", separator: str | None = None,
                            prefix: str = "", overwrite: bool = False) -> list[Path]:
    """The pairs of a caption table (`read_caption_table`; separator None: ',' for a .csv file, else a tab) written
    as caption shards (`write_caption_shards`). Returns the shard paths."""
    if separator is None:
        separator = "," if Path(table).suffix.lower() == ".csv" else "\t"
    pairs = read_caption_table(table, image_key, caption_key, separator)
    return write_caption_shards(pairs, out_dir, shard_size, prefix, overwrite)


# ---------------------------------------------------------------------------------------------------------------
# one entry point

def is_image_text_dataset(spec) -> bool:
    """True for a dataset spec `image_text:ROOT`."""
    return isinstance(spec, str) and spec.startswith(IMAGE_TEXT_PREFIX)


def load_image_text_dataset(spec: str | os.PathLike, split: str, tokenizer: Tokenizer, crop: DecodeCrop,
                            on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                            std: tuple[float, ...] = IMAGENET_STD) -> CsvImageTextDataset | CaptionShardDataset:
    """Split `split` of `spec` = `image_text:ROOT` (or ROOT itself), the first of: `ROOT/<split>.tsv` (tab-separated,
    columns `filepath` and `title`), `ROOT/<split>.csv` (comma-separated, the same columns), `ROOT/<split>/*.tar`
    (caption shards). None of them: `MissingFileError` listing the three."""
    spec = str(spec)
    root = Path(os.path.expanduser(spec[len(IMAGE_TEXT_PREFIX):] if is_image_text_dataset(spec) else spec))
    tsv, csv_file, folder = root / f"{split}.tsv", root / f"{split}.csv", root / split
    if tsv.is_file():
        return CsvImageTextDataset(tsv, tokenizer, crop, separator="\t", on_error=on_error, mean=mean, std=std)
    if csv_file.is_file():
        return CsvImageTextDataset(csv_file, tokenizer, crop, separator=",", on_error=on_error, mean=mean, std=std)
    if folder.is_dir() and any(folder.glob("*.tar")):
        return CaptionShardDataset(folder, tokenizer, crop, on_error, mean, std, name=f"caption_shards:{split}")
    where = "" if root.is_dir() else f" ({root} is not a folder)"
    raise MissingFileError(f"image–text split {split!r} not found{where}; looked for {tsv}, {csv_file} and "
                           f"{folder / '*.tar'}")
