"""Token shards for language modelling: `prepare_text(dataset, tokenizer)` tokenises each split of a text dataset once
and writes nanoGPT-style flat token files; later calls with the same sources and tokenizer reuse them.

A prepared folder (`<cache>/text/<dataset>/<tokenizer spec>`, e.g. `~/.cache/vitlab/text/tinyshakespeare/char`):
    train.bin, val.bin, test.bin   the splits present: raw little-endian uint16 (vocab < 65536) or uint32 token ids
    meta.json                      dataset, tokenizer spec, vocab_size, eot_id, dtype, tokens per split, split rule,
                                   source fingerprint (paths, sizes, mtimes, sha256), vitlab version (written last)
    vitlab_tokenizer.json          the tokenizer (+ tokenizer.json for 'bpe', vocab.bpe + encoder.json for 'gpt2')
Every file is written to a temporary name and renamed into place, and meta.json is removed before a folder is
rewritten, so an interrupted prepare leaves a folder that the next call prepares again instead of trusting.

Verification of the shards (a corrupt cache must neither train on garbage nor crash in the embedding): meta.json
records the sha256 of every shard, computed while it is written. `PreparedText.load` checks each shard in one pass
over the memmap in 16 MiB chunks: its sha256 (hashlib; SHA-NI makes it the fastest hashlib digest on x86 — measured
~1 GB/s on a loaded 2-core EPYC for a 1 GiB uint16 file with the max id computed in the same pass, blake2b 0.45 GB/s)
and its largest id, which must be < vocab_size. For OpenWebText (~17 GB of uint16) that is ~17 s, paid once per file
change: a shard that passed is remembered by (size, mtime_ns) in the process and in `.verified.json` beside it, and
not read again until one of them changes. The trade-off: a change that keeps a shard's size and mtime (a deliberate
rewrite with the mtime restored, or silent bit rot on disk) is not seen after the first check; delete
`.verified.json` to force a full check. A shard that fails raises `CorruptShardError` naming the file (and the bad id
and vocabulary size); `prepare_text` then rebuilds the folder from the source."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .._download import cache_dir as vitlab_cache_dir
from .._download import file_digests
from .._version import __version__
from ._gpt2 import find_gpt2_files
from ._io import atomic_open, atomic_write_json, file_lock
from ._sources import MissingSplitError, TextSource, _sanitise, resolve_source, verify_source
from .tokenizers import (TOKENIZER_META, BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer,
                         canonical_tokenizer_spec, load_tokenizer, parse_tokenizer_spec)

__all__ = ["PreparedText", "prepare_text", "prepared_dir", "FORMAT_VERSION", "CorruptShardError"]

FORMAT_VERSION = 2  # bump when the shard layout or the splitting rules change: older folders are prepared again
# 2: meta.json records each shard's sha256 ("shard_sha256")
_BATCH_CHARS = 1 << 20  # characters per batch-encode call (Hugging Face needs ~200 bytes per character)
_BATCH_ITEMS = 1024
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}
_log = logging.getLogger("vitlab.data")
_VERIFY_CHUNK = 16 << 20  # bytes per step of the verification pass
_VERIFIED_FILE = ".verified.json"  # {shard name: {size, mtime_ns, sha256}} of the shards that passed
_SHARDS_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, shards that passed here


class CorruptShardError(ValueError):
    """A cached token shard differs from the sha256 recorded when it was written, or holds an id outside the
    vocabulary; the message names the file."""


def _split_name(split: str) -> str:
    return _SPLIT_ALIASES.get(split, split)


@dataclass
class PreparedText:
    """A prepared folder: `splits` = {split: number of tokens}, `tokens(split)` = a read-only memmap of them;
    `files` (set by `prepare_text`): (path, digest) of the source files used, for the run log."""
    root: Path
    dataset: str
    tokenizer: Tokenizer
    splits: dict[str, int]
    vocab_size: int
    dtype: np.dtype
    meta: dict
    files: list[tuple[str, str]] = field(default_factory=list)  # (source path, sha256 or "no registered checksum")

    @classmethod
    def load(cls, root: str | os.PathLike) -> "PreparedText":
        """Opens a folder written by `prepare_text`: checks that every shard has the size meta.json gives, the sha256
        recorded when it was written and ids < vocab_size (once per file change, see the module docstring); raises
        `CorruptShardError` naming the file otherwise."""
        root = Path(root)
        meta = _read_meta(root / "meta.json")
        try:
            tokenizer = load_tokenizer(root)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:  # a corrupt saved tokenizer
            raise CorruptShardError(f"{root / TOKENIZER_META}: the saved tokenizer is unreadable "
                                    f"({type(err).__name__}: {str(err)[:200]}); prepare it again") from None
        if tokenizer.vocab_size != meta["vocab_size"]:
            raise CorruptShardError(f"{root / 'meta.json'}: vocab_size {meta['vocab_size']}, the tokenizer has "
                                    f"{tokenizer.vocab_size}; prepare it again")
        prepared = cls(root, meta["dataset"], tokenizer, dict(meta["splits"]), meta["vocab_size"],
                       np.dtype(meta["dtype"]).newbyteorder("<"), meta)
        for split, n in prepared.splits.items():
            path = prepared.path(split)
            size = path.stat().st_size if path.is_file() else None
            if size != n * prepared.dtype.itemsize:
                raise ValueError(f"{path}: {size} bytes, but meta.json says {n} tokens of {meta['dtype']}; prepare "
                                 "it again")
        _verify_shards(prepared)
        return prepared

    def path(self, split: str) -> Path:
        return self.root / f"{_split_name(split)}.bin"

    def has_split(self, split: str) -> bool:
        return _split_name(split) in self.splits

    def tokens(self, split: str) -> np.ndarray:
        """The token ids of `split`: a read-only 1-D np.memmap of `dtype`. A split whose file was not found (e.g.
        WikiText's train split) raises `MissingSplitError` naming the files looked for."""
        name = _split_name(split)
        if name not in self.splits:
            missing = self.meta.get("missing_splits", {})
            present = ", ".join(self.splits)
            if name in missing:
                raise MissingSplitError(f"{self.dataset}: no {name!r} split: its file was not found when {self.root} "
                                        f"was prepared (looked for {', '.join(missing[name])}). Prepared splits: "
                                        f"{present}. Add the file and call prepare_text again.")
            raise MissingSplitError(f"{self.dataset} has no {split!r} split; prepared splits: {present}")
        n = self.splits[name]
        if n == 0:
            empty = np.zeros(0, dtype=self.dtype)
            empty.flags.writeable = False
            return empty
        return np.memmap(self.path(name), dtype=self.dtype, mode="r", shape=(n,))

    def __repr__(self) -> str:
        return (f"PreparedText({self.dataset!r}, tokenizer={self.tokenizer.name!r}, vocab_size={self.vocab_size}, "
                f"splits={self.splits}, root={str(self.root)!r})")


def prepared_dir(dataset_key: str, tokenizer: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache_dir or vitlab cache/text>/<dataset>/<tokenizer spec, sanitised>`."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else vitlab_cache_dir() / "text"
    return base / dataset_key / _sanitise(canonical_tokenizer_spec(tokenizer))


def prepare_text(dataset: str, tokenizer: str = "char", data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, download: bool = False, *,
                 gpt2_files: str | os.PathLike | None = None, url: str | None = None,
                 progress: bool | None = None) -> PreparedText:
    """Tokenises every split of `dataset` (a TEXT_DATASETS name or 'textfile:PATH') present under the data roots
    (`data_dir`, $VITLAB_DATA, ./data, ../shared/data, ...) with `tokenizer` ('char', 'bpe', 'bpe:N', 'gpt2') into
    `prepared_dir(...)`, or returns the folder prepared before from the same sources (same sizes and mtimes, or
    the same sha256) and tokenizer spec without tokenising again. `download=True` fetches tinyshakespeare (from
    `url` if given) when it is not found; `gpt2_files` is a folder with GPT-2's vocab.bpe + encoder.json.
    An explicit `data_dir` without the dataset is an error naming where it was found instead (never a silent fallback);
    source files with a registered sha256 are checked on every call (`ChecksumError` on a mismatch); the result's
    `files` lists (path, digest) of the sources used, also logged at INFO on the "vitlab.data" logger."""
    spec = canonical_tokenizer_spec(tokenizer)
    source = resolve_source(dataset, data_dir, download=download, url=url, progress=progress)
    gpt2_pair = find_gpt2_files(gpt2_files, data_dir) if spec == "gpt2" else None
    root = prepared_dir(source.key, spec, cache_dir)
    tracked = source.source_files() + list(gpt2_pair or ())
    files = verify_source(source)  # registered digests are checked on every load
    with file_lock(root / ".lock"):
        prepared = _cached(root, source.name, spec, tracked)
        if prepared is None:
            prepared = _prepare(root, source, spec, gpt2_pair, tracked, progress)
    prepared.files = files
    for path, digest in files:
        _log.info("%s: using %s (%s)", source.name, path, digest)
    return prepared


def _stats(paths: Iterable[Path]) -> list[dict]:
    return [{"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in paths]


def _fingerprint(paths: list[Path]) -> list[dict]:
    return [{**stat, "sha256": file_digests(path)["sha256"]} for stat, path in zip(_stats(paths), paths)]


def _cached(root: Path, dataset: str, spec: str, tracked: list[Path]) -> PreparedText | None:
    """The prepared folder when meta.json matches: same dataset and spec, and the tracked files have the recorded
    paths, sizes and mtimes, or failing that the recorded sizes and sha256 (then the record is refreshed)."""
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        recorded = meta["source"]["files"] + meta.get("tokenizer_source", [])
        if meta.get("format_version") != FORMAT_VERSION or meta["dataset"] != dataset or meta["tokenizer"] != spec:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = _stats(tracked)
    key = ("path", "size", "mtime_ns")
    if [[r.get(k) for k in key] for r in recorded] != [[s[k] for k in key] for s in now]:
        if [r.get("size") for r in recorded] != [s["size"] for s in now]:
            return None
        current = _fingerprint(tracked)
        if [r.get("sha256") for r in recorded] != [c["sha256"] for c in current]:
            return None
        n_text = len(meta["source"]["files"])
        meta["source"]["files"], meta["tokenizer_source"] = current[:n_text], current[n_text:]
        atomic_write_json(root / "meta.json", meta)  # same content elsewhere or touched: keep the shards
    try:
        return PreparedText.load(root)
    except (OSError, ValueError, KeyError) as err:
        _log.warning("%s: the prepared token cache is not usable (%s); preparing it again from the source", root, err)
        return None


def _build_tokenizer(source: TextSource, spec: str, gpt2_pair) -> Tokenizer:
    kind, size = parse_tokenizer_spec(spec)
    if kind == "gpt2":
        return GPT2Tokenizer(*gpt2_pair)
    if kind == "char":  # nanoGPT: the characters of the whole text (here: of every split present)
        extra = ["\n\n"] if source.layout == "documents" else []  # the document separator without an eot token
        return CharTokenizer.from_texts([*extra, *source.all_text()] if extra else source.all_text())
    if "train" not in source.splits():
        error = source.missing_error("train")
        raise type(error)(f"the {spec!r} tokenizer is trained on the train split. {error}")
    return BPETokenizer.train((piece for piece, _ in source.pieces("train")), size)


def _prepare(root: Path, source: TextSource, spec: str, gpt2_pair, tracked: list[Path],
             progress: bool | None) -> PreparedText:
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # the folder is not valid again until the new meta.json
    for stale in root.glob(".*.tmp-*"):  # left by an interrupted run (we hold the lock)
        stale.unlink(missing_ok=True)
    fingerprint = _fingerprint(tracked)
    tokenizer = _build_tokenizer(source, spec, gpt2_pair)
    tokenizer.save(root)
    dtype = np.dtype("<u2" if tokenizer.vocab_size < 65536 else "<u4")
    splits = source.splits()
    separator = ([] if source.layout != "documents" else [tokenizer.eot_id] if tokenizer.eot_id is not None
                 else tokenizer.encode("\n\n"))  # after each document: eot, or a blank line for 'char'
    counts, digests = _write_splits(root, source.labelled_pieces(splits), splits, tokenizer, dtype,
                                    np.asarray(separator, dtype=np.int64), _show(progress), source.name)
    for old in root.glob("*.bin"):
        if old.stem not in counts:
            old.unlink()
    n_text = len(source.source_files())
    meta = {"format_version": FORMAT_VERSION, "dataset": source.name, "tokenizer": spec,
            "tokenizer_kind": parse_tokenizer_spec(spec)[0], "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id, "dtype": dtype.name, "byteorder": "little", "splits": counts,
            "shard_sha256": digests,
            "missing_splits": {s: paths for s, paths in source.missing.items() if s in source.info.splits},
            "split_rule": source.info.split_rule,
            "source": {"layout": source.layout, "root": str(source.root.resolve()), "files": fingerprint[:n_text]},
            "tokenizer_source": fingerprint[n_text:], "vitlab_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if source.layout == "documents":
        n_docs, val = source.document_split()
        meta["documents"] = {"train": n_docs - len(val), "val": len(val)}
    _record_verified(root, {split: root / f"{split}.bin" for split in counts}, digests)  # range-checked while written
    atomic_write_json(root / "meta.json", meta)
    return PreparedText.load(root)


def _write_splits(root: Path, items: Iterable[tuple[str, str, bool]], splits: list[str], tokenizer: Tokenizer,
                  dtype: np.dtype, separator: np.ndarray, show: bool, name: str
                  ) -> tuple[dict[str, int], dict[str, str]]:
    """Encodes (split, piece, ends a document) items in batches and streams the ids to `<split>.bin` (each written
    to a temporary file, renamed into place only when every split is complete). Returns the token count and the
    sha256 of each split's file."""
    from tqdm.auto import tqdm

    counts = {split: 0 for split in splits}
    hashes = {split: hashlib.sha256() for split in splits}
    with ExitStack() as stack:
        files = {split: stack.enter_context(atomic_open(root / f"{split}.bin", "wb")) for split in splits}
        bar = stack.enter_context(tqdm(unit="char", unit_scale=True, desc=f"tokenizing {name}", disable=not show))
        batch: list[tuple[str, str, bool]] = []

        def flush():
            for (split, _, ends), ids in zip(batch, tokenizer.encode_arrays([text for _, text, _ in batch])):
                ids = np.concatenate([ids, separator]) if ends else ids  # (n,)
                if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
                    raise ValueError(f"{tokenizer!r} produced id {int(ids.max())} outside its vocabulary")
                data = ids.astype(dtype).tobytes()
                files[split].write(data)
                hashes[split].update(data)
                counts[split] += int(ids.size)
            bar.update(sum(len(text) for _, text, _ in batch))
            batch.clear()

        chars = 0
        for item in items:
            batch.append(item)
            chars += len(item[1])
            if chars >= _BATCH_CHARS or len(batch) >= _BATCH_ITEMS:
                flush()
                chars = 0
        flush()
    return counts, {split: digest.hexdigest() for split, digest in hashes.items()}


def _read_meta(path: Path) -> dict:
    """meta.json of a prepared folder, with the fields `PreparedText.load` uses checked; a corrupt one raises
    `CorruptShardError` naming it."""
    def corrupt(what: str) -> CorruptShardError:
        return CorruptShardError(f"{path}: {what}; delete {path.parent} or call prepare_text again to rebuild it")

    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError; nesting deeper than Python's
        raise corrupt(f"not readable JSON ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(meta, dict):
        raise corrupt(f"a JSON {type(meta).__name__}, expected an object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise corrupt(f"prepared by another vitlab format ({str(meta.get('format_version'))[:40]}, this vitlab "
                      f"reads {FORMAT_VERSION})")
    checks = {"dataset": lambda v: isinstance(v, str),
              "vocab_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 2 ** 32,
              "dtype": lambda v: v in ("uint16", "uint32"),
              "splits": lambda v: isinstance(v, dict) and all(
                  isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
                  for k, n in v.items()),
              "shard_sha256": lambda v: isinstance(v, dict)}
    for key, valid in checks.items():
        if key not in meta or not valid(meta[key]):
            raise corrupt(f"field {key!r} is missing or malformed ({str(meta.get(key))[:80]})")
    return meta


def _scan(path: Path, dtype: np.dtype) -> tuple[str, int, int]:
    """(sha256, largest id, its position) of a shard in one pass over its memmap in `_VERIFY_CHUNK` pieces."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    if size == 0:
        return digest.hexdigest(), -1, -1
    tokens = np.memmap(path, dtype=dtype, mode="r")
    step = _VERIFY_CHUNK // dtype.itemsize
    largest, where = -1, -1
    for start in range(0, len(tokens), step):
        chunk = tokens[start:start + step]  # (step,)
        digest.update(chunk)
        top = int(chunk.max())
        if top > largest:
            largest, where = top, start + int(chunk.argmax())
    return digest.hexdigest(), largest, where


def _read_verified(root: Path) -> dict:
    try:
        record = json.loads((root / _VERIFIED_FILE).read_text(encoding="utf-8"))
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _record_verified(root: Path, paths: dict[str, Path], digests: dict[str, str]) -> None:
    """Remembers shards as verified for their current (size, mtime_ns), in the process and in `.verified.json`
    (skipped where the folder is read-only)."""
    record = _read_verified(root)
    for split, path in paths.items():
        stat = path.stat()
        _SHARDS_VERIFIED[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] = digests[split]
        record[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digests[split]}
    try:
        atomic_write_json(root / _VERIFIED_FILE, record)
    except OSError:
        pass


def _verify_shards(prepared: PreparedText) -> None:
    """Checks each shard's sha256 against meta.json and its ids against vocab_size, unless it passed before with
    the same size and mtime (see the module docstring). Raises `CorruptShardError` naming the file."""
    recorded = prepared.meta.get("shard_sha256") or {}
    record = _read_verified(prepared.root)
    passed: dict[str, Path] = {}
    for split in prepared.splits:
        path = prepared.path(split)
        if split not in recorded:
            raise CorruptShardError(f"{path}: meta.json records no sha256 for it; prepare it again")
        stat, expected = path.stat(), recorded[split]
        if _SHARDS_VERIFIED.get((str(path.resolve()), stat.st_size, stat.st_mtime_ns)) == expected:
            continue
        if record.get(path.name) == {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": expected}:
            _SHARDS_VERIFIED[(str(path.resolve()), stat.st_size, stat.st_mtime_ns)] = expected
            continue
        actual, largest, where = _scan(path, prepared.dtype)
        if largest >= prepared.vocab_size:
            raise CorruptShardError(f"{path}: token id {largest} (at token {where}) is outside the vocabulary of "
                                    f"size {prepared.vocab_size}: the token cache is corrupt; delete {prepared.root} "
                                    "or call prepare_text again to rebuild it from the source")
        if actual != expected:
            raise CorruptShardError(f"{path}: sha256 {actual} differs from {expected}, recorded in meta.json when it "
                                    f"was written: the token cache is corrupt; delete {prepared.root} or call "
                                    "prepare_text again to rebuild it from the source")
        passed[split] = path
    if passed:
        _record_verified(prepared.root, passed, {split: recorded[split] for split in passed})


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress

