"""Small helpers shared by the baseline wrappers (chunking, baselines); seeding, hooks and checks live in
:mod:`xattr.core`.

Memory knob of every baseline: ``chunk`` = forward rows per device call (``None``: everything in one call);
each wrapper maps it to its library's own parameter and documents the mapping. Results never depend on it."""

from __future__ import annotations

import torch

from xattr.errors import unknown


def items_per_call(n_items: int, rows_per_item: int, chunk: int | None) -> int:
    """How many items (images, windows) of ``rows_per_item`` forward rows each fit in ``chunk`` rows per
    device call: between 1 and ``n_items`` (``chunk=None``: all of them)."""
    if chunk is None:
        return n_items
    return max(1, min(n_items, chunk // max(1, rows_per_item)))


def image_mean_baseline(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean colour, the ``Mean()`` baseline of the IBA paper code."""
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()


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
