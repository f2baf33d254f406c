"""A run's summary table from its per-image rows: one row per metric score (mean, standard error, count),
each metric summarising its own scores (:meth:`xattr.metrics.base.Metric.summarise`), plus the model's
top-1 accuracy. Used by the run report and by ``python -m xattr.table``, so both show the same numbers."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from xattr.core.summary import mean_and_sem
from xattr.metrics.base import Metric

META = ("id", "index", "label", "target", "prob", "top1", "top1_prob")


def summarise_run_scores(per_image: pd.DataFrame, metrics: Mapping[str, Metric] | None = None) -> pd.DataFrame:
    """Columns ``score`` (``<metric>/<score>``), ``mean``, ``sem``, ``n``. A metric of the run that is in
    ``metrics`` summarises its own columns; other columns get mean and s.e. of their finite values."""
    metrics = metrics or {}
    summary: dict[str, tuple[float, float, int]] = {}
    for col in per_image.columns:
        if col not in META:
            summary[col] = mean_and_sem(torch.tensor(per_image[col].to_numpy(dtype=np.float64)))
    for mname, metric in metrics.items():
        prefix = f"{mname}/"
        scores = {c[len(prefix):]: torch.tensor(per_image[c].to_numpy(dtype=np.float64))
                  for c in per_image.columns if c.startswith(prefix)}
        if scores:
            summary.update({prefix + k: tuple(v) for k, v in metric.summarise(scores).items()})
    rows = [{"score": k, "mean": m, "sem": s, "n": n} for k, (m, s, n) in summary.items()]
    if "label" in per_image and (per_image["label"] >= 0).any():
        lab = per_image[per_image["label"] >= 0]
        mean, sem, n = mean_and_sem(torch.tensor((lab["top1"] == lab["label"]).to_numpy(dtype=np.float64)))
        rows.append({"score": "top1_accuracy", "mean": mean, "sem": sem, "n": n})
    return pd.DataFrame(rows, columns=["score", "mean", "sem", "n"])
