"""Algebraic rewrites of CRATE's and CRATE-α's layers, measured: ISTA (complete dictionary), ODL (overcomplete,
decoupled, CRATE-α) and MSSA (q = k = v = U z). For each, the direct form and the rewrites: multiply-accumulates per
token, forward + backward time at a training shape, and how far each is from the first row (float64).

Blocks, shapes (defaults: the 32-px, patch-4 training step: B = 64 images, N = 65 tokens, T = B·N = 4160 tokens;
CRATE-T width d = 384, 6 heads; CRATE-α-Ti d = 192, 3 heads, dictionary m = 4d atoms), with row vectors h (T × d):

  ISTA   ReLU(h + η(h D − h Dᵀ D) − ηλ), D (d × d)                                     [CRATE eq. 11]
         direct: 3 token GEMMs (the official code); Gram: h + h·K with K = η(D − DᵀD), one token GEMM + d³ per
         forward (vitlab since 1b02e54).
  ODL    A1 = ReLU(η h D − ηλ);  A2 = ReLU(A1 − η (A1 Dᵀ − h) D − ηλ);  out = A2 D1ᵀ, D, D1 (d × m)  [CRATE-α eqs. 5-7]
         official: 4 token GEMMs as written; h D reused (vitlab before the fused form): the same 4 GEMMs, h D reused
         in the second step, A2 = ReLU(A1 − η (A1 Dᵀ) D + η h D − ηλ); fused: the same 4 GEMMs with the shifts and
         scales inside them (addmm: η and −ηλ in the first, − h in the second, A1 + (−η)(R D) in the third), so
         fewer passes over the T × m codes, and (vitlab now) the same with the shift and the ReLUs in place; Gram:
         (A1 Dᵀ) D = A1 (DᵀD), an m × m matrix formed once per forward.
  MSSA   w = U z (T × d), per head softmax(w wᵀ/√dh) w, heads merged, output Linear
         shared: U z once, used as q, k and v (vitlab and official); three projections: q, k, v computed separately
         with the same U (what a generic attention with a fused 3d-wide qkv of U stacked thrice would cost);
         attention core: SDPA (vitlab), explicit softmax (official; autograd), and symmetric: a custom backward that
         uses q = k = v, dw = Pᵀ dO + (dS + dSᵀ) w / √dh (3 products of N × N by N × dh instead of 4).

Time: forward + backward (gradients of a fixed random projection of the output w.r.t. the input and every parameter),
the variants of a block interleaved, `--windows` windows of `--calls` calls each: the median ms per call and the best
window (on a shared machine other processes only ever slow a window down, so the best is the steadier of the two).
Speedup = the first row's median ÷ this row's. "max rel diff"
is, in float64 at a small shape, the largest ‖Δ‖/‖·‖ over the output and every gradient against the block's first
row (≈ 1e-15 = the same function). MACs count the GEMMs (and attention products) only; "train" = forward + backward
(a token GEMM x W costs 1 forward and 2 backward; a per-forward d×d×d product likewise 3).

    python benchmarks/crate_algebra.py                  # all blocks at the training shapes, 2 threads (~2 min)
    python benchmarks/crate_algebra.py --blocks odl --ratios 1 2 4 --json algebra.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitlab._profile import cpu_name

ETA, LAM = 0.1, 0.1


# -- ISTA (complete dictionary) ----------------------------------------------------------------------------------------
def ista_direct(h, D):
    return F.relu(h + ETA * (h @ D - (h @ D.t()) @ D) - ETA * LAM)


def ista_gram(h, D):
    flat = h.reshape(-1, h.shape[-1])
    K = ETA * torch.addmm(D, D.t(), D, alpha=-1)  # η (D − DᵀD)
    return F.relu(torch.addmm(flat, flat, K) - ETA * LAM).view_as(h)


def ista_gram_inplace(h, D):
    flat = h.reshape(-1, h.shape[-1])
    K = ETA * torch.addmm(D, D.t(), D, alpha=-1)
    return torch.addmm(flat, flat, K).sub_(ETA * LAM).relu_().view_as(h)  # no new T × d buffers after the GEMM


# -- ODL (overcomplete, decoupled) -------------------------------------------------------------------------------------
def odl_official(h, D, D1):
    A1 = F.relu(ETA * (h @ D) - ETA * LAM)
    A2 = F.relu(A1 - ETA * ((A1 @ D.t() - h) @ D) - ETA * LAM)
    return A2 @ D1.t()


def odl_reuse(h, D, D1):  # vitlab's form before this script
    hD = h @ D
    A1 = F.relu(ETA * hD - ETA * LAM)
    A2 = F.relu(A1 - ETA * ((A1 @ D.t()) @ D) + ETA * hD - ETA * LAM)
    return A2 @ D1.t()


def odl_gram(h, D, D1):
    hD = h @ D
    A1 = F.relu(ETA * hD - ETA * LAM)
    G = D.t() @ D  # (m, m)
    A2 = F.relu(A1 - ETA * (A1 @ G) + ETA * hD - ETA * LAM)
    return A2 @ D1.t()


def odl_fused(h, D, D1):
    d, m = D.shape
    flat = h.reshape(-1, d)
    shift = torch.full((m,), -ETA * LAM, dtype=h.dtype, device=h.device)  # −ηλ, added inside the GEMM
    A1 = F.relu(torch.addmm(shift, flat, D, alpha=ETA))  # ReLU(η h D − ηλ)
    R = torch.addmm(flat, A1, D.t(), beta=-1)  # A1 Dᵀ − h   (T, d)
    A2 = F.relu(torch.addmm(A1, R, D, alpha=-ETA) - ETA * LAM)  # ReLU(A1 − η R D − ηλ)
    return (A2 @ D1.t()).view_as(h)


def odl_fused_inplace(h, D, D1):
    d, m = D.shape
    flat = h.reshape(-1, d)
    shift = torch.full((m,), -ETA * LAM, dtype=h.dtype, device=h.device)
    A1 = torch.addmm(shift, flat, D, alpha=ETA).relu_()
    R = torch.addmm(flat, A1, D.t(), beta=-1)
    A2 = torch.addmm(A1, R, D, alpha=-ETA).sub_(ETA * LAM).relu_()
    return (A2 @ D1.t()).view_as(h)


# -- MSSA --------------------------------------------------------------------------------------------------------------
class SymmetricAttention(torch.autograd.Function):
    """softmax(w wᵀ · scale) w for (B, H, N, dh) w, with the backward written for q = k = v = w."""

    @staticmethod
    def forward(ctx, w, scale):
        w = w.contiguous()  # (B, H, N, dh) in memory order: the products below need no copies
        attn = torch.softmax(torch.matmul(w, w.transpose(-1, -2)) * scale, dim=-1)  # (B, H, N, N)
        out = torch.matmul(attn, w)
        ctx.save_for_backward(w, attn, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w, attn, out = ctx.saved_tensors
        grad_attn = torch.matmul(grad_out, w.transpose(-1, -2))  # dP = dO wᵀ
        grad_s = attn * (grad_attn - (grad_out * out).sum(-1, keepdim=True))  # dS (softmax backward)
        grad_s = (grad_s + grad_s.transpose(-1, -2)) * ctx.scale  # q and k are the same w
        return torch.matmul(attn.transpose(-1, -2), grad_out) + torch.matmul(grad_s, w), None


def _heads(x, U, H):
    B, N, d = x.shape
    return (x @ U.t()).reshape(B, N, H, d // H).transpose(1, 2)  # (B, H, N, dh)


def _merge(out, Wo, bo):
    B, H, N, dh = out.shape
    return F.linear(out.transpose(1, 2).reshape(B, N, H * dh), Wo, bo)


def mssa_sdpa(x, U, Wo, bo, H):
    w = _heads(x, U, H)
    return _merge(F.scaled_dot_product_attention(w, w, w), Wo, bo)


def mssa_explicit(x, U, Wo, bo, H):
    w = _heads(x, U, H)
    attn = torch.softmax(w @ w.transpose(-1, -2) * w.shape[-1] ** -0.5, dim=-1)
    return _merge(attn @ w, Wo, bo)


def mssa_symmetric(x, U, Wo, bo, H):
    w = _heads(x, U, H)
    return _merge(SymmetricAttention.apply(w, w.shape[-1] ** -0.5), Wo, bo)


def mssa_three_projections(x, U, Wo, bo, H):
    q, k, v = (_heads(x, U, H) for _ in range(3))
    return _merge(F.scaled_dot_product_attention(q, k, v), Wo, bo)


# -- the study ---------------------------------------------------------------------------------------------------------
def blocks(args) -> list[dict]:
    """Each block: name, shape, parameters maker, variants (label, fn, fwd MACs/token, train MACs/token)."""
    T = args.batch * args.tokens
    out = []
    if "ista" in args.blocks:
        d = args.crate_width
        out.append(dict(block="ISTA (CRATE)", shape=f"T={T}, d={d}", d=d, params=lambda g, dt, d=d: [
            torch.empty(d, d, dtype=dt).uniform_(-math.sqrt(6 / d), math.sqrt(6 / d), generator=g)],
            variants=[("direct, 3 token GEMMs (official)", ista_direct, 3 * d * d, 9 * d * d),
                      ("Gram K = η(D − DᵀD), 1 token GEMM (vitlab)", ista_gram, d * d + d ** 3 / T,
                       3 * d * d + 3 * d ** 3 / T),
                      ("Gram K, shift and ReLU in place (not adopted)", ista_gram_inplace, d * d + d ** 3 / T,
                       3 * d * d + 3 * d ** 3 / T)]))
    if "odl" in args.blocks:
        for d in args.alpha_widths:
            for ratio in args.ratios:
                m = ratio * d
                bound = math.sqrt(6 / d)

                def params(g, dt, d=d, m=m, bound=bound):
                    return [torch.empty(d, m, dtype=dt).uniform_(-bound, bound, generator=g) for _ in range(2)]
                out.append(dict(
                    block=f"ODL (CRATE-α), m = {ratio}d", shape=f"T={T}, d={d}, m={m}", d=d, params=params,
                    variants=[("official: 4 token GEMMs", odl_official, 4 * d * m, 12 * d * m),
                              ("h D reused (vitlab before)", odl_reuse, 4 * d * m, 12 * d * m),
                              ("fused shifts/scales in addmm", odl_fused, 4 * d * m, 12 * d * m),
                              ("fused, shift and ReLU in place (vitlab)", odl_fused_inplace, 4 * d * m,
                               12 * d * m),
                              ("Gram (A1 Dᵀ) D = A1 (DᵀD)", odl_gram, 2 * d * m + m * m + d * m * m / T,
                               6 * d * m + 3 * m * m + 3 * d * m * m / T)]))
    if "mssa" in args.blocks:
        d, H, N = args.crate_width, args.crate_heads, args.tokens

        def params(g, dt, d=d):
            s = 1 / math.sqrt(d)
            return [torch.empty(d, d, dtype=dt).uniform_(-s, s, generator=g),
                    torch.empty(d, d, dtype=dt).uniform_(-s, s, generator=g),
                    torch.empty(d, dtype=dt).uniform_(-s, s, generator=g)]
        attn_fwd = 2 * N * d  # w wᵀ and P w, per token
        out.append(dict(
            block="MSSA (CRATE)", shape=f"B={args.batch}, N={N}, d={d}, H={H}", d=d, params=params, heads=H,
            variants=[("U z once, SDPA(w, w, w) (vitlab: fp32, GPU, inference)", mssa_sdpa, 2 * d * d + attn_fwd,
                       6 * d * d + attn_fwd + 3 * attn_fwd),  # flash backward recomputes w wᵀ: 5 N d
                      ("U z once, explicit softmax (official; vitlab: bf16 CPU training)", mssa_explicit,
                       2 * d * d + attn_fwd,
                       6 * d * d + 3 * attn_fwd),
                      ("U z once, symmetric backward", mssa_symmetric, 2 * d * d + attn_fwd,
                       6 * d * d + attn_fwd + 3 * N * d),
                      ("q, k, v = U z three times, SDPA", mssa_three_projections, 4 * d * d + attn_fwd,
                       12 * d * d + attn_fwd + 3 * attn_fwd)]))
    return out


def _inputs(block, batch, tokens, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, block["d"], dtype=dtype, generator=g)
    return x, block["params"](g, dtype)


def _call(block, fn, x, params):
    return fn(x, *params, block["heads"]) if "heads" in block else fn(x, *params)


def exactness(block) -> list[float]:
    """Max relative difference (output and every gradient) of each variant against the first, float64."""
    x, params = _inputs(block, 2, 9, torch.float64, seed=0)
    results = []
    for _, fn, *_ in block["variants"]:
        xs = x.clone().requires_grad_()
        ps = [p.clone().requires_grad_() for p in params]
        out = _call(block, fn, xs, ps)
        probe = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        (out * probe).sum().backward()
        results.append([out.detach(), xs.grad, *[p.grad for p in ps]])
    ref = results[0]
    return [max(((a - b).norm() / b.norm()).item() for a, b in zip(r, ref)) for r in results]


def timing(block, args) -> list[list[float]]:
    x, params = _inputs(block, args.batch, args.tokens, torch.float32, seed=0)
    x.requires_grad_()
    for p in params:
        p.requires_grad_()
    probe = torch.randn(args.batch, args.tokens, block["d"], generator=torch.Generator().manual_seed(1))

    def run(fn):
        x.grad = None
        for p in params:
            p.grad = None
        (_call(block, fn, x, params) * probe).sum().backward()

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    ms = [[] for _ in block["variants"]]
    order = list(range(len(block["variants"])))
    for window in range(args.windows):
        for i in (order if window % 2 == 0 else order[::-1]):
            fn = block["variants"][i][1]
            run(fn)  # untimed
            start = clock()
            for _ in range(args.calls):
                run(fn)
            ms[i].append((clock() - start) / args.calls * 1e3)
    return ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", nargs="+", default=["ista", "odl", "mssa"], choices=["ista", "odl", "mssa"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=65, help="tokens per image (default 65: 32 px, patch 4, cls)")
    parser.add_argument("--crate-width", type=int, default=384)
    parser.add_argument("--crate-heads", type=int, default=6)
    parser.add_argument("--alpha-widths", type=int, nargs="+", default=[192])
    parser.add_argument("--ratios", type=int, nargs="+", default=[4], help="ODL dictionary sizes m / d")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed forward+backward calls per window")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (all threads), which does not count "
                             "the time other processes hold the cores (steadier on a shared machine, exact with 1 "
                             "thread; with more, threads spinning at a barrier count)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    try:
        for block in blocks(args):
            diffs = exactness(block)
            ms = timing(block, args)
            base = statistics.median(ms[0])
            for (label, _, fwd, train), diff, times in zip(block["variants"], diffs, ms):
                med = statistics.median(times)
                rows.append({"block": block["block"], "shape": block["shape"], "variant": label,
                             "fwd_macs_per_token": fwd, "train_macs_per_token": train,
                             "fwd_macs_per_token_over_d2": fwd / block["d"] ** 2,
                             "train_macs_per_token_over_d2": train / block["d"] ** 2,
                             "ms_windows": [round(t, 3) for t in times], "ms": med, "speedup": base / med,
                             "max_rel_diff_fp64": diff})
    finally:
        torch.set_num_threads(threads)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines = ["| block | shape | variant | fwd MACs/token (÷d²) | train MACs/token (÷d²) | ms fwd+bwd (median) | "
             "best window | speedup vs first | max rel diff fp64 |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['block']} | {r['shape']} | {r['variant']} | {r['fwd_macs_per_token_over_d2']:.2f} | "
                     f"{r['train_macs_per_token_over_d2']:.2f} | {r['ms']:.1f} | {min(r['ms_windows']):.1f} | "
                     f"{r['speedup']:.2f}× | {r['max_rel_diff_fp64']:.1e} |")
    table = "\n".join(lines)
    command = " ".join(["python", "benchmarks/crate_algebra.py", *(sys.argv[1:] if argv is None else argv)])
    load = (f"; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after"
            if load_before and load_after else "")
    machine = f"CPU {cpu_name()} ({os.cpu_count()} CPUs)"
    print(f"{machine}, torch {torch.__version__}, {args.threads} threads, {args.clock} clock; "
          f"{args.windows} windows × {args.calls} calls{load}\ncommand: {command}\n")
    print(table)
    if args.json:
        report = {"command": command, "machine": machine, "torch": torch.__version__, "threads": args.threads,
                  "clock": args.clock, "load_average_before": load_before, "load_average_after": load_after,
                  "rows": rows, "table": table}
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
