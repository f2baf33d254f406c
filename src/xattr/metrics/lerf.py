"""Input degradation, least relevant first (LeRF), as in Table 2 of the critical-pathways chapter
(dissertation ch. 5, sec. 4.3 L595, appendix C.2 L1984, Table 2; Samek et al. 2017).

Pixels are ranked by the map (per pixel: the channel-reduced map the method returns, by ``|map|`` unless
``rank: signed``); the least relevant ``q`` percent (``q`` = 1, 2, ..., 10) are removed by setting every
channel to ``fill`` (0 in normalised space: the dataset mean colour); the score at ``q`` is the absolute
fractional change of the softmax probability of the explained class (the predicted one in the paper; the
run's ``target``) on the *original* model (appendix C.2: "the pixel perturbation process is performed on
the original model, not on the critical paths"),

    ``change(q) = |p_0 - p_q| / p_0``,

and the per-image score is its trapezoid area over ``q`` divided by the range of ``q`` (so 0 <= AUC and
a constant change c gives c). Lower is better. The exact removal, steps and normalisation are not in any
public code (PathwayGrad and RoarTorch have no LeRF script): these are our reading of the text and of the
magnitudes of Table 2, and each is a config value. Ties between equal map values: stable (raster order)
or seeded random (:func:`xattr.metrics._perturb.ranks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xattr.core.checks import check_choice, module_device
from xattr.core.chunk import check_chunk, resolve_chunk
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import (
    OUTPUTS,
    PRECISIONS,
    TIES,
    chunked_readout,
    flat_map,
    ranks,
    readout,
    trapezoid,
)
from xattr.metrics.base import Metric, MetricResult

RANKS = ("abs", "signed")
DEFAULT_FRACTIONS = tuple(round(0.01 * k, 2) for k in range(1, 11))


class LeRF(Metric):
    """LeRF curve of the fractional output change and its normalised AUC (see module docstring).

    Args:
        fractions: shares of pixels removed (0.01 .. 0.10).
        rank: ``abs`` (rank by ``|map|``) | ``signed`` (by the signed value: most negative removed first).
        fill: value of removed pixels in normalised space (0).
        output: ``softmax`` (the paper) | ``logit`` | ``sigmoid``.
        ties, seed: tie-breaking of equal map values.
        chunk, precision: perturbed images per forward (int >= 1, null: all at once, auto: sized for the
            device); autocast precision.
    """

    name = "lerf"
    paper = "Khakzar et al., CVPR 2021 (dissertation ch. 5), Table 2 and Fig. 7a-c"
    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: one perturbed forward per fraction, plus the clean one."""
        return float(len(self.fractions) + 1)


    def __init__(self, fractions: Sequence[float] = DEFAULT_FRACTIONS, rank: str = "abs", fill: float = 0.0,
                 output: str = "softmax", ties: str = "stable", seed: int = 0, chunk: int | str | None = 256,
                 precision: str = "fp32") -> None:
        fr = [float(f) for f in fractions]
        if len(fr) < 2 or any(not 0 <= f <= 1 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
            raise XattrConfigError(f"bad fractions {list(fractions)!r}; valid choices: >= 2 increasing shares in [0, 1]")
        check_choice("rank", rank, RANKS)
        check_choice("output", output, OUTPUTS)
        check_choice("ties", ties, TIES)
        check_choice("precision", precision, PRECISIONS)
        self.fractions, self.rank, self.fill, self.output = fr, rank, float(fill), output
        self.ties, self.seed, self.precision = ties, int(seed), precision
        self.chunk = check_chunk(chunk)

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, _, h, w = x.shape
        v = flat_map(maps.to(device), x)
        if self.rank == "abs":
            v = v.abs()
        order = ranks(v, descending=False, ties=self.ties, seed=self.seed)  # 0 = least relevant
        q = torch.tensor(self.fractions, device=device, dtype=torch.float64)
        counts = (q * h * w).round().long()
        t = len(self.fractions)

        def build(jobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            i, s = jobs // t, jobs % t
            m = (order[i] < counts[s, None]).view(-1, 1, h, w)
            return torch.where(m, torch.full_like(x[i], self.fill), x[i]), target[i]

        chunk = resolve_chunk(self.chunk, model, x[:1], self.precision)
        p = chunked_readout(model, b * t, build, chunk, device, self.output, self.precision).view(b, t)
        p0 = readout(model(x), target, self.output)
        change = (p0[:, None] - p).abs() / p0[:, None].abs().clamp_min(1e-12)
        qf = q.float()
        auc = trapezoid(change, qf) / (qf[-1] - qf[0])
        return MetricResult(scores={"auc": auc, "p0": p0}, curves={"change": change}, x_axis={"change": qf})
