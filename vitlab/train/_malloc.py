"""glibc's allocator, set for CPU training: freed tensor memory stays in the process to be reused.

By default glibc serves blocks above a sliding threshold (128 KiB at start) with fresh mmap()s and returns free
memory at the top of the heap to the kernel beyond 128 KiB. A CPU training step frees and re-allocates the same
activation and gradient buffers every step, so each step maps, zero-fills (page faults) and unmaps megabytes again:
nanoGPT's 0.8 M-parameter shakespeare_char GPT on 2 threads takes 800-2,200 minor page faults and 6-9 ms of kernel
time per ~50 ms step. With every block under 32 MiB (the largest threshold glibc allows) taken from the heap, and
up to 256 MiB of free heap kept, the faults drop to ~2 per step and the kernel time to 2-3 ms; the step is about 7%
faster (benchmarks/README.md, vs_nanogpt.py) and the peak resident memory is unchanged there. Allocations of 32 MiB
and more are mmap()ed and returned as before. Only glibc on Linux; elsewhere nothing changes.
"""
from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_MMAP_THRESHOLD = 32 << 20  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
_TRIM_THRESHOLD = 256 << 20
_done = False


def keep_freed_memory() -> bool:
    """Sets the two thresholds once per process (glibc only); True when they are set."""
    global _done
    if _done:
        return True
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return _done
