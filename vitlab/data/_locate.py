"""Finding a dataset on disk, verifying its files, and downloading what is missing.

A dataset's folder (`DatasetInfo.folders`, e.g. `cifar-10-batches-py`) is looked for in the places of
`vitlab._files.search_places`: `data_dir` (the folder itself may also be the dataset's folder), `$VITLAB_DATA`,
`./data`, `../shared/data` (both relative to the current directory and to the repository root),
`/usr/share/datasets` (Debian's `dataset-fashion-mnist` installs `/usr/share/datasets/fashion-mnist/`). An explicit
`data_dir` is never silently replaced: when it lacks the dataset, `DataDirMismatchError` says what was expected
there and where the dataset was found instead (pass that), or `DatasetNotFoundError` lists every place when it is
nowhere.

Files with a registered checksum are verified on every load (hashed once per process for a given path, size and
mtime); `dataset_files` gives (path, verified digest) of the files a split used, for the run log."""
from __future__ import annotations

import os
from pathlib import Path

from .._archive import extract_archive
from .._download import download
from .._files import DatasetNotFoundError, download_dir, not_in_data_dir, search_places, verify_file
from ._sources import CLASS_CAPTIONED_DATASETS, DATASETS, IMAGE_TEXT_PREFIX, SEGMENTATION_DATASETS, DatasetInfo

__all__ = ["UnknownDatasetError", "all_dataset_names", "MissingFileError", "DatasetFormatError", "find_data_root",
           "locate_file", "ensure_downloaded", "dataset_info", "resolve_split", "dataset_files"]


class UnknownDatasetError(KeyError):
    """A dataset name vitlab does not know; the message lists every name it does (image, text, segmentation, CLIP)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def all_dataset_names() -> list[str]:
    """Every dataset name `vitlab train dataset=...` takes, by kind: image classification, language modelling,
    semantic segmentation, image-text (CLIP); `textfile:PATH` and `image_text:ROOT` are patterns."""
    from ..text import TEXT_DATASETS

    text = [n for n in TEXT_DATASETS if n != "textfile"] + ["textfile:PATH"]
    return [*sorted(DATASETS), *text, *SEGMENTATION_DATASETS, *CLASS_CAPTIONED_DATASETS, f"{IMAGE_TEXT_PREFIX}ROOT"]


def _unknown_dataset(name: str) -> UnknownDatasetError:
    import difflib

    names = all_dataset_names()
    if name in names:  # a known name asked of the image-classification registry: say so, not "did you mean" itself
        return UnknownDatasetError(f"dataset {name!r} is not an image-classification dataset; this needs one of: "
                                   f"{', '.join(sorted(DATASETS))}")
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownDatasetError(f"unknown dataset {name!r}.{hint} Known: {', '.join(names)}")


class MissingFileError(FileNotFoundError):
    """The dataset's folder was found but a file a split needs is missing."""


class DatasetFormatError(ValueError):
    """A file is not in the official format (wrong magic number, key, shape, dtype or value)."""


def dataset_info(name: str) -> DatasetInfo:
    """`DATASETS[name]` (the image-classification datasets); any other name raises `UnknownDatasetError` listing
    every dataset name vitlab knows."""
    if name not in DATASETS:
        raise _unknown_dataset(name)
    return DATASETS[name]


def resolve_split(info: DatasetInfo, split: str) -> str:
    """The dataset's own name for `split`: 'test' means 'val' where the dataset has no 'test' split, 'val' means
    'test' where it has no 'val' split, and 'train' means 'trainval' for Oxford-IIIT Pets."""
    aliases = {"test": "val", "val": "test", "train": "trainval"}
    if split not in info.splits and aliases.get(split) in info.splits:
        return aliases[split]
    if split not in info.splits:
        raise ValueError(f"{info.name} has no split {split!r}; valid: {', '.join(info.splits)}")
    return split


def _looks_like(folder: Path, info: DatasetInfo) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in info.markers)


def find_data_root(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding dataset `name`'s files (e.g. `.../cifar-10-batches-py`); see the module docstring for
    the search order. For 'imagefolder' and 'shards' it is `data_dir` itself. Raises `DatasetNotFoundError` listing
    every place looked in and how to get the files."""
    info = dataset_info(name)
    if name in ("imagefolder", "shards"):
        if data_dir is None or not Path(data_dir).is_dir():
            raise DatasetNotFoundError(f"{name}: data_dir {data_dir!r} is not a folder. {info.how_to_get}")
        return Path(data_dir)
    places = search_places(data_dir)
    found = []
    for folder, why in places:
        if folder is None:
            continue
        match = next((folder / f for f in info.folders if _looks_like(folder / f, info)), None)
        if match is None and why == "data_dir" and _looks_like(folder, info):
            match = folder
        if match is not None and (not data_dir or why == "data_dir"):
            return match
        if match is not None:
            found.append(match)
    if found:  # an explicit data_dir without the dataset: never fall back silently
        wanted = f"a folder named {' or '.join(repr(f) for f in info.folders)} holding {' or '.join(info.markers[:2])}"
        raise not_in_data_dir(info.name, data_dir, wanted, found)
    raise DatasetNotFoundError(_not_found_message(info, places, data_dir))


def _not_found_message(info: DatasetInfo, places: list[tuple[Path | None, str]], data_dir) -> str:
    folders = " or ".join(repr(f) for f in info.folders)
    markers = " or ".join(info.markers[:2])
    lines = [f"{info.name}: dataset not found. Looked for a folder named {folders} (holding {markers}) in:"]
    lines += [f"  {folder}  ({why})" if folder is not None else f"  {why}" for folder, why in places]
    if info.remote is not None:
        urls = ", ".join(f.url for f in info.remote)
        lines.append(f"To get it: add download=true (vitlab train / eval ... download=true, vitlab shards ... "
                     f"--download; in Python load_dataset({info.name!r}, download=True)); it downloads {urls} into "
                     f"{download_dir(data_dir)} (md5-verified).")
    if info.how_to_get:
        lines.append(info.how_to_get)
    return "\n".join(lines)


def locate_file(root: Path, relative: str, info: DatasetInfo) -> Path:
    """`root / relative`, verified against the official checksum when one is known; an entry ending in `.gz` is also
    found uncompressed. Raises `MissingFileError` naming the file and its expected checksum."""
    candidates = [relative] + ([relative.removesuffix(".gz")] if relative.endswith(".gz") else [])
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            if path.is_file():
                verify_file(path, info.checksums.get(candidate))
            return path
    expected = info.checksums.get(relative)
    alternative = f" (or {root / candidates[1]})" if len(candidates) > 1 else ""
    message = f"{info.name}: missing file {root / relative}{alternative}"
    if expected is not None:
        message += f"; expected {expected.describe()}"
    hint = "download=True fetches it" if info.remote is not None else info.how_to_get
    raise MissingFileError(f"{message}. {hint}")


def dataset_files(root: Path, info: DatasetInfo, split: str) -> list[tuple[str, str]]:
    """(path, digest) of the files split `split` reads from `root`: the verified registered checksum ("md5 <hex>" /
    "sha256 <hex>", cached, so free after loading), or "no registered checksum" (e.g. an ImageFolder tree: the
    folder is listed, its images are not hashed)."""
    files = []
    for rel in info.required.get(split, ()) or ("",):
        for candidate in [rel] + ([rel.removesuffix(".gz")] if rel.endswith(".gz") else []):
            path = root / candidate
            if path.exists():
                digest = verify_file(path, info.checksums.get(candidate)) if path.is_file() else None
                files.append((str(path.resolve()), digest or "no registered checksum"))
                break
    return files


def _complete(root: Path, info: DatasetInfo, split: str) -> bool:
    return all((root / rel).exists() or (rel.endswith(".gz") and (root / rel.removesuffix(".gz")).exists())
               for rel in info.required.get(split, ()))


def ensure_downloaded(name: str, split: str, data_dir: str | os.PathLike | None = None,
                      progress: bool | None = None) -> Path:
    """The dataset's folder, downloading (md5-verified, resumable) and extracting (safely, atomically) the official
    files `split` needs into `download_dir(data_dir)` when they are not found anywhere."""
    info = dataset_info(name)
    split = resolve_split(info, split)
    try:
        root = find_data_root(name, data_dir)
        if _complete(root, info, split):
            return root
    except DatasetNotFoundError:
        if info.remote is None:
            raise
    if info.remote is None:
        raise MissingFileError(f"{name} cannot be downloaded. {info.how_to_get}")
    base = download_dir(data_dir)
    for remote in info.files_for(split):
        path = download(remote.url, base / remote.path, md5=remote.md5, progress=progress)
        if remote.extract_to is not None:
            extract_archive(path, base / remote.extract_to)
    root = base / info.folders[0]
    if not _complete(root, info, split):
        missing = [rel for rel in info.required[split] if not (root / rel).exists()]
        raise MissingFileError(f"{name}: downloaded the official files, but {root} still lacks {', '.join(missing)}")
    return root
