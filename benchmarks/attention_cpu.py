"""Softmax attention on a CPU: PyTorch's fused SDPA against vitlab's explicit form, softmax(q kᵀ · scale) v, in
training (forward + backward) and inference (forward under no_grad), fp32 and bf16, in ONE process, interleaved.

vitlab's attention (`vitlab.models._layers`) trains with the explicit form on a CPU when the sequence is at most
`_CPU_EXPLICIT_MAX_TOKENS[dtype]` tokens long (fp32: 128, bf16: 256) and uses SDPA everywhere else; this script is
the measurement behind those two numbers. Per row: the shape (batch, heads, tokens, head width, causal), the median
ms per call of each form over `--repeats` interleaved windows of `--calls` calls, SDPA / explicit (above 1: the
explicit form is faster), which form vitlab takes, and in training the memory each form keeps for its backward
(the bytes of the tensors autograd saves in one forward, counted with `torch.autograd.graph.saved_tensors_hooks`;
the explicit form keeps the B·H·N² probabilities, SDPA's flash kernel only its output and log-sum-exp; MiB).

A kernel alone does not decide it: a second table times whole train steps (forward, cross-entropy, backward, AdamW)
of `--models` with vitlab's attention forced to each form (`--model-steps` steps per window, windows alternated),
in fp32 and under bf16 autocast. In fp32 the explicit kernel wins at 65 tokens on its own but the models train
slower with it, so fp32 keeps SDPA.

    python benchmarks/attention_cpu.py --json docs/attention_cpu.json
    python benchmarks/attention_cpu.py --calls 1 --repeats 1 --shapes 8,3,65,64,0 --models   # a dry run, kernels only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import vitlab
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


# Whole models, as trained: ViT-T and CRATE-T at 32 px / patch 4 (65 tokens), batch 64; nanoGPT's CPU GPT (4 layers,
# width 128, 64 tokens, causal), batch 12.
MODELS = ["vit_tiny_patch4_32", "crate_tiny_patch4_32", "gpt_char_tiny"]


def model_step(name: str, bf16: bool):
    torch.manual_seed(0)
    if name.startswith("gpt"):
        model = vitlab.create_model(name, n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65)
        x, y, unit = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64)), 12 * 64
    else:
        model = vitlab.create_model(name, img_size=32, patch_size=4, num_classes=10)
        x, y, unit = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)), 64
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(out.float().flatten(0, -2), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, unit


def measure_model(name: str, bf16: bool, args) -> dict:
    step, unit = model_step(name, bf16)
    chooser = _layers._explicit_trains_faster
    forced = {"sdpa": lambda q: False, "explicit": lambda q: q.device.type == "cpu" and q.requires_grad}
    rates: dict = {form: [] for form in forced}
    try:
        for window_index in range(args.repeats + 1):  # the first window of each form is a warm-up
            for form, rule in forced.items():
                _layers._explicit_trains_faster = rule
                start = time.perf_counter()
                for _ in range(args.model_steps):
                    step()
                if window_index:
                    rates[form].append(unit * args.model_steps / (time.perf_counter() - start))
    finally:
        _layers._explicit_trains_faster = chooser
    sdpa, explicit_ = statistics.median(rates["sdpa"]), statistics.median(rates["explicit"])
    return {"model": name, "dtype": "bfloat16" if bf16 else "float32", "unit": "tokens" if unit > 64 else "images",
            "sdpa_per_s": round(sdpa, 1), "explicit_per_s": round(explicit_, 1),
            "explicit_over_sdpa": round(explicit_ / sdpa, 3),
            "vitlab_uses": "explicit" if bf16 else "sdpa"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="batch,heads,tokens,head_dim,causal(0|1)")
    parser.add_argument("--calls", type=int, default=5, help="calls per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per form, interleaved")
    parser.add_argument("--models", nargs="*", default=MODELS, help="whole-model train steps (none: skip)")
    parser.add_argument("--model-steps", type=int, default=5, help="train steps per window")
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
                label = f"{r['batch']}×{r['heads']}×{r['tokens']}×{r['head_dim']}"
                print(f"| {label} | {'yes' if r['causal'] else 'no'} "
                      f"| {r['dtype']} | {r['mode']} | {r['sdpa_ms']} | {r['explicit_ms']} | "
                      f"{r['sdpa_over_explicit']:.2f}× | {r['vitlab_uses']} | "
                      + (f"{r['sdpa_saved_mib']:.1f} / {r['explicit_saved_mib']:.1f} |" if train else "– |"),
                      flush=True)
    models = []
    if args.models:
        print("\n| model | dtype | train per s, SDPA | explicit | explicit / SDPA | vitlab uses |\n"
              "|---|---|---:|---:|---:|---|")
    for name in args.models:
        for bf16 in (False, True):
            m = measure_model(name, bf16, args)
            models.append(m)
            print(f"| {m['model']} | {m['dtype']} | {m['sdpa_per_s']} {m['unit']} | {m['explicit_per_s']} | "
                  f"{m['explicit_over_sdpa']:.2f}× | {m['vitlab_uses']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": header, "command": "python benchmarks/attention_cpu.py "
                       + " ".join(argv if argv is not None else sys.argv[1:]), "rows": rows, "models": models}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
