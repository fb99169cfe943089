"""Throughput of DeviceAugment (images/s) for the CIFAR pipeline, and of each stage alone, on CPU and (when present) CUDA.

Command (from the repository root):

    python benchmarks/augment_throughput.py                      # CPU, and CUDA if available
    python benchmarks/augment_throughput.py --devices cuda --iters 200
    python benchmarks/augment_throughput.py --devices cpu --threads 1   # steadier on small shared VMs

The pipeline is the inferred mimetic / ConvMixer CIFAR-10 one (docs/augment.md): RandomResizedCrop(scale 0.75–1,
ratio 1), flip, RandAugment(1, 8), colour jitter 0.1, random erasing 0.25, plus mixup 0.8 / cutmix 1.0 and label
smoothing 0.1 to include the target path. Batch 512 × 3 × 32 × 32 uint8 already on the device; a seeded CPU generator
as in training. Warm-up iterations are excluded; every batch is timed (CUDA: synchronised) and the median is
reported, robust to a noisy shared CPU. On CPU, glibc's malloc would hand each freed multi-MiB tensor back to the
kernel and page-fault it in again on the next batch (3-8x slower elementwise ops on small VMs); the workers run with
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 1 GiB so that memory is reused, as CUDA's caching allocator does
(set them yourself to override). On a 2-vCPU VM with CPU steal, two OpenMP threads stall for a scheduler slice
whenever one vCPU is taken away (an elementwise op then takes 8 ms instead of 0.2 ms); --threads 1 avoids it. Each pipeline runs in a fresh
process. Peak memory: CUDA max_memory_allocated above the inputs; CPU peak RSS above the RSS before the first call
(includes one-off library initialisation and allocator caching: an upper bound).
The DeviceLoader line times one epoch of 50,000 images (slicing only, no augmentation).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import kornia
import torch

from vitlab.data.augment import AugmentConfig, DeviceAugment
from vitlab.data.loader import DeviceLoader

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
PIPELINES = {
    "cifar (all stages)": dict(random_resized_crop=True, rrc_scale=(0.75, 1.0), rrc_ratio=(1.0, 1.0), hflip=True,
                               randaugment_n=1, randaugment_m=8, color_jitter=0.1, random_erasing=0.25,
                               mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1),
    "normalise only": dict(),
    "random crop pad 4": dict(random_crop_padding=4),
    "random resized crop": dict(random_resized_crop=True),
    "hflip": dict(hflip=True),
    "randaugment(1, 8)": dict(randaugment_n=1, randaugment_m=8),
    "randaugment(2, 9)": dict(randaugment_n=2, randaugment_m=9),
    "color jitter 0.1": dict(color_jitter=0.1),
    "random erasing 0.25": dict(random_erasing=0.25),
    "mixup/cutmix": dict(mixup_alpha=0.8, cutmix_alpha=1.0),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_pipeline(options: dict, device_name: str, batch: int, iters: int, warmup: int,
                  threads: int | None = None) -> tuple[float, float]:
    """(images per second from the median batch time, peak MiB) of DeviceAugment with ``options`` on ``device``.

    Runs in a fresh process (see main), so the CPU peak (peak RSS − RSS before the first call) is this pipeline's.
    """
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    augment = DeviceAugment(AugmentConfig(**options), MEAN, STD, num_classes=10)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    generator = torch.Generator().manual_seed(0)
    rss = _current_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(warmup):
        augment(images, labels, generator=generator)
    seconds = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        augment(images, labels, generator=generator)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else _peak_rss_mib() - rss
    return batch / statistics.median(seconds), peak


def time_loader(device_name: str, batch: int, threads: int | None = None) -> float:
    """Images per second of one DeviceLoader epoch over 50,000 CIFAR-sized images."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.randint(0, 10, (50_000,)), batch, True, True, device, seed=0)
    for _ in loader:  # warm-up epoch
        pass
    _sync(device)
    start = time.perf_counter()
    count = 0
    for x, _ in loader:
        count += x.shape[0]
    _sync(device)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    for knob in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):  # read by glibc in the spawned workers
        os.environ.setdefault(knob, str(2**30))
    print(f"command: {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, python {platform.python_version()}, "
          f"CPU threads {args.threads or torch.get_num_threads()}")
    for name in args.devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        iters = args.iters * (10 if device.type == "cuda" else 1)
        print(f"\n{name} ({label}), batch {args.batch_size} x 3 x 32 x 32 uint8, {iters} timed iterations")
        print(f"{'pipeline':<22} {'images/s':>12} {'ms/batch':>9} {'peak MiB':>9}  (median batch)")
        for pipeline, options in PIPELINES.items():
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # fresh process
                rate, peak = pool.submit(time_pipeline, options, name, args.batch_size, iters, args.warmup,
                                   args.threads).result()
            print(f"{pipeline:<22} {rate:>12,.0f} {1e3 * args.batch_size / rate:>9.2f} {peak:>9.1f}")
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rate = pool.submit(time_loader, name, args.batch_size, args.threads).result()
        print(f"{'DeviceLoader epoch':<22} {rate:>12,.0f}")


if __name__ == "__main__":
    main()
