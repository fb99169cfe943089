"""Choices by measurement on the machine at hand: time each candidate of a representative workload, take the
fastest by a margin, and cache what was measured (issue 25).

A CPU's flags do not say whether bf16 autocast trains faster than fp32: an AMX Xeon runs bf16 train steps 2.1-2.4x
faster, an AVX-512 EPYC with `avx512_bf16` 2.5x, an AVX2 EPYC 0.06-0.12x (emulated). So `precision=auto` on a CPU
(`vitlab.train.build.choose_precision`) times short fp32 and bf16-autocast forward + backward passes of the model
itself at its training batch (`model_workload`; of one transformer block's GEMMs and attention at its width and
token count, `precision_workload`, when there is no model or one sample of it is too large to time within the
budget), interleaved, medians, in `BUDGET_S` at most, and picks bf16 only when it is `BF16_MARGIN` times faster.

The decision is cached in `cache_file()` (`$VITLAB_CACHE/calibration.json`; default `$XDG_CACHE_HOME/vitlab`, else
`~/.cache/vitlab`), keyed by what, the CPU model, the torch version and the workload's shape class (e.g.
`VisionTransformer w128-t16 b64`: width, tokens and batch rounded up to powers of two, `shape_class`), with the
times per candidate, their ratio and the date. The budget holds for a workload sized to it: the minimum of one
warm-up and 3 interleaved rounds runs whatever a call costs. A corrupt or foreign file is ignored with a one-line note and
rewritten atomically. `VITLAB_CALIBRATE=0` measures nothing (`calibration_enabled`).

Under torchrun every rank must take the same decision: `agreed` lets rank 0 decide and publish it in the process
group's key-value store, where the other ranks read it, so they cannot diverge (a collective is not needed, so
rank 0 may also ask alone, e.g. for its start-up line).
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from ._profile import cpu_name

__all__ = ["BF16_MARGIN", "BUDGET_S", "Calibration", "cache_file", "calibration_enabled", "shape_class", "measure",
           "decide", "calibrate", "precision_workload", "model_workload", "agreed"]

BF16_MARGIN = 1.15  # bf16 only when its step is >= 1.15x faster: below that, timing noise on a loaded machine
# (medians of interleaved repeats still move by ~5-10%) could flip the choice, and a near tie is not worth bf16's
# rounding (fp32 is the reference numerics)
BUDGET_S = 2.0  # seconds of measurement, warm-up included, for one decision
FORMAT = "vitlab calibration 1"  # the cache file's `format`: any other file is foreign


@dataclass(frozen=True)
class Calibration:
    """One measured decision: `choice` among the candidates of `seconds` (median seconds per call of each),
    `ratio` = the first candidate's time over the chosen one's (e.g. fp32 / bf16), `key` what it is valid for."""
    key: dict
    choice: str
    seconds: dict
    ratio: float
    date: str
    cached: bool = False  # read from the cache file rather than measured now


def cache_file() -> Path:
    """`$VITLAB_CACHE/calibration.json`; without VITLAB_CACHE, under `$XDG_CACHE_HOME/vitlab` or `~/.cache/vitlab`."""
    root = os.environ.get("VITLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitlab"
    return Path(root) / "calibration.json"


def calibration_enabled() -> bool:
    """False when `VITLAB_CALIBRATE=0` (then callers take their static rule and say so)."""
    return os.environ.get("VITLAB_CALIBRATE", "1").strip() != "0"


def shape_class(width: int, tokens: int) -> str:
    """The bucket a decision holds for: width and token count each rounded up to a power of two (`w256-t64`)."""
    return f"w{2 ** math.ceil(math.log2(max(width, 1)))}-t{2 ** math.ceil(math.log2(max(tokens, 1)))}"


def measure(candidates: dict[str, Callable[[], None]], budget_s: float = BUDGET_S, min_rounds: int = 3,
            max_rounds: int = 15, timer: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each candidate: one warm-up call each, then rounds that call every candidate once
    in turn (interleaved, so a load change on the machine hits all alike): as many rounds as the warm-up round's
    time says fit in the rest of `budget_s`, at least `min_rounds`, at most `max_rounds`."""
    start = timer()
    for run in candidates.values():
        run()
    warm_up = timer() - start  # about one round
    rounds = int((budget_s - warm_up) // warm_up) if warm_up > 0 else max_rounds
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(min(max(rounds, min_rounds), max_rounds)):
        for name, run in candidates.items():
            t0 = timer()
            run()
            times[name].append(timer() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def decide(seconds: dict[str, float], margin: float) -> tuple[str, float]:
    """(choice, ratio): the first candidate (the default, e.g. fp32) unless another is at least `margin` times
    faster; ratio = the default's time over the fastest other's (> 1: the other is faster)."""
    default, *others = seconds
    fastest = min(others, key=seconds.get)
    ratio = seconds[default] / seconds[fastest]
    return (fastest if ratio >= margin else default), ratio


def _read_cache(path: Path) -> dict:
    """The entries of the cache file, {} when there is none; a corrupt or foreign file is ignored with a note."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        print(f"vitlab: ignoring the calibration cache {path} (unreadable: {error}); it will be rewritten",
              file=sys.stderr)
        return {}
    if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("entries"), dict)):
        print(f"vitlab: ignoring the calibration cache {path} (not a {FORMAT!r} file); it will be rewritten",
              file=sys.stderr)
        return {}
    return data["entries"]


def _entry_name(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _from_entry(name: str, entry) -> Calibration | None:
    """The cached calibration of an entry, None when the entry is not one (or was stored under another key)."""
    try:
        calibration = Calibration(key=entry["key"], choice=entry["choice"], seconds=dict(entry["seconds"]),
                                  ratio=float(entry["ratio"]), date=str(entry["date"]), cached=True)
    except (TypeError, KeyError, ValueError):
        return None
    ok = _entry_name(calibration.key) == name and calibration.choice in calibration.seconds
    return calibration if ok else None


def _write_cache(path: Path, entries: dict) -> None:
    """The file rewritten atomically (a temporary file in the same folder, then renamed over it); a cache that
    cannot be written (read-only home) is skipped with a note: the decision stands, it is measured again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".calibration.", delete=False) as tmp:
            json.dump({"format": FORMAT, "entries": entries}, tmp, indent=1)
        os.replace(tmp.name, path)
    except OSError as error:
        print(f"vitlab: could not write the calibration cache {path} ({error})", file=sys.stderr)


def calibrate(what: str, shape: str, candidates: Callable[[], dict[str, Callable[[], None]]], margin: float,
              budget_s: float = BUDGET_S, timer: Callable[[], float] = time.perf_counter) -> Calibration:
    """The cached decision of `what` for this CPU, this torch and `shape`, else one measured now (`measure` of
    `candidates()`, built only on a miss; the first candidate is the default, see `decide`) and cached."""
    key = {"what": what, "cpu": cpu_name(), "torch": torch.__version__, "shape": shape}
    path = cache_file()
    entries = _read_cache(path)
    name = _entry_name(key)
    if (hit := _from_entry(name, entries.get(name))) is not None:
        return hit
    with torch.random.fork_rng(devices=[]):  # random inputs and weights: the caller's random stream is not touched
        seconds = measure(candidates(), budget_s=budget_s, timer=timer)
    choice, ratio = decide(seconds, margin)
    calibration = Calibration(key=key, choice=choice, seconds=seconds, ratio=ratio,
                              date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    entries = {n: e for n, e in entries.items() if _from_entry(n, e) is not None}  # drop foreign entries
    entries[name] = {k: v for k, v in asdict(calibration).items() if k != "cached"}
    _write_cache(path, entries)
    return calibration


def precision_workload(width: int, tokens: int, device: torch.device | str = "cpu",
                       flops: float = 2e9) -> dict[str, Callable[[], None]]:
    """{"fp32": step, "bf16": step}: one training forward + backward of a pre-norm transformer block's work at
    `width` and `tokens` (qkv, attention softmax(q kᵀ) v over 64-wide heads, output projection, a 4x GELU MLP), in
    fp32 and under bf16 autocast. The batch is sized so one step is about `flops` (bounded time at any width)."""
    heads = max(1, width // 64)
    batch = max(1, round(flops / (3 * tokens * (24 * width**2 + 4 * tokens * width))))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, width, generator=gen).to(device).requires_grad_()  # (B, N, d)
    weights = [(torch.randn(shape, generator=gen) * width**-0.5).to(device).requires_grad_()
               for shape in ((3 * width, width), (width, width), (4 * width, width), (width, 4 * width))]

    def step(bf16: bool) -> Callable[[], None]:
        def run() -> None:
            w_qkv, w_proj, w_up, w_down = weights
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                h = F.layer_norm(x, (width,))
                q, k, v = F.linear(h, w_qkv).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
                attn = ((q @ k.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(-1)  # (B, H, N, N)
                h = x + F.linear((attn @ v).transpose(1, 2).reshape(batch, tokens, width), w_proj)  # (B, N, d)
                out = h + F.linear(F.gelu(F.linear(F.layer_norm(h, (width,)), w_up)), w_down)
            out.float().square().mean().backward()
            for t in (x, *weights):
                t.grad = None
        return run

    return {"fp32": step(False), "bf16": step(True)}


def model_workload(model: torch.nn.Module, inputs: tuple) -> dict[str, Callable[[], None]]:
    """{"fp32": step, "bf16": step}: one training forward + backward of a copy of `model` (so neither its weights,
    buffers nor gradients change) on `inputs`, in fp32 and under bf16 autocast. (`calibrate` leaves the global
    random stream as it was, so a run trains the same whether it measured or read the cache.)"""
    copied = copy.deepcopy(model).train()
    device_type = next(copied.parameters()).device.type

    def step(bf16: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                out = copied(*inputs)
            outputs = out if isinstance(out, tuple) else (out,)
            sum(o.float().mean() for o in outputs if torch.is_tensor(o) and o.requires_grad).backward()
            copied.zero_grad(set_to_none=True)
        return run

    return {"fp32": step(False), "bf16": step(True)}


def agreed(name: str, decide_here: Callable[[], dict], rank: int, store) -> dict:
    """The decision `name` as rank 0 took it: rank 0 runs `decide_here()` (a JSON-able dict) once and publishes it
    in `store` (the process group's key-value store: set / get / check / wait); every other rank waits for it and
    reads it, never deciding itself. Rank 0 asking again reads what it published, so every rank, at any time, gets
    the one answer rank 0 published."""
    key = f"vitlab/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/calibration/{name}"
    if rank == 0 and not store.check([key]):
        store.set(key, json.dumps(decide_here()))
    store.wait([key])
    return json.loads(store.get(key))
