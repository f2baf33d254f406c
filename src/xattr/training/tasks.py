"""Lightning modules for the chest X-ray recipes: multi-label classification and one-output regression.

Both are :class:`~xattr.training.module.Classifier` (same optimizer / scheduler wiring and checkpoints)
with a configured loss (:mod:`xattr.training.losses`) instead of cross-entropy:

- :class:`MultiLabelClassifier` (``loss=bce | weighted_bce``): ``label`` is ``(B, K)`` multi-hot; logs
  ``<split>_loss`` and, per validation / test epoch, the AUC of the ROC and the average precision per finding
  (``<split>_auc/<finding>``, ``<split>_ap/<finding>``; torchmetrics' binary AUROC / average precision) and
  their means over the findings that have both positives and negatives in the split (``<split>_auc``,
  ``<split>_ap``; a finding without positives gives NaN and is left out of the mean), as ch. 8 reports
  (AUC 0.790 vs 0.788, AP 0.243 vs 0.236, L1584).
- :class:`Regressor` (``loss=mse | weighted_mse``, BrixIA's global score): ``label`` ``(B,)`` float; logs
  ``<split>_loss`` and ``<split>_mae``.

:func:`task_module` picks the module from ``loss.task`` and fits the loss on the training labels (the
``dataset`` weightings read their counts there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from xattr.training.module import Classifier


def per_finding_scores(scores: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """AUC and AP of each column of ``(N, K)`` ``scores`` against ``(N, K)`` 0/1 ``labels``; NaN for a column
    without both positives and negatives."""
    aucs, aps = [], []
    for k in range(labels.shape[1]):
        y = labels[:, k].long()
        if y.min() == y.max():
            aucs.append(math.nan)
            aps.append(math.nan)
            continue
        aucs.append(float(binary_auroc(scores[:, k].float(), y)))
        aps.append(float(binary_average_precision(scores[:, k].float(), y)))
    return aucs, aps


def _nanmean(v: Sequence[float]) -> float:
    ok = [x for x in v if not math.isnan(x)]
    return sum(ok) / len(ok) if ok else math.nan


class MultiLabelClassifier(Classifier):
    """Multi-label training with ``loss`` and per-finding AUC / AP (module docstring)."""

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 scheduler_interval: str = "epoch", findings: Sequence[str] = ()) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.loss = loss
        self.findings = list(findings)
        self._seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        logits = self.net(batch["x"])
        label = batch["label"].float()
        loss = self.loss(logits, label)
        self.log(f"{split}_loss", loss, on_step=split == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(label), sync_dist=split != "train")
        if split in self._seen:
            self._seen[split].append((logits.detach().sigmoid().cpu(), label.detach().cpu()))
        return loss

    def _epoch_scores(self, split: str) -> None:
        seen, self._seen[split] = self._seen[split], []
        if not seen or self.trainer.sanity_checking:
            return
        scores = torch.cat([s for s, _ in seen])
        labels = torch.cat([y for _, y in seen])
        aucs, aps = per_finding_scores(scores, labels)
        names = self.findings or [str(k) for k in range(len(aucs))]
        out = {f"{split}_auc": _nanmean(aucs), f"{split}_ap": _nanmean(aps)}
        for name, a, p in zip(names, aucs, aps):
            out[f"{split}_auc/{name}"], out[f"{split}_ap/{name}"] = a, p
        self.log_dict(out, prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        self._epoch_scores("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_scores("test")


class Regressor(Classifier):
    """One-output regression with ``loss`` (MSE / weighted MSE); logs the loss and the MAE."""

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 scheduler_interval: str = "epoch") -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval)
        self.loss = loss

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        out = self.net(batch["x"]).reshape(-1)
        y = batch["label"].float().reshape(-1)
        loss = self.loss(out, y)
        n, sync = len(y), split != "train"
        self.log(f"{split}_loss", loss, on_step=split == "train", on_epoch=True, prog_bar=True, batch_size=n,
                 sync_dist=sync)
        self.log(f"{split}_mae", (out - y).abs().mean(), on_step=False, on_epoch=True, batch_size=n, sync_dist=sync)
        return loss


def training_labels(data: Any) -> torch.Tensor:
    """The labels of the training split (``data.train_set``, a ``Subset`` of a dataset with ``labels``)."""
    ds, idx = data.train_set, None
    while hasattr(ds, "indices") or hasattr(ds, "base"):
        if hasattr(ds, "indices"):
            idx = list(ds.indices) if idx is None else [ds.indices[i] for i in idx]
            ds = ds.dataset
        else:
            ds = ds.base
    labels = torch.as_tensor(ds.labels if not callable(ds.labels) else ds.labels(), dtype=torch.float32)
    return labels if idx is None else labels[idx]


def task_module(loss: nn.Module, net: nn.Module, optimizer: Callable, scheduler: Callable | None,
                interval: str, data: Any, findings: Sequence[str] = ()) -> Classifier:
    """The Lightning module for ``loss.task`` (``multilabel`` | ``regression``), its loss fitted on the
    training labels."""
    loss.fit(training_labels(data))
    if loss.task == "multilabel":
        return MultiLabelClassifier(net, loss, optimizer, scheduler, interval, findings)
    if loss.task == "regression":
        return Regressor(net, loss, optimizer, scheduler, interval)
    return Classifier(net, optimizer, scheduler, interval)
