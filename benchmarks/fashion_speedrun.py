"""The README's main job as a speedrun: wall time to a test top-1 target on Fashion-MNIST, mimetic against default
init of the same recipe, whole `vitlab train` processes, alternated.

    python benchmarks/fashion_speedrun.py --seeds 0 1 2 --json docs/fashion_speedrun.json
    python benchmarks/fashion_speedrun.py --seeds 0 epochs=0.1        # a dry run (overrides go to every run)

Each run is `vitlab train PRESET seed=S out_dir=<temp> progress=false eval_every=E` as a fresh process (imports,
data loading, init and every evaluation included), in the order default, mimetic, default, mimetic, ... so that
machine noise hits both alike. Per run: the wall time of the whole process; the final test top-1; the time to the
target, the wall time from the process start to the end of the first evaluation at or above `--target` (start-up =
process wall − the last logged `elapsed_s`, plus that evaluation's `elapsed_s`; evaluations every `--eval-every`
epochs count in it); training images/s; the process's peak resident memory (getrusage of the child).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitlab._profile import cpu_name

PRESETS = {"default": "fashion_mnist_vit", "mimetic": "fashion_mnist_vit_mimetic"}


def run(preset: str, seed: int, target: float, eval_every: float, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "vitlab", "train", preset, f"seed={seed}", f"out_dir={out}",
                   "progress=false", f"eval_every={eval_every}", *overrides]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                             f"{proc.stderr[-2000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far (KiB)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "top1" in r]
    startup = wall - records[-1]["elapsed_s"]
    reached = next((r for r in evals if r["top1"] >= target), None)
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    precision = next((line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
                      if line.startswith("precision:")), None)
    return {"preset": preset, "seed": seed, "precision": precision, "wall_s": round(wall, 1),
            "startup_s": round(startup, 1),
            "top1": evals[-1]["top1"], "best_top1": max(r["top1"] for r in evals),
            "time_to_target_s": round(startup + reached["elapsed_s"], 1) if reached else None,
            "images_per_s": round(statistics.median(speeds)) if speeds else None,
            "peak_rss_mib": round(peak / 1024) if peak > before else None,
            "curve": [(r["epoch"], r["top1"], round(startup + r["elapsed_s"], 1)) for r in evals]}


def summary(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "not reached"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=90.0, help="test top-1 (%%)")
    parser.add_argument("--eval-every", type=float, default=0.5, help="epochs between evaluations")
    parser.add_argument("--json", default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="passed to every run")
    args = parser.parse_args(argv)

    runs = [run(PRESETS[init], seed, args.target, args.eval_every, args.overrides)
            for seed in args.seeds for init in PRESETS]
    command = "python " + " ".join(sys.argv)
    cpu = cpu_name()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    print(f"{cpu} ({os.cpu_count()} CPUs), torch {torch.__version__}, vitlab commit {commit}; precision "
          f"{', '.join(sorted({str(r['precision']) for r in runs}))}; target {args.target}% test top-1; "
          f"evaluation every {args.eval_every} epoch\ncommand: {command}\n")
    print("| init | preset | seeds | final top-1 % | reached target | time to target (s) | wall (s) | "
          "start-up (s) | train images/s | peak RSS MiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for init, preset in PRESETS.items():
        rows = [r for r in runs if r["preset"] == preset]
        reached = sum(r["time_to_target_s"] is not None for r in rows)
        peak = max((r["peak_rss_mib"] or 0) for r in rows) or "—"
        print(f"| {init} | {preset} | {','.join(str(r['seed']) for r in rows)} | {summary([r['top1'] for r in rows])} "
              f"| {reached}/{len(rows)} | {summary([r['time_to_target_s'] for r in rows])} | "
              f"{summary([r['wall_s'] for r in rows])} | {summary([r['startup_s'] for r in rows])} | "
              f"{summary([r['images_per_s'] for r in rows])} | {peak} |")
    print("\n| init | seed | final top-1 % | time to target (s) | wall (s) |\n|---|---:|---:|---:|---:|")
    for r in runs:
        init = next(name for name, preset in PRESETS.items() if preset == r["preset"])
        print(f"| {init} | {r['seed']} | {r['top1']:.2f} | {r['time_to_target_s'] or 'not reached'} | {r['wall_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "cpu": cpu, "cpus": os.cpu_count(),
                                               "commit": commit,
                                               "torch": torch.__version__, "target": args.target,
                                               "eval_every": args.eval_every, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
