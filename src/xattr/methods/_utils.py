"""Small helpers shared by the baseline wrappers (seeding, chunking, validation)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from xattr.errors import XattrConfigError, unknown


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generators forked and seeded with ``seed`` (CPU and ``device``);
    the caller's random state is restored on exit. ``seed=None``: no seeding, no fork."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def check_choice(kind: str, value: object, choices: tuple) -> None:
    """Raise the one-line config error when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise unknown(kind, value, choices)


def check_positive(kind: str, value: float | int | None, allow_none: bool = False) -> None:
    """Raise a one-line config error when ``value`` is not > 0."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise XattrConfigError(f"{kind} must be > 0, got {value!r}")


def per_chunk(n: int, per_item: int, budget: int | None) -> int:
    """How many items of ``per_item`` forward passes each fit in a budget of ``budget`` passes (>= 1)."""
    if budget is None:
        return n
    return max(1, budget // max(1, per_item))


def image_mean_baseline(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean colour, the ``Mean()`` baseline of the IBA paper code."""
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()


@contextlib.contextmanager
def frozen_params(model: torch.nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` of the model's parameters for the block and restore each flag on exit.

    Libraries that call ``loss.backward()`` (pytorch-grad-cam, TorchRay) would otherwise accumulate ``.grad``
    into the caller's parameters; gradients w.r.t. inputs and activations are unaffected."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f, g in zip(params, flags, grads):
            p.requires_grad_(f)
            p.grad = g


def baseline_tensor(x: torch.Tensor, baseline: str | float) -> torch.Tensor:
    """The reference input for ``x``: ``"zero"`` (0 in normalised space, the dataset mean colour),
    ``"mean"`` (per-image channel mean, IBA paper code), or a float filled everywhere."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        return image_mean_baseline(x)
    raise unknown("baseline", baseline, ("zero", "mean", "<a float>"))
