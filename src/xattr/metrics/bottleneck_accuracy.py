"""Information loss and accuracy of the network *with* the bottleneck (Table 1 of Schulz et al., ICLR 2020).

For each image: ``info_per_k`` = L_I / k (eq. 6's information term averaged over the k = h w c features,
nats, last forward pass), ``top1`` / ``top5`` = share of the noisy copies whose top-1 / top-5 classes under
the optimised bottleneck contain the target; the same three for the untrained bottleneck (alpha = 5
everywhere: one step at learning rate 0, the "Initial" column, ``initial_*``) and the plain network's
``model_top1`` / ``model_top5`` (the "Original" column).

For Readout IBA, the read-out's alpha is applied with ``copies`` noisy copies per image (its training
setting) and the network tail gives the outputs. The Per-Sample result comes from the method's last ``attribute`` call on the same batch (no second
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

    def __init__(self, initial: bool = True, copies: int = 10) -> None:
        self.initial = initial
        self.copies = copies

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        from xattr.methods.iba.per_sample import PerSampleIBA, bottleneck_scores
        from xattr.methods.iba.readout import ReadoutIBA

        logits = model(x)
        t = target.view(-1, 1)
        scores = {"model_top1": (logits.argmax(1, keepdim=True) == t).float().squeeze(1),
                  "model_top5": (logits.topk(min(5, logits.shape[1]), 1).indices == t).any(1).float()}
        nan = torch.full_like(scores["model_top1"], float("nan"))
        method = extras.get("method")
        keys = ("info_per_k", "top1", "top5")
        if isinstance(method, ReadoutIBA):
            scores.update(bottleneck_scores(readout_result(method, x, self.copies), target))
            scores.update({f"initial_{k}": nan for k in keys})  # no untrained read-out is kept
            return MetricResult(scores=scores)
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


def readout_result(method, x: torch.Tensor, copies: int):
    """The Readout bottleneck's outcome on ``x``: alpha from the read-out network, ``copies`` noisy copies
    through the network tail (as in its training), KL of eq. 5 — an ``AlphaResult`` without steps."""
    from xattr.methods.iba.bottleneck import AlphaResult, draw_noise
    from xattr.methods.iba.tail import NetworkTail

    alpha, kl, r = method.alpha_and_kl(x)
    bn = method.bottleneck(method.layer)
    lam = bn.lam(alpha)
    eps = draw_noise((copies, *r.shape[1:]), r.shape[0], None, r.device)
    z = bn.sample(r[:, None], lam[:, None], eps).flatten(0, 1)
    tail = NetworkTail(method.model, method.layer, x, getattr(method, "tail_mode", "auto"))
    out = tail(z).float().reshape(r.shape[0], copies, -1)
    empty = torch.zeros(0, r.shape[0])
    return AlphaResult(alpha=alpha, kl=kl, outputs=out, losses=empty, info=empty)
