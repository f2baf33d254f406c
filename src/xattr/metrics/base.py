"""Common interface of every evaluation metric (Quantus style: one class, called on batches).

A metric is configured at construction and called as
``metric(model, x, target, maps, **extras) -> MetricResult``, batched on the model's device:

- ``x`` ``(B, C, H, W)`` (or ``(B, L)`` tokens), ``target`` ``(B,)``, ``maps`` ``(B, 1, H, W)`` (or ``(B, L)``);
- ``extras`` carry what some metrics need: ``boxes`` (list of ``(N_i, 4)`` xyxy tensors in ``x``'s pixel
  coordinates), ``method`` (an :class:`~xattr.methods.base.Attribution`, for sanity checks), ``mask``
  (``(B, L)`` bool valid tokens). Metrics ignore extras they do not use.

It returns per-sample tensors and keeps no state between calls; summaries over a dataset (means,
standard errors, correlations pooled over images) are separate functions used by ``xattr.tables``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class MetricResult:
    """Per-sample outputs of one metric call.

    ``scores``: name -> ``(B,)`` float (NaN where a sample is filtered out, e.g. box too large);
    ``curves``: name -> ``(B, T)`` float; ``x_axis``: name -> ``(T,)`` abscissa of each curve.
    """

    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    curves: dict[str, torch.Tensor] = field(default_factory=dict)
    x_axis: dict[str, torch.Tensor] = field(default_factory=dict)

    def cpu(self) -> MetricResult:
        return MetricResult(
            {k: v.detach().float().cpu() for k, v in self.scores.items()},
            {k: v.detach().float().cpu() for k, v in self.curves.items()},
            {k: v.detach().float().cpu() for k, v in self.x_axis.items()},
        )


class Metric(ABC):
    """Base of all metrics. Subclasses implement :meth:`evaluate`."""

    name: ClassVar[str] = "metric"
    #: for each score name, whether higher is better (tables sort and label with it)
    higher_is_better: ClassVar[dict[str, bool]] = {}
    paper: ClassVar[str] = ""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        if maps.shape[0] != x.shape[0]:
            raise ValueError(f"maps batch {maps.shape[0]} != images batch {x.shape[0]}")
        with torch.no_grad():
            return self.evaluate(model, x, target.to(x.device).long(), maps.to(x.device).float(), **extras)

    @abstractmethod
    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult: ...


def mean_and_sem(values: torch.Tensor) -> tuple[float, float, int]:
    """Mean, standard error of the mean and count of the finite entries of ``values``."""
    v = values[torch.isfinite(values)].double()
    n = v.numel()
    if n == 0:
        return float("nan"), float("nan"), 0
    sem = float(v.std(unbiased=True) / n**0.5) if n > 1 else float("nan")
    return float(v.mean()), sem, n
