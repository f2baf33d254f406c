"""How long a run will take on this machine, said before it starts: each method's and metric's cost in
forward-pass equivalents per image (a backward counts 2), times one measured forward of the model. The costs
are the objects' own (``forwards_per_image``: every method and metric states its rule in its docstring).

Estimates, not guarantees: batching, the IBA family's tail-only forwards and early stops make real runs
somewhat faster; the order of magnitude is what lets a user choose ``dataset.limit`` or a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from xattr.methods.base import Attribution
from xattr.metrics.base import Metric


def own_seconds(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes on cores of its own: the lesser of its wall time and this process's CPU time
    (``time.process_time``, all threads). On a CPU shared with other jobs the wall time also counts their turns
    (a one-thread InputIBA run beside two others was estimated at twice the time it then took per image,
    issue 31); with several threads on free cores the CPU time adds the threads up and the wall time is less."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return min(time.perf_counter() - w0, time.process_time() - c0)


@torch.no_grad()
def seconds_per_forward(net: nn.Module, x: torch.Tensor, batch: int = 4) -> float:
    """Seconds of one image's forward within a batch of ``batch`` (median of 3 after a warm-up, each
    :func:`own_seconds`: what a run takes when the cores are its own)."""
    xb = x[:1].expand(batch, *x.shape[1:]).contiguous()
    net(xb)
    times = sorted(own_seconds(lambda: net(xb)) for _ in range(3))
    return times[1] / batch


def estimate(method: Attribution, metrics: dict[str, Metric], net: nn.Module, example: torch.Tensor,
             n_images: int, per_forward: float | None = None, fit: float = 0.0) -> tuple[float, str]:
    """(seconds, one-line explanation) for ``n_images`` images like ``example`` ``(1, ...)``; ``per_forward``:
    seconds of one forward when already measured (:func:`seconds_per_forward`), else measured here; ``fit``:
    forwards the method spends once before the first image (:meth:`Attribution.fit_forwards`)."""
    shape = tuple(example.shape[1:])
    m = float(method.forwards_per_image(shape))
    costs = {name: float(metric.forwards_per_image(shape, m)) for name, metric in metrics.items()}
    per_image = m + sum(costs.values())
    per_forward = seconds_per_forward(net, example) if per_forward is None else per_forward
    sec = (n_images * per_image + fit) * per_forward
    parts = [f"{method.name} ~{m:.0f}"] + [f"{k} ~{v:.0f}" for k, v in costs.items() if v]
    first = f"~{fit:,.0f} forwards once to fit {method.name} (cached after), then " if fit > 0 else ""
    return sec, f"{first}{', '.join(parts)} forwards per image"


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
