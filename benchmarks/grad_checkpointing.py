"""Gradient checkpointing (`model.set_grad_checkpointing()`, `grad_checkpointing=true` in training): the peak memory
of one forward + backward and the time per step, with and without it, for a few models at their real sizes.

Each configuration runs in a fresh Python process, so one measurement cannot inherit another's peak. In it the
model, its gradient buffers (allocated up front, so the backward writes into them) and the random batch are built;
a forward + backward of one sample warms kernels and lazy imports; then the memory baseline is taken and `--steps`
forward + backward passes of the whole batch run (fp32, no optimiser). Peak memory = the peak during those steps
minus the baseline: activations and temporaries only (weights and gradients, which checkpointing does not change,
are in the baseline). CUDA: torch.cuda.max_memory_allocated − memory_allocated. CPU: peak resident set size
(getrusage ru_maxrss) − resident set size before the steps (/proc/self/statm), with glibc told to map every
allocation over 64 KiB on its own and return it when freed (MALLOC_MMAP_THRESHOLD_), so the resident set follows the
live tensors; both modes pay the page faults this costs. Time per step: the mean over the `--steps` passes.

    python benchmarks/grad_checkpointing.py                       # CPU defaults: a few minutes on 2 cores
    python benchmarks/grad_checkpointing.py --device cuda --models vit_base_patch16_224:64 gpt2:16:1024
    python benchmarks/grad_checkpointing.py --json results.json

A model is `name:batch` (images at the model's size) or `name:batch:tokens` (language models). Prints a Markdown
table; `--json PATH` writes it with the command, versions, machine and git commit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vitlab

DEFAULT_MODELS = ["vit_small_patch16_224:8", "crate_alpha_base_patch16_224:4", "gpt2:1:1024"]


def _rss_bytes() -> int:
    """The resident set size now (Linux); elsewhere the peak so far, which is what the baseline is anyway."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _batch(model: torch.nn.Module, batch: int, tokens: int | None, device: torch.device):
    """Random inputs and targets: (B, 3, H, W) images and (B,) labels, or (B, T) tokens and (B, T) next tokens."""
    if tokens is not None:
        idx = torch.randint(0, model.vocab_size, (batch, tokens + 1), device=device)  # (B, T+1)
        return idx[:, :-1], idx[:, 1:]
    size = model.patch_embed.img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return torch.randn(batch, 3, *size, device=device), torch.randint(0, model.num_classes, (batch,), device=device)


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    logits = model(x)  # (B, classes) or (B, T, V)
    F.cross_entropy(logits.flatten(0, -2), y.flatten()).backward()


def worker(spec: dict) -> dict:
    """One configuration, measured in this process (see the module docstring)."""
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = vitlab.create_model(spec["model"], **({"block_size": spec["tokens"]} if spec["tokens"] else {}))
    model = model.to(device).train()
    model.set_grad_checkpointing(spec["checkpointing"])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # gradient buffers exist before the step: the baseline holds them
    x, y = _batch(model, spec["batch"], spec["tokens"], device)
    _step(model, x[:1], y[:1])  # one sample: kernels, thread pools and lazy imports (checkpoint's) warmed up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_bytes()
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        _step(model, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes()) - base
    seconds = sum(times) / len(times)
    params = sum(p.numel() for p in model.parameters())
    return {**spec, "params": params, "peak_mib": peak / 2**20, "s_per_step": seconds}


def run_in_fresh_process(spec: dict) -> dict:
    # glibc: every allocation over 64 KiB mapped on its own, unmapped when freed (no dynamic threshold, no heap
    # fragments): the resident set follows the live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parse_model(text: str) -> tuple[str, int, int | None]:
    name, batch, *tokens = text.split(":")
    return name, int(batch), int(tokens[0]) if tokens else None


def table(rows: list[dict]) -> str:
    """Markdown: one line per model, plain against checkpointed."""
    lines = ["| model | params | batch | peak memory plain (MiB) | checkpointed (MiB) | saved | s/step plain | "
             "checkpointed | slowdown |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for plain, ckpt in zip(rows[::2], rows[1::2]):
        shape = f"{plain['batch']} × {plain['tokens']} tokens" if plain["tokens"] else f"{plain['batch']} images"
        lines.append(f"| {plain['model']} | {plain['params'] / 1e6:.1f} M | {shape} | {plain['peak_mib']:.0f} | "
                     f"{ckpt['peak_mib']:.0f} | {1 - ckpt['peak_mib'] / plain['peak_mib']:.0%} | "
                     f"{plain['s_per_step']:.2f} | {ckpt['s_per_step']:.2f} | "
                     f"{ckpt['s_per_step'] / plain['s_per_step']:.2f}× |")
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="name:batch or name:batch:tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2, help="measured forward + backward passes of the whole batch")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    rows = []
    for text in args.models:
        name, batch, tokens = _parse_model(text)
        for checkpointing in (False, True):
            spec = dict(model=name, batch=batch, tokens=tokens, checkpointing=checkpointing, device=args.device,
                        steps=args.steps)
            rows.append(run_in_fresh_process(spec))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"
    result = {"command": " ".join(["python", *sys.argv]), "device": device, "torch": torch.__version__,
              "vitlab": vitlab.__version__, "git_commit": _commit(), "rows": rows, "table": table(rows)}
    print(f"{device}, torch {torch.__version__}, fp32, commit {result['git_commit']}")
    print(result["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
