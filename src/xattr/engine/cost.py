"""How long a run will take on this machine, said before it starts: each method's and metric's cost in
forward-pass equivalents per image (a backward counts 2), times one measured forward of the model.

Estimates, not guarantees: batching, the IBA family's tail-only forwards and early stops make real runs
somewhat faster; the order of magnitude is what lets a user choose ``dataset.limit`` or a GPU.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from xattr.methods.base import Attribution
from xattr.metrics.base import Metric


def _get(obj, name: str, default: float = 1.0) -> float:
    v = getattr(obj, name, default)
    return float(default if v is None else v)


def method_forwards(method: Attribution, shape: tuple[int, ...]) -> float:
    """Forward equivalents per image of ``method`` for inputs of ``shape`` (C, H, W) or (L,)."""
    name = type(method).__name__
    if name in ("RandomAttribution", "SavedMaps"):
        return 0.0
    if name == "ReadoutIBA":
        return 1.0
    if name == "MultiLayerIBA":
        return sum(method_forwards(m, shape) for m in getattr(method, "methods", []))
    if hasattr(method, "feature_iba"):  # InputIBA: feature IBA, the WGAN (head passes), input bottleneck
        fi = method.feature_iba
        gan = method.gan
        return (fi.steps * fi.copies * 3 + gan.epochs * gan.n_targets * 3 / max(1, gan.critic)
                + method.steps * method.copies * 3)
    if hasattr(method, "steps") and hasattr(method, "copies"):  # the IBA family
        return _get(method, "steps") * _get(method, "copies") * 3 + 1
    if name in ("IntegratedGradients", "SemanticAttribution"):  # semantic: IG at one layer (eq. 6)
        return _get(method, "n_steps", 50) * 3
    if name == "SmoothGrad":
        return _get(method, "n_samples", 50) * 3
    if name == "LIME":
        return _get(method, "n_samples", 1000)
    if name == "DeepSHAP":
        return _get(method, "n_baselines", 10) * 6
    if name == "Occlusion" and len(shape) == 3:
        w, s = _get(method, "window", 16), _get(method, "stride", 8)
        return ((shape[1] - w) // s + 1) * ((shape[2] - w) // s + 1)
    if name == "ExtremalPerturbation":
        return _get(method, "max_iter", 800) * 3 * max(1, len(getattr(method, "areas", [1])))
    return 3.0  # one forward and one backward


def metric_forwards(metric: Metric, shape: tuple[int, ...], method_cost: float) -> float:
    """Forward equivalents per image of ``metric``."""
    name = type(metric).__name__
    pixels = shape[-1] * shape[-2] if len(shape) == 3 else shape[-1]
    if name == "InsertionDeletion":  # T steps per curve, or ``points`` of them (``points: all`` -> None)
        steps = math.ceil(pixels * _get(metric, "max_fraction", 1.0) / _get(metric, "per_step", 10))
        points = getattr(metric, "points", None)
        return 2 * (steps if points is None else min(int(points), steps)) + 1
    if name == "Degradation":
        return 2 * _get(metric, "n_points", 100)
    if name == "SensitivityN":
        n = getattr(metric, "n", None)
        return _get(metric, "n_masks", 100) * (len(n) if n else 16) + 1
    if name == "CascadingRandomisation":
        layers = getattr(metric, "layers", None)
        return (len(layers) if layers else 10) * method_cost
    if name == "BottleneckAccuracy":
        return 1.0
    return 0.0


@torch.no_grad()
def seconds_per_forward(net: nn.Module, x: torch.Tensor, batch: int = 4) -> float:
    """Wall seconds of one image's forward within a batch of ``batch`` (median of 3, after a warm-up)."""
    xb = x[:1].expand(batch, *x.shape[1:]).contiguous()
    net(xb)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        net(xb)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1] / batch


def estimate(method: Attribution, metrics: dict[str, Metric], net: nn.Module, example: torch.Tensor,
             n_images: int) -> tuple[float, str]:
    """(seconds, one-line explanation) for ``n_images`` images like ``example`` ``(1, ...)``."""
    shape = tuple(example.shape[1:])
    m = method_forwards(method, shape)
    costs = {name: metric_forwards(metric, shape, m) for name, metric in metrics.items()}
    per_image = m + sum(costs.values())
    sec = n_images * per_image * seconds_per_forward(net, example)
    parts = [f"{method.name} ~{m:.0f}"] + [f"{k} ~{v:.0f}" for k, v in costs.items() if v]
    return sec, f"{', '.join(parts)} forwards per image"


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
