"""CLIP BPE and CLIPA BERT WordPiece tokenizers (vitlab.text.clip_tokenizers) on tiny vocabulary fixtures.

Expected CLIP ids are derived by hand from the vocabulary rule: ids 0..255 are the bytes in bytes_to_unicode order
('!'..'~' first, so 'a' = 97 - 33 = 64), 256..511 the same characters + '</w>', then one id per merge, then
<|startoftext|>, <|endoftext|>. A line-by-line port of open_clip's SimpleTokenizer BPE loop (below) is the
independent reference for random text; transformers' pure-Python BertTokenizer is the reference for WordPiece."""
import gzip
import random

import pytest
import regex
import torch

import vitlab.text.clip_tokenizers as clip_tokenizers
from vitlab.text.clip_tokenizers import (BertWordPieceTokenizer, ClipBPETokenizer, bytes_to_unicode,
                                         load_text_tokenizer)

HEADER = "bpe_simple_vocab_16e6.txt#version: 0.2"
MERGES = ["h e", "l o</w>", "l lo</w>", "he llo</w>", "a a"]
H, E, L, O, I, T, S, APOS = (ord(c) - 33 for c in "heloits'")  # printable ASCII byte ids
W = 256  # offset of the '</w>' tokens
HE, LO_W, LLO_W, HELLO_W, AA = 512, 513, 514, 515, 516
SOT, EOT = 517, 518


def write_merges(folder, merges=MERGES, name="bpe_simple_vocab_16e6.txt.gz"):
    path = folder / name
    path.write_bytes(gzip.compress(("\n".join([HEADER, *merges]) + "\n").encode()))
    return path


@pytest.fixture
def clip(tmp_path):
    return ClipBPETokenizer.from_files(write_merges(tmp_path), context_length=12)


def test_clip_vocabulary_and_exact_ids(clip):
    assert clip.vocab_size == 519 and (clip.sot_token_id, clip.eot_token_id) == (SOT, EOT)
    assert clip.encode("hello") == [HELLO_W]  # he, lo</w>, llo</w>, hello</w> in merge order
    assert clip.encode("hell") == [HE, L, L + W]  # 'l l</w>' is no merge
    assert clip.encode("it's") == [I, T + W, APOS, S + W]  # CLIP's regex splits the "'s" contraction off
    assert clip.encode("42!") == [ord("4") - 33 + W, ord("2") - 33 + W, W]  # digits one by one; '!' is byte id 0
    assert clip.encode("é") == [127, 102 + W]  # UTF-8 C3 A9: 0xC3 -> 106 + (195-174), 0xA9 -> 94 + (169-161)
    assert clip.encode("aaa") == [AA, ord("a") - 33 + W]  # the leftmost pair merges first, as in CLIP


def test_clip_rows_sot_eot_padding_lowercase(clip):
    ids = clip(["HELLO  Hell", "&amp;"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 12)
    assert ids[0].tolist() == [SOT, HELLO_W, HE, L, L + W, EOT] + [0] * 6
    assert ids[1].tolist() == [SOT, ord("&") - 33 + W, EOT] + [0] * 9  # html-unescaped
    assert clip("hello").shape == (1, 12)
    assert clip.decode(ids[0]) == "hello hell"
    assert ids.argmax(dim=-1).tolist() == [5, 2]  # CLIP pools at argmax = EOT


def test_clip_truncation_keeps_eot_last(clip):
    ids = clip("hello " * 20)[0].tolist()
    assert ids == [SOT] + [HELLO_W] * 10 + [EOT]
    exact = clip("hello " * 10)[0].tolist()  # SOT + 10 + EOT fits exactly
    assert exact == [SOT] + [HELLO_W] * 10 + [EOT]
    assert clip("hello " * 20, context_length=4)[0].tolist() == [SOT, HELLO_W, HELLO_W, EOT]


def _reference_clip(merges_path, text, context_length):
    """open_clip's SimpleTokenizer (clean='lower', minus ftfy) written out, the merge loop as in CLIP."""
    byte_encoder = bytes_to_unicode()
    lines = gzip.open(merges_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    vocab = list(byte_encoder.values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    encoder, ranks = {v: i for i, v in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}

    def bpe(token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return word

    text = " ".join(text.split()).lower()
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    ids = [encoder["<|startoftext|>"]]
    for token in pattern.findall(text):
        ids += [encoder[t] for t in bpe("".join(byte_encoder[b] for b in token.encode("utf-8")))]
    ids = (ids + [encoder["<|endoftext|>"]])[:context_length]
    ids[-1] = encoder["<|endoftext|>"]
    return ids + [0] * (context_length - len(ids))


def test_clip_matches_reference_loop_on_random_text(tmp_path):
    rng = random.Random(0)
    alphabet = "abcdehlo '!1.é"
    merges, inner = [], list("abcdehlo")  # inner: symbols that may start a merge; any may end one
    ends = [c + "</w>" for c in inner]
    for _ in range(60):  # random merges of symbols that exist, so every merge result is a vocabulary token
        left, right = rng.choice(inner), rng.choice(inner + ends)
        if f"{left} {right}" not in merges:
            merges.append(f"{left} {right}")
            (ends if right.endswith("</w>") else inner).append(left + right)
    path = write_merges(tmp_path, merges)
    tokenizer = ClipBPETokenizer.from_files(path, context_length=24)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(200)]
    expected = [_reference_clip(path, text, 24) for text in texts]
    assert tokenizer(texts).tolist() == expected


VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "play", "##ing", "##s",
         "!", ".", "a"]


@pytest.fixture
def vocab_txt(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def test_bert_wordpiece_exact_ids(vocab_txt):
    bert = BertWordPieceTokenizer.from_files(vocab_txt, context_length=8)
    ids = bert(["The cat playing!", "cats xyz"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    assert ids[0].tolist() == [3, 6, 7, 9, 10, 12, 4, 0]  # [CLS] the cat play ##ing ! [SEP] [PAD]
    assert ids[1].tolist() == [3, 7, 11, 2, 4, 0, 0, 0]  # cat ##s [UNK]
    assert bert.decode(ids[0]) == "the cat playing!"
    assert bert("the cat sat the cat sat")[0].tolist() == [3, 6, 7, 8, 6, 7, 8, 4]  # fits exactly
    assert bert("the cat sat the cat sat a")[0].tolist() == [3, 6, 7, 8, 6, 7, 8, 4]  # truncated, [SEP] last
    stripped = BertWordPieceTokenizer.from_files(vocab_txt, context_length=8, strip_sep_token=True)
    assert stripped("the cat")[0].tolist() == [3, 6, 7, 0, 0, 0, 0, 0]  # open_clip CLIPA: [SEP] -> 0


def test_bert_matches_transformers(vocab_txt):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizer(str(vocab_txt), do_lower_case=True)
    texts = ["The CAT sat.", "playings!!", "a a a a a a a a a a a a", "Ünknown cats"]
    expected = reference(texts, max_length=10, padding="max_length", truncation=True)["input_ids"]
    assert BertWordPieceTokenizer.from_files(vocab_txt, context_length=10)(texts).tolist() == expected


def test_load_text_tokenizer_search_order_and_missing_file(tmp_path, monkeypatch, vocab_txt):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITLAB_TOKENIZER_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(clip_tokenizers, "_open_clip_data_dir", lambda: tmp_path / "site-packages" / "open_clip")
    with pytest.raises(FileNotFoundError) as error:
        load_text_tokenizer("clip", path=tmp_path / "nowhere")
    message = str(error.value)
    for place in ("nowhere", str(tmp_path / "env"), str(tmp_path / "home" / ".cache" / "vitlab" / "tokenizers"),
                  str(tmp_path / "site-packages" / "open_clip"), "bpe_simple_vocab_16e6.txt.gz"):
        assert place in message
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_text_tokenizer("bert")
    (tmp_path / "env").mkdir()
    write_merges(tmp_path / "env")
    clip = load_text_tokenizer("clip")
    assert clip.vocab_size == 519 and clip.context_length == 77
    assert load_text_tokenizer("clip", path=write_merges(tmp_path, MERGES[:1], "m.gz")).vocab_size == 515
    bert = load_text_tokenizer("bert", path=vocab_txt.parent)
    assert bert.context_length == 32 and bert.strip_sep_token
    with pytest.raises(ValueError, match="'clip', 'bert'"):
        load_text_tokenizer("t5")


def test_real_clip_vocabulary_equals_open_clip_tokenize(tmp_path, monkeypatch):
    """open_clip's own bpe_simple_vocab_16e6.txt.gz, found in its package folder without importing it, gives
    open_clip.tokenize's ids (49408 tokens, SOT 49406, EOT 49407)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VITLAB_TOKENIZER_DIR", raising=False)
    open_clip = pytest.importorskip("open_clip")
    ours = load_text_tokenizer("clip")
    assert (ours.vocab_size, ours.sot_token_id, ours.eot_token_id) == (49408, 49406, 49407)
    texts = ["a photo of a cat", "A DIAGRAM of the Eiffel Tower, at night!", "it's 2024 & we're   testing",
             "naïve café résumé 東京 😀", "<b>bold</b> &amp; x", "supercalifragilisticexpialidocious " * 30, ""]
    assert torch.equal(ours(texts), open_clip.tokenize(texts))
    assert ours.decode(ours("a photo of a cat")) == ["a photo of a cat"]
