"""Localisation against bounding boxes: the IBA paper's bounding-box ratio, InputIBA's effective heat
ratio (EHR) and the IoU of a thresholded map with boxes (chest X-ray chapters).

Boxes come as the extra ``boxes``: per image a ``(N_i, 4)`` xyxy tensor in ``x``'s pixel coordinates; an
image's region is the union of its boxes (pixel centres inside, so integer boxes give
``mask[y1:y2, x1:x2]``). No model forward is needed; everything is a few batched tensor operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xattr.core.checks import check_choice
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import TIES, box_masks, flat_map, ranks, trapezoid
from xattr.metrics.base import Metric, MetricResult

NORMALISATIONS = ("auto", "none", "max", "minmax")


def normalise(flat: torch.Tensor, how: str) -> torch.Tensor:
    """Per-map scaling of ``(B, N)``: ``none``; ``max`` (divide by the max); ``minmax`` (to [0, 1]);
    ``auto``: keep maps already within [0, 1] (as the reference's 8-bit / sigmoid maps), min-max the others."""
    check_choice("normalise", how, NORMALISATIONS)
    if how == "none":
        return flat
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    if how == "max":
        return flat / hi.clamp_min(1e-12)
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-12)
    if how == "minmax":
        return scaled
    inside = (lo >= 0) & (hi <= 1)
    return torch.where(inside, flat, scaled)


def _coverage_filter(
    values: torch.Tensor, box: torch.Tensor, max_coverage: float | None, boxes: list
) -> torch.Tensor:
    """NaN where the box union covers more than ``max_coverage`` of the image, or the image has no box."""
    cover = box.float().mean(1)
    bad = box.sum(1) == 0
    if max_coverage is not None:
        bad |= cover > max_coverage
    return torch.where(bad, torch.full_like(values, float("nan")), values)


class BoundingBoxRatio(Metric):
    """Bounding-box ratio (Schulz et al., ICLR 2020, sec. 4.5, Table 2): with ``n`` = number of box pixels,
    the share of the ``n`` highest-scored pixels that lie in the box; only images whose boxes cover at most
    ``max_coverage`` (0.33) of the image, NaN otherwise.

    Ties in the map are broken stably (raster order) or at random (``ties``); the IBA paper code ranked
    with ``argsort`` of the float map. Departure: the reference resized a soft box mask with the image and
    thresholded at 0.5; here boxes are given in ``x``'s pixels already.
    """

    name = "bbox_ratio"
    needs = ("boxes",)
    higher_is_better = {"bbox_ratio": True}
    paper = "Schulz et al., ICLR 2020, sec. 4.5 and Table 2"

    def __init__(self, max_coverage: float | None = 0.33, ties: str = "stable", seed: int = 0) -> None:
        check_choice("ties", ties, TIES)
        self.max_coverage, self.ties, self.seed = max_coverage, ties, seed

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        flat = flat_map(maps, x)
        b = flat.shape[0]
        box = box_masks(extras.get("boxes"), b, x.shape[-2], x.shape[-1], flat.device)
        n = box.sum(1, keepdim=True)
        top = ranks(flat, True, self.ties, self.seed) < n
        ratio = (top & box).sum(1).float() / n[:, 0].clamp_min(1)
        return MetricResult(scores={"bbox_ratio": _coverage_filter(ratio, box, self.max_coverage, extras["boxes"])})


class EffectiveHeatRatio(Metric):
    """Effective heat ratio (InputIBA, dissertation ch. 6, sec. 4.5, Table 2; appendix F).

    As the reference code (InputIBA @5f03549e, ``EffectiveHeatRatios``): heat below ``base_threshold``
    (0.1) is set to 0; for each of ``n_quantiles`` (11) quantiles q in [0, 1] of the remaining heat,
    ``t = min(quantile(q), 0.99 * max heat)`` and ``ratio(t) = sum of heat in the box at pixels >= t /
    number of pixels >= t``; the score is the trapezoid AUC of ratio over q. Images whose box covers
    more than ``max_coverage`` (0.33) get NaN. Maps must be in [0, 1] (the reference read 8-bit maps / 255):
    ``normalise='auto'`` keeps maps already in [0, 1] and min-max scales the others. A map without heat
    >= ``base_threshold`` scores 0 (the reference code would fail on it).
    """

    name = "ehr"
    needs = ("boxes",)
    higher_is_better = {"ehr": True}
    paper = "Khakzar et al., CVPR 2021 (InputIBA), sec. 4.5 and Table 2"

    def __init__(
        self,
        base_threshold: float = 0.1,
        n_quantiles: int = 11,
        max_coverage: float | None = 0.33,
        normalise: str = "auto",
        weight_by_heat: bool = True,
    ) -> None:
        check_choice("normalise", normalise, NORMALISATIONS)
        if n_quantiles < 2:
            raise XattrConfigError(f"bad n_quantiles {n_quantiles!r}; valid choices: an integer >= 2")
        self.base_threshold, self.n_quantiles = float(base_threshold), int(n_quantiles)
        self.max_coverage, self.normalise, self.weight_by_heat = max_coverage, normalise, weight_by_heat

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        heat = normalise(flat_map(maps, x), self.normalise).double()
        b = heat.shape[0]
        box = box_masks(extras.get("boxes"), b, x.shape[-2], x.shape[-1], heat.device)
        poi = heat >= self.base_threshold
        heat = heat.masked_fill(~poi, 0.0)
        q = torch.linspace(0, 1, self.n_quantiles, dtype=torch.float64, device=heat.device)
        thresholds = torch.stack([_nanquantile(heat[i].masked_fill(~poi[i], float("nan")), q) for i in range(b)])
        thresholds = torch.minimum(thresholds, 0.99 * heat.amax(1, keepdim=True))  # (B, Q)
        weight = heat if self.weight_by_heat else torch.ones_like(heat)
        ratios = []
        for k in range(self.n_quantiles):
            above = heat >= thresholds[:, k : k + 1]  # (B, N)
            ratios.append((weight * (above & box)).sum(1) / (above.sum(1) + 1e-8))
        ratios = torch.stack(ratios, 1)  # (B, Q)
        ratios = torch.where(poi.any(1, keepdim=True), ratios, torch.zeros_like(ratios))
        auc = trapezoid(ratios, q)
        return MetricResult(
            scores={"ehr": _coverage_filter(auc.float(), box, self.max_coverage, extras["boxes"])},
            curves={"ehr": ratios.float()},
            x_axis={"ehr": q.float()},
        )


def _nanquantile(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Quantiles of the non-NaN entries (linear interpolation, numpy's default); NaN if there are none."""
    if torch.isnan(v).all():
        return torch.full_like(q, float("nan"))
    return torch.nanquantile(v, q)


class BoxIoU(Metric):
    """IoU of the thresholded map with the union of the boxes (chest X-ray chapters, dissertation ch. 8-9,
    sec. 3.2 "Localization": "we threshold the attribution maps and compute their IoU").

    The map is scaled by ``normalise`` (``minmax`` by default) and binarised at ``map >= threshold``
    (``mode='value'``) or as its top ``threshold`` share of pixels (``mode='quantile'``, stable ties).
    The curve ``iou`` runs over ``curve_thresholds`` (InputIBA's ``IoU`` evaluation: 0, 0.02, ..., 0.98, with
    ``map > t``). Images without boxes get NaN; ``max_coverage`` (None) optionally filters large boxes.
    """

    name = "iou"
    needs = ("boxes",)
    higher_is_better = {"iou": True}
    paper = "Khakzar et al., MICCAI 2021 (CheXplain-IBA), Table 1"

    def __init__(
        self,
        threshold: float = 0.5,
        mode: str = "value",
        normalise: str = "minmax",
        curve_thresholds: Sequence[float] | None = None,
        max_coverage: float | None = None,
    ) -> None:
        check_choice("mode", mode, ("value", "quantile"))
        check_choice("normalise", normalise, NORMALISATIONS)
        self.threshold, self.mode, self.normalise, self.max_coverage = float(threshold), mode, normalise, max_coverage
        self.curve_thresholds = (
            [round(0.02 * i, 2) for i in range(50)] if curve_thresholds is None else [float(t) for t in curve_thresholds]
        )

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        heat = normalise(flat_map(maps, x), self.normalise)
        b = heat.shape[0]
        box = box_masks(extras.get("boxes"), b, x.shape[-2], x.shape[-1], heat.device)
        if self.mode == "value":
            binary = heat >= self.threshold
        else:
            binary = ranks(heat, True) < round(self.threshold * heat.shape[1])
        iou = _iou(binary, box)
        t = torch.tensor(self.curve_thresholds, device=heat.device)
        curve = torch.stack([_iou(heat > v, box) for v in t], 1) if len(t) else torch.zeros(b, 0)
        filt = _coverage_filter(iou, box, self.max_coverage, extras["boxes"])
        return MetricResult(scores={"iou": filt}, curves={"iou": curve}, x_axis={"iou": t.float()})


def _iou(binary: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    inter = (binary & box).sum(1).float()
    union = (binary | box).sum(1).float()
    return inter / union.clamp_min(1)
