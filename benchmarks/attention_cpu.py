"""Softmax attention on a CPU: PyTorch's fused SDPA against vitlab's explicit form, softmax(q kᵀ · scale) v, in
training (forward + backward) and inference (forward under no_grad), fp32 and bf16, in ONE process, interleaved.

vitlab's attention (`vitlab.models._layers`) trains with the explicit form on a CPU when the sequence is at most
`_CPU_EXPLICIT_MAX_TOKENS[dtype]` tokens long (fp32: 128, bf16: 256) and uses SDPA everywhere else; this script is
the measurement behind those two numbers. Per row: the shape (batch, heads, tokens, head width, causal), the median
ms per call of each form over `--repeats` interleaved windows of `--calls` calls, SDPA / explicit (above 1: the
explicit form is faster), which form vitlab takes, and in training the memory each form keeps for its backward
(the bytes of the tensors autograd saves in one forward, counted with `torch.autograd.graph.saved_tensors_hooks`;
the explicit form keeps the B·H·N² probabilities, SDPA's flash kernel only its output and log-sum-exp; MiB).

    python benchmarks/attention_cpu.py --json docs/attention_cpu.json
    python benchmarks/attention_cpu.py --calls 1 --repeats 1 --shapes 8,3,65,64,0          # a dry run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from vitlab._profile import cpu_bf16_flags, cpu_name
from vitlab.models import _layers

# (batch, heads, tokens, head width, causal): ViT-T/4 at 32 px (65 tokens), ViT at 224 px / 16 (197), the
# shakespeare-char GPT (256, causal), and longer language-model contexts.
SHAPES = ["64,3,65,64,0", "64,3,197,64,0", "32,6,256,64,1", "16,6,512,64,1", "8,12,1024,64,1"]


def sdpa(q, k, v, causal: bool):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def explicit(q, k, v, causal: bool):
    return _layers._explicit_attention(q, k, v, q.shape[-1] ** -0.5, causal)[0]


def window(fn, q, k, v, grad, causal: bool, train: bool, calls: int) -> float:
    """ms per call over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        if train:
            fn(q, k, v, causal).backward(grad)
        else:
            with torch.no_grad():
                fn(q, k, v, causal)
    return (time.perf_counter() - start) / calls * 1e3


def saved_mib(fn, q, k, v, causal: bool) -> float:
    """MiB of the tensors autograd keeps from one forward for the backward (inputs q, k, v not counted)."""
    inputs, seen, total = {id(q), id(k), id(v)}, set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if id(t) not in inputs and t.data_ptr() not in {q.data_ptr(), k.data_ptr(), v.data_ptr()} and key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(q, k, v, causal)
    return total / 2**20


def measure(shape: str, dtype: torch.dtype, train: bool, args) -> dict:
    B, H, N, D, causal = (int(s) for s in shape.split(","))
    q, k, v = (torch.randn(B, H, N, D, dtype=dtype, requires_grad=train) for _ in range(3))
    grad = torch.randn(B, H, N, D, dtype=dtype)
    forms = {"sdpa": sdpa, "explicit": explicit}
    for fn in forms.values():  # warm-up
        window(fn, q, k, v, grad, bool(causal), train, 1)
    times: dict = {name: [] for name in forms}
    for _ in range(args.repeats):
        for name, fn in forms.items():
            times[name].append(window(fn, q, k, v, grad, bool(causal), train, args.calls))
    memory = {name: saved_mib(fn, q, k, v, bool(causal)) if train else None for name, fn in forms.items()}
    sdpa_ms, explicit_ms = statistics.median(times["sdpa"]), statistics.median(times["explicit"])
    picks = "explicit" if _layers._explicit_trains_faster(q) else "sdpa"
    return {"batch": B, "heads": H, "tokens": N, "head_dim": D, "causal": bool(causal),
            "dtype": str(dtype).removeprefix("torch."), "mode": "train" if train else "inference",
            "sdpa_ms": round(sdpa_ms, 2), "explicit_ms": round(explicit_ms, 2),
            "sdpa_over_explicit": round(sdpa_ms / explicit_ms, 2), "vitlab_uses": picks,
            "sdpa_saved_mib": memory["sdpa"] and round(memory["sdpa"], 1),
            "explicit_saved_mib": memory["explicit"] and round(memory["explicit"], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="batch,heads,tokens,head_dim,causal(0|1)")
    parser.add_argument("--calls", type=int, default=5, help="calls per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per form, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    header = (f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; bf16 matrix instructions: "
              f"{', '.join(cpu_bf16_flags()) or 'none'}")
    print(header)
    print("command: python " + " ".join(["benchmarks/attention_cpu.py", *(argv if argv is not None else sys.argv[1:])]))
    print("\n| batch × heads × tokens × width | causal | dtype | mode | SDPA ms | explicit ms | SDPA / explicit | "
          "vitlab uses | saved for backward MiB, SDPA / explicit |\n|---|---|---|---|---:|---:|---:|---|---:|")
    rows = []
    for shape in args.shapes:
        for train in (True, False):
            for dtype in (torch.float32, torch.bfloat16):
                r = measure(shape, dtype, train, args)
                rows.append(r)
                shape = f"{r['batch']}×{r['heads']}×{r['tokens']}×{r['head_dim']}"
                print(f"| {shape} | {'yes' if r['causal'] else 'no'} "
                      f"| {r['dtype']} | {r['mode']} | {r['sdpa_ms']} | {r['explicit_ms']} | "
                      f"{r['sdpa_over_explicit']:.2f}× | {r['vitlab_uses']} | "
                      + (f"{r['sdpa_saved_mib']:.1f} / {r['explicit_saved_mib']:.1f} |" if train else "– |"),
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": header, "command": "python benchmarks/attention_cpu.py "
                       + " ".join(argv if argv is not None else sys.argv[1:]), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
