"""Small helpers shared by the baseline wrappers (baselines); seeding, hooks, checks and the memory knob
``chunk`` live in :mod:`xattr.core` (:mod:`xattr.core.chunk`).

Memory knob of every baseline: ``chunk`` = forward rows per device call (``None``: everything in one call;
``auto``: sized for the device); each wrapper maps it to its library's own parameter and documents the
mapping. Results never depend on it."""

from __future__ import annotations

import torch

from xattr.errors import unknown


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
