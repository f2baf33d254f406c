"""Input degradation, least relevant first (LeRF), as in Table 2 of the critical-pathways chapter
(dissertation ch. 5, sec. 4.3 L595, appendix C.2 L1984, Table 2; Samek et al. 2017).

Pixels are ranked by the map; the least relevant ``q`` of them (``q`` = 1, 2, ..., 10 %) are removed by
setting every channel to ``fill`` (0 in normalised space: the dataset mean colour), each ``q`` starting from
the original image; the score at ``q`` is the absolute fractional change of the softmax probability of the
explained class (the predicted one in the paper; the run's ``target``) on the *original* model (appendix C.2:
"the pixel perturbation process is performed on the original model, not on the critical paths"),

    ``change(q) = |p_0 - p_q| / p_0``.

The authors' code is RoarTorch's ``src/lerf/pixel_perturbation_analysis.py`` (commit a410328, "Added LeRF
(pixel perturbation analysis) metric"; read at 5a8afb9). Its choices are the defaults here (``reference``
below), because the published numbers come from it:

- ``channels: max``: a multi-channel map is reduced by its signed channel max (``np.max(map, axis=0)``);
  ``mean`` averages the channels (the other perturbation metrics' :func:`flat_map`). A one-channel map (what
  xattr's methods return after their own ``reduce``) is the same under both.
- ``rank: signed``: the lowest signed values go first (ascending ``argsort``); ``abs`` ranks by ``|map|``.
  Ranking by magnitude with fill 0 in normalised space rewards any map that grows with ``|x|`` (a model-free
  ``|x|`` map beat the gradient in a toy check), so tables report both and say which made which number.
- ``count: floor``: ``int(q H W)`` pixels (computed exactly, :func:`xattr.core.ranking.share_count`);
  ``round`` rounds instead (xattr's reading before the code was found).
- ``ties``: ``numpy`` is the code's ``np.argsort`` order among equal values; ``stable`` (default: the code's
  order depends on numpy's sort implementation, and continuous maps have no ties) keeps raster order.

The code averages ``change(q)`` over images (times 100) and states no AUC. Two conventions are scored, both
lower-is-better: ``auc``, the trapezoid of ``change`` over ``q`` as a fraction (0.01 .. 0.10; the magnitude of
the published numbers: CIFAR-10 Gradient 0.037), and ``auc_normalised``, the same divided by the ``q`` range
(0.09), i.e. a mean change (xattr's earlier number, about 11x ``auc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xattr.core.checks import check_choice, module_device
from xattr.core.chunk import check_chunk, resolve_chunk
from xattr.core.ranking import ROUNDINGS, share_count
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

RANKS = ("signed", "abs")
CHANNELS = ("max", "mean")
DEFAULT_FRACTIONS = tuple(round(0.01 * k, 2) for k in range(1, 11))


class LeRF(Metric):
    """LeRF curve of the fractional output change and its two AUCs (see module docstring).

    Args:
        fractions: shares of pixels removed (0.01 .. 0.10).
        rank: ``signed`` (the code: most negative removed first) | ``abs`` (rank by ``|map|``).
        channels: ``max`` (the code: signed channel max) | ``mean``: how a multi-channel map becomes one.
        count: ``floor`` (the code: ``int(q H W)``) | ``round``: pixels removed at each ``q``.
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


    def __init__(self, fractions: Sequence[float] = DEFAULT_FRACTIONS, rank: str = "signed", channels: str = "max",
                 count: str = "floor", fill: float = 0.0,
                 output: str = "softmax", ties: str = "stable", seed: int = 0, chunk: int | str | None = "auto",
                 precision: str = "fp32") -> None:
        fr = [float(f) for f in fractions]
        if len(fr) < 2 or any(not 0 <= f <= 1 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
            raise XattrConfigError(f"bad fractions {list(fractions)!r}; valid choices: >= 2 increasing shares in [0, 1]")
        check_choice("rank", rank, RANKS)
        check_choice("channels", channels, CHANNELS)
        check_choice("count", count, ROUNDINGS)
        self.channels, self.count = channels, count
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
        maps = maps.to(device)
        if maps.dim() == 4 and self.channels == "max":
            maps = maps.amax(1)
        v = flat_map(maps, x)
        if self.rank == "abs":
            v = v.abs()
        order = ranks(v, descending=False, ties=self.ties, seed=self.seed)  # 0 = least relevant
        q = torch.tensor(self.fractions, device=device, dtype=torch.float64)
        counts = torch.tensor([share_count(f, h * w, self.count) for f in self.fractions], device=device)
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
        auc = trapezoid(change, qf)
        return MetricResult(scores={"auc": auc, "auc_normalised": auc / (qf[-1] - qf[0]), "p0": p0},
                            curves={"change": change}, x_axis={"change": qf})
