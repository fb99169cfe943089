"""BPE training cuts words into runs of at most MAX_BPE_TRAIN_WORD characters: a caption without spaces trains in
bounded time, and normal text trains exactly the tokenizer GPT-2's ByteLevel pre-tokenizer alone gives."""
import os
import random
import subprocess
import sys
from pathlib import Path

from vitlab.text.tokenizers import BPETokenizer

REPO = Path(__file__).resolve().parents[1]


def _plain_byte_level_bpe(texts, vocab_size):
    """The tokenizer a8c8966 trained: the ByteLevel pre-tokenizer alone, during training too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


def test_normal_text_trains_and_encodes_as_before():
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(1, 12))) for _ in range(400)]
    text = " ".join(rng.choice(words) + rng.choice(["", "", ",", ".", "!\n"]) for _ in range(20_000))
    ours, plain = BPETokenizer.train([text], vocab_size=600), _plain_byte_level_bpe([text], 600)
    assert ours.hf.get_vocab() == plain.get_vocab()
    sample = text[:5000] + " a_word_longer_than_256_" + "x" * 600
    assert ours.encode(sample) == plain.encode(sample).ids


def test_a_caption_without_spaces_trains_in_bounded_time(tmp_path):
    code = ("from vitlab.text.tokenizers import BPETokenizer\n"
            "tok = BPETokenizer.train(['abcdefgh' * 500_000], vocab_size=300)\n"  # 4 MB, one word
            "print(tok.decode(tok.encode('abcdefgh' * 4)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "abcdefgh" * 4, proc.stderr


def test_tiny_shakespeare_trains_and_encodes_as_before():
    path = Path("/work/shared/data/tinyshakespeare/input.txt")
    if not path.is_file():
        import pytest

        pytest.skip(f"{path} is not here")
    text = path.read_text()[:200_000]
    ours, plain = BPETokenizer.train([text], vocab_size=1000), _plain_byte_level_bpe([text], 1000)
    assert ours.hf.get_vocab() == plain.get_vocab()
    assert ours.encode(text[-20_000:]) == plain.encode(text[-20_000:]).ids
