"""Information loss and accuracy of the network *with* the bottleneck (Table 1 of Schulz et al., ICLR 2020).

For each image: ``info_per_k`` = L_I / k (eq. 6's information term averaged over the k = h w c features,
nats, last forward pass), ``top1`` / ``top5`` = share of the noisy copies whose top-1 / top-5 classes under
the optimised bottleneck contain the target; the same three for the untrained bottleneck (alpha = 5
everywhere, the "Initial" column, ``initial_*``) and the plain network's ``model_top1`` / ``model_top5``
(the "Original" column).

The bottleneck's quantities are the method's own auxiliary results (``bottleneck/*``, see
:meth:`xattr.methods.iba.PerSampleIBA.explain` and :meth:`xattr.methods.iba.ReadoutIBA.explain`), which
the metric declares in ``needs``: no second optimisation, no access to the method's internals. For methods
without a bottleneck (or a Readout IBA, which keeps no untrained read-out) the missing scores are NaN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xattr.metrics.base import Metric, MetricResult

KEYS = ("info_per_k", "top1", "top5")


class BottleneckAccuracy(Metric):
    """Table 1 of Schulz et al.: the information per feature and the top-1 / top-5 accuracy of the network with
    the optimised bottleneck (the method's ``bottleneck/*`` results), with the untrained one (``initial_*``,
    ``initial: true``) and without one (``model_top1`` / ``model_top5``); NaN where the method has no
    bottleneck. See the module's docstring."""

    name = "bottleneck_accuracy"
    paper = "Schulz et al., ICLR 2020, Table 1"
    needs = tuple(f"bottleneck/{p}{k}" for p in ("", "initial_") for k in KEYS)

    def __init__(self, initial: bool = True) -> None:
        self.initial = initial

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: one clean forward (the model's own accuracy); the bottleneck's are the method's."""
        return 1.0

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        logits = model(x)
        t = target.view(-1, 1)
        scores = {"model_top1": (logits.argmax(1, keepdim=True) == t).float().squeeze(1),
                  "model_top5": (logits.topk(min(5, logits.shape[1]), 1).indices == t).any(1).float()}
        nan = torch.full_like(scores["model_top1"], float("nan"))
        for prefix in ("", "initial_") if self.initial else ("",):
            for k in KEYS:
                v = extras.get(f"bottleneck/{prefix}{k}")
                scores[prefix + k] = nan if v is None else v.to(x.device).float()
        return MetricResult(scores=scores)
