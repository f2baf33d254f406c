"""Localisation metrics against the object region (the union of an image's boxes, extra ``boxes``):
the pointing game (Zhang et al.), relevance mass and relevance rank accuracy (Arras et al.) and top-k
intersection (Theiner et al.). No forward pass; a few batched tensor operations on the maps.

Maps ``(B, 1|C, H, W)`` are averaged over channels (``flat_map``); the region is
:func:`~xattr.metrics._perturb.box_masks` (pixel centres inside the boxes). An image without a box gets NaN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xattr.core.checks import check_positive_int
from xattr.core.ranking import highest
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import box_masks, flat_map
from xattr.metrics.base import Metric, MetricResult


def _region(x: torch.Tensor, extras: dict, device: torch.device) -> torch.Tensor:
    return box_masks(extras.get("boxes"), x.shape[0], x.shape[-2], x.shape[-1], device)


def _no_box(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    return torch.where(region.any(1), values, torch.full_like(values, float("nan")))


class _RegionMetric(Metric):
    needs = ("boxes",)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: free (the map against the boxes; no forward)."""
        return 0.0


class PointingGame(_RegionMetric):
    """Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016 / IJCV 2018): the map's maximum is a hit when it lies within ``tolerance`` pixels of the object.

    As TorchRay's benchmark (``torchray.benchmark.pointing_game.PointingGame.evaluate``, the reference the issue
    names): the point is the first maximum of the map in raster order (``torch.argmax`` of the flattened map),
    and it hits when some object pixel ``p`` has ``|p - point|^2 < tolerance^2`` (strict), so ``tolerance: 1``
    is "the maximum itself is inside" (Quantus' ``PointingGame``, which counts any tied maximum) and TorchRay's
    default 15 px (at 224 px) is the paper's margin. Score 1 (hit) or 0 (miss), NaN without a box; the
    dataset number is the mean (TorchRay averages per class first; its ``difficult`` subset is a dataset
    filter, not a metric setting).
    """

    name = "pointing_game"
    paper = "Zhang et al., IJCV 2018 (Excitation Backprop), the pointing game; TorchRay benchmark"

    def __init__(self, tolerance: int = 15) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise XattrConfigError(f"bad tolerance {tolerance!r}; valid choices: an integer >= 0 (pixels)")
        self.tolerance = tolerance

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        flat = flat_map(maps, x)
        h, w = x.shape[-2:]
        region = _region(x, extras, flat.device)
        point = flat.argmax(1)  # first maximum (raster order)
        py, px = (point // w).float(), (point % w).float()
        ys = torch.arange(h, device=flat.device, dtype=torch.float32)
        xs = torch.arange(w, device=flat.device, dtype=torch.float32)
        d2 = (ys[None, :, None] - py[:, None, None]) ** 2 + (xs[None, None, :] - px[:, None, None]) ** 2
        accept = (d2 < float(self.tolerance) ** 2).reshape(flat.shape[0], -1)
        hit = (accept & region).any(1).float()
        return MetricResult(scores={"pointing_game": _no_box(hit, region)})


class RelevanceMass(_RegionMetric):
    """Relevance mass accuracy (Arras et al., "CLEVR-XAI", Information Fusion 2022):
    ``R_within / R_total``, the relevance inside the object region over the relevance of the whole image.

    ``positive: true`` (default, xattr's choice: negative relevance is evidence against the class, not mass
    placed somewhere) sums ``max(map, 0)``, so the score lies in [0, 1]. Quantus 0.6 (``RelevanceMassAccuracy``)
    and ``positive: false`` sum the raw map, so a map with negative relevance outside the object can score above 1 there (a hand case in
    ``tests/test_metrics_eval.py``). A map without positive relevance scores NaN.
    """

    name = "relevance_mass"
    paper = "Arras et al., Information Fusion 2022 (CLEVR-XAI), relevance mass accuracy"

    def __init__(self, positive: bool = True) -> None:
        self.positive = bool(positive)

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        flat = flat_map(maps, x).double()
        if self.positive:
            flat = flat.clamp_min(0)
        region = _region(x, extras, flat.device)
        total = flat.sum(1)
        mass = (flat * region).sum(1) / total
        mass = torch.where(total != 0, mass, torch.full_like(mass, float("nan")))
        return MetricResult(scores={"relevance_mass": _no_box(mass.float(), region)})


class RelevanceRank(_RegionMetric):
    """Relevance rank accuracy (Arras et al., Information Fusion 2022): with ``K`` = the number of object
    pixels, the share of the ``K`` highest-relevance pixels that lie in the object. (The IBA paper's bounding-box
    ratio, ``bbox_ratio``, is the same number with its coverage filter and map normalisation.) Ties are
    broken stably (raster order); Quantus' ``argsort`` breaks them arbitrarily."""

    name = "relevance_rank"
    paper = "Arras et al., Information Fusion 2022 (CLEVR-XAI), relevance rank accuracy"

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        flat = flat_map(maps, x)
        region = _region(x, extras, flat.device)
        k = region.sum(1, keepdim=True)
        top = highest(flat, k[:, 0])
        acc = (top & region).sum(1).float() / k[:, 0].clamp_min(1)
        return MetricResult(scores={"relevance_rank": _no_box(acc, region)})


class TopKIntersection(_RegionMetric):
    """Top-k intersection (Theiner et al., "Interpretable semantic photo geolocation", WACV 2022):
    the share of the ``k`` highest-relevance pixels that lie in the object region; ``concept_influence``
    divides by the region's share of the image (Quantus' option of the same name). Default ``k`` = 1000
    (Quantus' default, at 224 px); ``k`` must be below the number of pixels."""

    name = "top_k_intersection"
    paper = "Theiner et al., WACV 2022"

    def __init__(self, k: int = 1000, concept_influence: bool = False) -> None:
        self.k = check_positive_int("k", k)
        self.concept_influence = bool(concept_influence)

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        flat = flat_map(maps, x)
        n = flat.shape[1]
        if self.k >= n:
            raise XattrConfigError(f"bad k {self.k!r} for {n}-pixel maps; valid choices: an integer below {n}")
        region = _region(x, extras, flat.device)
        top = highest(flat, torch.full((flat.shape[0],), self.k, device=flat.device))
        score = (top & region).sum(1).float() / self.k
        if self.concept_influence:
            score = score * n / region.sum(1).clamp_min(1).float()
        return MetricResult(scores={"top_k_intersection": _no_box(score, region)})
