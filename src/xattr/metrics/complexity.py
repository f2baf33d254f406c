"""Complexity of a map: sparseness (the Gini index, Chalasani et al.) and complexity (the entropy of the
fractional contributions, Bhatt et al.). No forward pass. Maps ``(B, 1|C, H, W)`` are averaged over channels
first (``flat_map``), then taken as ``|map|`` as both papers do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xattr.core.ranking import sorted_rows
from xattr.metrics._perturb import flat_map
from xattr.metrics.base import Metric, MetricResult


class _MapOnly(Metric):
    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: free (the map alone; no forward)."""
        return 0.0


class Sparseness(_MapOnly):
    """Sparseness (Chalasani et al., "Concise explanations of neural networks using adversarial training",
    ICML 2020): the Gini index of ``|a|`` sorted ascending, ``G = sum_i (2i - n - 1) a_(i) / (n sum_i a_i)``
    (i = 1..n): 0 for a uniform map, ``1 - 1/n`` for a one-hot map; higher = sparser. An all-zero map scores
    NaN (Quantus adds 1e-7 to every entry first, which makes it 0 and shifts other scores by ~1e-7)."""

    name = "sparseness"
    paper = "Chalasani et al., ICML 2020 (Gini index)"

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        a = sorted_rows(flat_map(maps, x).double().abs())
        n = a.shape[1]
        i = torch.arange(1, n + 1, device=a.device, dtype=torch.float64)
        total = a.sum(1)
        g = ((2 * i - n - 1) * a).sum(1) / (n * total)
        g = torch.where(total > 0, g, torch.full_like(g, float("nan")))
        return MetricResult(scores={"sparseness": g.float()})


class Complexity(_MapOnly):
    """Complexity (Bhatt et al., "Evaluating and aggregating feature-based model explanations", IJCAI 2020): the entropy of the fractional contributions ``P_i = |a_i| / sum_j |a_j|``,
    ``-sum_i P_i ln P_i`` (``0 ln 0 = 0``): ``ln n`` for a uniform map, 0 for a one-hot map; lower = simpler.
    An all-zero map scores NaN."""

    name = "complexity"
    paper = "Bhatt et al., IJCAI 2020 (complexity)"

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        a = flat_map(maps, x).double().abs()
        total = a.sum(1, keepdim=True)
        p = a / total.clamp_min(1e-300)
        h = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(1)
        h = torch.where(total[:, 0] > 0, h, torch.full_like(h, float("nan")))
        return MetricResult(scores={"complexity": h.float()})
