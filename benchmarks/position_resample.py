"""What rebuilding the position table costs at an evaluation grid other than the training one.

vitlab's ViT family resamples its learned position table (bicubic, timm's rule) for any grid but the native one, on
every forward and without a cache (`vitlab.models._base`: a cache keyed on the table's version counter went stale
under torch's fused CPU AdamW, which updates parameters in place without bumping it). Per row: the model, the
evaluation size, the batch, the median ms of the resampling alone and of one whole inference forward at that size
(interleaved, `--repeats` windows), the share of the forward that the resampling takes, and the peak RSS.

    python benchmarks/position_resample.py --json docs/position_resample.json
    python benchmarks/position_resample.py --rows vit_tiny_patch16_224,288,1 --repeats 1   # a dry run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import vitlab
from vitlab._profile import cpu_bf16_flags, cpu_name, peak_rss_bytes, reset_peak_rss
from vitlab.models import resample_position_embedding

ROWS = ["vit_tiny_patch16_224,288,1", "vit_tiny_patch16_224,288,32", "vit_tiny_patch16_224,512,1",
        "vit_small_patch16_224,512,1"]


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(name: str, size: int, batch: int, repeats: int) -> dict:
    model = vitlab.create_model(name, dynamic_img_size=True).eval()
    native = model.patch_embed.grid_hw
    grid = model.patch_embed.feat_size(size, size)  # (gh, gw) at the evaluation size
    table = model.pos_embed[:, model.num_prefix_tokens:]  # (1, gh·gw, d) at the native grid
    images = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model(images)  # warm-up
        resample, forward = [], []
        for _ in range(repeats):  # interleaved windows
            resample.append(_ms(lambda: resample_position_embedding(table, native, grid), 5))
            forward.append(_ms(lambda: model(images), 1))
    resample_ms, forward_ms = statistics.median(resample), statistics.median(forward)
    return {"model": name, "size": size, "batch": batch, "resample_ms": round(resample_ms, 3),
            "forward_ms": round(forward_ms, 1), "share_percent": round(100 * resample_ms / forward_ms, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=ROWS, help="model,eval size,batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rss_method = reset_peak_rss()
    rows = [measure(r.split(",")[0], int(r.split(",")[1]), int(r.split(",")[2]), args.repeats) for r in args.rows]
    print(f"{cpu_name()} ({', '.join(cpu_bf16_flags()) or 'no bf16 flags'}), torch {torch.__version__}, "
          f"{args.threads} thread(s), peak RSS {peak_rss_bytes(rss_method) / 2**20:.0f} MiB")
    print("| model | eval size | batch | resample ms | forward ms | share |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['batch']} | {r['resample_ms']} | {r['forward_ms']} | "
              f"{r['share_percent']} % |")
    if args.json:
        result = {"cpu": cpu_name(), "bf16_flags": cpu_bf16_flags(), "torch": torch.__version__,
                  "threads": args.threads, "command": " ".join(sys.argv), "peak_rss_mib": peak_rss_bytes(rss_method) / 2**20,
                  "rows": rows}
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
