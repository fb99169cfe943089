"""Does the precision calibration predict the real choice? In ONE process, per preset model, measured now (never read
from the cache), the fp32 / bf16-autocast ratio of:

- the calibration `precision=auto` runs (`vitlab.train.build._precision_workload`: the model's own forward +
  backward at the batch, cut to `TIMED_FLOPS`), with the seconds it took;
- the fallback block workload at the model's width and tokens (`vitlab._calibrate.precision_workload`: what a model
  too large to time, or none, is calibrated with);
- the model's whole train steps as the engine runs them (forward, cross-entropy, backward, AdamW): the anchor;

and the choice each gives with the same margin (`BF16_MARGIN`).

The train steps: windows of `--steps` steps alternate fp32, bf16 autocast, fp32, ...; each time is the median over
`--repeats` windows. Peak memory is the process's resident high-water mark over each preset's measurements.

    python benchmarks/calibration.py --json calibration.json
    python benchmarks/calibration.py --presets fashion_mnist_vit --steps 1 --repeats 1    # a dry run
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitlab._calibrate import BF16_MARGIN, decide, measure, precision_workload, shape_class
from vitlab._profile import cpu_bf16_flags, cpu_name, peak_rss_bytes, reset_peak_rss
from vitlab.train import get_preset
from vitlab.train.build import _precision_workload, build_model, merge_kwargs, model_shape

FASHION = {"num_classes": 10, "in_chans": 1, "img_size": 28}  # what the classification task gives Fashion-MNIST


def machine() -> dict:
    """lscpu's model name and the CPU flags that decide bf16 speed, torch, the git commit."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"cpu": fields.get("Model name", "").strip() or cpu_name(), "flags": vector,
            "bf16_flags": cpu_bf16_flags(), "torch": torch.__version__, "commit": commit}


def train_steps(model: torch.nn.Module, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per whole train step in fp32 and under bf16 autocast, windows interleaved."""
    embed = model.patch_embed
    x = torch.randn(batch, embed.in_chans, *embed.img_hw)  # (B, C, H, W)
    y = torch.randint(0, 10, (batch,))
    runs = {}
    for way in ("fp32", "bf16"):
        copy_ = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW(copy_.parameters(), lr=1e-4)

        def step(copy_=copy_, optimizer=optimizer, bf16=way == "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(copy_(x).float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        runs[way] = step
    for step in runs.values():
        step()
        step()
    times: dict[str, list[float]] = {way: [] for way in runs}
    for _ in range(repeats):
        for way, step in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[way].append((time.perf_counter() - start) / steps)
    return {way: statistics.median(t) for way, t in times.items()}


def compare(preset: str, args) -> dict:
    config = get_preset(preset)
    config.model_kwargs = merge_kwargs(FASHION, config.model_kwargs)
    torch.manual_seed(0)
    model = build_model(config)
    width, tokens = model_shape(model)
    method = reset_peak_rss()
    name, candidates = _precision_workload(model, args.batch)
    start = time.perf_counter()
    calibrated = measure(candidates())
    calibration_s = time.perf_counter() - start
    block = measure(precision_workload(width, tokens))
    real = train_steps(model, args.batch, args.steps, args.repeats)
    (predicted, predicted_ratio), (block_pick, block_ratio) = decide(calibrated, BF16_MARGIN), decide(block, BF16_MARGIN)
    chosen, real_ratio = decide(real, BF16_MARGIN)
    ms = lambda seconds: {k: round(v * 1e3, 3) for k, v in seconds.items()}  # noqa: E731
    return {"preset": preset, "model": config.model, "width": width, "tokens": tokens, "workload": name,
            "shape_class": shape_class(width, tokens), "batch": args.batch,
            "calibration_ms": ms(calibrated), "calibration_fp32_over_bf16": round(predicted_ratio, 3),
            "calibration_s": round(calibration_s, 2), "calibration_picks": predicted,
            "block_ms": ms(block), "block_fp32_over_bf16": round(block_ratio, 3), "block_picks": block_pick,
            "train_step_ms": ms(real), "train_step_fp32_over_bf16": round(real_ratio, 3),
            "train_steps_pick": chosen, "agree": predicted == chosen,
            "peak_rss_mib": round(peak_rss_bytes(method) / 2**20)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["fashion_mnist_vit", "fashion_mnist_crate"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per window")
    parser.add_argument("--repeats", type=int, default=5, help="windows per precision, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    facts = machine()
    command = "python " + " ".join(sys.argv)
    rows = [compare(preset, args) for preset in args.presets]
    print(f"{facts['cpu']} ({', '.join(facts['flags']) or 'no avx2 / avx512 / amx flags'}), {args.threads} "
          f"threads, torch {facts['torch']}, commit {facts['commit'][:10]}; bf16 needs >= {BF16_MARGIN}x\n"
          f"command: {command}\n")
    print("| preset | calibration workload | calibration fp32 / bf16 (picks, s) | block fp32 / bf16 (picks) | "
          "train step ms fp32 / bf16 | train step fp32 / bf16 (picks) | agree | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        ms = r["train_step_ms"]
        print(f"| {r['preset']} | {r['workload']} | {r['calibration_fp32_over_bf16']:.2f}× ({r['calibration_picks']}, "
              f"{r['calibration_s']:.2f} s) | {r['block_fp32_over_bf16']:.2f}× ({r['block_picks']}) | "
              f"{ms['fp32']:.1f} / {ms['bf16']:.1f} | {r['train_step_fp32_over_bf16']:.2f}× "
              f"({r['train_steps_pick']}) | {'yes' if r['agree'] else 'NO'} | {r['peak_rss_mib']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, **facts, "threads": args.threads,
                                               "margin": BF16_MARGIN, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
