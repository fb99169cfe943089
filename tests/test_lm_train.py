"""Language modelling on the training engine: token windows, the validation loss, a real tiny-shakespeare run that
learns, exact resume, `vitlab eval` / `vitlab generate`, and clear errors for a model that does not fit the data."""
import json
import math
import os
import platform
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import vitlab.train.tasks.lm as lm
from vitlab.cli import main
from vitlab.train import apply_overrides, get_preset, train

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare absent")


def tiny_lm(tmp_path: Path, model: str = "gpt_char_tiny", **changes):
    """shakespeare_char_gpt shrunk to seconds: 60 steps, evaluation on 64 windows every 30 steps; the GPT at
    2 layers × width 32 (other models at their registered size)."""
    overrides = [f"out_dir={tmp_path / 'run'}", "progress=false", f"data_dir={SHAKESPEARE.parent.parent}",
                 "steps=60", "warmup_steps=10", "eval_interval=30", "eval_subset=64", "log_every=10", f"model={model}"]
    if model == "gpt_char_tiny":
        overrides += ["model_kwargs.n_layer=2", "model_kwargs.n_embd=32", "model_kwargs.n_head=2"]
    config = apply_overrides(get_preset("shakespeare_char_gpt"), overrides)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Windows and the loss


def test_token_windows_are_shifted_deterministic_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    a = lm.TokenWindows(tokens, batch_size=4, block_size=8, device=torch.device("cpu"), seed=3)
    x, y = next(iter(a))
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # y is x shifted by one token (tokens are their own positions here)
    assert len(a) == 1000 // (4 * 8)
    first = [b[0] for _, b in zip(range(5), a)]  # the 2nd..6th batches of epoch 0
    b = lm.TokenWindows(tokens, batch_size=4, block_size=8, device=torch.device("cpu"), seed=3)
    b.load_state_dict({"epoch": 0, "position": 1})
    assert all(torch.equal(p, q[0]) for p, q in zip(first, b))  # resumed mid-epoch: the same batches
    other_rank = lm.TokenWindows(tokens, 4, 8, torch.device("cpu"), seed=3, rank=1, world_size=2)
    assert not torch.equal(next(iter(other_rank))[0], x)
    monkey_big = lm._IN_MEMORY_BYTES
    try:  # the memmap path (files over 1 GiB) draws the very same windows
        lm._IN_MEMORY_BYTES = 0
        c = lm.TokenWindows(tokens, batch_size=4, block_size=8, device=torch.device("cpu"), seed=3)
        assert c.tensor is None and torch.equal(next(iter(c))[0], x)
    finally:
        lm._IN_MEMORY_BYTES = monkey_big
    with pytest.raises(ValueError, match="too few"):
        lm.TokenWindows(tokens[:9], 1, 8, torch.device("cpu"), seed=0)


class _Uniform(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab)


class _Oracle(torch.nn.Module):
    """Predicts token t+1 = t + 1 (mod vocab) with probability ~1."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return 50.0 * torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float()


def _lm_data(tokens: np.ndarray, vocab: int, block: int, windows: int) -> lm.LMTask:
    return lm.LMTask(train=lm.TokenWindows(tokens, 2, block, torch.device("cpu"), 0), eval_tokens=tokens,
                     eval_tensor=lm._as_tensor(tokens, torch.device("cpu")), eval_windows=windows, eval_batch_size=3, vocab_size=vocab, block_size=block, tokenizer=None,
                     root=None, dataset="synthetic", train_size=len(tokens))


def test_validation_loss_covers_every_window_once():
    from contextlib import nullcontext

    from vitlab.train.distributed import setup_distributed

    info = setup_distributed("cpu")
    tokens = (np.arange(1001) % 13).astype(np.uint16)
    data = _lm_data(tokens, 13, block=10, windows=100)
    result = data.evaluate(_Uniform(13), info, nullcontext())
    assert result["eval_loss"] == pytest.approx(math.log(13))  # uniform prediction: log V nats per token
    assert result["perplexity"] == pytest.approx(13)
    assert result["bits_per_token"] == pytest.approx(math.log2(13))
    assert data.evaluate(_Oracle(13), info, nullcontext())["eval_loss"] < 1e-6
    assert data.eval_size == 1000


class _Recorder(torch.nn.Module):
    """Uniform logits; remembers the first token of every window it is given (tokens are their positions)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.starts = vocab, []

    def forward(self, idx):
        self.starts += idx[:, 0].tolist()
        return torch.zeros(*idx.shape, self.vocab)


def test_eval_batches_draws_fresh_seeded_random_windows():
    """eval_batches = N: N micro-batches (the training loader's batch) at random offsets anywhere in the split,
    new ones at each evaluation (the loader moved on), the same ones for the same loader position (a resumed run),
    and rank r evaluates slice r of each global batch."""
    from contextlib import nullcontext

    from vitlab.train.distributed import DistInfo, setup_distributed

    info = setup_distributed("cpu")
    tokens = np.arange(50_000).astype(np.uint16)  # token = its position: a window's first token is its start
    data = _lm_data(tokens, 60_000, block=8, windows=20 * 2)
    data.eval_batches = 20  # 20 batches of the loader's 2 windows
    model = _Recorder(60_000)
    result = data.evaluate(model, info, nullcontext())
    first = list(model.starts)
    assert result["eval_loss"] == pytest.approx(math.log(60_000))
    assert len(first) == 40 and data.eval_size == 40 * 8
    assert 0 <= min(first) and max(first) <= len(tokens) - 8 - 1  # every window and its target inside the split
    assert max(first) > 10 * 40 * 8  # anywhere in the split, not its first windows
    model.starts = []
    data.evaluate(model, info, nullcontext())
    assert model.starts == first  # same loader position: the same windows
    next(iter(data.train))  # one training batch later: fresh windows
    model.starts = []
    data.evaluate(model, info, nullcontext())
    assert model.starts != first and len(model.starts) == 40
    again = _lm_data(tokens, 60_000, block=8, windows=40)
    again.eval_batches = 20
    again.train.load_state_dict(data.train.state_dict())  # a resumed loader
    resumed = _Recorder(60_000)
    again.evaluate(resumed, info, nullcontext())
    assert resumed.starts == model.starts
    # two ranks with one window each: rank r's windows are slice r of the one-rank run's global batches
    halves = []
    for rank in (0, 1):
        ranked = _lm_data(tokens, 60_000, block=8, windows=40)
        ranked.train = lm.TokenWindows(tokens, 1, 8, torch.device("cpu"), 0, rank, 2)
        ranked.eval_batches = 20
        halves.append(ranked._eval_starts(DistInfo(rank, 2, rank, torch.device("cpu"))).tolist())
    assert [s for pair in zip(*halves) for s in pair] == first


def test_eval_batches_is_validated():
    from vitlab.train import OverrideError

    config = apply_overrides(get_preset("shakespeare_char_gpt"), ["eval_batches=20"])
    assert config.eval_batches == 20 and get_preset("shakespeare_char_gpt").eval_batches == 0  # whole split default
    with pytest.raises(OverrideError, match=r"eval_batches=20: and eval_subset=64 are two evaluation budgets"):
        apply_overrides(get_preset("shakespeare_char_gpt"), ["eval_batches=20", "eval_subset=64"])
    with pytest.raises(OverrideError, match=r"eval_batches=-2: must be an int >= 0"):
        apply_overrides(get_preset("shakespeare_char_gpt"), ["eval_batches=-2"])


def test_cpu_adamw_is_fused_and_gives_the_loop_update():
    """On the CPU build_optimizer takes torch's fused AdamW (faster at small sizes); its steps equal the plain
    per-tensor AdamW's (same groups, decay mask and betas) up to float rounding."""
    import copy

    from vitlab import create_model
    from vitlab.train.optim import build_optimizer, param_groups

    torch.manual_seed(0)
    model = create_model("gpt_char_tiny", n_layer=2, n_embd=32, n_head=2)
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, "adamw", 1e-2, 0.1, (0.9, 0.99))
    plain = torch.optim.AdamW(param_groups(twin, 0.1, 1e-2), lr=1e-2, betas=(0.9, 0.99), foreach=False)
    assert fused.defaults["fused"] is True and [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    for step in range(5):
        x = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(step))
        for net, opt in ((model, fused), (twin, plain)):
            torch.nn.functional.cross_entropy(net(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


_FAULTS = """
import resource, sys, torch
from vitlab import create_model
from vitlab.train._malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
model = create_model("gpt_char_tiny")
opt = torch.optim.AdamW(model.parameters(), fused=True)
x = torch.randint(0, 65, (12, 64))
def step():
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(60):  # enough steps that a one-off refill of the freed pool (~400 faults) stays under a tenth
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc")
def test_cpu_training_keeps_freed_memory_instead_of_faulting_it_in_again():
    """keep_freed_memory (called by train() on the CPU): nanoGPT's GPT's steps stop mapping fresh pages (glibc's
    default gives hundreds of minor page faults per step at this size)."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    faults = {how: int(subprocess.run([sys.executable, "-c", _FAULTS, how], capture_output=True, text=True, env=env,
                                      check=True).stdout) for how in ("default", "keep")}
    assert faults["keep"] * 10 < faults["default"], faults  # an absolute bound depends on the machine's load


# ----------------------------------------------------------------------------------------------------------------
# Real runs on tiny-shakespeare


def _unigram_entropy() -> float:
    text = SHAKESPEARE.read_text()
    counts = Counter(text[: int(len(text) * 0.9)])
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


@needs_shakespeare
def test_a_short_real_run_learns_well_below_the_unigram_entropy(tmp_path, capsys):
    config = tiny_lm(tmp_path, steps=300, eval_interval=150, eval_subset=0, lr=3e-3, peak_tflops=0.5)
    result = train(config, preset="test")
    entropy = _unigram_entropy()  # ≈ 3.3 nats: what a model that ignores context can reach
    assert result["eval_loss"] < entropy - 0.6, (result["eval_loss"], entropy)
    assert result["perplexity"] == pytest.approx(math.exp(result["eval_loss"]))
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in log if "train_loss" in r]
    assert all(r["tokens_per_s"] > 0 and r["elapsed_s"] >= 0 for r in train_records)
    # MFU = windows/s × FLOPs per window (forward + backward, counted) / the given peak
    assert all(0 < r["mfu"] < 1 for r in train_records)
    assert [r["step"] for r in log if "eval_loss" in r] == [150, 300]
    assert (tmp_path / "run" / "tokenizer").is_dir() and (tmp_path / "run" / "best" / "model.safetensors").is_file()
    # vitlab eval re-measures the same loss from the checkpoint
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"loss {result['best_eval_loss']:.4f}" in out and "perplexity" in out


@needs_shakespeare
def test_generation_is_deterministic_under_a_seed(tmp_path, capsys):
    train(tiny_lm(tmp_path), preset="test")
    capsys.readouterr()
    argv = ["generate", str(tmp_path / "run"), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "7"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("ROMEO:") and len(first.rstrip("\n")) == 46
    assert main([*argv[:-1], "8"]) == 0
    assert capsys.readouterr().out != first  # another seed, another sample
    assert main(["generate", str(tmp_path / "run"), "--temperature", "-1"]) == 2


@needs_shakespeare
@pytest.mark.parametrize("model", ["crate_lm_char_tiny", "crate_alpha_lm_char_tiny"])
def test_crate_language_models_train_on_the_same_engine(tmp_path, model):
    config = tiny_lm(tmp_path, model=model, steps=20, eval_interval=20, model_kwargs={"dropout": 0.0})
    result = train(config, preset="test")
    assert math.isfinite(result["eval_loss"]) and result["step"] == 20


@needs_shakespeare
@pytest.mark.parametrize("budget", [{}, {"eval_subset": 0, "eval_batches": 3}], ids=["windows", "eval_batches"])
def test_language_model_runs_resume_exactly(tmp_path, budget):
    straight = train(tiny_lm(tmp_path / "a", **budget), preset="test")
    first = tiny_lm(tmp_path / "b", max_steps=30, **budget)
    train(first, preset="test")
    resumed = train(tiny_lm(tmp_path / "b", **budget), preset="test")
    assert resumed["eval_loss"] == straight["eval_loss"] and resumed["step"] == 60
    if budget:  # nanoGPT's estimate: 3 random batches of 12 windows, fresh at each evaluation
        log = [json.loads(line) for line in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log if "eval_loss" in r] == [30, 60]


@needs_shakespeare
def test_model_and_data_must_fit(tmp_path):
    config = tiny_lm(tmp_path)
    config.model, config.model_kwargs = "vit_tiny_patch4_32", {}
    with pytest.raises(ValueError, match="needs a language model"):
        train(config)
    image = get_preset("fashion_mnist_vit")  # the preset's image model_kwargs would not fit GPT: plain assignment
    image.model, image.model_kwargs, image.out_dir = "gpt_char_tiny", {}, str(tmp_path / "x")
    with pytest.raises(ValueError, match="needs an image model"):
        train(image)
