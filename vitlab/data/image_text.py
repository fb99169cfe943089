"""Image–caption pairs for CLIP training (issue 13): a CSV / TSV table of image paths and captions (open_clip's
`CsvDataset` convention: a header row naming the columns, `filepath` and `title` by default, tab-separated).

Items follow the `EncodedImageDataset` contract (vitlab/data/encoded.py): `dataset[(index, seed)]` → (uint8 image
(3, S, S) decoded, cropped and resized once by `crop`, caption token ids (L,) int64 from `tokenizer`), so
`vitlab.data.loader.EncodedLoader` batches them into (B, 3, S, S) and (B, L). The table is read with Python's `csv`
module (nothing in it is executed); relative image paths are relative to the table's folder.

`CaptionShardDataset` reads the same pairs from tar shards in the layout img2dataset and DataComp write: the members
of one sample share a key, `<key>.jpg|jpeg|png|webp` is the image as stored and `<key>.txt` its UTF-8 caption; other
members (`<key>.json`, ...) are ignored. Each shard is indexed once from its tar headers (`scan_tar_members`, the
captions read on the way, no image decoded) and images are then read by offset. `write_caption_shards` writes such
shards; `load_image_text_dataset` finds a split as a table or as shards.
"""
from __future__ import annotations

import csv
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ._locate import DatasetFormatError, MissingFileError
from ._sources import CLASS_CAPTIONED_DATASETS, IMAGE_TEXT_PREFIX, IMAGENET_MEAN, IMAGENET_STD
from .decode import DecodeCrop
from .encoded import EncodedImageDataset
from .shard_set import check_complete, staged_shard_set
from .shards import SHARD_IMAGE_EXTENSIONS, ShardFiles, _sniff_extension, expand_shard_urls, scan_tar_members

__all__ = ["CsvImageTextDataset", "read_caption_table", "CaptionShardDataset", "CaptionShardIndex",
           "CLASS_CAPTIONED_DATASETS", "index_caption_shard", "caption_shard_urls", "write_caption_shards", "caption_table_to_shards",
           "load_image_text_dataset", "is_image_text_dataset", "IMAGE_TEXT_PREFIX", "CAPTION_EXTENSION"]

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


class CsvImageTextDataset(EncodedImageDataset):
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

    def subset(self, n: int) -> "CsvImageTextDataset":
        """The first `n` pairs in table order (0 or n ≥ len: all)."""
        if not n or n >= len(self):
            return self
        copy = CsvImageTextDataset(self.table, self.tokenizer, self.crop, on_error=self.on_error, mean=self.mean,
                                   std=self.std, pairs=self.pairs[:n])
        copy.name, copy.files = self.name, self.files
        return copy


# ---------------------------------------------------------------------------------------------------------------
# shards: <key>.jpg|jpeg|png|webp + <key>.txt

@dataclass
class CaptionShardIndex:
    """Where each sample of one shard is: image member `image[i] = (offset, size)`, named `members[i]`, with its
    caption `captions[i]` (read while indexing)."""
    path: str
    image: np.ndarray  # (n, 2) int64: offset, size
    members: list[str]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.members)

    def head(self, n: int) -> "CaptionShardIndex":
        return CaptionShardIndex(self.path, self.image[:n], self.members[:n], self.captions[:n])


def _read_captions(path: str, members: list) -> tuple[dict, dict, list[str]]:
    """(key → image member, key → caption, problems) of one shard's members; a caption that is not UTF-8 is a
    problem naming the shard and member."""
    images, captions, problems = {}, {}, []
    with open(path, "rb") as handle:
        for member in members:
            if member.ext in SHARD_IMAGE_EXTENSIONS:
                images.setdefault(member.key, member)
            elif member.ext == CAPTION_EXTENSION and member.key not in captions:
                handle.seek(member.offset)
                try:
                    captions[member.key] = handle.read(member.size).decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as err:
                    captions[member.key] = None
                    problems.append(f"{path}: member {member.name}: caption is not UTF-8 text ({err})")
    return images, captions, problems


def index_caption_shard(path: str | os.PathLike, on_error: str = "raise") -> CaptionShardIndex:
    """Scans one tar's headers into a `CaptionShardIndex` (images are not read; captions are). A truncated tar, an
    image without its `<key>.txt`, a caption without its image or a caption that is not UTF-8 raises
    `DatasetFormatError` naming the shard and member ('raise'), or is left out with a warning ('skip': for a cut
    tar the pairs complete before the cut are kept)."""
    path = str(path)
    members, cut = scan_tar_members(path)
    if cut and on_error == "raise":
        raise DatasetFormatError(cut + "; on_error='skip' keeps its complete samples")
    images, captions, problems = _read_captions(path, members)
    if problems and on_error == "raise":
        raise DatasetFormatError(problems[0])
    order = list(dict.fromkeys(m.key for m in members if m.key in images or m.key in captions))
    if cut:
        problems.insert(0, cut)
        if order and not (order[-1] in images and order[-1] in captions):
            order = order[:-1]  # the sample being read when the tar ended: its other member was cut off
    keep = []
    for key in order:
        if key in images and key in captions:
            if captions[key] is not None:
                keep.append(key)
            continue
        message = (f"{path}: image member {images[key].name} has no caption member {key}.{CAPTION_EXTENSION}"
                   if key in images else f"{path}: caption member {key}.{CAPTION_EXTENSION} has no image member "
                   f"{key}.jpg|jpeg|png|webp")
        if on_error == "raise":
            raise DatasetFormatError(message)
        problems.append(message)
    for message in problems:
        warnings.warn(f"skipped: {message}", stacklevel=2)
    return CaptionShardIndex(path, np.array([(images[k].offset, images[k].size) for k in keep],
                                            np.int64).reshape(-1, 2),
                             [images[k].name for k in keep], [captions[k] for k in keep])


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


class CaptionShardDataset(EncodedImageDataset):
    """Image–caption pairs from tar shards (see the module docstring), addressable by a global index (shard by
    shard). Items and attributes as `CsvImageTextDataset`'s; `shard_sizes` lets `EncodedLoader` stream them.

    Args:
        shards: a folder of `*.tar`, a brace pattern, or a list of shard files (`caption_shard_urls`).
        tokenizer: `tokenizer(list[str]) -> (N, L)` token ids.
        crop, on_error, mean, std: see `EncodedImageDataset`; on_error also covers the indexing errors (missing
            shards, unpaired members, non-UTF-8 captions, cut tars).
        indexes: precomputed `CaptionShardIndex`es (else each shard is indexed now).
    """

    def __init__(self, shards: str | os.PathLike | Iterable[str | os.PathLike], tokenizer: Tokenizer,
                 crop: DecodeCrop, on_error: str = "raise", mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, name: str | None = None,
                 indexes: list[CaptionShardIndex] | None = None):
        if name is None:
            name = f"caption_shards:{Path(shards).name}" if isinstance(shards, (str, os.PathLike)) else "caption_shards"
        super().__init__([], name, crop, on_error, mean, std)
        urls = caption_shard_urls(shards)
        missing = [u for u in urls if not os.path.isfile(u)]
        if missing and on_error == "raise":
            raise MissingFileError(f"{len(missing)} of {len(urls)} caption shards are missing: "
                                   f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                                   "(on_error='skip' reads the others)")
        if missing:
            warnings.warn(f"skipped {len(missing)} missing shard(s): {', '.join(missing[:5])}", stacklevel=2)
        if indexes is None:
            indexes = [index_caption_shard(u, on_error) for u in urls if u not in missing]
        self.shards = [ix for ix in indexes if len(ix)]
        if not self.shards:
            raise DatasetFormatError(f"{self.name}: no image–caption pairs in the shards {urls[:3]}"
                                     f"{' ...' if len(urls) > 3 else ''}")
        self.tokenizer = tokenizer
        self.shard_sizes = [len(ix) for ix in self.shards]
        self._starts = np.cumsum([0] + self.shard_sizes)  # (S + 1,)
        self._files = ShardFiles()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return (f"CaptionShardDataset({self.name}: {len(self)} image–caption pairs in {len(self.shards)} shards, "
                f"{self.crop})")

    @property
    def captions(self) -> list[str]:
        return [caption for ix in self.shards for caption in ix.captions]

    @property
    def targets(self) -> list[str]:
        return self.captions

    def _locate(self, index: int) -> tuple[CaptionShardIndex, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} outside 0 … {len(self) - 1}")
        s = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.shards[s], index - int(self._starts[s])

    def source(self, index: int) -> tuple[bytes, torch.Tensor, str]:
        shard, row = self._locate(index)
        data = self._files.read(shard.path, int(shard.image[row, 0]), int(shard.image[row, 1]))
        tokens = self.tokenizer([shard.captions[row]])[0].long()  # (L,)
        return data, tokens, f"{shard.path}: member {shard.members[row]}"

    def subset(self, n: int) -> "CaptionShardDataset":
        """The first `n` pairs in shard order (0 or n ≥ len: all)."""
        if not n or n >= len(self):
            return self
        kept, left = [], n
        for ix in self.shards:
            if left:
                kept.append(ix.head(min(left, len(ix))))
                left -= len(kept[-1])
        copy = CaptionShardDataset([ix.path for ix in kept], self.tokenizer, self.crop, self.on_error, self.mean,
                                   self.std, self.name, kept)
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
    return data, _sniff_extension(data)


def write_caption_shards(pairs: Iterable[tuple[str | os.PathLike | bytes, str]], out_dir: str | os.PathLike,
                         shard_size: int = 1000, prefix: str = "", overwrite: bool = False) -> list[Path]:
    """Writes (image path or encoded bytes, caption) pairs as shards `<out_dir>/<prefix>00000.tar ...` in the order
    given, `shard_size` pairs each: `<key>.<jpg|png|webp>` (the image as stored) and `<key>.txt` (the caption,
    UTF-8), keys the pair's position zero-padded to 9 digits. The whole set is written into a staging folder and
    moved in when complete (`vitlab.data.shard_set`): never a part of it. Returns the shard paths. `out_dir` must
    hold no `<prefix>*.tar` unless `overwrite`."""
    from webdataset import TarWriter

    out_dir = Path(out_dir)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    existing = sorted(out_dir.glob(f"{prefix}*.tar")) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: already holds shards ({existing[0].name} ...); overwrite=True replaces "
                              "them")
    names: list[str] = []
    with staged_shard_set(out_dir, [f"{prefix}*.tar"]) as staging:
        writer, count, started = None, 0, int(time.time())
        for i, (image, caption) in enumerate(pairs):
            if writer is None:
                names.append(f"{prefix}{len(names):05d}.tar")
                writer, count = TarWriter(str(staging / names[-1]), encoder=False, mtime=started), 0
            data, ext = _image_member(image)
            writer.write({"__key__": f"{i:09d}", ext: data, CAPTION_EXTENSION: str(caption).encode("utf-8")})
            count += 1
            if count == shard_size:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()
        if not names:
            raise ValueError("write_caption_shards: no (image, caption) pairs to write")
    written = [out_dir / name for name in names]
    return written


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
