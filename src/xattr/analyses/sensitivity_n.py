"""Sensitivity-N pooled over the dataset (IBA paper protocol, Fig. 6 of Schulz et al., ICLR 2020): one
Pearson correlation per ``n`` over all (image, mask) pairs of the dataset, instead of one per image.

The metric :class:`xattr.metrics.sensitivity_n.SensitivityN` (``protocol: iba``) returns, per image, the
attribution sums ``attr_sum`` and output drops ``output_drop`` of its masks (``(B, N_n * M)``, the ``n`` of
each column on the x axis). :class:`PooledSensitivityN` accumulates their sufficient statistics per ``n``
(count, sums, sums of squares and products, float64) batch by batch, so the dataset's correlation needs
no second pass and a killed run resumes. The sums are of values shifted by a per-n constant (each side's first
finite value: the shifted-data algorithm, Chan, Golub & LeVeque 1983): a correlation does not depend on a
shift, and without it the one-pass variance ``sum a^2 - (sum a)^2 / n`` of sums far from 0 with a small
spread rounds to nothing (sums around 1e9 varying by 1e-6: 2.8e-8 instead of 0.59), and equal values such as
1.1 left a rounding residue whose correlation came out as 0.0 (scipy's ``pearsonr``: NaN); shifted by one of
them they are exactly 0; :func:`pooled_curve` is the same correlation computed at once
from all pairs (used by tests and to re-pool the stored curves of runs made before this analysis).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn

from xattr.analyses.base import Analysis
from xattr.metrics._perturb import pearson

STATS = ("count", "sa", "sd", "saa", "sdd", "sad")
SHIFTS = ("ka", "kd")  # the values subtracted before summing, per n (0 in states saved before the shift)


def pooled_curve(attr_sum: torch.Tensor, output_drop: torch.Tensor, x_axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IBA-paper protocol at once: one Pearson correlation per n over all (image, mask) pairs.

    ``attr_sum``, ``output_drop``: ``(N_images, N_n * M)`` (the concatenated per-batch curves of the same
    name); ``x_axis``: ``(N_n * M,)`` the n of each column. Returns (n values, correlation per n).
    """
    values = torch.unique_consecutive(x_axis)
    corr = torch.stack([pearson(attr_sum[:, x_axis == v].reshape(-1), output_drop[:, x_axis == v].reshape(-1)) for v in values])
    return values, corr.float()


class PooledSensitivityN(Analysis):
    """Streaming :func:`pooled_curve` over a run. ``metric``: the name of the Sensitivity-N metric in the
    run's ``metric`` config whose ``attr_sum`` / ``output_drop`` curves are pooled."""

    name = "pooled_sensitivity_n"
    needs = ("results",)
    paper = "Schulz et al., ICLR 2020, Fig. 6 (Sensitivity-N, one correlation per n over all images)"

    def __init__(self, metric: str = "sensitivity_n") -> None:
        self.metric = metric
        self.n: torch.Tensor | None = None  # (N_n,) float64
        self.stats: dict[str, torch.Tensor] = {}

    def update(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               **extras: Any) -> None:
        res = (extras.get("results") or {}).get(self.metric)
        if res is None or "attr_sum" not in res.curves:
            raise KeyError(f"pooled_sensitivity_n needs metric {self.metric!r} with protocol 'iba' "
                           "(curves attr_sum, output_drop) in this run")
        self.add(res.curves["attr_sum"], res.curves["output_drop"], res.x_axis["attr_sum"])

    def add(self, attr_sum: torch.Tensor, output_drop: torch.Tensor, x_axis: torch.Tensor) -> None:
        """Accumulate ``(B, N_n * M)`` pairs whose columns have the n values ``x_axis``."""
        a, d, xa = attr_sum.detach().double().cpu(), output_drop.detach().double().cpu(), x_axis.double().cpu()
        values = torch.unique_consecutive(xa)
        if self.n is None:
            self.n = values
            self.stats = {k: torch.zeros(len(values), dtype=torch.float64) for k in STATS + SHIFTS}
        elif not torch.equal(self.n, values):
            raise ValueError(f"Sensitivity-N n values changed between batches: {self.n.tolist()} vs {values.tolist()}")
        for j, v in enumerate(values):
            aj, dj = a[:, xa == v].reshape(-1), d[:, xa == v].reshape(-1)
            ok = torch.isfinite(aj) & torch.isfinite(dj)
            aj, dj = aj[ok], dj[ok]
            if self.stats["count"][j] == 0 and aj.numel():  # the first pair of this n fixes its shift
                self.stats["ka"][j], self.stats["kd"][j] = aj[0], dj[0]
            aj, dj = aj - self.stats["ka"][j], dj - self.stats["kd"][j]
            for k, val in zip(STATS, (float(aj.numel()), aj.sum(), dj.sum(), (aj * aj).sum(), (dj * dj).sum(),
                                      (aj * dj).sum())):
                self.stats[k][j] += val

    def correlation(self) -> torch.Tensor:
        s = self.stats
        c = s["count"]
        cov = s["sad"] - s["sa"] * s["sd"] / c
        va = s["saa"] - s["sa"] ** 2 / c
        vd = s["sdd"] - s["sd"] ** 2 / c
        den = (va * vd).clamp_min(0).sqrt()
        return torch.where(den > 0, cov / den, torch.full_like(den, float("nan")))

    def compute(self) -> pd.DataFrame:
        if self.n is None:
            return pd.DataFrame(columns=["n", "correlation", "pairs"])
        return pd.DataFrame({"n": self.n.numpy(), "correlation": self.correlation().numpy(),
                             "pairs": self.stats["count"].numpy().astype(int)})

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "n": self.n, "stats": {k: v.clone() for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.stats = state["n"], dict(state["stats"])
        if self.n is not None and "ka" not in self.stats:  # saved before the shift: sums of the values themselves
            self.stats.update({k: torch.zeros(len(self.n), dtype=torch.float64) for k in SHIFTS})

    def merge(self, other: PooledSensitivityN) -> None:
        if other.n is None:
            return
        if self.n is None:
            self.n, self.stats = other.n.clone(), {k: v.clone() for k, v in other.stats.items()}
            return
        if not torch.equal(self.n, other.n):
            raise ValueError("cannot merge Sensitivity-N states with different n values")
        empty = self.stats["count"] == 0  # no pair here yet: take the other's shift (these sums are 0)
        for k in SHIFTS:
            self.stats[k] = torch.where(empty, other.stats[k], self.stats[k])
        o = _shifted_to(other.stats, self.stats["ka"], self.stats["kd"])
        for k in STATS:
            self.stats[k] += o[k]


def _shifted_to(stats: dict[str, torch.Tensor], ka: torch.Tensor, kd: torch.Tensor) -> dict[str, torch.Tensor]:
    """``stats``' sums re-expressed for the shifts ``ka``, ``kd``: with ``x = a - ka_old`` and ``da = ka_old - ka``,
    ``sum (x + da) = sa + c da``, ``sum (x + da)^2 = saa + 2 da sa + c da^2``, ``sum (x + da)(y + dd) = sad + dd sa
    + da sd + c da dd`` (exact in exact arithmetic; the shifts of one run's shards are close, so the terms are
    small). Where ``stats`` hold no pair yet its shift does not matter."""
    c, da, dd = stats["count"], stats["ka"] - ka, stats["kd"] - kd
    sa, sd = stats["sa"], stats["sd"]
    return {"count": c, "sa": sa + c * da, "sd": sd + c * dd, "saa": stats["saa"] + 2 * da * sa + c * da * da,
            "sdd": stats["sdd"] + 2 * dd * sd + c * dd * dd, "sad": stats["sad"] + dd * sa + da * sd + c * da * dd}

