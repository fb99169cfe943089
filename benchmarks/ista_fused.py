"""CRATE's ISTA step (eq. 11) as one token GEMM vs the direct three-GEMM form, whole train steps, ONE process.

vitlab computes ReLU(h + η(h D − h DᵀD) − ηλ) as ReLU(h + h·K − ηλ) with K = η(D − DᵀD) formed once per forward
(`vitlab.models._layers.SparseCoding`). This script times CRATE train steps (forward, soft cross-entropy, backward,
AdamW) with that forward and with the direct form patched in, interleaved (A B A B ...), and prints images/s
(median of the repeats), the ratio and the process's peak resident memory. It does not run the official CRATE code.

    python benchmarks/ista_fused.py                          # crate_tiny_patch4_32, 32 px, batch 64, 2 threads
    python benchmarks/ista_fused.py --model crate_small_patch16_224 --img-size 224 --batch 16
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import vitlab
from vitlab.models import _layers


def direct_three_gemm(self, h: torch.Tensor) -> torch.Tensor:
    """The pre-fusion forward of a complete dictionary: h D, h Dᵀ and (h Dᵀ) D over the tokens."""
    eta, lam, D = self.ista_step_size, self.ista_lambda, self.D
    return F.relu(h + eta * (h @ D - (h @ D.t()) @ D) - eta * lam)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="crate_tiny_patch4_32")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per window")
    parser.add_argument("--repeats", type=int, default=6, help="windows per variant, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = vitlab.create_model(args.model, img_size=args.img_size, num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(args.batch, 3, args.img_size, args.img_size), torch.randint(0, 10, (args.batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    variants = {"one GEMM (vitlab)": _layers.SparseCoding.forward, "three GEMMs (direct)": direct_three_gemm}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(args.repeats):
            for name, forward in variants.items():
                _layers.SparseCoding.forward = forward
                step()  # warm-up of this variant
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
    finally:
        _layers.SparseCoding.forward = variants["one GEMM (vitlab)"]
    median = {name: statistics.median(r) for name, r in rates.items()}
    fused, direct = median.values()
    result = {"model": args.model, "img_size": args.img_size, "batch": args.batch, "threads": args.threads,
              "images_per_s": {k: round(v, 2) for k, v in median.items()}, "ratio": round(fused / direct, 3),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "torch": torch.__version__}
    print("| ISTA step | images/s (median) |\n|---|---:|")
    for name, value in median.items():
        print(f"| {name} | {value:.1f} |")
    print(f"ratio {fused / direct:.2f}x; peak RSS {result['peak_rss_mib']} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
