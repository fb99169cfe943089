"""nanoGPT's published CPU run, reproduced with vitlab's engine: character-level tiny-shakespeare, GPT with 4 layers,
4 heads, width 128, context 64, batch 12, 2000 iterations, dropout 0. nanoGPT's README: validation loss about 1.88
in about 3 minutes (on the author's laptop CPU). This script measures, on this machine, when vitlab's GPT first
reaches the target validation loss, the final loss, wall time, throughput and peak memory.

    python benchmarks/shakespeare_char.py [--preset shakespeare_char_gpt] [--seeds 0 1 2] [--target 1.88]
                                          [--out docs/shakespeare_char.json] [key=value ...]

Each run is exactly `vitlab train PRESET seed=S` in a fresh temporary out_dir. Data preparation (tokenising the
1.1 MB text) is done once beforehand and timed separately. Validation loss is evaluated every 250 steps over the
whole validation split (nanoGPT estimates it on 20 random batches), and `elapsed_s` in the log is wall time since
the first step, evaluations included.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitlab.train import apply_overrides, get_preset, train


def run(preset: str, seed: int, target: float, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = apply_overrides(get_preset(preset), [f"seed={seed}", f"out_dir={out}", "progress=false", *overrides])
        start = time.perf_counter()
        result = train(config, preset=preset)
        seconds = time.perf_counter() - start
        log = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_loss" in r]
    reached = next((r for r in evals if r["eval_loss"] <= target), None)
    speeds = [r["tokens_per_s"] for r in log if "tokens_per_s" in r]
    return {"preset": preset, "seed": seed, "final_val_loss": result["eval_loss"], "seconds": seconds,
            "reached_step": reached["step"] if reached else None,
            "reached_s": reached["elapsed_s"] if reached else None,
            "tokens_per_s": statistics.fmean(speeds) if speeds else float("nan"),
            "curve": [(r["step"], round(r["eval_loss"], 4)) for r in evals]}


def fmt(values: list[float], digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "not reached"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["shakespeare_char_gpt"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--out", default=None, help="also write the raw results as JSON here")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="preset overrides, e.g. steps=4000 (a longer schedule: when does it first reach --target?)")
    args = parser.parse_args(argv)

    from vitlab.text import prepare_text

    start = time.perf_counter()
    prepared = prepare_text("tinyshakespeare", tokenizer="char")
    prep_s = time.perf_counter() - start
    results = [run(p, s, args.target, args.overrides) for p in args.preset for s in args.seeds]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; data "
          f"preparation {prep_s:.1f} s (cached: {prepared.root}); peak RSS {peak_mib:.0f} MiB; "
          f"command: {' '.join(sys.argv)}\n")
    print(f"| preset | seeds | final val loss | first eval ≤ {args.target}: step | …: seconds | wall s (all steps) "
          "| tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for preset in args.preset:
        mine = [r for r in results if r["preset"] == preset]
        print(f"| {preset} | {len(mine)} | {fmt([r['final_val_loss'] for r in mine], 4)} | "
              f"{fmt([r['reached_step'] for r in mine], 0)} | {fmt([r['reached_s'] for r in mine], 1)} | "
              f"{fmt([r['seconds'] for r in mine], 1)} | {fmt([r['tokens_per_s'] for r in mine], 0)} |")
    for r in results:
        print(f"{r['preset']} seed {r['seed']}: validation loss by step {r['curve']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "peak_rss_mib": peak_mib, "prep_s": prep_s,
                                              "argv": sys.argv, "torch": torch.__version__}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
