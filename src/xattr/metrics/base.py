"""Common interface of every evaluation metric (Quantus style: one class, called on batches).

A metric is configured at construction and called as
``metric(model, x, target, maps, **extras) -> MetricResult``, batched on the model's device:

- ``x`` ``(B, C, H, W)`` (or ``(B, L)`` tokens), ``target`` ``(B,)``, ``maps`` ``(B, 1, H, W)`` (or ``(B, L)``);
- ``extras`` carry what a metric declares in ``needs``, and the engine passes exactly those that exist:
  batch keys (``boxes``: list of ``(N_i, 4)`` xyxy tensors in ``x``'s pixel coordinates; ``mask``:
  ``(B, L)`` bool valid tokens), the run's context (``method``, the :class:`~xattr.methods.base.Attribution`;
  ``method_factory``, ``model -> fitted method``, for sanity checks) and the method's auxiliary results by
  name (``bottleneck/top1``, ``stages/feature``; see :class:`~xattr.methods.base.Explanation`).

It returns per-sample tensors and keeps no state between calls. :meth:`Metric.summarise` turns a dataset's
per-image scores into the numbers a table reports (mean, standard error, count; degradation's eq.-8
scaling); work that accumulates over the dataset in other ways (pooled correlations) is an analysis
(:mod:`xattr.analyses`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from xattr.core.params import record_arguments
from xattr.core.summary import mean_and_sem


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
    """Base of all metrics (see the module docstring): configured at construction, called on batches as
    ``metric(model, x, target, maps, **extras) -> MetricResult`` (per-image scores, curves), no state kept.
    Build one by name with ``xattr.metric(name, **overrides)``; subclasses implement :meth:`evaluate`."""

    name: ClassVar[str] = "metric"
    #: extras this metric reads (batch keys, ``method``/``method_factory``, auxiliary result names)
    needs: ClassVar[tuple[str, ...]] = ()
    #: the paper (and equation) this metric follows: a citation for readers of the code; no code reads it
    paper: ClassVar[str] = ""
    #: the argument that bounds the rows per device call (``"chunk"``, :mod:`xattr.core.chunk`), or None
    memory_knob: ClassVar[str | None] = None
    #: (low, high): the forwards a call really makes, as factors of :meth:`forwards_per_image` (``(1, 1)``: exact)
    cost_bounds: ClassVar[tuple[float, float]] = (1.0, 1.0)

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        record_arguments(obj, args, kwargs)
        return obj

    @property
    def hparams(self) -> dict:
        """The arguments this metric was built with, defaults filled in."""
        return dict(getattr(self, "_hparams", {}))

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Forward-pass equivalents per image this metric runs for an input of ``shape`` ``(C, H, W)`` or
        ``(L,)`` (a backward counts 2), given the method's own ``method_cost`` (a sanity check re-runs the
        method). Default: none (0); every metric states its own (``tests/test_plugin_cost.py``)."""
        return 0.0

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

    def summarise(self, scores: dict[str, torch.Tensor]) -> dict[str, tuple[float, float, int]]:
        """Dataset summary of this metric's per-image ``scores`` (name -> ``(N,)``, NaN = filtered image):
        name -> (mean, standard error, count). Default: mean and s.e. of each score."""
        return {k: mean_and_sem(v) for k, v in scores.items()}
