"""benchmarks/vs_nanogpt.py's plumbing without nanoGPT: a stand-in train.py (written here) checks the data it is
given, prints nanoGPT's log lines and saves a ckpt.pt in nanoGPT's format; vitlab runs 20 tiny steps. The table, the
JSON, the parsed speeds, the whole-split loss of the stand-in's checkpoint (against a closed form) and the time to
its loss are checked."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# The stand-in: nanoGPT's command line, data layout, log lines and checkpoint, with a model whose blocks are zero, so
# that its logits at a position depend on that position's token alone: LayerNorm(wte[token]) · wteᵀ.
STAND_IN = '''
import os, pickle, sys
import numpy as np, torch
assert sys.argv[1] == "config/train_shakespeare_char.py" and os.path.isfile(sys.argv[1]), sys.argv
args = dict(a[2:].split("=", 1) for a in sys.argv[2:])
assert args["device"] == "cpu" and args["compile"] == "False" and args["max_iters"] == "2000", args
with open("data/shakespeare_char/meta.pkl", "rb") as f:
    meta = pickle.load(f)
train = np.fromfile("data/shakespeare_char/train.bin", dtype=np.uint16)
val = np.fromfile("data/shakespeare_char/val.bin", dtype=np.uint16)
assert meta["vocab_size"] == 65 and meta["itos"][0] == "\\n" and meta["stoi"]["a"] == 39
assert (len(train), len(val), int(train.max())) == (1003854, 111540, 64)
print("tokens per iteration will be: 768")
for it in range(21):
    if it % 10 == 0:
        print(f"step {it}: train loss 4.5000, val loss 4.6000")
    print(f"iter {it}: loss 4.5, time {250.0 if it % 10 == 0 else 10.0:.2f}ms, mfu -100.00%")
torch.manual_seed(0)
d, T, V = 8, 16, 65
state = {"transformer.wte.weight": torch.randn(V, d), "transformer.wpe.weight": torch.zeros(T, d),
         "transformer.ln_f.weight": torch.ones(d)}
for name, shape in (("ln_1.weight", (d,)), ("attn.c_attn.weight", (3 * d, d)), ("attn.c_proj.weight", (d, d)),
                    ("ln_2.weight", (d,)), ("mlp.c_fc.weight", (4 * d, d)), ("mlp.c_proj.weight", (d, 4 * d))):
    state["transformer.h.0." + name] = torch.zeros(shape)
state["lm_head.weight"] = state["transformer.wte.weight"]
os.makedirs("out-shakespeare-char", exist_ok=True)
torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "iter_num": 20,
            "model_args": dict(n_layer=1, n_head=1, n_embd=d, block_size=T, bias=False, vocab_size=V, dropout=0.0),
            "best_val_loss": torch.tensor(4.6), "config": {"dataset": "shakespeare_char"}},
           "out-shakespeare-char/ckpt.pt")
'''


def _module():
    spec = importlib.util.spec_from_file_location("vs_nanogpt", ROOT / "benchmarks" / "vs_nanogpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stand_in(folder: Path) -> Path:
    folder.mkdir()
    (folder / "train.py").write_text(STAND_IN)
    (folder / "model.py").write_text("# unused by the stand-in\n")
    (folder / "configurator.py").write_text("# unused by the stand-in\n")
    (folder / "config").mkdir()
    (folder / "config" / "train_shakespeare_char.py").write_text("out_dir = 'out-shakespeare-char'\n")
    return folder


def _bigram_loss(ckpt: dict, val: np.ndarray, block: int) -> float:
    """Whole-split loss of the stand-in model by hand: windows of `block` tokens, each token after the first of the
    split predicted once, from the token before it alone."""
    wte = ckpt["model"]["transformer.wte.weight"].double()  # (V, d)
    logits = torch.nn.functional.layer_norm(wte, wte.shape[1:], eps=1e-5) @ wte.T  # (V, V): row = current token
    n = (len(val) - 1) // block * block
    inputs, targets = torch.from_numpy(val[:n].astype(np.int64)), torch.from_numpy(val[1:n + 1].astype(np.int64))
    return torch.nn.functional.cross_entropy(logits[inputs], targets).item()


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare absent")
def test_vs_nanogpt_with_a_stand_in_train_py(tmp_path, capsys, monkeypatch):
    vs = _module()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children: plumbing, not speed (2 threads thrash a busy machine)
    nano = _stand_in(tmp_path / "nanoGPT")
    out = tmp_path / "out.json"
    argv = ["--nanogpt", str(nano), "--pairs", "1", "--eval-interval", "10", "--json", str(out), "--keep",
            str(tmp_path / "work"), "--data-dir", str(SHAKESPEARE.parent.parent), "steps=20", "warmup_steps=2",
            "model_kwargs.n_layer=1", "model_kwargs.n_embd=32", "model_kwargs.n_head=2"]
    assert vs.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    pair, summary = result["pairs"][0], result["summary"]
    nano_run, vit = pair["nanogpt"], pair["vitlab"]
    # nanoGPT's log: 18 iterations of 10 ms without an evaluation; 3 evaluating ones each 240 ms over the median
    assert nano_run["tokens_per_s"] == pytest.approx(76_800) and nano_run["eval_s"] == pytest.approx(0.72)
    assert nano_run["final_estimate"] == 4.6 and nano_run["ckpt_iter"] == 20 and nano_run["iterations"] == 21
    # its checkpoint evaluated by vitlab over the whole validation split: the closed form
    val = np.fromfile(tmp_path / "work" / "nanogpt" / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16)
    ckpt = torch.load(nano_run["ckpt"], weights_only=True)
    assert nano_run["whole_split"] == pytest.approx(_bigram_loss(ckpt, val, 16), abs=1e-4)
    assert math.isfinite(nano_run["estimate_same_windows"]) and nano_run["peak_rss_mib"] > 10
    # vitlab: evaluations at 10 and 20 from its metrics.jsonl; it beats the poor stand-in at its first evaluation
    assert [e["step"] for e in vit["evals"]] == [10, 20] and vit["tokens_per_s"] > 0
    reached = pair["time_to_nanogpt_loss"]
    assert reached["step"] == 10 and 0 < reached["no_eval_s"] < reached["with_eval_s"] < vit["wall_s"]
    assert vit["startup_s"] > 0 and vit["wall_no_eval_s"] < vit["wall_s"]
    assert summary["ratios"]["tokens_per_s_ratio"] == pytest.approx(vit["tokens_per_s"] / 76_800)
    assert summary["ratios"]["time_to_loss_ratio"] == pytest.approx(reached["no_eval_s"] / nano_run["wall_no_eval_s"])
    assert set(summary["met"]) == {"time_to_loss_ratio", "tokens_per_s_ratio"}
    # one table: header, rule, nanoGPT, vitlab, ratios; then the targets; the commands and machine above it
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(lines) == 5 and lines[2].startswith("| nanoGPT train.py") and lines[4].startswith("| vitlab / nanoGPT")
    assert "(step 10)" in lines[3] and f"{nano_run['whole_split']:.4f}" in lines[2]
    assert "Targets:" in printed and "--eval_iters=20" in printed and "torch " + torch.__version__ in printed
    assert result["commands"]["vitlab"].startswith("python -m vitlab train shakespeare_char_gpt")


def test_nanogpt_rule_and_a_missing_checkout(tmp_path):
    vs = _module()
    chars, train, val = vs.nanogpt_ids("abcab\nba\nc")  # 10 characters: train the first 9
    assert chars == ["\n", "a", "b", "c"] and train.tolist() == [1, 2, 3, 1, 2, 0, 2, 1, 0] and val.tolist() == [3]
    (tmp_path / "train.py").write_text("")
    with pytest.raises(FileNotFoundError, match="model.py, configurator.py, config missing"):
        vs.stage_nanogpt(tmp_path, tmp_path / "work")
