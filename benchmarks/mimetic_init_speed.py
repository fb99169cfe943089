"""Mimetic init: the batched factorisation of this tree against the per-head loop of commit 93adb2d, in ONE process.

The anchor is the old `vitlab/init/mimetic.py` read with `git show 93adb2d:vitlab/init/mimetic.py` and loaded as a
temporary module beside this tree's attention adapters (unchanged since): one float64 SVD (or, for tied CRATE
attention, eigh) of d × d per head and per layer, in a Python loop. Each model is created once; then calls of
`mimetic_init_(model, seed=0)` alternate old, new, old, new, ...; each side's time is the median over `--repeats`
calls and its peak memory the process's resident high-water mark during its calls (kernel VmHWM reset before each).

Deviation, per model: for every head, ΔP = (new − old) W_q⁽ʰ⁾W_k⁽ʰ⁾ᵀ (U_hᵀU_h when tied), and per layer W_v W_proj;
printed as the largest ‖ΔP‖_F / ‖P_old‖_F and max|ΔP| / max|P_old| over heads and layers.

    python benchmarks/mimetic_init_speed.py --json /tmp/mimetic_init_speed.json
    python benchmarks/mimetic_init_speed.py --models vit_tiny_patch16_224 --repeats 1     # a dry run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import vitlab
from vitlab._profile import cpu_name, peak_rss_bytes, reset_peak_rss
from vitlab.init import find_attention_layers, mimetic_init_

ANCHOR_COMMIT = "93adb2d"
ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=True).stdout


def old_mimetic_init():
    """The per-head `mimetic_init_` of commit 93adb2d, as the module `vitlab.init._mimetic_93adb2d`."""
    source = _git("show", f"{ANCHOR_COMMIT}:vitlab/init/mimetic.py")
    spec = importlib.util.spec_from_loader("vitlab.init._mimetic_93adb2d", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "vitlab.init"  # its `from ._adapters import ...` resolves to this tree's adapters
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    exec(compile(source, f"{ANCHOR_COMMIT}:vitlab/init/mimetic.py", "exec"), module.__dict__)
    return module.mimetic_init_


def lscpu_summary() -> dict:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": cpu_name(), "flags": ""}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))]
    return {"model": fields.get("Model name", cpu_name()).strip(), "cpus": fields.get("CPU(s)", "").strip(),
            "flags": " ".join(keep)}


def products(model: torch.nn.Module) -> list[list[torch.Tensor]]:
    """Per layer: the heads' W_q⁽ʰ⁾W_k⁽ʰ⁾ᵀ (d, d) and, unless tied, W_v W_proj (d, d), in float64."""
    out = []
    for view in find_attention_layers(model):
        dh = view.head_dim
        q, k = view.q.detach().double(), view.k.detach().double()  # (D, d): rows of head h = (W_q⁽ʰ⁾)ᵀ
        layer = [q[h * dh:(h + 1) * dh].T @ k[h * dh:(h + 1) * dh] for h in range(view.num_heads)]
        if not view.tied:
            layer.append(view.v.detach().double().T @ view.proj.detach().double().T)
        out.append(layer)
    return out


def deviation(old: list[list[torch.Tensor]], new: list[list[torch.Tensor]]) -> dict:
    fro, mx = [], []
    for a_layer, b_layer in zip(old, new):
        for a, b in zip(a_layer, b_layer):
            fro.append(((b - a).norm() / a.norm()).item())
            mx.append(((b - a).abs().max() / a.abs().max()).item())
    return {"max_rel_frobenius": max(fro), "max_rel_maxabs": max(mx)}


def timed(fn, model) -> tuple[float, int]:
    method = reset_peak_rss()
    start = time.perf_counter()
    fn(model, seed=0)
    return time.perf_counter() - start, peak_rss_bytes(method)


def lapack_warmup() -> float:
    """Seconds of the process's first LAPACK calls (MKL loads its kernels then: seconds on a busy disk), paid
    once before any timing, so neither side is charged for it."""
    start = time.perf_counter()
    for dtype in (torch.float32, torch.float64):
        A = torch.eye(8, dtype=dtype)
        torch.linalg.eigh(A), torch.linalg.svd(A)
    return time.perf_counter() - start


def measure(name: str, old_init, repeats: int) -> dict:
    model = vitlab.create_model(name)
    views = find_attention_layers(model)
    times = {"old": [], "new": []}
    rss = {"old": 0, "new": 0}
    for _ in range(repeats):
        for side, fn in (("old", old_init), ("new", mimetic_init_)):
            seconds, peak = timed(fn, model)
            times[side].append(seconds)
            rss[side] = max(rss[side], peak)
            if side == "old":
                reference = products(model)
    dev = deviation(reference, products(model))
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    return {"model": name, "layers": len(views), "heads": views[0].num_heads, "dim": views[0].dim,
            "tied": views[0].tied, "old_s": old_s, "new_s": new_s, "speedup": old_s / new_s,
            "old_peak_rss_mib": rss["old"] >> 20, "new_peak_rss_mib": rss["new"] >> 20,
            "times": times, **dev}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_b16", "crate_alpha_b16", "gpt2"])
    parser.add_argument("--repeats", type=int, default=3, help="calls per side, interleaved old / new")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    old_init = old_mimetic_init()
    warmup = lapack_warmup()
    rows = []
    for name in args.models:
        rows.append(measure(name, old_init, args.repeats))
        print(f"{name}: old {rows[-1]['old_s']:.2f} s, new {rows[-1]['new_s']:.2f} s", flush=True)
    command = "python " + " ".join(sys.argv)
    cpu = lscpu_summary()
    commit = _git("rev-parse", "HEAD").strip()
    print(f"{cpu['model']}, {torch.get_num_threads()} threads, torch {torch.__version__}, vitlab {vitlab.__version__}"
          f" at {commit[:10]}; anchor: mimetic_init_ of {ANCHOR_COMMIT}; first LAPACK calls (untimed): {warmup:.1f} s"
          f"\ncommand: {command}\n")
    print("| model | layers × heads, d | old s | new s | speed-up | old / new peak RSS MiB | "
          "max ‖ΔP‖_F/‖P‖_F | max |ΔP|/max |P| |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        shape = f"{r['layers']} × {r['heads']}, {r['dim']}{' tied' if r['tied'] else ''}"
        print(f"| {r['model']} | {shape} | {r['old_s']:.2f} | {r['new_s']:.2f} | {r['speedup']:.1f}× | "
              f"{r['old_peak_rss_mib']} / {r['new_peak_rss_mib']} | {r['max_rel_frobenius']:.1e} | "
              f"{r['max_rel_maxabs']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "vitlab": vitlab.__version__, "git_commit": commit, "anchor_commit": ANCHOR_COMMIT,
                       "lapack_warmup_s": warmup,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
