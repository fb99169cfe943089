"""Sliding-window segmentation evaluation (`vitlab.train.tasks.seg_eval.slide_inference`): evaluation images per second,
seconds per image and peak memory of three ways to get an image's logits, for a few segmentation models.

  batched     vitlab's sliding window: every window of the call's images stacked and run `--batch-windows` (16) per
              model call.
  mmseg loop  the anchor: the same windows run one per model call, as mmsegmentation's
              `EncoderDecoder.slide_inference` calls the model (`slide_inference(..., batch_windows=1)`).
  whole       whole-image inference on the same image, padded to a patch multiple by the model (one call).

Default setting, ADE20K's evaluation: a 512×683 image (the typical size after the short-side-512 resize), 512 crops
at stride 341 (2 windows per image), 150 classes, one image per evaluation call (`--batch-images 1`: the engine's
ADE20K evaluation loader holds one image per batch, so `batched` then runs the image's 2 windows in one call; more
images per call let it stack more). The script checks, beside timing, that `batched` and `mmseg loop` give the same
logits: both save the logits of their last call and the table prints the largest absolute difference; a difference
over the tolerance (fp32 1e-3, bf16 5e-2, relative to the largest |logit|) makes the script exit with status 1.

Each configuration (model × dtype × way) runs in a fresh Python process, so one measurement cannot inherit another's
peak. In it the model (random init, seed 0, eval mode, no gradients) and `--images` random normalised images are
built; `--warmup` calls of the configuration on the first call's images warm kernels, oneDNN primitives and the
position-embedding cache (excluded); then the memory baseline is taken and `--repeats` passes over the `--images`
images run, `--batch-images` per call. Peak memory = the peak during the passes minus the baseline (weights and input
images are in the baseline). CUDA: torch.cuda.max_memory_allocated − memory_allocated. CPU: the resident set's high
water mark (VmHWM, reset to the current size by writing 5 to /proc/self/clear_refs just before the passes; where that
is impossible, getrusage ru_maxrss, whose warm-up of the same shapes reaches the same peak) − the resident set size
before the passes, with glibc told to map every allocation over 64 KiB on its own and return it when freed
(MALLOC_MMAP_THRESHOLD_), so the resident set follows the live tensors. fp32 everywhere; on CUDA also bf16 autocast
(`--dtypes`). Speedup = the mmseg loop's seconds per image ÷ this row's.

    python benchmarks/sliding_window.py                     # CPU defaults: small backbones, a few minutes on 2 cores
    python benchmarks/sliding_window.py --device cuda --json results.json   # base backbones, fp32 and bf16
    python benchmarks/sliding_window.py --models vit_tiny_patch16_224:linear --size 128x160 --crop 64 --stride 43 \
        --images 1                                          # a dry run (about a minute on 2 busy cores)

A model is `name:head` or `name:upernet:channels` (UPerNet width, default 512). CPU defaults are the small
backbones with a 256-channel UPerNet (base backbones with a 512-channel UPerNet need 0.7–0.8 TFLOP per window,
minutes per configuration on 2 cores); CUDA defaults are the base backbones with mmsegmentation's 512-channel UPerNet.
Prints a Markdown table; `--json PATH` writes it with the command, settings, versions, machine and git commit.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import vitlab
from vitlab._profile import cpu_name, peak_rss_bytes, reset_peak_rss, rss_bytes
from vitlab.models.segmentation import create_segmentation_model
from vitlab.train.tasks.seg_eval import slide_inference, whole_inference, window_starts

CPU_MODELS = ["crate_alpha_small_patch16_224:upernet:256", "vit_small_patch16_224:upernet:256",
              "vit_small_patch16_224:linear"]
CUDA_MODELS = ["crate_alpha_base_patch16_224:upernet:512", "vit_base_patch16_224:upernet:512",
               "vit_base_patch16_224:linear"]
WAYS = ("mmseg_loop", "batched", "whole")  # the anchor first
LABELS = {"mmseg_loop": "mmseg loop (1 window/call)", "batched": "batched windows", "whole": "whole image"}
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}  # max |batched - mmseg loop| / max(1, max |logit|)


# -- one configuration ----------------------------------------------------------------------------------------------
def _build(spec: dict) -> torch.nn.Module:
    head_kwargs = {"channels": spec["channels"]} if spec["head"] == "upernet" else None
    return create_segmentation_model(spec["model"], spec["num_classes"], spec["head"], head_kwargs=head_kwargs,
                                     img_size=spec["crop"])


def _infer(spec: dict, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) of images (B, C, H, W) the configuration's way."""
    if spec["way"] == "whole":
        return whole_inference(model, images, spec["num_classes"])
    batch_windows = 1 if spec["way"] == "mmseg_loop" else spec["batch_windows"]
    return slide_inference(model, images, spec["num_classes"], spec["crop"], spec["stride"], batch_windows)


def _windows_per_image(spec: dict) -> int:
    if spec["way"] == "whole":
        return 1
    height, width = spec["size"]
    return len(window_starts(height, spec["crop"], spec["stride"])) * len(window_starts(width, spec["crop"],
                                                                                         spec["stride"]))


def worker(spec: dict) -> dict:
    """One configuration, measured in this process (see the module docstring)."""
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = _build(spec).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(spec["images"], 3, *spec["size"], generator=generator).to(device)  # (N, 3, H, W)
    calls = list(images.split(spec["batch_images"]))  # each (b, 3, H, W)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec["dtype"] == "bf16" else \
        contextlib.nullcontext()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad(), autocast:
        for _ in range(spec["warmup"]):
            _infer(spec, model, calls[0])
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base, memory_method = torch.cuda.memory_allocated(device), "cuda.max_memory_allocated"
        else:
            memory_method, base = reset_peak_rss(), rss_bytes()
        pass_seconds, logits = [], None
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            for x in calls:
                logits = None  # the previous call's logits freed before the next call, as in evaluation
                logits = _infer(spec, model, x)  # (b, K, H, W)
            sync()
            pass_seconds.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = peak_rss_bytes(memory_method) - base
    if spec.get("logits_path"):
        torch.save(logits.float().cpu(), spec["logits_path"])  # the last call's: its images are the same in every way
    windows = _windows_per_image(spec)
    per_call = windows * spec["batch_images"] if spec["way"] != "whole" else spec["batch_images"]
    calls_per_image = 1 / spec["batch_images"] if spec["way"] == "whole" else \
        math.ceil(per_call / (1 if spec["way"] == "mmseg_loop" else spec["batch_windows"])) / spec["batch_images"]
    s_per_image = sum(pass_seconds) / (len(pass_seconds) * spec["images"])
    return {**spec, "params": sum(p.numel() for p in model.parameters()), "windows_per_image": windows,
            "model_calls_per_image": calls_per_image, "pass_seconds": pass_seconds, "s_per_image": s_per_image,
            "images_per_s": 1 / s_per_image, "peak_mib": peak / 2**20, "memory_method": memory_method}


def run_in_fresh_process(spec: dict) -> dict:
    # glibc: every allocation over 64 KiB mapped on its own, unmapped when freed: the resident set follows the tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the study ------------------------------------------------------------------------------------------------------
def _parse_model(text: str) -> tuple[str, str, int | None]:
    """'name:head' or 'name:upernet:channels' → (name, head, UPerNet channels or None for the linear head)."""
    name, head, *channels = text.split(":") if ":" in text else (text, "")
    if head not in ("linear", "upernet") or len(channels) > int(head == "upernet") or \
            not all(c.isdigit() and int(c) > 0 for c in channels):
        raise argparse.ArgumentTypeError(f"a model is name:linear, name:upernet or name:upernet:channels, got {text!r}")
    return name, head, (int(channels[0]) if channels else 512) if head == "upernet" else None


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(v) for v in match.groups()) < 1:
        raise argparse.ArgumentTypeError(f"--size is HxW with positive integers, e.g. 512x683, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _compare(anchor_path: Path, batched_path: Path, dtype: str) -> dict:
    anchor, batched = torch.load(anchor_path), torch.load(batched_path)  # (b, K, H, W) each
    scale = max(1.0, float(anchor.abs().max()))
    diff = float((anchor - batched).abs().max())
    return {"max_abs_diff": diff, "max_abs_logit": float(anchor.abs().max()),
            "same_logits": diff <= TOLERANCE[dtype] * scale}


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="sliding_window.") as scratch:
        for text in args.models:
            name, head, channels = _parse_model(text)
            for dtype in args.dtypes:
                group = {}
                for way in WAYS:
                    spec = dict(model=name, head=head, channels=channels, way=way, dtype=dtype, device=args.device,
                                size=list(args.size), crop=args.crop, stride=args.stride, num_classes=args.classes,
                                batch_windows=args.batch_windows, images=args.images, batch_images=args.batch_images,
                                warmup=args.warmup, repeats=args.repeats,
                                logits_path=str(Path(scratch) / f"{way}.pt") if way != "whole" else None)
                    group[way] = run_in_fresh_process(spec)
                    print(f"  {name} {head} {dtype} {way}: {group[way]['s_per_image']:.3f} s/image", file=sys.stderr)
                check = _compare(Path(scratch) / "mmseg_loop.pt", Path(scratch) / "batched.pt", dtype)
                group["batched"].update(check)
                for way in WAYS:
                    group[way]["speedup"] = group["mmseg_loop"]["s_per_image"] / group[way]["s_per_image"]
                    group[way].pop("logits_path")
                rows.extend(group[way] for way in WAYS)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per model × dtype × way."""
    lines = ["| model | head | params | dtype | way | windows/image | model calls/image | images/s | s/image | "
             "peak memory (MiB) | speedup vs mmseg loop | max abs diff vs mmseg loop |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        head = f"UPerNet {r['channels']}" if r["head"] == "upernet" else "linear"
        diff = "—"
        if "max_abs_diff" in r:
            verdict = "" if r["same_logits"] else " FAIL"
            diff = f"{r['max_abs_diff']:.1e} (max abs logit {r['max_abs_logit']:.1f}){verdict}"
        lines.append(f"| {r['model']} | {head} | {r['params'] / 1e6:.1f} M | {r['dtype']} | {LABELS[r['way']]} | "
                     f"{r['windows_per_image']} | {r['model_calls_per_image']:g} | {r['images_per_s']:.3g} | "
                     f"{r['s_per_image']:.3g} | {r['peak_mib']:.0f} | {r['speedup']:.2f}× | {diff} |")
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {cpu_name()} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", help="name:linear, name:upernet or name:upernet:channels (default: "
                        f"CPU {' '.join(CPU_MODELS)}; CUDA {' '.join(CUDA_MODELS)})")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(TOLERANCE),
                        help="default: fp32 on CPU, fp32 bf16 on CUDA")
    parser.add_argument("--size", type=_parse_size, default=(512, 683), help="image HxW (default 512x683)")
    parser.add_argument("--crop", type=int, default=512, help="window size, also the model's img_size (default 512)")
    parser.add_argument("--stride", type=int, default=341, help="window stride (default 341)")
    parser.add_argument("--classes", type=int, default=150, help="number of classes (default 150, ADE20K)")
    parser.add_argument("--batch-windows", type=int, default=16, help="windows per model call, batched way")
    parser.add_argument("--images", type=int, help="images per measured pass (default 2 on CPU, 16 on CUDA)")
    parser.add_argument("--batch-images", type=int, default=1,
                        help="images per evaluation call (default 1, the engine's ADE20K evaluation batch)")
    parser.add_argument("--warmup", type=int, default=1, help="calls before the measurement (excluded)")
    parser.add_argument("--repeats", type=int, help="measured passes (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.models = args.models or (CUDA_MODELS if cuda else CPU_MODELS)
    args.dtypes = args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    args.images = args.images or (16 if cuda else 2)
    args.repeats = args.repeats or (3 if cuda else 1)
    for name in ("crop", "stride", "classes", "batch_windows", "images", "batch_images", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    for text in args.models:
        try:
            _parse_model(text)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    rows = run(args)
    settings = {k: getattr(args, k) for k in ("device", "models", "dtypes", "size", "crop", "stride", "classes",
                                              "batch_windows", "images", "batch_images", "warmup", "repeats")}
    result = {"command": " ".join(["python", *sys.argv]), "settings": settings, "device": _machine(args.device),
              "torch": torch.__version__, "vitlab": vitlab.__version__, "python": platform.python_version(),
              "git_commit": _commit(), "rows": rows, "table": table(rows)}
    height, width = args.size
    print(f"{result['device']}, torch {torch.__version__}, commit {result['git_commit']}; image {height}×{width}, "
          f"crop {args.crop}, stride {args.stride}, {args.classes} classes, {args.images} images per pass "
          f"({args.batch_images} per call), {args.repeats} pass(es)")
    print(result["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    failed = [r for r in rows if r.get("same_logits") is False]
    if failed:
        print("batched and mmseg-loop logits differ beyond the tolerance for: " +
              ", ".join(f"{r['model']} {r['head']} {r['dtype']}" for r in failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
