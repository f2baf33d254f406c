"""Training losses (config group ``loss``): cross-entropy, multi-label BCE and weighted BCE, MSE and weighted
MSE (dissertation ch. 8 eq. 6-7, L1508-L1516; ch. 9 eq. 1-2, L1700-L1712).

Each loss is an ``nn.Module`` called ``loss(logits, label)`` with a class attribute ``task``
(``multiclass`` | ``multilabel`` | ``regression``: which Lightning module and which metrics
:mod:`xattr.training.tasks` uses) and ``fit(labels)``, called once with the training split's labels before
training (the ``dataset`` weightings read their counts there; the others ignore it).

**Weighted BCE** (``loss=weighted_bce``) is ``BCEWithLogits(pos_weight=beta)`` averaged over all ``B x K``
labels, with

- ``weighting: batch`` (eq. 6 L1508 / ch. 9 L1705: "the ratio of the number of negative labels to the number
  of positive labels in a batch"): one scalar ``beta = #neg / #pos`` over all labels of the batch; a batch
  with ``#pos = 0`` gets ``beta = #neg`` (the count is taken as 1, so it stays finite);
- ``weighting: dataset`` (the dissection code): per class ``beta_c = (N - P_c) / P_c`` over the ``N``
  training images, ``P_c`` of them positive for ``c`` (``P_c = 0`` gives ``N``).

**Weighted MSE** (``loss=weighted_mse``, BrixIA's global score, ch. 9 eq. 2 L1712): ``mean_n beta_n (f(x_n) -
y_n)^2``. The dissertation does not define ``beta`` for the regression; here it is the inverse frequency of
the sample's score value, ``beta(v) = N / (V * count(v))`` over the ``V`` score values present (mean weight 1
over the set), counted over the training split (``weighting: dataset``) or the batch (``batch``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from xattr.core.checks import check_choice

WEIGHTINGS = ("batch", "dataset")


def batch_pos_weight(label: torch.Tensor) -> torch.Tensor:
    """``#neg / #pos`` over every label of the batch, one scalar; ``#pos = 0`` gives ``#neg``."""
    pos = label.sum()
    neg = label.numel() - pos
    return neg / pos.clamp_min(1)


def dataset_pos_weight(labels: torch.Tensor) -> torch.Tensor:
    """Per class ``(N - P_c) / P_c`` over an ``(N, K)`` multi-hot matrix; ``P_c = 0`` gives ``N``."""
    labels = torch.as_tensor(labels, dtype=torch.float32)
    n, pos = labels.shape[0], labels.sum(0)
    return (n - pos) / pos.clamp_min(1)


def inverse_frequency(values: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``beta(v) = N / (V * count(v))`` for each of ``values``, counts over ``reference`` (default: ``values``)."""
    ref = (values if reference is None else reference).flatten().round()
    uniq, counts = torch.unique(ref, return_counts=True)
    table = {float(u): float(len(ref)) / (len(uniq) * float(c)) for u, c in zip(uniq, counts)}
    return torch.tensor([table.get(float(v), 1.0) for v in values.flatten().round()], dtype=torch.float32,
                        device=values.device).view(values.shape)


class CrossEntropy(nn.Module):
    """Single-label cross-entropy on ``(B, C)`` logits and ``(B,)`` class indices (the default)."""

    task = "multiclass"

    def fit(self, labels: torch.Tensor | Sequence) -> None:
        pass

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label.long())


class BCE(nn.Module):
    """Multi-label BCE with logits, averaged over the ``B x K`` labels (eq. 6 with ``beta = 1``)."""

    task = "multilabel"

    def fit(self, labels: torch.Tensor | Sequence) -> None:
        pass

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, label.float())


class WeightedBCE(BCE):
    """``BCEWithLogits(pos_weight=beta)`` with ``beta`` per ``weighting`` (module docstring)."""

    def __init__(self, weighting: str = "batch") -> None:
        super().__init__()
        check_choice("loss.weighting", weighting, WEIGHTINGS)
        self.weighting = weighting
        self.register_buffer("pos_weight", torch.ones(0), persistent=False)

    def fit(self, labels: torch.Tensor | Sequence) -> None:
        if self.weighting == "dataset":
            self.pos_weight = dataset_pos_weight(torch.as_tensor(labels, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = label.float()
        if self.weighting == "batch":
            w = batch_pos_weight(label)
        else:
            if self.pos_weight.numel() != label.shape[1]:
                raise RuntimeError("weighting=dataset needs fit(training labels) before the first batch")
            w = self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, label, pos_weight=w.expand(label.shape[1]))


class MSE(nn.Module):
    """Mean squared error of a one-output regression (ch. 8 eq. 7 L1516)."""

    task = "regression"

    def fit(self, labels: torch.Tensor | Sequence) -> None:
        pass

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out.reshape(-1), label.float().reshape(-1))


class WeightedMSE(MSE):
    """``mean_n beta_n (f(x_n) - y_n)^2`` with inverse-frequency ``beta`` (ch. 9 eq. 2; module docstring)."""

    def __init__(self, weighting: str = "dataset") -> None:
        super().__init__()
        check_choice("loss.weighting", weighting, WEIGHTINGS)
        self.weighting = weighting
        self.reference: torch.Tensor | None = None

    def fit(self, labels: torch.Tensor | Sequence) -> None:
        self.reference = torch.as_tensor(labels, dtype=torch.float32).flatten()

    def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        y = label.float().reshape(-1)
        ref = y if self.weighting == "batch" or self.reference is None else self.reference
        beta = inverse_frequency(y.detach().cpu(), ref.cpu()).to(out.device)
        return (beta * (out.reshape(-1) - y) ** 2).mean()
