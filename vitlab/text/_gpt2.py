"""GPT-2's byte-level BPE through tiktoken, built only from local copies of GPT-2's original files (`vocab.bpe`,
`encoder.json`); nothing is ever downloaded.

tiktoken's own `get_encoding('gpt2')` fetches those two files from openaipublic (tiktoken_ext/openai_public.py) and
caches them in `$TIKTOKEN_CACHE_DIR`, else `$DATA_GYM_CACHE_DIR`, else `<tmp>/data-gym-cache`, each under the sha1 of
its URL and accepted only when its sha256 matches (tiktoken/load.py, read_file_cached). `find_gpt2_files` looks, in
order, in: the `gpt2_files` argument, `$VITLAB_GPT2_BPE`, `<data root>/gpt2` for every data search place, and that
cache (same names, same sha256 check)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .._files import search_places

__all__ = ["GPT2_FILES", "GPT2FilesNotFoundError", "find_gpt2_files", "gpt2_encoding", "tiktoken_cache_dir"]

_BASE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
# file name -> (URL, sha256), as in tiktoken_ext/openai_public.py
GPT2_FILES = {"vocab.bpe": (_BASE + "vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
              "encoder.json": (_BASE + "encoder.json",
                               "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")}
# tiktoken's r50k_pat_str, as GPT-2's 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = "<|endoftext|>"


class GPT2FilesNotFoundError(FileNotFoundError):
    """GPT-2's vocab.bpe + encoder.json were not found; the message lists the places searched and the URLs."""


def tiktoken_cache_dir() -> tuple[Path | None, str]:
    """(folder, why) of tiktoken's download cache, exactly as tiktoken.load.read_file_cached picks it; folder None
    when caching is disabled (`TIKTOKEN_CACHE_DIR=''`)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        value, why = os.environ["TIKTOKEN_CACHE_DIR"], "$TIKTOKEN_CACHE_DIR"
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        value, why = os.environ["DATA_GYM_CACHE_DIR"], "$DATA_GYM_CACHE_DIR"
    else:
        value, why = os.path.join(tempfile.gettempdir(), "data-gym-cache"), "tiktoken's default cache"
    return (Path(value) if value else None), why


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pair_in(folder: Path) -> tuple[Path, Path] | None:
    vocab, encoder = folder / "vocab.bpe", folder / "encoder.json"
    return (vocab, encoder) if vocab.is_file() and encoder.is_file() else None


def _pair_in_cache(folder: Path, notes: list[str]) -> tuple[Path, Path] | None:
    paths = []
    for name, (url, sha256) in GPT2_FILES.items():
        path = folder / hashlib.sha1(url.encode()).hexdigest()
        if not path.is_file():
            return None
        if _sha256(path) != sha256:
            notes.append(f"{path} ({name}) is there but its sha256 is not GPT-2's; ignored")
            return None
        paths.append(path)
    return paths[0], paths[1]


def find_gpt2_files(gpt2_files: str | os.PathLike | None = None,
                    data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(vocab.bpe, encoder.json) paths; see the module docstring for the search order. A `gpt2_files` argument or
    `$VITLAB_GPT2_BPE` that does not hold both files is an error by itself (it was asked for explicitly)."""
    for value, why in ((gpt2_files, "gpt2_files"), (os.environ.get("VITLAB_GPT2_BPE"), "$VITLAB_GPT2_BPE")):
        if value:
            folder = Path(value).expanduser()
            folder = folder.parent if folder.is_file() else folder
            if (pair := _pair_in(folder)) is not None:
                return pair
            raise GPT2FilesNotFoundError(f"{why}={str(value)!r}: {folder} does not hold both vocab.bpe and "
                                         f"encoder.json.\n{_how_to_get()}")
    looked, notes = ["  gpt2_files argument (not given)", "  $VITLAB_GPT2_BPE (not set)"], []
    for folder, why in search_places(data_dir):
        if folder is not None:
            if (pair := _pair_in(folder / "gpt2")) is not None:
                return pair
            looked.append(f"  {folder / 'gpt2'}  ({why})")
    cache, why = tiktoken_cache_dir()
    if cache is not None:
        if (pair := _pair_in_cache(cache, notes)) is not None:
            return pair
        names = ", ".join(hashlib.sha1(url.encode()).hexdigest() for url, _ in GPT2_FILES.values())
        looked.append(f"  {cache}  ({why}; files named {names})")
    else:
        looked.append(f"  tiktoken's cache ({why} is empty: disabled)")
    raise GPT2FilesNotFoundError("GPT-2's BPE files (vocab.bpe and encoder.json) not found; vitlab never downloads "
                                 "them. Looked in:\n" + "\n".join(looked + notes) + "\n" + _how_to_get())


def _how_to_get() -> str:
    urls = " and ".join(url for url, _ in GPT2_FILES.values())
    return (f"To get them, fetch {urls} on a machine with network access into a folder and set VITLAB_GPT2_BPE to "
            "it, or put them in <data root>/gpt2/ (e.g. $VITLAB_DATA/gpt2/, or DIR/gpt2/ with data_dir=DIR); in "
            "Python, gpt2_files=FOLDER also works.")


@contextmanager
def _tiktoken_cache_off():
    """tiktoken's loaders copy even local files into its cache; switch that off while reading ours."""
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


def gpt2_encoding(vocab_bpe: str | os.PathLike, encoder_json: str | os.PathLike):
    """A `tiktoken.Encoding` from GPT-2's files: tiktoken's data-gym loader, GPT-2's split pattern and
    <|endoftext|> (its id from encoder.json, 50256 for GPT-2). Raises ValueError naming the files when they do not
    belong together."""
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError as err:  # pragma: no cover
        raise ImportError("the 'gpt2' tokenizer needs tiktoken: pip install 'vitlab[lm]' (or tiktoken)") from err
    import json

    try:
        with _tiktoken_cache_off():
            ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
        eot = json.loads(Path(encoder_json).read_text(encoding="utf-8")).get(EOT, len(ranks))
    except (AssertionError, KeyError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{vocab_bpe} and {encoder_json} are not a matching GPT-2 vocab.bpe / encoder.json pair "
                         f"({type(err).__name__}: {err})") from None
    if eot in ranks.values():
        raise ValueError(f"{encoder_json}: {EOT} id {eot} collides with a BPE token")
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks, special_tokens={EOT: eot})
