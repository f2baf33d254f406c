"""MoRF / LeRF degradation (Ancona et al., 2017) with the IBA paper's extension (Schulz et al., ICLR 2020,
sec. 4.6, eq. 8, Table 2), and the LeRF AUC of the critical-pathways chapter (dissertation ch. 5, Table 2).

The image is split into ``tile x tile`` tiles ranked by the sum of the map inside each; tiles are replaced
by the image's per-channel mean, most relevant first (MoRF) or least relevant first (LeRF), and the
softmax probability of the target is read at ``n_points`` evaluation points (numbers of removed tiles
``round(linspace(0, 1, n_points) * n_tiles)``). Eq. 8 scales it as ``s(x) = (p(y|x) - b) / (t1 - b)`` with
``t1`` the model's *average top-1 probability on the original samples* and ``b`` the *mean output on the
fully degraded images*, both averaged over the dataset: they are dataset constants, so the per-sample
score here is the unscaled area ``integral (p_LeRF - p_MoRF) dx`` (``b`` cancels in the difference) and
:meth:`Degradation.summarise` divides the dataset mean by ``t1 - b`` computed from the per-sample ``top1_prob`` and
``degraded_prob`` it returns. Given ``t1`` and ``b`` at construction, ``degradation`` is scaled per sample.

``lerf_change_auc`` (ch. 5, appendix C.2, Table 2, lower is better): area under the LeRF curve of the
absolute fractional change of the output ``|p_t - p_0| / p_0``, with pixel tiles (``tile=1``) there.

Departures from the IBA paper code (@6bac54a8): its curve held the original image and then the image after
``round(k / 99 * N) + 1`` removed tiles, never reaching the fully degraded image; here the k-th point has
exactly ``round(k / (n_points - 1) * N)`` tiles removed (first: none, last: all). Ties between equal tile
sums: stable (raster order) or seeded random, as :class:`~xattr.metrics.insertion_deletion.InsertionDeletion`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive_int, module_device
from xattr.core.chunk import check_chunk, resolve_chunk
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import (
    OUTPUTS,
    PRECISIONS,
    TIES,
    chunked_readout,
    flat_map,
    ranks,
    tile_index,
    tile_sums,
    trapezoid,
)
from xattr.metrics.base import Metric, MetricResult, mean_and_sem


class Degradation(Metric):
    """MoRF and LeRF curves, the area between them and the LeRF AUCs, batched over (image, point) pairs.

    Args:
        tile: tile side in pixels (8 or 14 in the IBA paper; 1 = pixels).
        n_points: evaluation points per curve (100).
        fill: ``mean`` (per-channel mean of the image, the paper) or a number (normalised space).
        output: ``softmax`` (the paper) or ``logit`` / ``sigmoid``.
        t1, b: the dataset constants of eq. 8, if known; ``None`` leaves the per-sample score unscaled.
        ties, seed: tie-breaking of equal tile sums.
        chunk, precision: forwards per model call (int >= 1, null: all at once, auto: sized for the device);
            autocast precision.
    """

    name = "degradation"
    paper = "Schulz et al., ICLR 2020, eq. 8 and Table 2; Khakzar et al., CVPR 2021 (pathways), Table 2"
    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: ``n_points`` perturbed forwards for each of MoRF and LeRF, plus the clean one."""
        return 2.0 * self.n_points + 1


    def __init__(
        self,
        tile: int = 8,
        n_points: int = 100,
        fill: str | float = "mean",
        output: str = "softmax",
        t1: float | None = None,
        b: float | None = None,
        ties: str = "stable",
        seed: int = 0,
        chunk: int | str | None = "auto",
        precision: str = "fp32",
    ) -> None:
        self.tile = check_positive_int("tile", tile)
        self.n_points = check_positive_int("n_points", n_points)
        if self.n_points < 2:
            raise XattrConfigError(f"bad n_points {n_points!r}; valid choices: an integer >= 2")
        if isinstance(fill, str):
            check_choice("fill", fill, ("mean",))
        self.fill = fill
        check_choice("output", output, OUTPUTS)
        check_choice("ties", ties, TIES)
        check_choice("precision", precision, PRECISIONS)
        if (t1 is None) != (b is None):
            raise XattrConfigError(f"bad t1/b {t1!r}/{b!r}; valid choices: both numbers or both null")
        self.output, self.t1, self.b, self.ties, self.seed = output, t1, b, ties, seed
        self.chunk = check_chunk(chunk)
        self.precision = precision

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        bsz, c, h, w = x.shape
        tid, n_tiles = tile_index(h, w, self.tile, device)
        per_tile = tile_sums(flat_map(maps.to(device), x), tid, n_tiles)  # (B, U)
        if self.fill == "mean":
            fill = x.mean((2, 3), keepdim=True).expand_as(x)
        else:
            fill = torch.full_like(x, float(self.fill))
        counts = (torch.linspace(0, 1, self.n_points, device=device, dtype=torch.float64) * n_tiles).round().long()
        frac = counts.float() / n_tiles
        t = self.n_points
        res = MetricResult()
        for name, descending in (("morf", True), ("lerf", False)):
            pix_rank = ranks(per_tile, descending, self.ties, self.seed)[:, tid]  # (B, H*W) rank of its tile

            def build(jobs: torch.Tensor, pix_rank=pix_rank) -> tuple[torch.Tensor, torch.Tensor]:
                i, s = jobs // t, jobs % t
                m = (pix_rank[i] < counts[s, None]).view(-1, 1, h, w)
                return torch.where(m, fill[i], x[i]), target[i]

            chunk = resolve_chunk(self.chunk, model, x[:1], self.precision)
            curve = chunked_readout(model, bsz * t, build, chunk, device, self.output, self.precision)
            res.curves[name] = curve.view(bsz, t)
            res.x_axis[name] = frac
        morf, lerf = res.curves["morf"], res.curves["lerf"]
        area = trapezoid(lerf - morf, frac)
        if self.t1 is not None:
            area = area / (self.t1 - self.b)
        p0 = lerf[:, :1]
        out = model(x).float()
        probs = out.sigmoid() if self.output == "sigmoid" else out.softmax(-1)
        res.scores = {
            "degradation": area,
            "morf_auc": trapezoid(morf, frac),
            "lerf_auc": trapezoid(lerf, frac),
            "lerf_change_auc": trapezoid((lerf - p0).abs() / p0.abs().clamp_min(1e-12), frac),
            "top1_prob": probs.amax(-1),
            "degraded_prob": lerf[:, -1],
        }
        return res

    def summarise(self, scores: dict[str, torch.Tensor]) -> dict[str, tuple[float, float, int]]:
        """Dataset summary: the eq.-8 degradation score (mean and s.e. of the area between LeRF and MoRF
        divided by ``t1 - b``; ``t1`` = mean top-1 probability on the originals, ``b`` = mean output on the
        fully degraded images, both from ``scores``), plus mean +- s.e. of the other scores. Scores of a
        metric built with ``t1``/``b`` are already scaled: they are summarised as they are."""
        out = {k: mean_and_sem(v) for k, v in scores.items()}
        if self.t1 is not None or self.b is not None or "degradation" not in scores:
            return out
        t1 = float(scores["top1_prob"].nanmean())
        b = float(scores["degraded_prob"].nanmean())
        m, s, n = out["degradation"]
        out["degradation_scaled"] = (m / (t1 - b), s / abs(t1 - b), n)
        out["t1"], out["b"] = (t1, float("nan"), n), (b, float("nan"), n)
        return out


