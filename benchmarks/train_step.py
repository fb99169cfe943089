"""Train-step throughput, MFU and peak memory of vitlab's ViT-B/16 and CRATE-α-B/16 and timm's ViT-B/16 (same
configuration, random init), measured in ONE process and interleaved (A B C A B C ...) so that machine noise and
clock changes hit every model alike.

A step is the training engine's step on one batch that is already on the device (the data pipeline is left out):
forward under autocast (bf16 on CUDA, fp32 on CPU, as `precision=auto` in vitlab.train), soft-target cross-entropy,
backward, gradient clipping when `--grad-clip` > 0, AdamW with the family's weight-decay mask
(`vitlab.train.optim.build_optimizer`), NCHW float input as the engine feeds it. `--compile` compiles the model as the
engine does (`model.compile()`); `--grad-checkpointing` calls `model.set_grad_checkpointing()` where the model has it.
Warm-up steps (and compilation) are not timed; CUDA is synchronised around every timed window.

Reported per model: images/s (median over `--repeats` windows of `--steps` steps), MFU = images/s × training FLOPs
per image (`vitlab._profile.count_flops(model, one image, backward=True)`, torch.utils.flop_counter) / the device's
dense bf16 peak (`vitlab.train.build.peak_flops`, or `--peak-tflops`), and peak memory: on CUDA the model's own
share (its parameters, gradients and optimiser state, plus the step's peak above what was allocated before it, from
`torch.cuda.max_memory_allocated`), on CPU the process's peak resident set size (one number for all models).

    python benchmarks/train_step.py --device cuda --batch-size 128 --json docs/gpu/train_step.json
    python benchmarks/train_step.py --device cuda --batch-size 128 --compile
    python benchmarks/train_step.py --tiny --device cpu            # dry run: 32 px, patch 4, 2 blocks, seconds

A model that cannot be built (timm not installed) or fails (out of memory) is recorded with its reason and the
others still run. Prints a Markdown table; `--json PATH` writes it with the command, versions and device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

import vitlab
from vitlab._profile import count_flops, time_per_call
from vitlab.train.tasks.classification import soft_cross_entropy
from vitlab.train.build import peak_flops
from vitlab.train.optim import build_optimizer

# name on the command line → (library, architecture); the same configuration in both libraries
MODELS: dict[str, tuple[str, str]] = {
    "vitlab_vit": ("vitlab", "vit_base_patch16_224"),
    "vitlab_crate_alpha": ("vitlab", "crate_alpha_base_patch16_224"),
    "timm_vit": ("timm", "vit_base_patch16_224"),
}
# --tiny: the same architectures shrunk to CPU size (constructor overrides both libraries accept)
TINY_KWARGS = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10)


def import_timm():
    """timm, importable on the CPU torch through the tests' torchvision shim (the library itself never needs it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from torchvision_shim import import_torchvision

    import_torchvision()
    import timm

    return timm


def build(name: str, tiny: bool) -> torch.nn.Module:
    library, arch = MODELS[name]
    kwargs = dict(TINY_KWARGS) if tiny else {}
    if library == "timm":
        return import_timm().create_model(arch, pretrained=False, **kwargs)
    return vitlab.create_model(arch, pretrained=False, **kwargs)


def _input_size(model: torch.nn.Module) -> int:
    size = model.patch_embed.img_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


class Bench:
    """One model on the device with its optimiser, a fixed batch and its step function."""

    def __init__(self, name: str, model: torch.nn.Module, args: argparse.Namespace, device: torch.device):
        self.name, self.model, self.args, self.device = name, model, args, device
        self.result: dict[str, Any] = {"source": MODELS[name][0], "architecture": MODELS[name][1]}
        self.result["params"] = sum(p.numel() for p in model.parameters())
        self.allocated_before = _allocated(device)
        model.to(device).train()
        img = _input_size(model)
        self.result["input"] = [3, img, img]
        # FLOPs of the eager model on one image (forward + backward), before any compilation or checkpointing
        self.result["train_flops_per_image"] = count_flops(model, torch.randn(1, 3, img, img, device=device),
                                                           backward=True)
        self.result["grad_checkpointing"] = self._grad_checkpointing() if args.grad_checkpointing else False
        self.optimizer = build_optimizer(model, "adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999))
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(args.batch_size, 3, img, img, generator=generator).to(device)  # (B, 3, H, W)
        labels = torch.randint(0, model.num_classes, (args.batch_size,), generator=generator)
        smooth = 0.1  # soft targets, as the engine's augmentation makes them
        self.targets = torch.full((args.batch_size, model.num_classes), smooth / model.num_classes)
        self.targets[torch.arange(args.batch_size), labels] += 1 - smooth
        self.targets = self.targets.to(device)  # (B, classes)
        bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
        self.result["dtype"] = "bf16" if bf16 else "fp32"
        self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        if args.compile:
            model.compile()  # in place, as vitlab.train does: parameter names stay unprefixed
        self.times: list[float] = []

    def _grad_checkpointing(self) -> bool | str:
        if not hasattr(self.model, "set_grad_checkpointing"):
            return "unsupported: the model has no set_grad_checkpointing()"
        self.model.set_grad_checkpointing()
        return True

    def step(self) -> None:
        with self.autocast():
            loss = soft_cross_entropy(self.model(self.x), self.targets)  # (,)
        loss.backward()
        if self.args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def warm_up(self) -> None:
        start = time.perf_counter()
        for _ in range(self.args.warmup):
            self.step()
        _sync(self.device)
        self.result["warmup_s"] = round(time.perf_counter() - start, 3)
        # resident after warm-up: parameters, optimiser state, the batch (gradients are freed by zero_grad)
        self.resident = _allocated(self.device) - self.allocated_before

    def timed_window(self) -> None:
        before = _allocated(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.times.append(time_per_call(self.step, self.device, 0, self.args.steps))
        if self.device.type == "cuda":
            transient = torch.cuda.max_memory_allocated(self.device) - before
            self.result["peak_memory_mib"] = max(self.result.get("peak_memory_mib", 0.0),
                                                 round((self.resident + transient) / 2**20, 1))

    def summarise(self, peak: float | None) -> dict[str, Any]:
        seconds = statistics.median(self.times)
        rate = self.args.batch_size / seconds
        self.result.update(status="ok", images_per_s=round(rate, 2), step_ms=round(seconds * 1e3, 3),
                           images_per_s_windows=[round(self.args.batch_size / t, 2) for t in self.times])
        self.result["achieved_tflops"] = round(rate * self.result["train_flops_per_image"] / 1e12, 3)
        self.result["mfu"] = round(rate * self.result["train_flops_per_image"] / peak, 4) if peak else None
        if self.device.type != "cuda":
            self.result["peak_memory_mib"] = round(_peak_rss_mib(), 1)
            self.result["peak_memory_kind"] = "process peak RSS (all models)"
        else:
            self.result["peak_memory_kind"] = "CUDA: own parameters + optimiser state + step peak"
        return self.result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _failure(err: BaseException) -> dict[str, Any]:
    last = traceback.format_exception_only(type(err), err)[-1].strip()
    return {"status": "failed", "reason": last[:500]}


def _guard(benches: dict[str, Bench], results: dict[str, Any], fn: Callable[[Bench], None], device) -> None:
    """Runs `fn` on every live bench; a bench that raises is dropped (recorded as failed) and the rest go on."""
    for name in list(benches):
        try:
            fn(benches[name])
        except Exception as err:  # noqa: BLE001  (OOM, compile errors: one model must not stop the others)
            results[name] = {**benches.pop(name).result, **_failure(err)}
            if device.type == "cuda":
                torch.cuda.empty_cache()


class Terminated(BaseException):  # not an Exception: the per-model error handlers must not swallow it
    """SIGTERM (e.g. from `timeout`): stop, and report what was measured so far."""


def _terminate(signum, frame):
    raise Terminated(f"signal {signum}")


def _setup(args: argparse.Namespace, device: torch.device, results: dict[str, Any], benches: dict[str, Bench]) -> None:
    """Builds and warms up the models one after another (so each one's resident memory is its own); a model that
    cannot be built or fails is recorded in `results` and left out."""
    for name in args.models:
        library, arch = MODELS[name]
        try:
            bench = Bench(name, build(name, args.tiny), args, device)
            bench.warm_up()
            benches[name] = bench
        except ImportError as err:
            results[name] = {"source": library, "architecture": arch, "status": "skipped",
                             "reason": f"{library} not importable: {err}"}
        except Exception as err:  # noqa: BLE001  (out of memory, compile errors: the others still run)
            results[name] = {"source": library, "architecture": arch, **_failure(err)}
            bench = None
            if device.type == "cuda":
                torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    results: dict[str, Any] = {}
    benches: dict[str, Bench] = {}
    interrupted = None
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _setup(args, device, results, benches)
        for _ in range(args.repeats):  # interleaved: A B C A B C ...
            _guard(benches, results, Bench.timed_window, device)
    except Terminated as err:  # report the windows measured so far
        interrupted = str(err)
    finally:
        signal.signal(signal.SIGTERM, previous)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    for name, bench in benches.items():
        results[name] = bench.summarise(peak) if bench.times else {**bench.result, "status": "interrupted"}
    for name in args.models:
        results.setdefault(name, {"source": MODELS[name][0], "architecture": MODELS[name][1],
                                  "status": "interrupted", "reason": f"{interrupted} before it was built"})
    ordered = {name: results[name] for name in args.models}
    return {"benchmark": "train_step", "command": [sys.executable, *sys.argv], **_environment(device),
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
            "compile": args.compile, "grad_checkpointing": args.grad_checkpointing, "grad_clip": args.grad_clip,
            "tiny": args.tiny, "tiny_kwargs": TINY_KWARGS if args.tiny else None, "interrupted": interrupted,
            "peak_flops": peak, "models": ordered, "ratios": _ratios(ordered)}


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    rate = {name: r.get("images_per_s") for name, r in results.items() if r.get("status") == "ok"}
    ratios = {}
    for ours in ("vitlab_vit", "vitlab_crate_alpha"):
        if ours in rate and "timm_vit" in rate:
            ratios[f"{ours} / timm_vit"] = round(rate[ours] / rate["timm_vit"], 4)
    return ratios


def _environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "vitlab": vitlab.__version__,
           "python": platform.python_version(), "device": str(device), "cpu_count": os.cpu_count(),
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    env["device_name"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                          else platform.processor() or platform.machine())
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                           cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    env["git_commit"] = env["git_commit"] or os.environ.get("GIT_COMMIT")
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        env["timm"] = None
    return env


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['device_name']} ({report['device']}), torch {report['torch']}, batch {report['batch_size']}, "
             f"compile {report['compile']}, grad checkpointing {report['grad_checkpointing']}",
             "| model | images/s | step (ms) | TFLOP/s | MFU | peak memory (MiB) |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in report["models"].items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | {r.get('status')}: {r.get('reason', '')[:80]} | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {name} ({r['architecture']}, {r['dtype']}) | {r['images_per_s']:.1f} | {r['step_ms']:.1f} | "
                     f"{r['achieved_tflops']:.1f} | {mfu} | {r['peak_memory_mib']:.0f} |")
    lines += [f"{k}: {v:.3f}x" for k, v in report["ratios"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (--tiny: 8)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first (compilation too)")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per model; images/s is their median")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 elsewhere (the engine's precision=auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model (model.compile())")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="model.set_grad_checkpointing() where the model has it")
    parser.add_argument("--grad-clip", type=float, default=0.0, help="max gradient norm (0: no clipping)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="device peak for MFU; 0: vitlab.train.build.peak_flops (known GPUs only)")
    parser.add_argument("--tiny", action="store_true", help=f"shrink every model: {TINY_KWARGS}")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (8 if args.tiny else 128)
    if min(args.steps, args.repeats, args.batch_size) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats and --batch-size must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    statuses = [r.get("status") for r in report["models"].values()]
    return 0 if report["interrupted"] is None and set(statuses) <= {"ok", "skipped"} else 1


if __name__ == "__main__":
    sys.exit(main())
