"""Text data for language models: datasets (tinyshakespeare, wikitext2, wikitext103, openwebtext, 'textfile:PATH'),
tokenizers ('char', 'bpe[:N]' trained locally with Hugging Face tokenizers, 'gpt2' through tiktoken from local files)
and `prepare_text`, which writes nanoGPT-style token shards (train.bin / val.bin / test.bin + meta.json) once and
reuses them. CLIP / CLIPA text towers use `ClipBPETokenizer` / `BertWordPieceTokenizer` (`load_text_tokenizer`),
read from local vocabulary files.

    prepared = prepare_text("tinyshakespeare", tokenizer="char")
    x = prepared.tokens("train")          # read-only np.memmap, uint16 (uint32 for vocabularies >= 65536)
    tok = load_tokenizer(prepared.root)   # tok.encode(str) -> list[int], tok.decode(ids) -> str
"""
from ._gpt2 import GPT2FilesNotFoundError, find_gpt2_files
from .clip_tokenizers import BertWordPieceTokenizer, CaptionTokenizer, ClipBPETokenizer, load_text_tokenizer
from ._registry import TEXT_DATASETS, TextDatasetInfo, UnknownTextDatasetError, text_dataset_info
from ._sources import MissingSplitError, NotUTF8Error
from .prepare import PreparedText, prepare_text, prepared_dir
from .tokenizers import (DEFAULT_BPE_VOCAB, TOKENIZER_SPECS, BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer,
                         UnknownTokenizerError, build_tokenizer, canonical_tokenizer_spec, load_tokenizer,
                         parse_tokenizer_spec)

__all__ = ["TEXT_DATASETS", "TextDatasetInfo", "text_dataset_info", "prepare_text", "prepared_dir", "PreparedText",
           "Tokenizer", "CharTokenizer", "BPETokenizer", "GPT2Tokenizer", "build_tokenizer", "load_tokenizer",
           "parse_tokenizer_spec", "canonical_tokenizer_spec", "TOKENIZER_SPECS", "DEFAULT_BPE_VOCAB",
           "find_gpt2_files", "GPT2FilesNotFoundError", "MissingSplitError", "NotUTF8Error",
           "UnknownTextDatasetError", "UnknownTokenizerError", "ClipBPETokenizer", "BertWordPieceTokenizer", "CaptionTokenizer",
           "load_text_tokenizer"]
