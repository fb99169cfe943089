"""vitlab's CRATE and CRATE-α against the official PyTorch code: the same logits and gradients, then train-step
images/s and peak memory.

The official code is not part of vitlab and is not copied into it: this script imports it at run time from the
checkout you name.

  --official-crate PATH        a checkout of github.com/Ma-Lab-Berkeley/CRATE (or its file model/crate.py)
  --official-crate-alpha PATH  a checkout of github.com/UCSC-VLAA/CRATE-alpha (or its file
                               torch_inference/model/crate_alpha.py): the official PyTorch port of CRATE-α. The port
                               was written for inference (CRATE-α was trained with the JAX code), but its modules are
                               ordinary nn.Modules and train like any other.

Importing a file EXECUTES it, and whatever it imports (torch and einops for the official files), with your
privileges: pass only a checkout you trust. Both official files need `einops` importable.

For each family given (CRATE, CRATE-α):

1. Models. vitlab's `--crate-model` (crate_tiny_patch4_32) or `--alpha-model` (crate_alpha_tiny_patch4_32) at
   `--img-size` / `--patch` (32 px, patch 4, 10 classes); the official `CRATE` class with the same image size, patch,
   classes, width, depth and heads (dim_head = width / heads). For CRATE the official `CRATE_tiny()` is built too and
   its width / depth / heads must equal vitlab's (CRATE-T: 384 / 12 / 6). The CRATE-α port has constructors for B/16
   and L/14 only; CRATE-α-Ti (192 / 12 / 3, the JAX variant table) is built with the port's class. `--depth N`
   shortens both models alike (quick runs).
2. Weights. The official model's own random initialisation (seed 0) is copied into vitlab's with
   `vitlab.convert.load_checkpoint(model, official.state_dict(), layout='crate_official' / 'crate_alpha_official')`
   (strict: every key and shape).
3. Equality check, train mode, `--check-batch` random images and labels: logits, then the gradients of the
   cross-entropy (official gradients renamed with `vitlab.convert.convert_state_dict`, the same key map).
   fp32: max |Δlogit| ≤ 1e-5 · max(1, max |logit|) and, for every parameter, ‖Δgrad‖ / ‖grad‖ ≤ 1e-4.
   float64 (both models cast): 1e-10 for both. Any failure: the script still prints its tables, then exits with
   status 1.
4. Speed. Full train steps (forward, cross-entropy, backward, AdamW step; the same torch.optim.AdamW for both) on
   `--batch` random images, both models in this one process, interleaved: `--windows` windows per model, each an
   untimed step then `--steps` timed steps, the order official / vitlab alternating from window to window (A B B A
   A B ...) so that a drift in the machine's load hits both alike. Reported: the median over the windows of images/s,
   the windows' min-max, and vitlab / official. The load average before and after is printed: on a shared machine
   the spread says how far to trust the medians.
5. Memory (`--no-memory` skips it). Each model in a FRESH process (so neither inherits the other's peak), with glibc
   told to map every allocation over 64 KiB on its own and return it when freed (MALLOC_MMAP_THRESHOLD_), so the
   resident set follows the live tensors: one untimed train step (weights, gradients and AdamW state then exist),
   then the resident-set high-water mark (VmHWM) is reset (writing 5 to /proc/self/clear_refs) and `--memory-steps`
   steps run. Reported: the process's peak resident set during those steps (includes Python, torch and the weights)
   and that peak minus the resident set just before them (activations and the backward's transients). Where
   clear_refs cannot be written, getrusage's ru_maxrss (whose warm-up step of the same shapes reaches the same peak).

`--profile N` adds torch.profiler's top N operators (self CPU time, one train step each) per model.

    python benchmarks/vs_official_crate.py --official-crate /path/to/CRATE \\
        --official-crate-alpha /path/to/CRATE-alpha --json vs_official.json
    python benchmarks/vs_official_crate.py --official-crate /path/to/CRATE --depth 2 --windows 2 --no-memory  # dry run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vitlab
from vitlab._profile import cpu_name, peak_rss_bytes, reset_peak_rss, rss_bytes
from vitlab.convert import convert_state_dict, load_checkpoint

# family → (vitlab layout, file inside a checkout, default vitlab model, the official tiny constructor or None)
FAMILIES = {
    "crate": ("crate_official", "model/crate.py", "crate_tiny_patch4_32", "CRATE_tiny"),
    "crate_alpha": ("crate_alpha_official", "torch_inference/model/crate_alpha.py", "crate_alpha_tiny_patch4_32",
                    None),
}
LABEL = {"crate": "CRATE", "crate_alpha": "CRATE-α"}
TOLERANCE = {"fp32": (1e-5, 1e-4), "fp64": (1e-10, 1e-10)}  # (logits, gradients)


# -- the official code, from the user's path --------------------------------------------------------------------------
def official_file(path: str | os.PathLike, family: str) -> Path:
    """PATH itself when it is a file, else the family's file inside the checkout PATH."""
    path = Path(path).expanduser()
    file = path if path.is_file() else path / FAMILIES[family][1]
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: pass a checkout of the official repository or the file "
                                f"{FAMILIES[family][1]} itself")
    return file


def load_official(path: str | os.PathLike, family: str):
    """Imports (executes) the official file as a module of its own name, outside sys.modules."""
    file = official_file(path, family)
    spec = importlib.util.spec_from_file_location(f"_official_{family}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as err:
        raise SystemExit(f"importing {file} failed: {err}. The official code needs it installed "
                         f"(`pip install {err.name}`)") from err
    return module


def build_pair(family: str, official_path: str, args: argparse.Namespace, seed: int = 0):
    """(official module, official model, vitlab model with the official weights, info)."""
    layout, _, _, tiny = FAMILIES[family]
    module = load_official(official_path, family)
    kwargs = dict(img_size=args.img_size, patch_size=args.patch, num_classes=args.classes)
    if args.depth:
        kwargs["depth"] = args.depth
    ours = vitlab.create_model(args.models[family], **kwargs)
    dim, depth, heads = ours.embed_dim, ours.depth, ours.num_heads
    info = {"vitlab_model": args.models[family], "official_file": str(official_file(official_path, family)),
            "width": dim, "depth": depth, "heads": heads}
    if tiny is not None and hasattr(module, tiny):
        reference = getattr(module, tiny)(num_classes=args.classes).transformer  # the official tiny's sizes
        info["official_tiny"] = {"name": tiny, "width": reference.dim, "depth": reference.depth,
                                 "heads": reference.heads}
        if (reference.dim, reference.heads) != (dim, heads) or (not args.depth and reference.depth != depth):
            raise SystemExit(f"official {tiny}: width/depth/heads {reference.dim}/{reference.depth}/"
                             f"{reference.heads}, vitlab {args.models[family]}: {dim}/{depth}/{heads}")
    torch.manual_seed(seed)
    official = module.CRATE(image_size=args.img_size, patch_size=args.patch, num_classes=args.classes, dim=dim,
                            depth=depth, heads=heads, dim_head=dim // heads)
    load_checkpoint(ours, official.state_dict(), layout=layout)
    info["params"] = sum(p.numel() for p in ours.parameters())
    info["official_params"] = sum(p.numel() for p in official.parameters())
    return module, official, ours, info


# -- 3. equality -------------------------------------------------------------------------------------------------------
def _worst_rel(grads: dict, reference: dict, tiny: float) -> tuple[str, float]:
    """(parameter, ‖Δ‖/‖reference‖) of the parameter whose gradient differs most from `reference`'s."""
    rel = {k: ((g.double() - reference[k].double()).norm() / reference[k].double().norm().clamp_min(tiny)).item()
           for k, g in grads.items()}
    worst = max(rel, key=rel.get)
    return worst, rel[worst]


def check(official, ours, layout: str, batch: int, img_size: int, classes: int) -> list[dict]:
    """float64 first: the two codes must agree to 1e-10 there, and vitlab's float64 gradients are then the truth
    that each code's float32 gradients are measured against. float32 passes when vitlab's gradients are within
    tolerance of the official float32 ones OR of that truth: on some CPUs the official code's own float32 error is
    the larger one (on the AMX Xeon: 2.1e-3 on the patch embedding against vitlab's 8.6e-7)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, img_size, img_size, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=generator)
    rows, truth = [], None
    for dtype_name, dtype in (("fp64", torch.float64), ("fp32", torch.float32)):
        logits = {}
        grads = {}
        for name, model in (("official", official), ("vitlab", ours)):
            model.to(dtype).train()
            model.zero_grad(set_to_none=True)
            out = model(x.to(dtype))
            F.cross_entropy(out, y).backward()
            logits[name] = out.detach()
            grads[name] = {k: p.grad.detach() for k, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
        official_grads, _ = convert_state_dict(grads["official"], ours, layout)
        logit_diff = (logits["official"] - logits["vitlab"]).abs().max().item()
        logit_scale = max(1.0, logits["official"].abs().max().item())
        tiny = torch.finfo(dtype).tiny
        worst_name, worst = _worst_rel(grads["vitlab"], official_grads, tiny)
        logit_tol, grad_tol = TOLERANCE[dtype_name]
        row = {"dtype": dtype_name, "max_abs_logit_diff": logit_diff, "max_abs_logit": logit_scale,
               "logit_tolerance": logit_tol * logit_scale, "max_rel_grad_diff": worst, "worst_grad": worst_name,
               "grad_tolerance": grad_tol}
        if truth is None:
            truth = grads["vitlab"]
            row["same"] = logit_diff <= logit_tol * logit_scale and worst <= grad_tol
        else:
            row["vitlab_vs_fp64"] = _worst_rel(grads["vitlab"], truth, tiny)
            row["official_vs_fp64"] = _worst_rel(official_grads, truth, tiny)
            row["same"] = logit_diff <= logit_tol * logit_scale and min(worst, row["vitlab_vs_fp64"][1]) <= grad_tol
        rows.append(row)
    for model in (official, ours):
        model.float()
    return rows[::-1]  # fp32, fp64


# -- 4. speed ----------------------------------------------------------------------------------------------------------
def make_step(model, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def time_interleaved(steps: dict, batch: int, windows: int, steps_per_window: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for window in range(windows):
        for name in (names if window % 4 in (0, 3) else names[::-1]):  # A B, B A, B A, A B, ...
            steps[name]()  # untimed
            start = time.perf_counter()
            for _ in range(steps_per_window):
                steps[name]()
            rates[name].append(batch * steps_per_window / (time.perf_counter() - start))
    return rates


def top_ops(step, n: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count,
             "share": round(e.self_cpu_time_total / total, 4)} for e in events[:n]]


# -- 5. memory, one fresh process per model ---------------------------------------------------------------------------
def memory_worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    _, official, ours, _ = build_pair(spec["family"], spec["official_path"], args)
    model = official if spec["code"] == "official" else ours
    del official, ours
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=generator)
    y = torch.randint(0, args.classes, (args.batch,), generator=generator)
    step = make_step(model, x, y)
    step()
    method, base = reset_peak_rss(), rss_bytes()
    for _ in range(args.memory_steps):
        step()
    peak = peak_rss_bytes(method)
    return {"peak_rss_mib": peak / 2**20, "step_peak_mib": (peak - base) / 2**20, "memory_method": method}


def measure_memory(family: str, code: str, official_path: str, args: argparse.Namespace) -> dict:
    keys = ("img_size", "patch", "classes", "batch", "depth", "memory_steps", "models")
    spec = {"family": family, "code": code, "official_path": str(official_path), "threads": args.threads,
            "args": {k: getattr(args, k) for k in keys}}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(vitlab.__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(spec)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker {family}/{code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the run -----------------------------------------------------------------------------------------------------------
def run_family(family: str, official_path: str, args: argparse.Namespace) -> dict:
    layout = FAMILIES[family][0]
    _, official, ours, info = build_pair(family, official_path, args)
    result = {"family": family, **info, "check": check(official, ours, layout, args.check_batch, args.img_size,
                                                       args.classes)}
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=generator)
    y = torch.randint(0, args.classes, (args.batch,), generator=generator)
    steps = {"official": make_step(official, x, y), "vitlab": make_step(ours, x, y)}
    rates = time_interleaved(steps, args.batch, args.windows, args.steps)
    result["images_per_s_windows"] = {k: [round(r, 3) for r in v] for k, v in rates.items()}
    result["images_per_s"] = {k: statistics.median(v) for k, v in rates.items()}
    result["ratio"] = result["images_per_s"]["vitlab"] / result["images_per_s"]["official"]
    if args.profile:
        result["top_ops"] = {name: top_ops(step, args.profile) for name, step in steps.items()}
    del official, ours, steps
    if args.memory:
        result["memory"] = {code: measure_memory(family, code, official_path, args) for code in ("official", "vitlab")}
    return result


def tables(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["| family | dtype | max abs Δlogit | tolerance | max rel Δgrad (parameter) | tolerance | "
             "fp32 grad error vs fp64, vitlab / official | same |", "|---|---|---:|---:|---|---:|---|---|"]
    for r in results:
        for c in r["check"]:
            errors = (f"{c['vitlab_vs_fp64'][1]:.1e} / {c['official_vs_fp64'][1]:.1e} "
                      f"({c['official_vs_fp64'][0]})" if "vitlab_vs_fp64" in c else "–")
            lines.append(f"| {LABEL[r['family']]} | {c['dtype']} | {c['max_abs_logit_diff']:.2e} | "
                         f"{c['logit_tolerance']:.1e} | {c['max_rel_grad_diff']:.2e} ({c['worst_grad']}) | "
                         f"{c['grad_tolerance']:.0e} | {errors} | {'yes' if c['same'] else 'NO'} |")
    lines += ["", f"| family | model | code | params | images/s (median of {args.windows}) | windows min-max | "
              "vitlab / official | peak RSS (MiB) | step peak above baseline (MiB) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for code in ("official", "vitlab"):
            rates = r["images_per_s_windows"][code]
            memory = r.get("memory", {}).get(code)
            mem = f"{memory['peak_rss_mib']:.0f} | {memory['step_peak_mib']:.0f}" if memory else "— | —"
            ratio = f"{r['ratio']:.2f}×" if code == "vitlab" else "1.00×"
            model = r["vitlab_model"] if code == "vitlab" else Path(r["official_file"]).name + " CRATE(...)"
            params = r["params"] if code == "vitlab" else r["official_params"]
            lines.append(f"| {LABEL[r['family']]} | {model} | {code} | {params / 1e6:.2f} M | "
                         f"{r['images_per_s'][code]:.2f} | {min(rates):.2f}-{max(rates):.2f} | {ratio} | {mem} |")
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-crate", metavar="PATH", help="checkout of Ma-Lab-Berkeley/CRATE, or its "
                        "model/crate.py (executed: pass only code you trust)")
    parser.add_argument("--official-crate-alpha", metavar="PATH", help="checkout of UCSC-VLAA/CRATE-alpha, or its "
                        "torch_inference/model/crate_alpha.py (executed: pass only code you trust)")
    parser.add_argument("--crate-model", default=FAMILIES["crate"][2])
    parser.add_argument("--alpha-model", default=FAMILIES["crate_alpha"][2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="train-step batch (default 64)")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--depth", type=int, default=0, help="override both models' depth (0: the model's own)")
    parser.add_argument("--check-batch", type=int, default=8, help="images of the equality check (default 8)")
    parser.add_argument("--windows", type=int, default=8, help="timed windows per model, interleaved (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per window (default 3)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="peak memory, each model in a fresh process (default on)")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also list each model's top N operators by self CPU time (torch.profiler, one step)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.memory_worker and not (args.official_crate or args.official_crate_alpha):
        parser.error("give --official-crate PATH and/or --official-crate-alpha PATH")
    for name in ("threads", "batch", "img_size", "patch", "classes", "check_batch", "windows", "steps",
                 "memory_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.models = {"crate": args.crate_model, "crate_alpha": args.alpha_model}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    command = " ".join(["python", "benchmarks/vs_official_crate.py", *(sys.argv[1:] if argv is None else argv)])
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = [run_family(family, path, args) for family, path in (("crate", args.official_crate),
                                                                   ("crate_alpha", args.official_crate_alpha)) if path]
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {"command": command, "machine": f"CPU {cpu_name()} ({os.cpu_count()} CPUs)", "threads": args.threads, "torch": torch.__version__,
              "vitlab": vitlab.__version__, "python": platform.python_version(), "git_commit": _commit(),
              "load_average_before": load_before, "load_average_after": load_after,
              "settings": {k: getattr(args, k) for k in ("batch", "img_size", "patch", "classes", "depth",
                                                         "check_batch", "windows", "steps", "memory_steps")},
              "results": results}
    report["table"] = tables(results, args)
    load = (f"; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after"
            if load_before and load_after else "")
    print(f"{report['machine']}, torch {torch.__version__}, {args.threads} threads, commit {report['git_commit']}; "
          f"train step: batch {args.batch}, {args.img_size} px, patch {args.patch}, {args.steps} steps × "
          f"{args.windows} windows per model{load}")
    print(f"command: {command}\n")
    print(report["table"])
    for r in results:
        for code, ops in r.get("top_ops", {}).items():
            print(f"\n{LABEL[r['family']]} {code}: top operators, one train step (self CPU ms, calls, share)")
            for op in ops:
                print(f"  {op['op']:<48} {op['self_cpu_ms']:>10.1f} {op['calls']:>6} {op['share']:>7.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    failed = [f"{LABEL[r['family']]} {c['dtype']}" for r in results for c in r["check"] if not c["same"]]
    if failed:
        print("vitlab and the official code differ beyond the tolerance: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
