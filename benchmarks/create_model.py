"""Model creation time: `vitlab.create_model(name)` against `timm.create_model(timm_name)` and against vitlab's old
code path, in ONE process, interleaved (A B C A B C ...), so that machine noise hits every way alike.

The ways, per model:
- `vitlab`: `vitlab.create_model(name)` as shipped (random init; the truncated normals by the inverse CDF,
  `vitlab.models.trunc_normal_`);
- `old`: the same call with torch's `nn.init.trunc_normal_` (rejection sampling, the code before issue 25) put back
  in place of vitlab's for the call; for a family with no truncated-normal init (CRATE-α, GPT-2) it is the same code,
  a control of the noise;
- `timm`: `timm.create_model(timm_name, pretrained=False)` where timm has the model (ViT-B/16, ViT-T/16), imported
  through the tests' torchvision shim (tests/torchvision_shim.py) as the other benchmarks do.

One untimed creation of each way first (imports, e.g. torch._dynamo, which both a meta-device build and torchvision
import, and first-touch allocations). Reported: the median seconds over `--repeats` calls, the ratios vitlab / timm
and vitlab / old, and the process's peak resident set during the call (its high-water mark reset before each call,
`vitlab._profile.reset_peak_rss`; the median over the repeats) and its rise above the resident set before the call
(freed memory is handed back to the system before each call, so the rise is what the creation itself needed).

    python benchmarks/create_model.py --json create_model.json
    python benchmarks/create_model.py --models vit_tiny_patch16_224 --repeats 1     # a dry run, seconds

Target (issue 25): ViT-B/16 creation at most 1.2× timm's. `--json PATH` writes the table with the CPU (lscpu model
name and SIMD flags), torch and timm versions, the git commit and the command line.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import vitlab
import vitlab.models.vit
import vitlab.models.weight_init
from vitlab._profile import cpu_name, peak_rss_bytes, reset_peak_rss, rss_bytes

REPO = Path(__file__).resolve().parents[1]
# vitlab name → (label, timm name or None)
MODELS = {
    "vit_base_patch16_224": ("ViT-B/16", "vit_base_patch16_224"),
    "vit_tiny_patch16_224": ("ViT-T/16", "vit_tiny_patch16_224"),
    "crate_alpha_base_patch16_224": ("CRATE-α-B/16", None),
    "gpt2": ("GPT-2 (124M)", None),
}
SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def import_timm():
    """timm, importable on the CPU torch through the tests' torchvision shim (the library itself never needs it);
    None when timm is not installed."""
    sys.path.insert(0, str(REPO / "tests"))
    from torchvision_shim import import_torchvision

    import_torchvision()
    try:
        import timm
    except ImportError:
        return None
    return timm


@contextlib.contextmanager
def torch_trunc_normal():
    """vitlab's code before issue 25: torch's rejection-sampling `nn.init.trunc_normal_` wherever vitlab's models
    draw a truncated normal (the ViT's Linear layers, through `trunc_normal_linear_init_`, and position table)."""
    modules = (vitlab.models.weight_init, vitlab.models.vit)
    saved = [module.trunc_normal_ for module in modules]
    for module in modules:
        module.trunc_normal_ = torch.nn.init.trunc_normal_
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.trunc_normal_ = original


def ways_for(name: str, timm) -> dict[str, Callable[[], torch.nn.Module]]:
    def vitlab_way():
        return vitlab.create_model(name)

    def old_way():
        with torch_trunc_normal():
            return vitlab.create_model(name)

    ways = {"vitlab": vitlab_way, "old": old_way}
    timm_name = MODELS[name][1]
    if timm is not None and timm_name is not None:
        ways["timm"] = lambda: timm.create_model(timm_name, pretrained=False)
    return ways


def release_freed_memory() -> None:
    """Hands the heap's freed pages back to the system (glibc's malloc_trim), so that the resident set before each
    call is the same baseline whichever model was freed before it; nothing where the C library has no malloc_trim."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_once(build: Callable[[], torch.nn.Module]) -> tuple[float, int, int, int]:
    """(seconds, peak resident bytes during the call, rise above the resident set before it, parameters)."""
    release_freed_memory()
    method = reset_peak_rss()
    before = rss_bytes()
    start = time.perf_counter()
    model = build()
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes(method)
    count = sum(p.numel() for p in model.parameters())
    del model
    return seconds, peak, max(peak - before, 0), count


def measure(names: list[str], repeats: int, timm) -> dict[str, dict]:
    ways = {name: ways_for(name, timm) for name in names}
    for name in names:  # untimed: imports and first allocations
        for build in ways[name].values():
            measure_once(build)
    samples = {name: {way: [] for way in ways[name]} for name in names}
    for _ in range(repeats):
        for name in names:
            for way, build in ways[name].items():
                samples[name][way].append(measure_once(build))
    results = {}
    for name in names:
        row = {"label": MODELS[name][0], "timm_name": MODELS[name][1] if "timm" in ways[name] else None}
        for way, runs in samples[name].items():
            row[way] = {"median_s": statistics.median(r[0] for r in runs), "seconds": [r[0] for r in runs],
                        "peak_rss_mib": statistics.median(r[1] for r in runs) / 2**20,
                        "rss_rise_mib": statistics.median(r[2] for r in runs) / 2**20, "parameters": runs[0][3]}
        row["vitlab_over_old"] = row["vitlab"]["median_s"] / row["old"]["median_s"]
        if "timm" in row:
            row["vitlab_over_timm"] = row["vitlab"]["median_s"] / row["timm"]["median_s"]
        results[name] = row
    return results


def markdown(results: dict[str, dict]) -> str:
    def cell(row, way, key, fmt):
        return fmt.format(row[way][key]) if way in row else "—"

    header = ("| model | params | vitlab s | old s | timm s | vitlab / timm | vitlab / old | peak RSS MiB vitlab / old / "
              "timm | rise MiB vitlab / old / timm |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for row in results.values():
        ratio = f"{row['vitlab_over_timm']:.2f}×" if "vitlab_over_timm" in row else "—"
        peaks = " / ".join(cell(row, way, "peak_rss_mib", "{:.0f}") for way in ("vitlab", "old", "timm"))
        rises = " / ".join(cell(row, way, "rss_rise_mib", "{:.0f}") for way in ("vitlab", "old", "timm"))
        lines.append(f"| {row['label']} | {row['vitlab']['parameters'] / 1e6:.1f}M | "
                     f"{cell(row, 'vitlab', 'median_s', '{:.3f}')} | {cell(row, 'old', 'median_s', '{:.3f}')} | "
                     f"{cell(row, 'timm', 'median_s', '{:.3f}')} | {ratio} | {row['vitlab_over_old']:.2f}× | "
                     f"{peaks} | {rises} |")
    return "\n".join(lines)


def lscpu() -> dict[str, object]:
    """The CPU's model name and which of the SIMD / matrix flags that decide CPU kernels it lists."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("Flags", "").split())
    return {"model_name": fields.get("Model name") or cpu_name(), "flags": [f for f in SIMD_FLAGS if f in flags],
            "cpus": fields.get("CPU(s)") or os.cpu_count()}


def environment(timm) -> dict[str, object]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"cpu": lscpu(), "torch": torch.__version__, "timm": getattr(timm, "__version__", None),
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--", "vitlab")),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model and way (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    timm = import_timm()
    env = environment(timm)
    results = measure(args.models, args.repeats, timm)
    print(f"create_model on {env['cpu']['model_name']} ({', '.join(env['cpu']['flags']) or 'no listed SIMD flags'}), "
          f"torch {env['torch']}, timm {env['timm']}, {env['threads']} threads, commit {env['git_commit'][:10]}, "
          f"median of {args.repeats}, interleaved in one process")
    print(markdown(results))
    vit_b = results.get("vit_base_patch16_224", {})
    if "vitlab_over_timm" in vit_b:
        verdict = "met" if vit_b["vitlab_over_timm"] <= 1.2 else "MISSED"
        print(f"ViT-B/16: vitlab / timm = {vit_b['vitlab_over_timm']:.2f}× (target ≤ 1.2×: {verdict})")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "repeats": args.repeats, "results": results},
                                        indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
