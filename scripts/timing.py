"""Timing and peak memory for the ``scripts/bench_*.py`` tables.

``timed(fn, device) -> (seconds, peak MiB)``: on CUDA the peak of ``torch.cuda.max_memory_allocated``
during ``fn``; on CPU the peak resident set size (``/proc/self/statm``, sampled every 5 ms by a thread)
above the size before ``fn`` (NaN where ``/proc`` is missing). Times are wall-clock, CUDA synchronised.
``flops(fn) -> float``: floating-point operations of ``fn()`` as ``torch.utils.flop_counter`` counts them
(matrix products and convolutions, forward and backward, 2 per multiply-add; elementwise work is not counted),
so that a table can say how much arithmetic a path does and what rate it reached (GFLOP/s, TFLOP/s).
``limit(module, inputs, device, backward=...)``: the *limit row* (issue 31), the FLOP rate that a plain batched
forward (+ input-gradient backward, the weights frozen) of the same network part reaches at the same batch on
the same machine in the same run; ``ratio(rate, limit)`` is a hot loop's share of it (``% of limit``).
``record(bench, **row)``: one machine-readable row per printed figure, appended as a JSON line to
``$XATTR_BENCH_JSON`` when that is set (``scripts/bench_gpu.py`` collects them into one table).
One correction to torch's formulas: its weight-gradient count of a grouped convolution ignores the groups
(a depthwise 3x3 conv's backward came out at 32x its input-gradient cost); here it is divided by the groups.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float:
    """Resident set size of this process in MiB (NaN without ``/proc``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return float("nan")


def timed(fn: Callable[[], object], device: torch.device | str, clock: str = "wall") -> tuple[float, float]:
    """(seconds, peak MiB) of ``fn()`` on ``device`` (see the module docstring). ``clock: process`` on a CPU:
    this process's CPU time instead of the wall clock (with one torch thread, other jobs on a shared machine do
    not inflate it; the 5 ms memory sampler adds well under 1%)."""
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
    now = time.process_time if clock == "process" else time.perf_counter
    t0 = now()
    try:
        fn()
    finally:
        sec = now() - t0
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


class _TotalFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` without its per-module tracker: the tracker's backward hooks break
    ``torch.autograd.grad`` on leaves (the pathway methods' input gradients); only the total is needed here,
    which the tracker's ``Global`` entry collects without entering it."""

    def __enter__(self):
        self.flop_counts.clear()
        self.mode = _FlopCounterMode(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args):
        done = self.mode.__exit__(*args)
        self.mode = None
        return done


def flops(fn: Callable[[], object]) -> float:
    """Floating-point operations of ``fn()`` (``torch.utils.flop_counter``; see the module docstring).
    Runs ``fn`` once, slower than usual: count in a separate call from the timed ones."""
    counter = _TotalFlopCounter(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward})
    with counter:
        fn()
    return float(counter.get_total_flops())


def plain_pass(module: torch.nn.Module, inputs: torch.Tensor, backward: bool = False) -> Callable[[], object]:
    """``fn()``: one plain forward of ``module`` on the batch ``inputs`` and, with ``backward``, the gradient of the
    outputs' sum with respect to ``inputs`` (the weights' gradients are not computed: callers freeze them)."""

    def fn() -> object:
        if not backward:
            with torch.no_grad():
                return module(inputs)
        z = inputs.detach().requires_grad_(True)
        return torch.autograd.grad(module(z).float().sum(), z)[0]

    return fn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def limit(module: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, device: torch.device | str,
          backward: bool = False, repeat: int = 5, params: list[torch.Tensor] | None = None,
          clock: str = "wall") -> dict[str, float]:
    """The limit row of ``module`` (a module or any callable of one batch, e.g. an IBA tail) at the batch
    ``inputs``: ``{"gflop": per call, "seconds": median of ``repeat`` calls after one warm-up, "rate": GFLOP/s,
    "batch": rows}``. ``params`` (default: the module's) are frozen during the call (their flags restored), so
    the backward is the input gradient only, as in the hot loops. ``clock``: ``wall`` (CUDA synchronised) or
    ``process`` (this process's CPU time: on a one-thread CPU run, other jobs on a shared machine do not inflate
    it; use the clock the row it is compared with used)."""
    if params is None:
        params = list(module.parameters()) if isinstance(module, torch.nn.Module) else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        row = measured(plain_pass(module, inputs, backward), device, repeat, clock)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return {**row, "batch": int(inputs.shape[0])}


def measured(fn: Callable[[], object], device: torch.device | str, repeat: int = 5,
             clock: str = "wall") -> dict[str, float]:
    """``{"gflop", "seconds", "rate"}`` of ``fn()``: its arithmetic (:func:`flops`) and the median of ``repeat``
    calls after one warm-up (oneDNN primitives, cuDNN autotune, the allocator), CUDA synchronised; ``clock`` as
    in :func:`limit`. :func:`limit` times a plain pass with it; a bench whose limit piece is not a plain pass
    of one batch (a read-out's forward and weight backward) passes its own ``fn``."""
    device = torch.device(device)
    now = time.process_time if clock == "process" else time.perf_counter
    work = flops(fn)
    fn()
    times = []
    for _ in range(max(1, repeat)):
        _sync(device)
        t0 = now()
        fn()
        _sync(device)
        times.append(now() - t0)
    sec = statistics.median(times)
    return {"gflop": work / 1e9, "seconds": sec, "rate": work / 1e9 / sec}


def ratio(rate: float, limit_rate: float) -> float:
    """A hot loop's rate as a share of its limit row's (1.0 = at the limit; NaN when either is missing)."""
    if not (rate == rate and limit_rate == limit_rate) or limit_rate <= 0:
        return float("nan")
    return rate / limit_rate


def fmt(v: float, digits: int = 1, pct: bool = False) -> str:
    """A table cell: ``-`` for NaN / None, else the number (as a percentage with ``pct``)."""
    if v is None or v != v:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def record(bench: str, **row: object) -> None:
    """Append one result row (``bench`` plus e.g. ``model, path, device, ms_per_image, gflop_per_image, rate,
    limit_rate, peak_mib``) as a JSON line to ``$XATTR_BENCH_JSON`` when it is set; otherwise do nothing."""
    path = os.environ.get("XATTR_BENCH_JSON")
    if not path:
        return
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
    with open(path, "a") as f:
        f.write(json.dumps({"bench": bench, **clean}) + "\n")


def parse_chunk(text: str) -> int | str | None:
    """A ``--chunk`` value on a bench's command line: an integer, ``auto`` or ``null`` (the config's choices,
    :mod:`xattr.core.chunk`)."""
    return None if text in ("null", "none", "None") else "auto" if text == "auto" else int(text)


def device_name(device: torch.device | str) -> str:
    """``NVIDIA H100 ...`` or ``CPU (n threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
