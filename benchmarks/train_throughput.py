"""Training throughput (images/s) of vitlab's ViT against timm's VisionTransformer of identical configuration, and
of CRATE / CRATE-α, measured in ONE process on the same machine, interleaved (ours, timm, ours, timm, ...) so that
machine noise hits both alike. A step is forward + backward + AdamW update on random data (the model alone, no
data pipeline). Peak memory is reported beside throughput (CUDA: max allocated; CPU: peak RSS of the process).

    python benchmarks/train_throughput.py                        # CPU, ViT-Tiny/2 at 32 px, batch 64
    python benchmarks/train_throughput.py --device cuda --dtype bf16 --batch-size 512
    python benchmarks/train_throughput.py --model vit_base_patch16_224 --timm vit_base_patch16_224 --batch-size 16

Prints a Markdown table and writes it (with the command, versions and machine) as JSON when --out is given.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
from pathlib import Path

import torch

import vitlab
from vitlab._profile import time_per_call


def _timm_model(name: str, model: torch.nn.Module):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torchvision_shim import import_torchvision  # the shim lives with the tests; the library never needs it

    import_torchvision()
    import timm

    pos = {"pos_embed": "learn"}  # same parameter count and compute as a fixed sin-cos table
    return timm.create_model(name, img_size=model.patch_embed.img_size, patch_size=model.patch_embed.patch_size,
                             num_classes=model.num_classes, **pos)


def _step_fn(model, batch_size, img, device, dtype):
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, img, img, device=device)
    y = torch.randint(0, model.num_classes, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _peak(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(models: dict, batch_size: int, img: int, device, dtype: str, rounds: int, iters: int) -> dict:
    steps = {name: _step_fn(m, batch_size, img, device, dtype) for name, m in models.items()}
    for step in steps.values():  # warm-up (allocator, kernels, compile)
        for _ in range(2):
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(time_per_call(step, device, 0, iters))
    return {name: batch_size / statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_tiny_patch2_32")
    parser.add_argument("--timm", default="vit_tiny_patch16_224", help="timm architecture with the same shape")
    parser.add_argument("--extra", nargs="*", default=["crate_tiny_patch4_32", "crate_alpha_tiny_patch4_32"],
                        help="further vitlab models to time (not compared)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    ours = vitlab.create_model(args.model, pos_embed="learn")
    img = ours.patch_embed.img_size
    reference = _timm_model(args.timm, ours)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    rates = measure({f"vitlab {args.model}": ours, f"timm {args.timm} (same shape)": reference}, args.batch_size,
                    img, device, args.dtype, args.rounds, args.iters)
    extra = {name: vitlab.create_model(name, img_size=img) for name in args.extra}
    rates.update(measure(extra, args.batch_size, img, device, args.dtype, args.rounds, args.iters) if extra else {})
    names = list(rates)
    ratio = rates[names[0]] / rates[names[1]]
    print(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, batch {args.batch_size}, {img} px, {args.dtype}")
    print("| model | train images/s |\n|---|---:|")
    for name in names:
        print(f"| {name} | {rates[name]:.1f} |")
    print(f"vitlab / timm: {ratio:.3f}x; peak memory of the process {_peak(device):.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": sys.argv, "rates": rates, "ratio": ratio,
                                              "peak_mib": _peak(device), "torch": torch.__version__,
                                              "vitlab": vitlab.__version__}, indent=1))


if __name__ == "__main__":
    main()
