"""Timing and peak memory for the ``scripts/bench_*.py`` tables.

``timed(fn, device) -> (seconds, peak MiB)``: on CUDA the peak of ``torch.cuda.max_memory_allocated``
during ``fn``; on CPU the peak resident set size (``/proc/self/statm``, sampled every 5 ms by a thread)
above the size before ``fn`` (NaN where ``/proc`` is missing). Times are wall-clock, CUDA synchronised.
``flops(fn) -> float``: floating-point operations of ``fn()`` as ``torch.utils.flop_counter`` counts them
(matrix products and convolutions, forward and backward, 2 per multiply-add; elementwise work is not counted),
so that a table can say how much arithmetic a path does and what rate it reached (GFLOP/s, TFLOP/s).
One correction to torch's formulas: its weight-gradient count of a grouped convolution ignores the groups
(a depthwise 3x3 conv's backward came out at 32x its input-gradient cost); here it is divided by the groups.
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


def _conv_backward(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups, output_mask,
                   out_shape, **kwargs) -> int:
    """``aten.convolution_backward``'s count: torch's own formula, with the weight gradient divided by ``groups``."""
    from torch.utils.flop_counter import conv_backward_flop

    def torch_count(mask) -> int:
        return conv_backward_flop(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                                  mask, out_val=out_shape)

    return torch_count([output_mask[0], False]) + torch_count([False, output_mask[1]]) // groups


def flops(fn: Callable[[], object]) -> float:
    """Floating-point operations of ``fn()`` (``torch.utils.flop_counter.FlopCounterMode``; see the module
    docstring). Runs ``fn`` once, slower than usual: count in a separate call from the timed ones."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward})
    with counter:
        fn()
    return float(counter.get_total_flops())


def device_name(device: torch.device | str) -> str:
    """``NVIDIA H100 ...`` or ``CPU (n threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
