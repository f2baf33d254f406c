"""Learning-rate schedules that torch has no single class for (config group ``scheduler``)."""

from __future__ import annotations

import math

import torch

from xattr.errors import XattrConfigError


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                  min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` scheduler steps (from ``1 / (warmup + 1)`` of the base rate), then a
    half cosine from the base rate down to ``min_factor`` of it at step ``total`` (Loshchilov & Hutter, 2017,
    without restarts; the ViT recipe of Dosovitskiy et al., 2021). A step is an epoch or an optimiser step,
    as the node's ``interval`` says."""
    warmup, total = int(warmup), int(total)
    if warmup < 0 or total <= warmup:
        raise XattrConfigError(f"bad scheduler.warmup {warmup} / scheduler.total {total}; valid choices: "
                               "0 <= warmup < total")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = min(1.0, (step - warmup) / (total - warmup))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
