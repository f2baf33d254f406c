"""Timing and peak memory for the ``scripts/bench_*.py`` tables.

``timed(fn, device) -> (seconds, peak MiB)``: on CUDA the peak of ``torch.cuda.max_memory_allocated``
during ``fn``; on CPU the peak resident set size (``/proc/self/statm``, sampled every 5 ms by a thread)
above the size before ``fn`` (NaN where ``/proc`` is missing). Times are wall-clock, CUDA synchronised.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float:
    """Resident set size of this process in MiB (NaN without ``/proc``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return float("nan")


def timed(fn: Callable[[], object], device: torch.device | str) -> tuple[float, float]:
    """(seconds, peak MiB) of ``fn()`` on ``device`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    start, peak, stop = rss_mib(), [rss_mib()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], rss_mib())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        sec = time.perf_counter() - t0
        stop.set()
        th.join()
    return sec, max(peak[0], rss_mib()) - start


def device_name(device: torch.device | str) -> str:
    """``NVIDIA H100 ...`` or ``CPU (n threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
