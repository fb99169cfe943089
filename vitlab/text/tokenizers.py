"""Tokenizers for language-model data, chosen by a short spec string:

- 'char': one token per character; the vocabulary is the sorted set of characters of the source text (nanoGPT's
  shakespeare_char). Saved as JSON (`vitlab_tokenizer.json`).
- 'bpe' / 'bpe:N': byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) with N tokens (default 4096), trained
  locally with Hugging Face `tokenizers`; <|endoftext|> is the end-of-text token. Saved as `tokenizer.json`.
- 'gpt2': GPT-2's own BPE (50257 tokens, <|endoftext|> = 50256) through tiktoken, built from local copies of GPT-2's
  `vocab.bpe` + `encoder.json` (see `_gpt2.py`; never downloaded). Saved as copies of those two files.

Every tokenizer has `name` (its canonical spec), `vocab_size`, `eot_id` (None for 'char'), `encode(str) -> list[int]`,
`decode(ids) -> str`, `encode_batch` and `save(folder)`; `load_tokenizer(folder)` reads a saved one back.
Text that looks like a special token ('<|endoftext|>' in a document) is encoded as ordinary text (tiktoken's
`encode_ordinary`); only the data pipeline inserts `eot_id`."""
from __future__ import annotations

import json
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ._gpt2 import EOT, GPT2_FILES, find_gpt2_files, gpt2_encoding
from ._io import atomic_open, atomic_write_bytes, atomic_write_json

__all__ = ["Tokenizer", "CharTokenizer", "BPETokenizer", "GPT2Tokenizer", "TOKENIZER_SPECS", "DEFAULT_BPE_VOCAB",
           "UnknownTokenizerError", "parse_tokenizer_spec", "canonical_tokenizer_spec", "build_tokenizer",
           "load_tokenizer", "EOT", "TOKENIZER_META"]

DEFAULT_BPE_VOCAB = 4096
TOKENIZER_SPECS = ("char", "bpe", "bpe:N", "gpt2")
TOKENIZER_META = "vitlab_tokenizer.json"  # kind, name, vocab_size, eot_id (+ the characters of a 'char' tokenizer)
_MIN_BPE_VOCAB = 257  # 256 byte tokens + <|endoftext|>
MAX_BPE_TRAIN_WORD = 256  # the longest word (byte-level characters) BPE training sees (BPETokenizer.train)


class UnknownTokenizerError(ValueError):
    """A tokenizer spec that is not one of TOKENIZER_SPECS."""


def parse_tokenizer_spec(spec: str) -> tuple[str, int | None]:
    """('char', None), ('bpe', N) or ('gpt2', None); an unknown spec raises `UnknownTokenizerError` listing the valid
    ones."""
    text = str(spec).strip().lower()
    if text in ("char", "gpt2"):
        return text, None
    if text == "bpe":
        return "bpe", DEFAULT_BPE_VOCAB
    if text.startswith("bpe:"):
        size = text[4:].replace("_", "")
        if not size.isdigit() or int(size) < _MIN_BPE_VOCAB:
            raise UnknownTokenizerError(f"tokenizer {spec!r}: 'bpe:N' needs an integer vocabulary size N >= "
                                        f"{_MIN_BPE_VOCAB} (256 bytes + {EOT})")
        return "bpe", int(size)
    raise UnknownTokenizerError(f"unknown tokenizer {spec!r}; valid: 'char', 'bpe' (= 'bpe:{DEFAULT_BPE_VOCAB}'), "
                                "'bpe:N' (N tokens), 'gpt2'")


def canonical_tokenizer_spec(spec: str) -> str:
    """'char', 'bpe:N' or 'gpt2' ('bpe' becomes 'bpe:4096')."""
    kind, size = parse_tokenizer_spec(spec)
    return f"bpe:{size}" if kind == "bpe" else kind


def _int_list(ids: Iterable[int]) -> list[int]:
    """Token ids from a list, numpy array or torch tensor, as Python ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


class Tokenizer(ABC):
    """The interface every tokenizer has. `name` is its canonical spec ('char', 'bpe:4096', 'gpt2')."""
    kind = ""

    def __init__(self, name: str, vocab_size: int, eot_id: int | None):
        self.name, self.vocab_size, self.eot_id = name, int(vocab_size), eot_id

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special-token text is encoded as ordinary text)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`[encode(t) for t in texts]`, in parallel where the backend can."""
        return [self.encode(text) for text in texts]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode_batch` as int64 arrays (what the data pipeline writes)."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids (a list, numpy array or tensor)."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes the tokenizer's files into `directory` (atomically, the descriptor last); returns the folder."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        atomic_write_json(directory / TOKENIZER_META, {"kind": self.kind, "name": self.name,
                                                       "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                                                       **self._meta()})
        return directory

    def _save_files(self, directory: Path) -> None:
        pass

    def _meta(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class CharTokenizer(Tokenizer):
    """One token per character; ids are positions in the sorted character set."""
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise ValueError("a char vocabulary needs one or more single characters")
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)  # sorted, as the chars are
        super().__init__("char", len(self.chars), None)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        """The vocabulary of every character in `texts` (strings, or one string)."""
        chars: set[str] = set()
        for text in [texts] if isinstance(texts, str) else texts:
            chars.update(text)
        if not chars:
            raise ValueError("cannot build a char vocabulary from empty text")
        return cls(chars)

    def _ids(self, text: str) -> np.ndarray:
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)  # (n,)
        ids = np.searchsorted(self._codepoints, codepoints)  # (n,)
        unknown = self._codepoints[np.minimum(ids, self.vocab_size - 1)] != codepoints
        if unknown.any():
            pos = int(np.argmax(unknown))
            raise ValueError(f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} is not in this "
                             f"char vocabulary of {self.vocab_size} characters")
        return ids

    def encode(self, text: str) -> list[int]:
        return self._ids(text).tolist()

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self._ids(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = _int_list(ids)
        if any(i < 0 or i >= self.vocab_size for i in ids):
            bad = next(i for i in ids if i < 0 or i >= self.vocab_size)
            raise ValueError(f"token id {bad} is outside this char vocabulary of {self.vocab_size} characters")
        return "".join(map(self.chars.__getitem__, ids))

    def _meta(self) -> dict:
        return {"chars": "".join(self.chars)}


class BPETokenizer(Tokenizer):
    """Byte-level BPE in a Hugging Face `tokenizers.Tokenizer` (ByteLevel pre-tokenizer and decoder)."""
    kind = "bpe"

    def __init__(self, hf_tokenizer, requested_vocab_size: int | None = None):
        self.hf = hf_tokenizer
        if hasattr(self.hf, "encode_special_tokens"):  # tokenizers >= 0.15.1
            self.hf.encode_special_tokens = True  # '<|endoftext|>' inside a text is ordinary text
        size = self.hf.get_vocab_size(with_added_tokens=True)
        self.requested_vocab_size = int(requested_vocab_size or size)
        super().__init__(f"bpe:{self.requested_vocab_size}", size, self.hf.token_to_id(EOT))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB) -> "BPETokenizer":
        """Trains a byte-level BPE of `vocab_size` tokens (fewer if the text has fewer distinct merges) on `texts`
        (strings, or one string); <|endoftext|> is added as a special token."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

        if vocab_size < _MIN_BPE_VOCAB:
            raise ValueError(f"bpe vocab_size must be >= {_MIN_BPE_VOCAB}, got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        # For training only, words (GPT-2 regex pieces) are cut into runs of at most MAX_BPE_TRAIN_WORD characters:
        # BPE training is quadratic in a word's length, and a text without spaces is one word (400 KB: 94 s).
        # Words of normal text are far shorter, so their merges, and every encoding, are unchanged.
        hf.pre_tokenizer = pre_tokenizers.Sequence([byte_level, pre_tokenizers.Split(
            Regex(f"[\\s\\S]{{1,{MAX_BPE_TRAIN_WORD}}}"), behavior="isolated")])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer=trainer)
        hf.pre_tokenizer = byte_level  # encoding sees whole words, as GPT-2's tokenizer does
        return cls(hf, requested_vocab_size=vocab_size)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # _fast (no offsets): >= 0.20
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(_int_list(ids), skip_special_tokens=False)

    def _save_files(self, directory: Path) -> None:
        atomic_write_bytes(directory / "tokenizer.json", self.hf.to_str().encode("utf-8"))

    def _meta(self) -> dict:
        return {"requested_vocab_size": self.requested_vocab_size, "files": ["tokenizer.json"]}


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE (tiktoken) from local `vocab.bpe` + `encoder.json`."""
    kind = "gpt2"

    def __init__(self, vocab_bpe: str | os.PathLike, encoder_json: str | os.PathLike):
        self.files = {"vocab.bpe": Path(vocab_bpe), "encoder.json": Path(encoder_json)}
        self.encoding = gpt2_encoding(vocab_bpe, encoder_json)
        super().__init__("gpt2", self.encoding.n_vocab, self.encoding.eot_token)

    @classmethod
    def from_local_files(cls, gpt2_files: str | os.PathLike | None = None,
                         data_dir: str | os.PathLike | None = None) -> "GPT2Tokenizer":
        """Finds GPT-2's files (`_gpt2.find_gpt2_files`: gpt2_files, $VITLAB_GPT2_BPE, <data root>/gpt2, tiktoken's
        cache) or raises `GPT2FilesNotFoundError` naming the places and the URLs."""
        return cls(*find_gpt2_files(gpt2_files, data_dir))

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=min(8, os.cpu_count() or 1))

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(_int_list(ids))

    def _save_files(self, directory: Path) -> None:
        for name, source in self.files.items():
            target = directory / name
            if not (target.exists() and target.samefile(source)):
                with open(source, "rb") as src, atomic_open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)

    def _meta(self) -> dict:
        import hashlib

        digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in self.files.items()}
        official = all(digests[name] == sha256 for name, (_, sha256) in GPT2_FILES.items())
        return {"files": list(self.files), "sha256": digests, "official_gpt2": official}


def build_tokenizer(spec: str, texts: Iterable[str] | str | None = None, *,
                    gpt2_files: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None) -> Tokenizer:
    """A new tokenizer for `spec`: 'char' takes its vocabulary from `texts`, 'bpe[:N]' is trained on `texts`,
    'gpt2' is read from GPT-2's local files (`gpt2_files`, $VITLAB_GPT2_BPE, <data root>/gpt2, tiktoken's cache)."""
    kind, size = parse_tokenizer_spec(spec)
    if kind == "gpt2":
        return GPT2Tokenizer.from_local_files(gpt2_files, data_dir)
    if texts is None:
        raise ValueError(f"tokenizer {spec!r} is built from text: pass texts=")
    return CharTokenizer.from_texts(texts) if kind == "char" else BPETokenizer.train(texts, size)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved in folder `path` (by `Tokenizer.save` or `prepare_text`); also reads a bare Hugging Face
    `tokenizer.json` or a folder holding GPT-2's vocab.bpe + encoder.json."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    meta: dict = {}
    if (folder / TOKENIZER_META).is_file():
        meta = json.loads((folder / TOKENIZER_META).read_text(encoding="utf-8"))
        kind = meta.get("kind")
    elif (folder / "tokenizer.json").is_file():
        kind = "bpe"
    elif (folder / "vocab.bpe").is_file() and (folder / "encoder.json").is_file():
        kind = "gpt2"
    else:
        raise FileNotFoundError(f"{folder}: no saved tokenizer (looked for {TOKENIZER_META}, tokenizer.json, "
                                "vocab.bpe + encoder.json)")
    if kind == "char":
        tokenizer: Tokenizer = CharTokenizer(meta["chars"])
    elif kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        tokenizer = BPETokenizer(HFTokenizer.from_file(str(folder / "tokenizer.json")),
                                 meta.get("requested_vocab_size"))
    elif kind == "gpt2":
        tokenizer = GPT2Tokenizer(folder / "vocab.bpe", folder / "encoder.json")
    else:
        raise ValueError(f"{folder / TOKENIZER_META}: unknown tokenizer kind {kind!r}")
    if meta and (meta.get("vocab_size") != tokenizer.vocab_size or meta.get("eot_id") != tokenizer.eot_id):
        raise ValueError(f"{folder}: the tokenizer files give vocab_size {tokenizer.vocab_size} / eot_id "
                         f"{tokenizer.eot_id}, but {TOKENIZER_META} says {meta.get('vocab_size')} / "
                         f"{meta.get('eot_id')}; the folder is inconsistent, prepare it again")
    return tokenizer
