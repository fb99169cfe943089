"""Finding a text dataset's files and reading its splits as a stream of text pieces (never the whole corpus in
memory).

Data roots are searched as for image datasets (vitlab._files.search_places): `data_dir` (which may also be the
dataset's folder itself), `$VITLAB_DATA`, `./data`, `../shared/data`, `<repository>/data`,
`<repository>/../shared/data`. Text is read as UTF-8, byte for byte (no newline translation), except OpenWebText
documents, which are normalised as the Hugging Face loader nanoGPT used does (universal newlines, runs of 3+ newlines
→ 2, stripped).

Pieces are cut only where byte-level BPE cannot merge across the cut: just before an ASCII space or newline that
follows a non-space character. GPT-2's split pattern ends every pre-token before whitespace and starts the next one
there, so encoding the pieces one by one gives exactly the ids of encoding the whole text at once."""
from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import lzma
import math
import os
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np

from .._archive import UnsafeArchiveError, check_member_name
from .._download import download as fetch
from .._files import (Checksum, DataDirMismatchError, DatasetNotFoundError, download_dir, not_in_data_dir,
                      search_places, verify_file)
from ._registry import TextDatasetInfo, text_dataset_info

__all__ = ["TextSource", "resolve_source", "verify_source", "NotUTF8Error", "MissingSplitError", "rechunk",
           "read_pieces"]

PIECE_CHARS = 1 << 16  # target size of the text pieces handed to the tokenizer (64 K characters)
_READ_BYTES = 1 << 20
_ARCHIVE_SUFFIXES = (".xz", ".tar", ".tar.gz", ".tgz", ".tar.bz2")
_LAST_CUT = re.compile(r"(?s:.*)[^\s](?=[ \n])")  # the last non-space character followed by ' ' or '\n'
_FIRST_CUT = re.compile(r"[^\s](?=[ \n])")


class NotUTF8Error(ValueError):
    """A source text is not valid UTF-8; the message names the file (and archive member)."""


class MissingSplitError(FileNotFoundError):
    """The dataset has no file for a split here; the message names the files looked for."""


def read_pieces(path: Path, label: str | None = None) -> Iterator[str]:
    """The text of a UTF-8 file in pieces of about 1 MB, decoded strictly; raises `NotUTF8Error` naming the file."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(_READ_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                raise NotUTF8Error(f"{label or path}: not UTF-8 text (invalid byte at offset "
                                   f"{offset - pending + err.start}: {err.reason}); convert it to UTF-8 first, e.g. "
                                   "iconv -f <encoding> -t UTF-8") from None
            if text:
                yield text
            if not data:
                return
            offset += len(data)


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NotUTF8Error(f"{label}: not UTF-8 text (invalid byte at offset {err.start}: {err.reason})") from None


def rechunk(pieces: Iterable[str], size: int | None = None) -> Iterator[str]:
    """The concatenation of `pieces` re-cut into pieces of at most about `size` characters, only at cuts where
    byte-level BPE gives the same ids pieced or whole (see the module docstring). Text without a cut stays whole."""
    size = size or PIECE_CHARS
    buf, scanned = "", 0  # scanned > 0: buf[:scanned] holds no cut (searched before more text came)
    for piece in pieces:
        buf = buf + piece if buf else piece
        while len(buf) > size:
            match = (None if scanned else _LAST_CUT.match(buf, 0, size + 1)) or _FIRST_CUT.search(
                buf, max(size, scanned - 1))
            if match is None:
                scanned = len(buf)  # no cut yet: read on
                break
            yield buf[:match.end()]
            buf, scanned = buf[match.end():], 0
    if buf:
        yield buf


def _slice(pieces: Iterable[str], start: int, stop: int) -> Iterator[str]:
    """Characters [start, stop) of the concatenation of `pieces`."""
    pos = 0
    for piece in pieces:
        end = pos + len(piece)
        lo, hi = max(start, pos), min(stop, end)
        if lo < hi:
            yield piece[lo - pos:hi - pos]
        pos = end
        if pos >= stop:
            return


def _normalise_document(text: str) -> str:
    """As the Hugging Face openwebtext loader: text-mode newlines, 3+ newlines → 2, stripped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub("\n\n\n+", "\n\n", text).strip()


def _check_member(archive: str, member: tarfile.TarInfo) -> None:
    check_member_name(Path(archive), member.name)
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or special file; refusing to read it")


def _archive_documents(fileobj, label: str, nested: bool) -> Iterator[str]:
    """The .txt members of a tar archive (any compression), read in memory in archive order; members that are
    themselves .xz archives (the original OpenWebText layout) are read the same way, one level deep. Unsafe member
    names ('..', absolute) and links raise `UnsafeArchiveError` before anything of theirs is used."""
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                _check_member(label, member)
                name = PurePosixPath(member.name).name
                if not member.isfile() or name.startswith("."):
                    continue
                if name.endswith(".txt"):
                    yield _normalise_document(_decode(tar.extractfile(member).read(), f"{label}!{member.name}"))
                elif name.endswith(_ARCHIVE_SUFFIXES) and not nested:
                    data = tar.extractfile(member).read()
                    yield from _archive_documents(io.BytesIO(data), f"{label}!{member.name}", nested=True)
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{label}: not a readable tar archive ({type(err).__name__}: {err})") from None


@dataclass
class TextSource:
    """A dataset's files on disk and how its splits are read. `files`: 'single' → {'all': path}; 'splits' → the
    splits present; `documents`: the .txt files and archives of a 'documents' dataset, sorted; `missing[split]`:
    the paths looked for where a split has no file."""
    info: TextDatasetInfo
    name: str
    key: str
    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    documents: list[Path] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    _n_chars: int | None = None
    _val_docs: tuple[int, set[int]] | None = None

    @property
    def layout(self) -> str:
        return self.info.layout

    def splits(self) -> list[str]:
        """The splits that can be prepared from the files present."""
        if self.layout == "splits":
            return [split for split in self.info.splits if split in self.files]
        return list(self.info.splits)

    def source_files(self) -> list[Path]:
        return list(self.files.values()) if self.layout != "documents" else list(self.documents)

    def pieces(self, split: str) -> Iterator[tuple[str, bool]]:
        """(text piece, ends a document) of `split`, pieces cut by `rechunk`."""
        return ((piece, end) for _, piece, end in self.labelled_pieces([split]))

    def labelled_pieces(self, splits: list[str]) -> Iterator[tuple[str, str, bool]]:
        """(split, text piece, ends a document) of several splits; one pass over the documents of a 'documents'
        dataset, split after split otherwise."""
        for split in splits:
            if split not in self.splits():
                raise self.missing_error(split)
        if self.layout == "documents":
            _, val = self.document_split()
            for index, document in enumerate(self.iter_documents()):
                split = "val" if index in val else "train"
                if split in splits:
                    chunks = list(rechunk([document])) or [""]
                    yield from ((split, chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks))
            return
        for split in splits:
            if self.layout == "splits":
                text = read_pieces(self.files[split])
            else:
                n = self.n_chars()
                cut = int(n * self.info.train_fraction)  # nanoGPT: data[:int(n*0.9)], data[int(n*0.9):]
                start, stop = (0, cut) if split == "train" else (cut, n)
                text = _slice(read_pieces(self.files["all"]), start, stop)
            yield from ((split, piece, False) for piece in rechunk(text))

    def all_text(self) -> Iterator[str]:
        """Every character of every split present (for a char vocabulary)."""
        if self.layout == "documents":
            yield from self.iter_documents()
        else:
            for path in self.files.values():
                yield from read_pieces(path)

    def n_chars(self) -> int:
        if self._n_chars is None:
            self._n_chars = sum(len(piece) for piece in read_pieces(self.files["all"]))
        return self._n_chars

    def iter_documents(self) -> Iterator[str]:
        """Every document, in a fixed order: the sources sorted by path, archive members in archive order."""
        for path in self.documents:
            if path.name.endswith(".txt"):
                yield _normalise_document("".join(read_pieces(path)))
            else:
                with open(path, "rb") as f:
                    yield from _archive_documents(f, str(path), nested=False)

    def document_split(self) -> tuple[int, set[int]]:
        """(number of documents, indices of the val documents): nanoGPT's
        `train_test_split(test_size=0.0005, seed=2357)` membership, n_val = ceil(fraction * n), at least one and at
        most n - 1."""
        if self._val_docs is None:
            n = sum(1 for _ in self.iter_documents())
            n_val = min(max(math.ceil(self.info.val_fraction * n), 1), n - 1) if n > 1 else 0
            permutation = np.random.default_rng(self.info.seed).permutation(n)
            self._val_docs = (n, set(permutation[:n_val].tolist()))
        return self._val_docs

    def missing_error(self, split: str) -> MissingSplitError:
        if split in self.missing:
            looked = ", ".join(self.missing[split])
            present = ", ".join(self.splits())
            return MissingSplitError(f"{self.name}: no {split!r} split here: looked for {looked}. Present: "
                                     f"{present}. {self.info.how_to_get}")
        return MissingSplitError(f"{self.name} has no {split!r} split; its splits: {', '.join(self.splits())}")


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _documents_in(folder: Path) -> list[Path]:
    found = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
             and (p.name.endswith(".txt") or p.name.endswith(_ARCHIVE_SUFFIXES))]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _looks_like(folder: Path, info: TextDatasetInfo) -> bool:
    if not folder.is_dir():
        return False
    if info.layout == "documents":
        return any(p.is_file() and (p.name.endswith(".txt") or p.name.endswith(_ARCHIVE_SUFFIXES))
                   for p in folder.rglob("*"))
    return any((folder / name).is_file() for names in info.files.values() for name in names)


def _find_root(info: TextDatasetInfo, data_dir) -> tuple[Path | None, list[str]]:
    looked, found = [], []
    for folder, why in search_places(data_dir):
        if folder is None:
            looked.append(f"  {why}")
            continue
        match = next((folder / name for name in info.folders if _looks_like(folder / name, info)), None)
        if match is None and why == "data_dir" and _looks_like(folder, info):
            match = folder
        if match is not None and (not data_dir or why == "data_dir"):
            return match, looked
        if match is not None:
            found.append(match)
        looked.append(f"  {folder}  ({why})")
    if found:  # an explicit data_dir without the dataset: never fall back silently
        names = " or ".join(repr(f) for f in info.folders)
        raise not_in_data_dir(info.name, data_dir, f"a folder named {names} holding {_wanted(info)}", found)
    return None, looked


def _wanted(info: TextDatasetInfo) -> str:
    return (".txt documents or tar.xz archives of them" if info.layout == "documents" else
            " / ".join(sorted({n for names_ in info.files.values() for n in names_})))


def verify_source(source: "TextSource") -> list[tuple[str, str]]:
    """(path, sha256) of the source's files: a file with a registered digest (`TextDatasetInfo.checksums`) is checked
    against it on every load (hashed once per process for a given path, size and mtime) and a mismatch raises
    `ChecksumError` naming the file, the expected and the actual digest; the others are listed as not verified."""
    files = []
    for path in source.source_files():
        expected = source.info.checksums.get(path.name)
        checksum = Checksum(sha256=(expected,), source="registered") if expected else None
        digest = verify_file(path, checksum)
        files.append((str(path.resolve()), digest or "no registered checksum"))
    return files


def _not_found(info: TextDatasetInfo, looked: list[str], data_dir) -> FileNotFoundError:
    names = " or ".join(repr(f) for f in info.folders)
    wanted = "holding " + _wanted(info)
    lines = [f"{info.name}: dataset not found. Looked for a folder named {names} ({wanted}) in:", *looked]
    if info.url:
        lines.append(f"To get it: download=True fetches {info.url} into {download_dir(data_dir) / info.folders[0]}.")
    lines.append(info.how_to_get)
    return DatasetNotFoundError("\n".join(lines))


def resolve_source(dataset: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                   url: str | None = None, progress: bool | None = None) -> TextSource:
    """The files of `dataset` (a TEXT_DATASETS name or 'textfile:PATH'); downloads tinyshakespeare (from `url`, by
    default the official one, sha256-verified) into `download_dir(data_dir)` when it is not found and `download`."""
    info = text_dataset_info(dataset)
    if dataset.startswith("textfile:"):
        path = Path(dataset[len("textfile:"):]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{dataset}: {path} is not a file")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        return TextSource(info, dataset, f"textfile-{_sanitise(path.stem)}-{digest}", path.parent, {"all": path})
    try:
        root, looked = _find_root(info, data_dir)
    except DataDirMismatchError:
        if not (download and info.url):
            raise
        root, looked = None, []  # download=True: fetch it into the data_dir asked for
    if root is None:
        if not (download and info.url):
            raise _not_found(info, looked, data_dir)
        dest = download_dir(data_dir) / info.folders[0] / info.files["all"][0]
        root = fetch(url or info.url, dest, sha256=info.sha256, progress=progress).parent
    source = TextSource(info, dataset, dataset, root)
    if info.layout == "documents":
        source.documents = _documents_in(root)
        return source
    for split, names in info.files.items():
        present = [root / name for name in names if (root / name).is_file()]
        if present:
            source.files[split] = present[0]
        else:
            source.missing[split] = [str(root / name) for name in names]
    if info.layout == "single" and "all" not in source.files:
        raise _not_found(info, looked, data_dir)
    return source
