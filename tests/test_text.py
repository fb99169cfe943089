"""vitlab.text: tokenizers (char, bpe, gpt2 from fabricated GPT-2 files), token shards, splits, caching, datasets from
../shared/data and from fixture folders, downloads from a local server. CPU only, never the network."""
import hashlib
import io
import json
import lzma
import math
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import tar_bytes
from local_http import server  # noqa: F401  (the fixture)

import vitlab._files as locate
import vitlab.text._gpt2 as gpt2_module
import vitlab.text._sources as sources_module
from vitlab._download import ChecksumError
from vitlab.data import DatasetNotFoundError, UnsafeArchiveError
from vitlab.text import (TEXT_DATASETS, CharTokenizer, GPT2FilesNotFoundError, MissingSplitError, NotUTF8Error,
                         PreparedText, Tokenizer, UnknownTextDatasetError, UnknownTokenizerError, build_tokenizer,
                         load_tokenizer, prepare_text)
from vitlab.text._sources import rechunk

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
WIKITEXT2 = SHARED / "wikitext-2"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare missing")
UNICODE = "naïve café — Ωμέγα, 日本語のテキスト, emoji 🙂🚀, tabs\tand\r\nCRLF  double  spaces\n\n\nend"
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n \n = Heading = \n"
          " the cat sat on the mat ; the 2 dogs ran 3.5 km . \n") * 40 + UNICODE


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data root but the ones a test makes: cwd and repository moved to tmp, cache and tiktoken cache in tmp."""
    for name in ("cwd", "repo", "cache", "tiktoken"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(locate, "_REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(locate, "_SYSTEM_DATA", tmp_path / "system")
    monkeypatch.delenv("VITLAB_DATA", raising=False)
    monkeypatch.delenv("VITLAB_GPT2_BPE", raising=False)
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    return tmp_path


# ---------------------------------------------------------------- fabricated GPT-2 files (GPT-2's exact formats)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's encoder.py mapping of the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("Ġ", "Ġ"),
          ("Ċ", "Ċ")]


def write_gpt2_files(folder: Path) -> Path:
    """A tiny but valid vocab.bpe + encoder.json: the 256 byte tokens in GPT-2's order, a few merges, <|endoftext|>."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = {char: rank for rank, char in enumerate(bytes_to_unicode().values())}
    for first, second in MERGES:
        encoder[first + second] = len(encoder)
    encoder["<|endoftext|>"] = len(encoder)
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
    (folder / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    return folder


@pytest.fixture
def gpt2_dir(tmp_path):
    return write_gpt2_files(tmp_path / "gpt2files")


# ---------------------------------------------------------------- tokenizers
def test_char_round_trip_and_unknown_character():
    tok = CharTokenizer.from_texts(SAMPLE)
    assert tok.vocab_size == len(set(SAMPLE)) and tok.eot_id is None and tok.chars == sorted(set(SAMPLE))
    ids = tok.encode(UNICODE)
    assert ids == [sorted(set(SAMPLE)).index(c) for c in UNICODE] and tok.decode(np.array(ids)) == UNICODE
    with pytest.raises(ValueError, match=r"'Z' \(U\+005A\) at position 3"):
        tok.encode("theZ")


def test_bpe_round_trip_save_load_and_eot(tmp_path):
    tok = build_tokenizer("bpe:400", [SAMPLE])
    assert tok.name == "bpe:400" and tok.vocab_size == 400 and tok.eot_id is not None
    for text in (SAMPLE, UNICODE, "unseen ✓ ǅ 𝔘 bytes \x00\x7f"):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the cat sat on the mat")) < len("the cat sat on the mat") / 2  # it learned merges
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")  # special-token text is ordinary text
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    loaded = load_tokenizer(tok.save(tmp_path / "tok"))
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert (loaded.name, loaded.vocab_size, loaded.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
    assert loaded.encode(UNICODE) == tok.encode(UNICODE) and loaded.encode_batch([SAMPLE, UNICODE]) == [
        tok.encode(SAMPLE), tok.encode(UNICODE)]


def test_gpt2_from_fabricated_files(gpt2_dir, tmp_path):
    tok = build_tokenizer("gpt2", gpt2_files=gpt2_dir)
    assert tok.vocab_size == 256 + len(MERGES) + 1 and tok.eot_id == 256 + len(MERGES)
    assert tok.encode(" the cat") == [258, 262]  # 'Ġthe', 'Ġcat': the merges apply in rank order
    for text in (UNICODE, SAMPLE[:500], "a <|endoftext|> b"):
        assert tok.decode(tok.encode(text)) == text
    assert tok.eot_id not in tok.encode("a <|endoftext|> b")
    saved = tok.save(tmp_path / "saved")
    assert json.loads((saved / "vitlab_tokenizer.json").read_text())["official_gpt2"] is False
    loaded = load_tokenizer(saved)
    assert loaded.name == "gpt2" and loaded.encode(UNICODE) == tok.encode(UNICODE)


def test_gpt2_is_found_in_data_roots_and_tiktoken_cache(isolated, gpt2_dir, monkeypatch):
    write_gpt2_files(isolated / "cwd" / "data" / "gpt2")  # <data root>/gpt2
    assert gpt2_module.find_gpt2_files()[0] == isolated / "cwd" / "data" / "gpt2" / "vocab.bpe"
    monkeypatch.setenv("VITLAB_GPT2_BPE", str(gpt2_dir))  # the environment variable comes first
    assert gpt2_module.find_gpt2_files()[0] == gpt2_dir / "vocab.bpe"
    monkeypatch.delenv("VITLAB_GPT2_BPE")
    (isolated / "cwd" / "data" / "gpt2" / "vocab.bpe").unlink()
    # tiktoken's cache: files named by the sha1 of their URL, accepted only with GPT-2's sha256
    for name, (url, _) in gpt2_module.GPT2_FILES.items():
        (isolated / "tiktoken" / hashlib.sha1(url.encode()).hexdigest()).write_bytes((gpt2_dir / name).read_bytes())
    with pytest.raises(GPT2FilesNotFoundError, match="sha256 is not GPT-2's"):
        build_tokenizer("gpt2")
    fake = {name: (url, hashlib.sha256((gpt2_dir / name).read_bytes()).hexdigest())
            for name, (url, _) in gpt2_module.GPT2_FILES.items()}
    monkeypatch.setattr(gpt2_module, "GPT2_FILES", fake)
    tok = build_tokenizer("gpt2")
    assert tok.encode(" the") == [258] and sorted(os.listdir(isolated / "tiktoken")) == sorted(
        hashlib.sha1(url.encode()).hexdigest() for url, _ in fake.values())  # tiktoken cached nothing else


def test_gpt2_without_files_is_a_clear_error(isolated, tmp_path):
    with pytest.raises(GPT2FilesNotFoundError) as err:
        prepare_text("textfile:" + str(_write(tmp_path / "t.txt", SAMPLE)), tokenizer="gpt2")
    message = str(err.value)
    for expected in ("vocab.bpe", "encoder.json", "VITLAB_GPT2_BPE", str(isolated / "cwd" / "data" / "gpt2"),
                     str(isolated / "tiktoken"), "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"):
        assert expected in message
    with pytest.raises(GPT2FilesNotFoundError, match="does not hold both"):
        build_tokenizer("gpt2", gpt2_files=tmp_path)


def test_unknown_names_list_the_valid_ones(isolated):
    with pytest.raises(UnknownTokenizerError, match="'char', 'bpe'.*'bpe:N'.*'gpt2'"):
        prepare_text("tinyshakespeare", tokenizer="wordpiece")
    with pytest.raises(UnknownTokenizerError, match="N >= 257"):
        build_tokenizer("bpe:100", ["x"])
    with pytest.raises(UnknownTextDatasetError, match="'tinyshakespeare', 'wikitext2'.*'textfile:PATH'"):
        prepare_text("shakespeare")


# ---------------------------------------------------------------- pieces cut where BPE cannot merge across
@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_rechunked_encoding_equals_whole_encoding(kind, gpt2_dir):
    text = SAMPLE + " x  \n\n  y \t\n z" * 20 + "nospaces" * 300 + "\n  \n" + UNICODE
    tok = build_tokenizer("bpe:500", [text]) if kind == "bpe" else build_tokenizer("gpt2", gpt2_files=gpt2_dir)
    assert len(tok.encode("  \n\n ")) < 5  # whitespace runs are merged: a wrong cut would change the ids
    for size in (7, 50, 333):
        pieces = list(rechunk([text[i:i + 101] for i in range(0, len(text), 101)], size))
        assert "".join(pieces) == text and len(pieces) > len(text) / (size + 2500)
        # longer than size only where no cut (a non-space before ' ' or '\n') lies within the first size characters
        assert all(len(piece) <= size or not re.search(r"\S(?=[ \n])", piece[:size + 1]) for piece in pieces)
        assert sum((tok.encode(piece) for piece in pieces), []) == tok.encode(text)


# ---------------------------------------------------------------- shards
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


@needs_shakespeare
def test_tinyshakespeare_char_matches_nanogpt(isolated):
    prepared = prepare_text("tinyshakespeare", data_dir=SHARED)
    data = SHAKESPEARE.read_text(encoding="utf-8")
    n, chars = len(data), sorted(set(data))
    assert prepared.vocab_size == 65 and prepared.tokenizer.chars == chars
    assert prepared.root == isolated / "cache" / "text" / "tinyshakespeare" / "char"
    stoi = {c: i for i, c in enumerate(chars)}
    train, val = prepared.tokens("train"), prepared.tokens("val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16 and not train.flags.writeable
    assert prepared.splits == {"train": int(n * 0.9), "val": n - int(n * 0.9)} == {"train": 1003854, "val": 111540}
    assert np.array_equal(train, [stoi[c] for c in data[:int(n * 0.9)]])
    assert np.array_equal(val, [stoi[c] for c in data[int(n * 0.9):]])
    assert not prepared.has_split("test")
    with pytest.raises(MissingSplitError, match="has no 'test' split; prepared splits: train, val"):
        prepared.tokens("test")
    assert load_tokenizer(prepared.root).decode(train[:14]) == "First Citizen:"
    assert list(prepared.root.glob(".*.tmp-*")) == []


@pytest.mark.parametrize("spec", ["bpe:300", "gpt2"])
def test_shards_equal_the_encoding_of_each_split(spec, isolated, gpt2_dir, monkeypatch):
    monkeypatch.setattr(sources_module, "PIECE_CHARS", 300)  # many pieces
    monkeypatch.setattr("vitlab.text.prepare._BATCH_ITEMS", 3)  # many batches
    path = _write(isolated / "t.txt", SAMPLE)
    prepared = prepare_text(f"textfile:{path}", tokenizer=spec, gpt2_files=gpt2_dir)
    cut = int(len(SAMPLE) * 0.9)
    tok = load_tokenizer(prepared.root)
    assert isinstance(tok, Tokenizer) and tok.name == spec and prepared.tokenizer.name == spec
    assert prepared.tokens("train").tolist() == tok.encode(SAMPLE[:cut])
    assert prepared.tokens("val").tolist() == tok.encode(SAMPLE[cut:])
    if spec.startswith("bpe"):  # trained on the train split only
        assert tok.encode(SAMPLE[:cut]) == build_tokenizer("bpe:300", [SAMPLE[:cut]]).encode(SAMPLE[:cut])
    meta = json.loads((prepared.root / "meta.json").read_text())
    assert meta["tokenizer"] == spec and meta["dtype"] == "uint16" and meta["splits"] == prepared.splits
    assert meta["source"]["files"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(meta["tokenizer_source"]) == (2 if spec == "gpt2" else 0) and meta["vitlab_version"]


def test_large_vocabulary_gives_uint32(isolated):
    chars = [chr(c) for c in range(0x100, 0x100 + 70000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chars) + "".join(reversed(chars))
    prepared = prepare_text(f"textfile:{_write(isolated / 'wide.txt', text)}", cache_dir=isolated / "c")
    assert prepared.vocab_size == len(chars) > 65535
    train = prepared.tokens("train")
    assert train.dtype == np.uint32 and not train.flags.writeable
    assert (prepared.root / "train.bin").stat().st_size == 4 * int(len(text) * 0.9)
    assert prepared.tokenizer.decode(train) + prepared.tokenizer.decode(prepared.tokens("val")) == text
    assert int(np.max(train)) > 65535


def test_cached_then_reprepared_when_the_source_changes(isolated, monkeypatch):
    path = _write(isolated / "t.txt", SAMPLE)
    first = prepare_text(f"textfile:{path}")
    shard = first.root / "train.bin"
    stamp = shard.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("tokenised again")

    with monkeypatch.context() as m:
        m.setattr(CharTokenizer, "encode_arrays", refuse)
        again = prepare_text(f"textfile:{path}")
        os.utime(path, ns=(1, 1))  # touched, same bytes: the sha256 matches, the shards stay
        touched = prepare_text(f"textfile:{path}")
    assert again.splits == first.splits == touched.splits and shard.stat().st_mtime_ns == stamp
    assert json.loads((first.root / "meta.json").read_text())["source"]["files"][0]["mtime_ns"] == 1
    _write(path, SAMPLE.replace("cat", "dog"))
    changed = prepare_text(f"textfile:{path}")
    assert changed.tokenizer.decode(changed.tokens("train")) == SAMPLE.replace("cat", "dog")[:changed.splits["train"]]
    assert prepare_text(f"textfile:{path}", tokenizer="bpe:300").root.name == "bpe-300"  # another spec, another folder


def test_interrupted_prepare_is_never_taken_as_valid(isolated, monkeypatch):
    path = _write(isolated / "t.txt", SAMPLE)
    root = prepare_text(f"textfile:{path}").root
    _write(path, SAMPLE.upper())
    monkeypatch.setattr("vitlab.text.prepare._BATCH_ITEMS", 1)
    monkeypatch.setattr(sources_module, "PIECE_CHARS", 200)
    calls = []

    def crash_on_second(self, texts):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [self._ids(t) for t in texts]

    with monkeypatch.context() as m:
        m.setattr(CharTokenizer, "encode_arrays", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            prepare_text(f"textfile:{path}")
    assert not (root / "meta.json").exists() and list(root.glob(".*tmp*")) == []
    with pytest.raises(FileNotFoundError):
        PreparedText.load(root)
    prepared = prepare_text(f"textfile:{path}")
    assert prepared.tokenizer.decode(prepared.tokens("val")) == SAMPLE.upper()[int(len(SAMPLE) * 0.9):]


@pytest.mark.parametrize("spec", ["char", "bpe:300"])
def test_not_utf8_names_the_file(spec, isolated):
    path = isolated / "latin1.txt"
    path.write_bytes("good text\n".encode() * 10 + "café".encode("latin-1"))
    with pytest.raises(NotUTF8Error, match=f"{path}: not UTF-8 text.*offset 103"):
        prepare_text(f"textfile:{path}", tokenizer=spec)
    with pytest.raises(FileNotFoundError, match="nothing.txt is not a file"):
        prepare_text(f"textfile:{isolated / 'nothing.txt'}")


# ---------------------------------------------------------------- WikiText
@pytest.mark.skipif(not (WIKITEXT2 / "valid.txt").is_file(), reason="../shared/data/wikitext-2 missing")
def test_wikitext2_from_shared_data_has_val_and_test_only(isolated):
    prepared = prepare_text("wikitext2", data_dir=SHARED)
    valid = (WIKITEXT2 / "valid.txt").read_text(encoding="utf-8")
    test = (WIKITEXT2 / "test.txt").read_text(encoding="utf-8")
    assert set(prepared.splits) == {"val", "test"} and prepared.splits["val"] == len(valid)
    assert prepared.vocab_size == len(set(valid + test))  # the char vocabulary of every split present
    assert prepared.tokenizer.decode(prepared.tokens("valid")) == valid  # 'valid' is an alias of 'val'
    assert not prepared.has_split("train")
    with pytest.raises(MissingSplitError, match="no 'train' split.*wiki.train.tokens.*train.txt"):
        prepared.tokens("train")
    with pytest.raises(MissingSplitError, match="trained on the train split.*wiki.train.tokens"):
        prepare_text("wikitext2", tokenizer="bpe", data_dir=SHARED)


def test_wikitext_official_names_in_a_data_root(isolated, monkeypatch):
    folder = isolated / "root" / "wikitext-103-raw"
    texts = {"train": " = A = \n the train text ü \n", "valid": " = B = \n val \n", "test": " = C = \n test \n"}
    for split, text in texts.items():
        _write(folder / f"wiki.{split}.raw", text)
    monkeypatch.setenv("VITLAB_DATA", str(isolated / "root"))
    prepared = prepare_text("wikitext103", tokenizer="bpe:260")
    assert prepared.splits.keys() == {"train", "val", "test"}
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert prepared.tokenizer.decode(prepared.tokens(split)) == texts[name]
    with pytest.raises(DatasetNotFoundError, match="'wikitext-2'.*wiki.train.tokens"):
        prepare_text("wikitext2")


# ---------------------------------------------------------------- OpenWebText

def test_openwebtext_documents_eot_and_deterministic_val(isolated, gpt2_dir):
    folder = isolated / "data" / "openwebtext"
    _write(folder / "a_loose.txt", "\n loose  document\r\n\r\n\r\n\r\nwith CRLF \n\n")
    inner = tar_bytes({"0001-doc.txt": b"the cat", "0002-doc.txt": "caf\u00e9 \U0001f642".encode(), "sub/": b""},
                      "xz")
    subset = tar_bytes({"urlsf_subset00-1_data/d3.txt": b"in the hat",
                        "urlsf_subset00-1_data/d4.txt": b"x\n\n\n\ny"}, "xz")
    (folder / "openwebtext.tar.xz").write_bytes(tar_bytes({"openwebtext/urlsf_subset00-1_data.xz": inner}, "xz"))
    (folder / "urlsf_subset01-1_data.xz").write_bytes(subset)
    (folder / "README.md").write_text("ignored")
    documents = ["loose  document\n\nwith CRLF", "the cat", "café 🙂", "in the hat", "x\n\ny"]  # normalised, in order
    prepared = prepare_text("openwebtext", tokenizer="gpt2", data_dir=isolated / "data", gpt2_files=gpt2_dir)
    tok, eot = prepared.tokenizer, prepared.tokenizer.eot_id
    val_index = set(np.random.default_rng(2357).permutation(5)[:math.ceil(0.0005 * 5)].tolist())
    expected = {"train": [], "val": []}
    for i, document in enumerate(documents):
        expected["val" if i in val_index else "train"] += tok.encode(document) + [eot]
    assert prepared.tokens("train").tolist() == expected["train"] and prepared.tokens("val").tolist() == expected["val"]
    assert prepared.meta["documents"] == {"train": 4, "val": 1}
    again = prepare_text("openwebtext", tokenizer="gpt2", data_dir=isolated / "data", gpt2_files=gpt2_dir,
                         cache_dir=isolated / "other")
    assert (again.root / "val.bin").read_bytes() == (prepared.root / "val.bin").read_bytes()
    char = prepare_text("openwebtext", data_dir=isolated / "data")  # no eot: documents end with a blank line
    assert char.tokenizer.decode(char.tokens("train")) + char.tokenizer.decode(char.tokens("val")) == "".join(
        d + "\n\n" for i, d in enumerate(documents) if i not in val_index) + "".join(
        d + "\n\n" for i, d in enumerate(documents) if i in val_index)


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "link"])
def test_openwebtext_unsafe_archive_member_is_refused(bad, isolated):
    folder = isolated / "data" / "openwebtext"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 4
        tar.addfile(ok, io.BytesIO(b"fine"))
        info = tarfile.TarInfo(bad)
        if bad == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    (folder / "subset.xz").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArchiveError, match="subset.xz"):
        prepare_text("openwebtext", data_dir=isolated / "data")
    assert not (isolated / "data" / "evil.txt").exists() and not (isolated / "evil.txt").exists()


def test_openwebtext_bad_archive_or_text_is_named(isolated):
    folder = isolated / "data" / "openwebtext"
    folder.mkdir(parents=True)
    (folder / "plain.xz").write_bytes(lzma.compress(b"not a tar"))
    with pytest.raises(ValueError, match="plain.xz: not a readable tar archive"):
        prepare_text("openwebtext", data_dir=isolated / "data")
    (folder / "plain.xz").write_bytes(tar_bytes({"doc.txt": "café".encode("latin-1")}, "xz"))
    with pytest.raises(NotUTF8Error, match="plain.xz!doc.txt: not UTF-8"):
        prepare_text("openwebtext", data_dir=isolated / "data")


# ---------------------------------------------------------------- finding and downloading tinyshakespeare
def test_missing_dataset_names_the_places_and_the_download(isolated):
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_text("tinyshakespeare", data_dir=isolated / "d")
    message = str(err.value)
    for expected in (str(isolated / "d"), str(isolated / "cwd" / "data"), "$VITLAB_DATA (not set)", "input.txt",
                     "download=True", TEXT_DATASETS["tinyshakespeare"].url):
        assert expected in message


@needs_shakespeare
def test_download_tinyshakespeare_from_a_local_server(server, isolated):
    base, handler = server
    handler.files["/input.txt"] = SHAKESPEARE.read_bytes()
    prepared = prepare_text("tinyshakespeare", data_dir=isolated / "d", download=True, url=f"{base}/input.txt")
    assert (isolated / "d" / "tinyshakespeare" / "input.txt").read_bytes() == SHAKESPEARE.read_bytes()
    assert prepared.vocab_size == 65 and prepared.splits["train"] == 1003854
    assert list((isolated / "d" / "tinyshakespeare").iterdir()) == [isolated / "d" / "tinyshakespeare" / "input.txt"]
    prepare_text("tinyshakespeare", data_dir=isolated / "d", download=True, url=f"{base}/input.txt")
    assert len(handler.requests) == 1  # found on disk the second time


def test_corrupt_download_is_refused(server, isolated):
    base, handler = server
    handler.files["/input.txt"] = b"not shakespeare"
    with pytest.raises(ChecksumError, match=TEXT_DATASETS["tinyshakespeare"].sha256):
        prepare_text("tinyshakespeare", data_dir=isolated / "d", download=True, url=f"{base}/input.txt")
    assert not any((isolated / "d").rglob("input.txt*"))
