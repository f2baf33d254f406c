"""Information loss and accuracy of the network *with* the bottleneck (Table 1 of Schulz et al., ICLR 2020).

For each image: ``info_per_k`` = L_I / k (eq. 6's information term averaged over the k = h w c features,
nats, last forward pass), ``top1`` / ``top5`` = share of the noisy copies whose top-1 / top-5 classes under
the optimised bottleneck contain the target; the same three for the untrained bottleneck (alpha = 5
everywhere: one step at learning rate 0, the "Initial" column, ``initial_*``) and the plain network's
``model_top1`` / ``model_top5`` (the "Original" column).

The Per-Sample result comes from the method's last ``attribute`` call on the same batch (no second
optimisation). For methods without a bottleneck only the ``model_*`` scores are defined (others NaN).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from xattr.metrics.base import Metric, MetricResult


class BottleneckAccuracy(Metric):
    name = "bottleneck_accuracy"
    higher_is_better = {"top1": True, "top5": True, "info_per_k": False}
    paper = "Schulz et al., ICLR 2020, Table 1"

    def __init__(self, initial: bool = True) -> None:
        self.initial = initial

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        from xattr.methods.iba.per_sample import PerSampleIBA, bottleneck_scores

        logits = model(x)
        t = target.view(-1, 1)
        scores = {"model_top1": (logits.argmax(1, keepdim=True) == t).float().squeeze(1),
                  "model_top5": (logits.topk(min(5, logits.shape[1]), 1).indices == t).any(1).float()}
        nan = torch.full_like(scores["model_top1"], float("nan"))
        method = extras.get("method")
        keys = ("info_per_k", "top1", "top5")
        if not isinstance(method, PerSampleIBA):
            scores.update({k: nan for k in keys} | {f"initial_{k}": nan for k in keys})
            return MetricResult(scores=scores)
        res = getattr(method, "last_result", None)
        if res is None or res.kl.shape[0] != x.shape[0]:
            res = method.optimize(x, target)
        scores.update(bottleneck_scores(res, target))
        if self.initial:
            init = copy.copy(method)
            init.steps, init.lr = 1, 0.0
            scores.update({f"initial_{k}": v for k, v in bottleneck_scores(init.optimize(x, target), target).items()})
        return MetricResult(scores=scores)
