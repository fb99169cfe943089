"""Text tokenizers of CLIP-family text towers, built from local vocabulary files on Hugging Face `tokenizers`.

- `ClipBPETokenizer`: OpenAI CLIP's byte-level BPE (49408 tokens) as open_clip's `SimpleTokenizer` applies it, from
  the merges file open_clip ships (`bpe_simple_vocab_16e6.txt.gz`). Output: `<|startoftext|> tokens <|endoftext|>`,
  zero-padded to `context_length` (77); when truncating, the last kept token becomes `<|endoftext|>`. CLIP pools the
  text tower at `argmax(ids)`, the end-of-text token, which has the largest id (`eot_token_id`).
- `BertWordPieceTokenizer`: the BERT WordPiece (`bert-base-uncased`'s `vocab.txt`) that CLIPA's text tower uses,
  as open_clip's `HFTokenizer` applies it: `[CLS] tokens [SEP]`, truncated to `context_length` keeping `[SEP]` last,
  padded with 0; with `strip_sep_token=True` (what open_clip's CLIPA configs set) the `[SEP]` id becomes 0.
- `load_text_tokenizer('clip' | 'bert', path=None)`: finds the vocabulary file (see `tokenizer_search_places`).
- `CaptionTokenizer`: any vitlab `Tokenizer` (e.g. a byte-level BPE trained on the training captions, 'bpe:N') in
  CLIP's format, for text towers trained from scratch: ids shifted by one so 0 is padding, then `[SOT] ids [EOT]`
  with SOT = V + 1 and EOT = V + 2 the two largest ids (so CLIP's `argmax` pooling finds EOT).

Difference from open_clip (text cleaning): open_clip runs `ftfy.fix_text` before `html.unescape` twice and
whitespace collapsing; ftfy is not a dependency here, so we apply only its Unicode NFC normalisation and its quote
uncurling (‘ ’ “ ” ... to ' and "), then html-unescape twice, collapse whitespace, strip and (CLIP) lower-case. Text
that ftfy would repair otherwise (mojibake such as 'cafÃ©', latin ligatures, full-width characters, terminal escapes)
may therefore tokenize differently; plain text tokenizes identically.

Vocabulary files are never downloaded: tests build tiny fixtures, real files come from `path`, `$VITLAB_TOKENIZER_DIR`,
`~/.cache/vitlab/tokenizers/` or an installed open_clip's package data."""
from __future__ import annotations

import gzip
import html
import importlib.util
import os
import unicodedata
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import BertWordPieceTokenizer as _HFBertWordPiece

__all__ = ["ClipBPETokenizer", "BertWordPieceTokenizer", "CaptionTokenizer", "load_text_tokenizer", "tokenizer_search_places",
           "TEXT_TOKENIZER_FILES", "CLIP_SOT", "CLIP_EOT", "CLIP_NUM_MERGES"]

CLIP_SOT, CLIP_EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of bpe_simple_vocab_16e6.txt.gz
# CLIP's pre-tokenizer regex (openai/CLIP simple_tokenizer.py, without the special-token alternatives, which the
# HF tokenizer handles as added tokens); CLIP compiles it with re.IGNORECASE, which (?i) reproduces.
CLIP_PATTERN = r"""(?i)'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# name -> file names looked for in each search place (first found wins)
TEXT_TOKENIZER_FILES = {"clip": ("bpe_simple_vocab_16e6.txt.gz",),
                        "bert": ("vocab.txt", "bert-base-uncased/vocab.txt", "bert-base-uncased-vocab.txt")}
_CURLY_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                               "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'})


def _clean(text: str) -> str:
    """open_clip's basic_clean + whitespace_clean, with ftfy.fix_text reduced to NFC + quote uncurling (see module
    docstring)."""
    text = unicodedata.normalize("NFC", text).translate(_CURLY_QUOTES)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split())


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def _id_rows(ids) -> tuple[list[list[int]], bool]:
    """(rows of int ids, whether the input was 2-D) from a 1-D/2-D tensor, array or (nested) list."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    if ids and isinstance(ids[0], (list, tuple)):
        return [[int(i) for i in row] for row in ids], True
    return [[int(i) for i in ids]], False


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table: the 188 printable bytes map to themselves, the other 68 to
    chr(256 + n) in byte order. Its value order is CLIP's vocabulary order for the 256 byte tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def read_clip_merges(merges_path: str | os.PathLike, num_merges: int = CLIP_NUM_MERGES) -> list[tuple[str, str]]:
    """The merges of a CLIP merges file (gzip or plain text): line 1 is a version header, then one 'a b' merge per
    line; the first `num_merges` are kept (open_clip: `lines[1:49152-256-2+1]`). Blank lines are skipped."""
    path = Path(merges_path)
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    merges = []
    for line in text.split("\n")[1:num_merges + 1]:
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}: merge line {line!r} is not two symbols")
        merges.append((parts[0], parts[1]))
    return merges


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary: 256 byte characters, the same with '</w>', one token per merge (in order), then
    <|startoftext|> and <|endoftext|>."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [CLIP_SOT, CLIP_EOT]
    return {token: i for i, token in enumerate(tokens)}


class ClipBPETokenizer:
    """OpenAI CLIP's BPE tokenizer (open_clip `SimpleTokenizer`, clean='lower'). Call it on a string or a list of
    strings for an int64 tensor (N, context_length)."""

    def __init__(self, merges: Sequence[tuple[str, str]], context_length: int = 77):
        vocab = clip_vocab(merges)
        bpe = models.BPE(vocab, list(merges), end_of_word_suffix="</w>")  # '</w>' joins each word's last symbol
        self.tokenizer = _HFTokenizer(bpe)
        self.tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),  # keep matches, drop spaces
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # bytes -> bytes_to_unicode chars
        self.tokenizer.add_special_tokens([CLIP_SOT, CLIP_EOT])  # text naming them encodes to them, as in CLIP
        self.context_length = int(context_length)
        self.sot_token_id, self.eot_token_id = vocab[CLIP_SOT], vocab[CLIP_EOT]
        self.vocab_size = len(vocab)
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._id_to_token = {i: t for t, i in vocab.items()}

    @classmethod
    def from_files(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike | None = None,
                   context_length: int = 77) -> "ClipBPETokenizer":
        """From open_clip's `bpe_simple_vocab_16e6.txt.gz` (`vocab_path`; the merges list is the whole vocabulary
        definition). `merges_path`, when given, is read instead (same format) and `vocab_path` may be None."""
        return cls(read_clip_merges(merges_path if merges_path is not None else vocab_path), context_length)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without <|startoftext|>/<|endoftext|>."""
        return self.tokenizer.encode(_clean(text).lower(), add_special_tokens=False).ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """int64 (N, context_length): SOT, tokens, EOT, zeros; over-long rows end in EOT at the last position."""
        length = int(context_length or self.context_length)
        texts = [_clean(t).lower() for t in _as_list(texts)]
        out = torch.zeros(len(texts), length, dtype=torch.long)  # (N, L)
        for row, encoding in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = [self.sot_token_id, *encoding.ids, self.eot_token_id][:length]
            ids[-1] = self.eot_token_id  # a no-op unless truncated (open_clip does the same)
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> str | list[str]:
        """Text of token ids (one row -> str, a 2-D batch -> list of str): SOT dropped, cut at the first EOT (so
        padding goes), '</w>' read as a space. For tests and debugging; the cleaning is not undone."""
        rows, batched = _id_rows(ids)
        byte_of = {**self._byte_decoder, " ": ord(" ")}
        texts = []
        for row in rows:
            row = [i for i in row if i != self.sot_token_id]
            row = row[:row.index(self.eot_token_id)] if self.eot_token_id in row else row
            chars = "".join(self._id_to_token[i] for i in row).replace("</w>", " ")
            texts.append(bytes(byte_of[c] for c in chars).decode("utf-8", errors="replace").strip())
        return texts if batched else texts[0]

    def __repr__(self) -> str:
        return f"ClipBPETokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"


class BertWordPieceTokenizer:
    """BERT WordPiece as CLIPA's text tower is fed (open_clip `HFTokenizer('bert-base-uncased')`, clean='whitespace',
    padding='max_length', truncation=True): `[CLS] tokens [SEP] 0 ...`, int64 (N, context_length); truncation keeps
    [SEP] last. `strip_sep_token=True` (open_clip's CLIPA configs set it) then writes 0 where [SEP] was. The BERT
    normaliser (`lowercase`: lower-case + strip accents; CJK characters split; control characters dropped),
    pre-tokenizer (whitespace + punctuation) and '##' continuation pieces are Hugging Face `tokenizers`' own."""

    def __init__(self, tokenizer: _HFBertWordPiece, context_length: int = 32, strip_sep_token: bool = False):
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.strip_sep_token = bool(strip_sep_token)
        self.cls_token_id, self.sep_token_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        self.pad_token_id = 0
        if self.cls_token_id is None or self.sep_token_id is None or tokenizer.token_to_id("[UNK]") is None:
            raise ValueError("a BERT vocab.txt needs [CLS], [SEP] and [UNK] tokens")
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def from_files(cls, vocab_txt: str | os.PathLike, context_length: int = 32, lowercase: bool = True,
                   strip_sep_token: bool = False) -> "BertWordPieceTokenizer":
        """From a BERT `vocab.txt` (one token per line; the line number is the id)."""
        path = Path(vocab_txt)
        if not path.is_file():
            raise FileNotFoundError(f"BERT vocabulary {path} does not exist")
        return cls(_HFBertWordPiece(str(path), lowercase=lowercase), context_length, strip_sep_token)

    def encode(self, text: str) -> list[int]:
        """WordPiece ids of one text, without [CLS]/[SEP]."""
        return self.tokenizer.encode(_clean(text), add_special_tokens=False).ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """int64 (N, context_length): [CLS] tokens [SEP], zero-padded; over-long rows keep [SEP] at the end."""
        length = int(context_length or self.context_length)
        texts = [_clean(t) for t in _as_list(texts)]
        out = torch.zeros(len(texts), length, dtype=torch.long)  # (N, L)
        for row, encoding in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = [self.cls_token_id, *encoding.ids[:max(length - 2, 0)], self.sep_token_id][:length]
            if self.strip_sep_token:
                ids = [self.pad_token_id if i == self.sep_token_id else i for i in ids]
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> str | list[str]:
        """Text of token ids (one row -> str, a 2-D batch -> list), special tokens and padding dropped."""
        rows, batched = _id_rows(ids)
        texts = [self.tokenizer.decode([i for i in row if i != self.pad_token_id]) for row in rows]
        return texts if batched else texts[0]

    def __repr__(self) -> str:
        return (f"BertWordPieceTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
                f"strip_sep_token={self.strip_sep_token})")


class CaptionTokenizer:
    """A vitlab `Tokenizer` of V tokens in CLIP's text format (see the module docstring): int64 (N, context_length)
    rows `SOT, id + 1, ..., EOT, 0, ...`; over-long rows end in EOT at the last position, as CLIP's tokenizer."""

    def __init__(self, tokenizer, context_length: int = 32):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {context_length}")
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.pad_token_id = 0
        self.sot_token_id, self.eot_token_id = tokenizer.vocab_size + 1, tokenizer.vocab_size + 2
        self.vocab_size = tokenizer.vocab_size + 3

    def encode(self, text: str) -> list[int]:
        """Shifted ids of one text, without SOT / EOT."""
        return [i + 1 for i in self.tokenizer.encode(text)]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        length = int(context_length or self.context_length)
        texts = _as_list(texts)
        out = torch.zeros(len(texts), length, dtype=torch.long)  # (N, L)
        for row, ids in enumerate(self.tokenizer.encode_batch(texts)):
            ids = [self.sot_token_id, *(i + 1 for i in ids), self.eot_token_id][:length]
            ids[-1] = self.eot_token_id
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> str | list[str]:
        rows, batched = _id_rows(ids)
        special = {self.pad_token_id, self.sot_token_id, self.eot_token_id}
        texts = [self.tokenizer.decode([i - 1 for i in row if i not in special]) for row in rows]
        return texts if batched else texts[0]

    def __repr__(self) -> str:
        return f"CaptionTokenizer({self.tokenizer!r}, context_length={self.context_length})"


def _open_clip_data_dir() -> Path | None:
    """open_clip's package folder (where it ships bpe_simple_vocab_16e6.txt.gz), found without importing open_clip
    (which would import torchvision)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in"):
        return Path(spec.origin).parent
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else None


def tokenizer_search_places(path: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """(folder, why) in search order: `path`, `$VITLAB_TOKENIZER_DIR`, `~/.cache/vitlab/tokenizers/`, open_clip's
    package folder (when open_clip is installed)."""
    places = []
    if path is not None:
        places.append((Path(path).expanduser(), "the path argument"))
    if os.environ.get("VITLAB_TOKENIZER_DIR"):
        places.append((Path(os.environ["VITLAB_TOKENIZER_DIR"]).expanduser(), "$VITLAB_TOKENIZER_DIR"))
    places.append((Path("~/.cache/vitlab/tokenizers").expanduser(), "vitlab's tokenizer cache"))
    if (folder := _open_clip_data_dir()) is not None:
        places.append((folder, "open_clip's package data"))
    return places


def _find_vocab_file(name: str, path: str | os.PathLike | None) -> Path:
    if path is not None and Path(path).expanduser().is_file():
        return Path(path).expanduser()
    places = tokenizer_search_places(path)
    for folder, _ in places:
        for file_name in TEXT_TOKENIZER_FILES[name]:
            if (folder / file_name).is_file():
                return folder / file_name
    looked = "\n".join(f"  {folder} ({why})" for folder, why in places)
    if _open_clip_data_dir() is None:
        looked += "\n  (open_clip is not installed, so its package data was not searched)"
    raise FileNotFoundError(f"no vocabulary file for the {name!r} text tokenizer; expected "
                            f"{' or '.join(TEXT_TOKENIZER_FILES[name])} in one of:\n{looked}\n"
                            f"Copy the file into one of them (open_clip ships bpe_simple_vocab_16e6.txt.gz; "
                            f"bert-base-uncased's vocab.txt is on the Hugging Face Hub), or set $VITLAB_TOKENIZER_DIR.")


def load_text_tokenizer(name: str, path: str | os.PathLike | None = None,
                        context_length: int | None = None) -> ClipBPETokenizer | BertWordPieceTokenizer:
    """'clip' -> `ClipBPETokenizer` (context 77), 'bert' -> `BertWordPieceTokenizer` (CLIPA: context 32, [SEP]
    stripped as open_clip's CLIPA configs do). `path` is a vocabulary file or a folder holding one; otherwise the
    places of `tokenizer_search_places` are searched and a missing file is a FileNotFoundError listing them."""
    key = str(name).strip().lower()
    if key not in TEXT_TOKENIZER_FILES:
        raise ValueError(f"unknown text tokenizer {name!r}; valid: {', '.join(map(repr, TEXT_TOKENIZER_FILES))}")
    file = _find_vocab_file(key, path)
    if key == "clip":
        return ClipBPETokenizer.from_files(file, context_length=context_length or 77)
    return BertWordPieceTokenizer.from_files(file, context_length=context_length or 32, strip_sep_token=True)
