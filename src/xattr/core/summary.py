"""Mean and standard error of per-image values (NaN marks a filtered image and is left out)."""

from __future__ import annotations

import torch


def mean_and_sem(values: torch.Tensor) -> tuple[float, float, int]:
    """Mean, standard error of the mean and count of the finite entries of ``values``."""
    v = torch.as_tensor(values)
    v = v[torch.isfinite(v)].double()
    n = v.numel()
    if n == 0:
        return float("nan"), float("nan"), 0
    sem = float(v.std(unbiased=True) / n**0.5) if n > 1 else float("nan")
    return float(v.mean()), sem, n
