"""bf16 against fp32 training steps on this CPU, in ONE process, interleaved: what `precision=bf16` would buy here.

The CPU's bf16 matrix units decide it. A CPU that lists `amx_bf16` (Intel AMX) or `avx512_bf16` in /proc/cpuinfo
multiplies bf16 matrices in hardware (oneDNN's bf16 GEMM); one without them converts to fp32 in software, and a bf16
GEMM is then several times SLOWER than fp32. The script prints those flags, a 1024² GEMM's GFLOP/s in each dtype,
and, for each model, images/s of whole train steps (forward, cross-entropy, backward, AdamW) in three ways:

- `fp32`: the engine's CPU default (`precision=fp32`, and `auto` on a CPU);
- `autocast`: `torch.autocast("cpu", torch.bfloat16)` around the forward, fp32 weights and optimiser (what
  `precision=bf16` does);
- `bf16 weights`: the model's parameters in bf16 and fp32 master copies in the optimiser (gradients cast up, AdamW
  on the masters, weights copied back down): no casts inside the forward.

Windows of `--steps` steps alternate (fp32, autocast, bf16 weights, fp32, ...); each way's images/s is the median over
`--repeats` windows. Peak memory: the process's resident high-water mark after each model (the three ways share the
process, so it is the largest of them). `--compile` also runs each way under torch.compile (inductor, a C++
compiler needed; compile time excluded).

    python benchmarks/bf16_cpu.py --json docs/bf16_cpu.json           # ViT-T and CRATE-α-T at 32 px / patch 4
    python benchmarks/bf16_cpu.py --models vit_tiny_patch4_32 --batch 16 --steps 1 --repeats 1   # a dry run
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import vitlab
from vitlab._profile import count_flops, cpu_bf16_flags, cpu_name


def gemm_gflops(dtype: torch.dtype, n: int = 1024, budget_s: float = 2.0) -> float:
    """GFLOP/s of an n×n by n×n matmul in `dtype` (as many calls as fit in `budget_s`, after one warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < budget_s:
        a @ b
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e9


class MasterAdamW:
    """AdamW on fp32 master copies of a bf16 model's parameters: grads are cast up, the update is fp32, the bf16
    weights are the masters rounded down after each step."""

    def __init__(self, model: torch.nn.Module, lr: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.opt = torch.optim.AdamW(self.masters, lr=lr)

    def step(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = p.grad.float()
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)
                p.grad = None


def make_step(model: torch.nn.Module, way: str, x: torch.Tensor, y: torch.Tensor, compile_: bool):
    model = copy.deepcopy(model).train()
    if way == "bf16 weights":
        model = model.to(torch.bfloat16)
        opt = MasterAdamW(model, 1e-4)
        x = x.to(torch.bfloat16)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compile_ else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=way == "autocast")

    def step():
        with autocast:
            loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()
        opt.step()
        if not isinstance(opt, MasterAdamW):
            opt.zero_grad(set_to_none=True)
    return step


def measure(name: str, args) -> list[dict]:
    torch.manual_seed(0)
    model = vitlab.create_model(name, img_size=args.img_size, num_classes=10)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 10, (args.batch,))
    flops = count_flops(model, x[:1], backward=True)
    ways = ["fp32", "autocast", "bf16 weights"]
    variants = [(way, c) for c in ([False, True] if args.compile else [False]) for way in ways]
    steps = {v: make_step(model, v[0], x, y, v[1]) for v in variants}
    for step in steps.values():  # warm-up (and compilation) outside the timing
        step()
        step()
    rates: dict = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[v]()
            rates[v].append(args.batch * args.steps / (time.perf_counter() - start))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = statistics.median(rates[("fp32", False)])
    rows = []
    for (way, compiled), values in rates.items():
        ips = statistics.median(values)
        rows.append({"model": name, "way": way + (" + compile" if compiled else ""), "images_per_s": round(ips, 2),
                     "vs_fp32": round(ips / base, 3), "gflops": round(ips * flops / 1e9, 1),
                     "windows": [round(r, 2) for r in values], "peak_rss_mib": round(peak)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny_patch4_32", "crate_alpha_tiny_patch4_32"])
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per way, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also each way under torch.compile")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    flags = cpu_bf16_flags()
    cpu = cpu_name()
    gemm = {str(dt).replace("torch.", ""): round(gemm_gflops(dt), 1) for dt in (torch.float32, torch.bfloat16)}
    rows = [row for name in args.models for row in measure(name, args)]
    command = "python " + " ".join(sys.argv)
    print(f"{cpu}, {args.threads} threads, torch {torch.__version__}; bf16 matrix instructions: "
          f"{', '.join(flags) or 'none (no amx_bf16 / avx512_bf16 in /proc/cpuinfo)'}; 1024² GEMM GFLOP/s: "
          f"fp32 {gemm['float32']}, bf16 {gemm['bfloat16']}; batch {args.batch} at {args.img_size} px\n"
          f"command: {command}\n")
    print("| model | way | images/s | vs fp32 | GFLOP/s (training FLOPs) | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['way']} | {r['images_per_s']:.1f} | {r['vs_fp32']:.2f}× | {r['gflops']:.1f} | "
              f"{r['peak_rss_mib']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "cpu": cpu, "bf16_flags": flags, "threads": args.threads,
                       "torch": torch.__version__, "gemm_gflops_1024": gemm, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
