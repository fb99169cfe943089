"""Runs the CPU-sized Fashion-MNIST presets (every family, default and mimetic init) and prints a Markdown table of
test accuracy, wall time and training throughput.

    python benchmarks/fashion_mnist_presets.py [--seeds 0 1 2] [--out docs/fashion_mnist_presets.json] [key=value ...]

Each run is exactly `vitlab train PRESET seed=S` in a fresh temporary out_dir, on the real Fashion-MNIST
(60 000 train / 10 000 test). With several seeds the table gives mean ± std.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch

from vitlab._profile import cpu_name
from vitlab.train import apply_overrides, get_preset, train
from vitlab.train.build import resolve_precision

PRESETS = ["fashion_mnist_vit", "fashion_mnist_vit_mimetic", "fashion_mnist_crate", "fashion_mnist_crate_mimetic",
           "fashion_mnist_crate_alpha", "fashion_mnist_crate_alpha_mimetic"]


def run(preset: str, seed: int, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = apply_overrides(get_preset(preset), [f"seed={seed}", f"out_dir={out}", "progress=false",
                                                      "log_every=100000", *overrides])
        start = time.perf_counter()
        result = train(config, preset=preset)
        seconds = time.perf_counter() - start
        steps = result["step"]
        return {"preset": preset, "seed": seed, "precision": resolve_precision(config.precision, torch.device("cpu")),
                "top1": result["top1"], "seconds": seconds,
                "images_per_s": steps * config.batch_size / seconds}


def fmt(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--out")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="passed to every run (e.g. precision=fp32)")
    args = parser.parse_args()
    rows = [run(p, s, args.overrides) for p in args.presets for s in args.seeds]
    print(f"{cpu_name()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"precision {rows[0]['precision']}; seeds {args.seeds}; overrides {args.overrides or 'none'}")
    print("| preset | test top-1 (%) | wall time (s) | train images/s (incl. eval) |\n|---|---:|---:|---:|")
    for preset in args.presets:
        mine = [r for r in rows if r["preset"] == preset]
        print(f"| {preset} | {fmt([r['top1'] for r in mine])} | {fmt([r['seconds'] for r in mine], 0)} | "
              f"{fmt([r['images_per_s'] for r in mine], 0)} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": sys.argv, "rows": rows, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
