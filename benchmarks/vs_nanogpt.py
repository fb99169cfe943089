"""vitlab against nanoGPT itself on this machine: nanoGPT's README CPU run of shakespeare_char (4 layers, 4 heads,
width 128, context 64, batch 12, 2000 iterations, dropout 0) by nanoGPT's own train.py and by
`vitlab train shakespeare_char_gpt`, each in a fresh subprocess, alternating (nanoGPT, vitlab, nanoGPT, vitlab, ...).

    python benchmarks/vs_nanogpt.py --nanogpt PATH [--pairs 2] [--eval-interval 100] [--json out.json] [key=value ...]

PATH is a nanoGPT checkout (train.py, model.py, configurator.py, config/). Its files are copied into a temporary
folder, which also gets the data where train.py reads it (data/shakespeare_char/train.bin and val.bin, uint16, and
meta.pkl): vitlab's character tokens of tiny-shakespeare, after a check that nanoGPT's rule on the raw text (the
sorted characters of the whole text; train = the first 90%, val = the rest) gives the very same ids, so both programs
train and are evaluated on identical data. The checkout itself is never written to.

nanoGPT runs its README command, `NANOGPT_ARGS` (on a CPU its train.py computes in float32: its autocast context is a
no-op off CUDA and its float16 GradScaler is disabled without CUDA). vitlab runs the preset with `eval_interval`
(default 100, the preset has 250) so that the time to a loss can be read off its log; `key=value` are further preset
overrides (given to vitlab only). Both inherit this environment (threads included).

Reported per run, then medians over the pairs and ratios vitlab / nanoGPT:
- wall time of the process, start to exit; and without evaluations (nanoGPT: minus what its evaluation iterations
  took beyond a median iteration; vitlab: minus each evaluation's time in its log);
- training tokens/s: nanoGPT from its per-iteration `time ...ms` lines, iterations with an evaluation left out;
  vitlab from metrics.jsonl (the log windows' steps over their seconds; evaluations lie outside the windows);
- the final validation loss, evaluated the same way for both: vitlab's whole-split loss (`LMTask.evaluate`) of
  nanoGPT's ckpt.pt (the checkpoint train.py keeps: its best estimate, normally iteration 2000; read with
  `vitlab.train.generate.load_nanogpt_checkpoint`) and of vitlab's last step; the 20-random-batch estimate of both
  final models on the same windows (`eval_batches=20`); and nanoGPT's own printed estimate;
- vitlab's time to nanoGPT's final loss: when vitlab's whole-split loss is first <= that of the same pair's nanoGPT
  run: process start-up + training time to that step, evaluations excluded (the headline; its ratio is to nanoGPT's
  wall without evaluations) and included (the ratio to nanoGPT's wall as run);
- peak resident memory of each process (its own rusage, from os.wait4).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PRESET = "shakespeare_char_gpt"
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]  # nanoGPT's README, CPU
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config")
NANOGPT_OUT = "out-shakespeare-char"  # config/train_shakespeare_char.py's out_dir (relative to the working folder)
ESTIMATE_BATCHES = 20  # nanoGPT's --eval_iters of the README command
TARGETS = {"time_to_loss_ratio": 0.8, "tokens_per_s_ratio": 1.2}  # vitlab / nanoGPT: at most, at least
_ITER = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
_EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
_TOKENS = re.compile(r"tokens per iteration will be: ([\d,]+)")


# ---------------------------------------------------------------------------------------------- data and staging
def nanogpt_ids(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """nanoGPT's shakespeare_char rule, restated: vocabulary = the sorted characters of the whole text, a character's
    id its index there; train = the first int(0.9 n) characters, val = the rest. (chars, train ids, val ids)."""
    chars = sorted(set(text))
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # (n,)
    ids = np.searchsorted(np.array([ord(c) for c in chars], dtype=np.uint32), codepoints).astype(np.uint16)
    cut = int(len(text) * 0.9)
    return chars, ids[:cut], ids[cut:]


def prepare_data(dest: Path, data_dir: str | None = None) -> dict:
    """Writes vitlab's char tokens of tiny-shakespeare as nanoGPT's data/shakespeare_char/ holds them (train.bin,
    val.bin: raw uint16; meta.pkl: vocab_size, itos, stoi) into `dest`, after checking them against
    `nanogpt_ids` of the raw text. Returns the sizes and the source file."""
    from vitlab.text import prepare_text

    prepared = prepare_text("tinyshakespeare", tokenizer="char", data_dir=data_dir)
    train, val = (np.asarray(prepared.tokens(s), dtype=np.uint16) for s in ("train", "val"))
    source = Path(prepared.files[0][0])
    chars, nano_train, nano_val = nanogpt_ids(source.read_text(encoding="utf-8"))
    vocab = prepared.tokenizer.decode(range(prepared.vocab_size))
    if list(vocab) != chars or not np.array_equal(train, nano_train) or not np.array_equal(val, nano_val):
        raise RuntimeError(f"vitlab's tokens of {source} differ from nanoGPT's rule (vocabulary or split): the "
                           "losses would not be comparable")
    dest.mkdir(parents=True, exist_ok=True)
    train.tofile(dest / "train.bin")
    val.tofile(dest / "val.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    (dest / "meta.pkl").write_bytes(pickle.dumps(meta))
    return {"source": str(source), "vocab_size": len(chars), "train_tokens": len(train), "val_tokens": len(val)}


def stage_nanogpt(checkout: Path, work: Path) -> Path:
    """A copy of the checkout's files train.py needs, in `work/nanogpt` (its working folder)."""
    missing = [name for name in NANOGPT_FILES if not (checkout / name).exists()]
    if missing:
        raise FileNotFoundError(f"{checkout} is not a nanoGPT checkout: {', '.join(missing)} missing")
    staged = work / "nanogpt"
    staged.mkdir(parents=True)
    for name in NANOGPT_FILES:
        (shutil.copytree if (checkout / name).is_dir() else shutil.copy2)(checkout / name, staged / name)
    return staged


# ---------------------------------------------------------------------------------------------- processes
def run_process(cmd: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """Runs `cmd` with stdout and stderr into `log`: wall seconds, this child's peak RSS (MiB), the load average
    before it started. Raises with the log's tail when it fails."""
    load = os.getloadavg()[0]
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) exited with {proc.returncode}:\n{tail}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "load_before": load}


def parse_nanogpt_log(text: str) -> dict:
    """Training tokens/s from the per-iteration times (iterations that also evaluated left out), the time its
    evaluations added, and its printed estimates."""
    tokens = int(_TOKENS.search(text).group(1).replace(",", ""))
    iters = {int(m[1]): float(m[3]) / 1000 for m in map(_ITER.match, text.splitlines()) if m}
    evals = [(int(m[1]), float(m[3])) for m in map(_EVAL.match, text.splitlines()) if m]
    if not iters or not evals:
        raise ValueError("no 'iter N: loss ..., time ...ms' / 'step N: ... val loss ...' lines in nanoGPT's log")
    evaluated = {step for step, _ in evals}
    train = [s for i, s in iters.items() if i not in evaluated]
    typical = statistics.median(train)
    return {"tokens_per_iter": tokens, "iterations": len(iters), "tokens_per_s": len(train) * tokens / sum(train),
            "eval_s": sum(max(0.0, iters[i] - typical) for i in evaluated if i in iters),
            "estimates": evals, "final_estimate": evals[-1][1]}


def run_nanogpt(staged: Path, python: str, extra: list[str], log: Path) -> dict:
    """nanoGPT's README command in the staged folder; its log parsed; the ckpt.pt it kept, moved next to the log."""
    shutil.rmtree(staged / NANOGPT_OUT, ignore_errors=True)  # the checkpoint must be this run's
    result = run_process([python, "train.py", *NANOGPT_ARGS, *extra], staged, dict(os.environ), log)
    result.update(parse_nanogpt_log(log.read_text()))
    ckpt = staged / NANOGPT_OUT / "ckpt.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"nanoGPT wrote no {ckpt} (see {log})")
    result["ckpt"] = str(shutil.move(ckpt, log.with_suffix(".ckpt.pt")))
    result["wall_no_eval_s"] = result["wall_s"] - result["eval_s"]
    return result


def vitlab_command(python: str, out_dir: Path, eval_interval: int, overrides: list[str]) -> list[str]:
    return [python, "-m", "vitlab", "train", PRESET, f"out_dir={out_dir}", "progress=false",
            f"eval_interval={eval_interval}", *overrides]


def parse_vitlab_log(out_dir: Path, wall_s: float) -> dict:
    """From metrics.jsonl: training tokens/s (window steps over window seconds), each evaluation with its cost,
    the training time (evaluations excluded) at each evaluated step, and the start-up + exit time outside the loop."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    steps = np.diff([0] + [r["step"] for r in train])  # steps per log window
    rates = np.array([r["tokens_per_s"] for r in train])
    evals, spent = [], 0.0
    for record in (r for r in records if "eval_loss" in r):
        logged = next(r for r in train if r["step"] == record["step"])  # the log line just before the evaluation
        cost = record["elapsed_s"] - logged["elapsed_s"]
        evals.append({"step": record["step"], "eval_loss": record["eval_loss"], "elapsed_s": record["elapsed_s"],
                      "training_s": logged["elapsed_s"] - spent, "eval_s": cost})
        spent += cost
    startup = wall_s - records[-1]["elapsed_s"]
    return {"tokens_per_s": float(steps.sum() / (steps / rates).sum()), "evals": evals, "startup_s": startup,
            "eval_s": spent, "wall_no_eval_s": wall_s - spent, "final_whole_split": evals[-1]["eval_loss"]}


def run_vitlab(python: str, out_dir: Path, eval_interval: int, overrides: list[str], log: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = run_process(vitlab_command(python, out_dir, eval_interval, overrides), ROOT, env, log)
    return {**result, **parse_vitlab_log(out_dir, result["wall_s"])}


def time_to_loss(vitlab: dict, target: float) -> dict | None:
    """The first vitlab evaluation with whole-split loss <= target: its step, and the time from process start
    with evaluations excluded / included (None when never reached)."""
    first = next((e for e in vitlab["evals"] if e["eval_loss"] <= target), None)
    if first is None:
        return None
    return {"step": first["step"], "no_eval_s": vitlab["startup_s"] + first["training_s"],
            "with_eval_s": vitlab["startup_s"] + first["elapsed_s"]}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate_lm(model: torch.nn.Module, eval_batches: int, data_dir: str | None) -> float:
    """vitlab's validation loss of `model` on tiny-shakespeare (char): the whole split, or `eval_batches` random
    batches of the preset's batch (the same windows for every model: the loader is at its start)."""
    from vitlab.train import apply_overrides, get_preset
    from vitlab.train.distributed import setup_distributed
    from vitlab.train.tasks.lm import build_lm_task
    from vitlab.train.evaluate import evaluate

    overrides = [f"block_size={model.block_size}", f"eval_batches={eval_batches}"]
    config = apply_overrides(get_preset(PRESET), overrides + ([f"data_dir={data_dir}"] if data_dir else []))
    info = setup_distributed("cpu")
    return evaluate(model, build_lm_task(config, info), info, nullcontext())["eval_loss"]


def final_losses(model: torch.nn.Module, data_dir: str | None) -> dict:
    return {"whole_split": evaluate_lm(model, 0, data_dir),
            "estimate_same_windows": evaluate_lm(model, ESTIMATE_BATCHES, data_dir)}


def nanogpt_final(ckpt: str, data_dir: str | None) -> dict:
    from vitlab.train.generate import load_nanogpt_checkpoint

    model, entries = load_nanogpt_checkpoint(ckpt)
    return {"ckpt_iter": int(entries.get("iter_num", -1)), **final_losses(model, data_dir)}


def vitlab_final(out_dir: Path, data_dir: str | None) -> dict:
    """The estimate of vitlab's last weights on the windows nanoGPT's model is estimated on (the whole-split loss is
    the run's own last evaluation)."""
    from vitlab.train.generate import load_language_model

    model, _, _ = load_language_model(out_dir / "last")
    return {"estimate_same_windows": evaluate_lm(model, ESTIMATE_BATCHES, data_dir)}


# ---------------------------------------------------------------------------------------------- the comparison
def run_pair(index: int, staged: Path, work: Path, args) -> dict:
    """nanoGPT then vitlab; the nanoGPT run's final whole-split loss is vitlab's target in this pair."""
    nano = run_nanogpt(staged, args.python, args.nanogpt_args, work / f"nanogpt_{index}.log")
    nano.update(nanogpt_final(nano["ckpt"], args.data_dir))
    print(f"pair {index}: nanoGPT {nano['wall_s']:.1f} s, {nano['tokens_per_s']:.0f} tokens/s, val loss "
          f"{nano['whole_split']:.4f} (whole split; its estimate {nano['final_estimate']:.4f})", flush=True)
    out_dir = work / f"vitlab_{index}"
    overrides = args.overrides + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    vit = run_vitlab(args.python, out_dir, args.eval_interval, overrides, work / f"vitlab_{index}.log")
    vit.update(vitlab_final(out_dir, args.data_dir))
    reached = time_to_loss(vit, nano["whole_split"])
    when = "never" if reached is None else f"step {reached['step']}, {reached['no_eval_s']:.1f} s"
    print(f"pair {index}: vitlab {vit['wall_s']:.1f} s, {vit['tokens_per_s']:.0f} tokens/s, val loss "
          f"{vit['final_whole_split']:.4f}; nanoGPT's {nano['whole_split']:.4f} reached: {when}", flush=True)
    return {"pair": index, "nanogpt": nano, "vitlab": vit, "time_to_nanogpt_loss": reached}


def _ratios(pair: dict) -> dict:
    nano, vit, reached = pair["nanogpt"], pair["vitlab"], pair["time_to_nanogpt_loss"]
    return {"time_to_loss_ratio": reached["no_eval_s"] / nano["wall_no_eval_s"] if reached else float("inf"),
            "time_to_loss_ratio_as_run": reached["with_eval_s"] / nano["wall_s"] if reached else float("inf"),
            "tokens_per_s_ratio": vit["tokens_per_s"] / nano["tokens_per_s"],
            "wall_ratio": vit["wall_s"] / nano["wall_s"], "peak_rss_ratio": vit["peak_rss_mib"] / nano["peak_rss_mib"],
            "loss_difference": vit["final_whole_split"] - nano["whole_split"]}


def summarise(pairs: list[dict]) -> dict:
    """Medians over the pairs of each quantity, and of each pair's ratios (a pair's two runs are neighbours in
    time, so their ratio is the least disturbed by a machine that gets busier or quieter)."""
    def median(side: str, key: str):
        values = [p[side][key] for p in pairs]
        return statistics.median(values)

    keys = ("wall_s", "wall_no_eval_s", "tokens_per_s", "peak_rss_mib", "estimate_same_windows")
    nano = {k: median("nanogpt", k) for k in (*keys, "whole_split", "final_estimate")}
    vit = {k: median("vitlab", k) for k in (*keys, "final_whole_split")}
    reached = [p["time_to_nanogpt_loss"] for p in pairs if p["time_to_nanogpt_loss"]]
    if len(reached) == len(pairs):
        vit.update({f"time_to_loss_{k}": statistics.median(r[k] for r in reached)
                    for k in ("step", "no_eval_s", "with_eval_s")})
    ratios = [_ratios(p) for p in pairs]
    ratio = {k: statistics.median(r[k] for r in ratios) for k in ratios[0]}
    met = {"time_to_loss_ratio": ratio["time_to_loss_ratio"] <= TARGETS["time_to_loss_ratio"],
           "tokens_per_s_ratio": ratio["tokens_per_s_ratio"] >= TARGETS["tokens_per_s_ratio"]}
    return {"nanogpt": nano, "vitlab": vit, "ratios": ratio, "targets": TARGETS, "met": met}


def _x(value: float) -> str:
    return "not reached" if value == float("inf") else f"{value:.2f}×"


def table(summary: dict, eval_interval: int) -> str:
    """One Markdown table: medians per program, then the median of the pairs' ratios."""
    nano, vit, ratio = summary["nanogpt"], summary["vitlab"], summary["ratios"]
    reached = (f"{vit['time_to_loss_no_eval_s']:.1f} / {vit['time_to_loss_with_eval_s']:.1f} (step "
               f"{vit['time_to_loss_step']:.0f})" if "time_to_loss_step" in vit else "not reached in every pair")
    rows = [
        "| | wall s | wall s, evaluations excluded | training tokens/s | val loss, whole split (vitlab's evaluation) "
        f"| val loss, {ESTIMATE_BATCHES} random batches (same windows) | nanoGPT's own estimate | time to nanoGPT's "
        "final whole-split loss, s (evaluations excluded / included) | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| nanoGPT train.py (README CPU command) | {nano['wall_s']:.1f} | {nano['wall_no_eval_s']:.1f} | "
        f"{nano['tokens_per_s']:,.0f} | {nano['whole_split']:.4f} | {nano['estimate_same_windows']:.4f} | "
        f"{nano['final_estimate']:.4f} | – | {nano['peak_rss_mib']:.0f} |",
        f"| vitlab {PRESET} eval_interval={eval_interval} | {vit['wall_s']:.1f} | {vit['wall_no_eval_s']:.1f} | "
        f"{vit['tokens_per_s']:,.0f} | {vit['final_whole_split']:.4f} | {vit['estimate_same_windows']:.4f} | – | "
        f"{reached} | {vit['peak_rss_mib']:.0f} |",
        f"| vitlab / nanoGPT (median of the pairs' ratios) | {_x(ratio['wall_ratio'])} | – | "
        f"**{_x(ratio['tokens_per_s_ratio'])}** | {ratio['loss_difference']:+.4f} | – | – | "
        f"**{_x(ratio['time_to_loss_ratio'])}** of nanoGPT's wall without evaluations / "
        f"{_x(ratio['time_to_loss_ratio_as_run'])} of its wall | {_x(ratio['peak_rss_ratio'])} |",
    ]
    met = summary["met"]
    rows.append(f"\nTargets: vitlab's time to nanoGPT's final loss <= {TARGETS['time_to_loss_ratio']}× nanoGPT's "
                f"wall: {_x(ratio['time_to_loss_ratio'])} ({'met' if met['time_to_loss_ratio'] else 'missed'}); "
                f"training tokens/s >= {TARGETS['tokens_per_s_ratio']}× nanoGPT's: {_x(ratio['tokens_per_s_ratio'])} "
                f"({'met' if met['tokens_per_s_ratio'] else 'missed'}).")
    return "\n".join(rows)


def machine() -> dict:
    from vitlab._profile import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "vitlab_commit": _commit(ROOT),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout (read only)")
    parser.add_argument("--pairs", type=int, default=2, help="nanoGPT, vitlab pairs, run alternately (default 2)")
    parser.add_argument("--eval-interval", type=int, default=100, help="vitlab's steps between whole-split "
                        "evaluations, to read off when it reaches nanoGPT's loss (default 100)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    parser.add_argument("--python", default=sys.executable, help="the interpreter for both programs")
    parser.add_argument("--data-dir", default=None, help="where tinyshakespeare/input.txt is (default: vitlab's search)")
    parser.add_argument("--nanogpt-args", default="", help="appended to nanoGPT's command (e.g. a shorter dry run: "
                        "'--max_iters=100 --lr_decay_iters=100', with steps=100 for vitlab)")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs, checkpoints and runs in this folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="vitlab preset overrides")
    args = parser.parse_args(argv)
    args.nanogpt_args = args.nanogpt_args.split()
    if args.pairs < 1 or args.eval_interval < 1:
        parser.error("--pairs and --eval-interval must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="vs_nanogpt_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        staged = stage_nanogpt(args.nanogpt.resolve(), work)
        data = prepare_data(staged / "data" / "shakespeare_char", args.data_dir)
        pairs = [run_pair(i, staged, work, args) for i in range(args.pairs)]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(pairs)
    info = machine()
    commands = {"nanogpt": shlex.join(["python", "train.py", *NANOGPT_ARGS, *args.nanogpt_args]),
                "vitlab": shlex.join(vitlab_command("python", Path("OUT_DIR"), args.eval_interval, args.overrides)),
                "this": shlex.join(["python", "benchmarks/vs_nanogpt.py", *(argv if argv is not None else sys.argv[1:])])}
    loads = ", ".join(f"{pair[side]['load_before']:.1f}" for pair in pairs for side in ("nanogpt", "vitlab"))
    print(f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"Python {info['python']}; vitlab {info['vitlab_commit']}; nanoGPT {args.nanogpt} "
          f"({_commit(args.nanogpt) or 'not a git checkout'}); {args.pairs} pair(s), alternating; load average "
          f"before each run: {loads}")
    print(f"command: {commands['this']}\nnanoGPT: {commands['nanogpt']}\nvitlab:  {commands['vitlab']}\n")
    print(table(summary, args.eval_interval))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "commands": commands, "data": data, "pairs": pairs,
                                         "summary": summary, "nanogpt_checkout": str(args.nanogpt),
                                         "nanogpt_commit": _commit(args.nanogpt)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
