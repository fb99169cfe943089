"""Parameters, FLOPs (torch.utils.flop_counter) and measured throughput of a model; the machine facts that the
benchmarks and the training log report beside them (CPU name and bf16 instructions, peak resident memory).

FLOPs count multiply-adds as 2 FLOPs (MACs = FLOPs / 2). PyTorch's counter has no formula for the CPU
scaled-dot-product-attention kernel, so one is registered here (the same count as its CUDA kernels); without it
attention would silently count as zero on CPU.
"""
from __future__ import annotations

import os
import platform
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count
from torch.utils.flop_counter import sdpa_backward_flop_count

__all__ = ["Profile", "profile", "count_flops", "time_per_call", "example_inputs", "cpu_name", "cpu_bf16_flags",
           "rss_bytes", "reset_peak_rss", "peak_rss_bytes"]

_aten = torch.ops.aten
if _aten._scaled_dot_product_flash_attention_for_cpu.default not in flop_registry:
    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

if _aten._scaled_dot_product_flash_attention_for_cpu_backward.default not in flop_registry:
    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


@dataclass
class Profile:
    name: str
    params: int
    trainable_params: int
    input_size: tuple[int, ...]  # one sample: (C, H, W) for images, (T,) for token sequences
    forward_flops: int  # per sample (an image, a token sequence, or an image-text pair: `unit`)
    train_flops: int  # forward + backward, per sample
    batch_size: int
    device: str
    infer_images_per_s: float
    train_images_per_s: float | None
    peak_memory_bytes: int  # CUDA: max allocated; CPU: peak resident set size of the process
    unit: str = "image"  # what one sample is: 'image', 'sequence' (language models), 'image-text pair' (CLIP)

    @property
    def forward_gmacs(self) -> float:
        return self.forward_flops / 2e9

    def __str__(self) -> str:
        train = f"{self.train_images_per_s:.1f}" if self.train_images_per_s is not None else "-"
        memory = "peak CUDA memory" if self.device.startswith("cuda") else "peak RSS"
        rate = {"image": "img/s", "sequence": "seq/s"}.get(self.unit, "pairs/s")
        return (f"{self.name}: {self.params / 1e6:.3f}M params ({self.trainable_params / 1e6:.3f}M trainable), "
                f"input {self.input_size}\n"
                f"  forward {self.forward_flops / 1e9:.2f} GFLOPs = {self.forward_gmacs:.2f} GMACs per {self.unit}; "
                f"train step {self.train_flops / 1e9:.2f} GFLOPs per {self.unit}\n"
                f"  {self.device}, batch {self.batch_size}: inference {self.infer_images_per_s:.1f} {rate}, "
                f"training {train} {rate}, {memory} {self.peak_memory_bytes / 2**20:.0f} MiB")


def count_flops(model: nn.Module, x: torch.Tensor | tuple, backward: bool = False) -> int:
    """Total FLOPs of one forward (and backward) pass on `x` (a tuple: the model's positional inputs, e.g. a CLIP
    model's images and text; a tuple of outputs is summed for the backward)."""
    inputs = x if isinstance(x, tuple) else (x,)
    with FlopCounterMode(display=False) as counter:
        if backward:
            out = model(*inputs)
            outputs = out if isinstance(out, tuple) else (out,)
            sum(o.float().sum() for o in outputs if torch.is_tensor(o) and o.requires_grad).backward()
        else:
            with torch.no_grad():
                model(*inputs)
    if backward:
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_per_call(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Mean seconds per call of `fn` after `warmup` calls (CUDA synchronised around the timed loop)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def example_inputs(model: nn.Module, batch_size: int, input_size: tuple[int, ...] | None = None,
                   device: str | torch.device = "cpu") -> tuple[tuple[torch.Tensor, ...], tuple[int, ...], str]:
    """Random inputs of the kind the model takes: (inputs, the shape of one sample, the sample's unit).

    * a language model (`vocab_size` and `block_size`): token ids (B, block_size), or (B, input_size[0]);
    * a CLIP model (`visual` and `text` towers): images (B, C, H, W) and token ids (B, context_length);
    * an image model: images (B, C, H, W) of `input_size`, default the pretrained_cfg's input_size.
    """
    cfg = getattr(model, "pretrained_cfg", {})
    if hasattr(model, "vocab_size") and hasattr(model, "block_size"):
        length = input_size[0] if input_size else model.block_size
        tokens = torch.randint(0, model.vocab_size, (batch_size, length), device=device)  # (B, T)
        return (tokens,), (length,), "sequence"
    if hasattr(model, "visual") and hasattr(model, "text"):
        visual_cfg = getattr(model.visual, "pretrained_cfg", {})
        embed = model.visual.patch_embed
        size = tuple(input_size or cfg.get("input_size") or visual_cfg.get("input_size")
                     or (embed.in_chans, *embed.img_hw))
        text = torch.randint(0, model.text.vocab_size, (batch_size, model.text.context_length), device=device)
        return (torch.randn(batch_size, *size, device=device), text), size, "image-text pair"
    embed = getattr(model, "patch_embed", None)
    native = (embed.in_chans, *embed.img_hw) if embed is not None else (3, 224, 224)
    size = tuple(input_size or cfg.get("input_size", native))
    return (torch.randn(batch_size, *size, device=device),), size, "image"


def _training_loss(out) -> torch.Tensor:
    """A scalar from any output (logits, or a tuple of tensors such as CLIP's features and scale) to back-propagate
    through, with the cost of a cross-entropy's logsumexp."""
    outputs = out if isinstance(out, tuple) else (out,)
    return sum(o.float().logsumexp(-1).mean() if o.ndim else o.float() for o in outputs if torch.is_tensor(o))


def profile(model: nn.Module, input_size: tuple[int, ...] | None = None, batch_size: int = 8,
            device: str | torch.device = "cpu", train: bool = True, warmup: int = 2, iters: int = 5,
            dtype: torch.dtype | None = None) -> Profile:
    """Counts parameters and FLOPs (per sample) and measures inference (and training step) throughput.

    Any vitlab model: an image model (samples are images of `input_size`, default the pretrained_cfg's
    input_size), a language model (token sequences of block_size; `input_size=(T,)` for another length) or a
    CLIP model (an image and a text of context_length). `dtype` (e.g. torch.bfloat16) runs the timed passes under
    autocast on CUDA.
    """
    cfg = getattr(model, "pretrained_cfg", {})
    device = torch.device(device)
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    one, input_size, unit = example_inputs(model, 1, input_size, device)
    forward_flops = count_flops(model.eval(), one)
    train_flops = count_flops(model.train(), one, backward=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x, _, _ = example_inputs(model, batch_size, input_size, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def infer():
        with torch.no_grad(), autocast:
            model(*x)

    def train_step():
        with autocast:
            loss = _training_loss(model(*x))
        loss.backward()
        model.zero_grad(set_to_none=True)

    infer_s = time_per_call(infer, device, warmup, iters)
    train_s = time_per_call(train_step, device, warmup, iters) if train else None
    model.eval()
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else _ru_maxrss_bytes())
    return Profile(name=cfg.get("architecture", type(model).__name__), params=params, trainable_params=trainable,
                   input_size=input_size, forward_flops=forward_flops, train_flops=train_flops,
                   batch_size=batch_size, device=str(device), infer_images_per_s=batch_size / infer_s,
                   train_images_per_s=batch_size / train_s if train_s else None, peak_memory_bytes=peak,
                   unit=unit)


# -- machine facts ------------------------------------------------------------------------------------------------
def _cpuinfo_line(prefixes: tuple[str, ...], cpuinfo: str = "/proc/cpuinfo") -> str:
    """The value of the first /proc/cpuinfo line starting with one of `prefixes` ('' when none or unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith(prefixes)), "")
    return line.partition(":")[2].strip()


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    return _cpuinfo_line(("model name",)) or platform.processor() or platform.machine()


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The bf16 matrix instructions this CPU lists in /proc/cpuinfo: `amx_bf16`, `avx512_bf16` (x86) or `bf16`
    (Arm); [] when there are none or the file is unreadable (not Linux). Without them a bf16 GEMM is emulated in
    software, several times slower than fp32 (`benchmarks/bf16_cpu.py` measures it)."""
    flags = set(_cpuinfo_line(("flags", "Features"), cpuinfo).split())
    return [flag for flag in ("amx_bf16", "avx512_bf16", "bf16") if flag in flags]


def _ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _vm_hwm_bytes() -> int | None:
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def rss_bytes() -> int:
    """This process's resident set size now (Linux); elsewhere its peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _ru_maxrss_bytes()


def reset_peak_rss() -> str:
    """Resets the kernel's high-water mark of this process's resident set (Linux >= 4.0); returns the method
    `peak_rss_bytes` reads the peak with: 'VmHWM' after a reset, else 'ru_maxrss' (the peak since the start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM" if _vm_hwm_bytes() is not None else "ru_maxrss"
    except OSError:
        return "ru_maxrss"


def peak_rss_bytes(method: str) -> int:
    """The resident set's peak, by the method `reset_peak_rss` returned."""
    return (_vm_hwm_bytes() if method == "VmHWM" else None) or _ru_maxrss_bytes()
