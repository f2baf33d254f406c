"""Localisation against bounding boxes: the IBA paper's bounding-box ratio, InputIBA's effective heat
ratio (EHR) and the IoU of a thresholded map with boxes (chest X-ray chapters).

Boxes come as the extra ``boxes``: per image a ``(N_i, 4)`` xyxy tensor in ``x``'s pixel coordinates; an
image's region is the union of its boxes (pixel centres inside, so integer boxes give
``mask[y1:y2, x1:x2]``). No model forward is needed; everything is a few batched tensor operations.

**Map normalisation** (``normalise``, the same for all three metrics, :func:`normalise_maps`):

- ``max`` (default): negative scores count as no heat (clamped at 0), then each map is divided by its own
  maximum, so a score never depends on a map's absolute scale (as the InputIBA code does for IBA
  masks). An all-zero map stays zero.
- ``reference_uint8``: the InputIBA evaluation pipeline exactly (InputIBA @5f03549e,
  ``vision_attributor.py`` and ``effective_heat_ratios.py``; ../shared/REFERENCE.md): IBA masks are
  divided by their max (``show_feat_mask``); InputIBA's input masks (``sigmoid(alpha)``, in (0, 1)) and the
  baseline maps (Captum's *signed channel mean*) are not normalised (``show_input_mask`` has no division,
  in every commit of 2021; ../shared/REFERENCE.md says "InputIBA and IBA masks are divided by their max",
  which holds for the feature masks only); all are
  multiplied by 255 and cast to ``uint8`` as numpy does on x86-64 (truncation toward zero, then modulo 256,
  so a negative value such as -0.01 becomes 254/255 = 0.996: "wrap-around"); the evaluator then divides by
  255 when the 8-bit map's max is above 1. Which of the two a map is comes from ``map_kind``.
- ``none`` (raw scores), ``minmax`` (each map to [0, 1]) and ``auto`` (legacy, scale-dependent: keeps maps
  that happen to lie in [0, 1] and min-max scales the others; earlier xattr default, kept to reproduce old runs).

``map_kind`` (used by ``reference_uint8`` only): ``mask`` (IBA: divided by the max first),
``signed`` (a baseline map that already is the reference's channel mean, or has one channel),
``channel_sum`` (a baseline map summed over the input's C channels, xattr's ``reduce: sum`` or
``abs_sum``: divided by C to give the reference's channel mean), or ``auto``: from the run's method (the
declared extra ``method``): the IBA family (``xattr.methods.iba``) is ``mask``; InputIBA
(``xattr.methods.input_iba``, a map in (0, 1)) is ``signed``, as the code stored it; a method reducing
channels by ``sum`` / ``abs_sum`` is ``channel_sum``; a method without channel reduction (Grad-CAM,
Extremal Perturbation, random, ...) is ``signed``; any other reduction (``max_abs``, ...) has no counterpart
in the reference pipeline and is refused with the fix (``method.reduce=sum``, the reference's Captum maps), as
is ``method=saved`` (set ``map_kind``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xattr.core.checks import check_choice
from xattr.core.ranking import highest
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import TIES, box_masks, flat_map, ranks, trapezoid, uncounted
from xattr.metrics.base import Metric, MetricResult

NORMALISATIONS = ("max", "reference_uint8", "none", "minmax", "auto")
MAP_KINDS = ("auto", "mask", "signed", "channel_sum")
#: method packages whose maps the reference stored max-normalised (``map_kind: auto``)
MASK_FAMILIES = ("xattr.methods.iba",)


def to_uint8(v: torch.Tensor) -> torch.Tensor:
    """numpy's ``float -> uint8`` cast on x86-64, the reference's ``(m * 255).astype(np.uint8)``, on any
    device: truncation toward zero, then the low byte (modulo 256, two's complement); values outside the
    int32 range and NaN give 0. Returns int64 values in 0..255."""
    t = torch.trunc(v.double())
    bad = ~torch.isfinite(t) | (t.abs() >= 2.0**31)
    return torch.where(bad, torch.zeros_like(t), t).long().remainder(256)


def resolve_map_kind(kind: str, method: Any) -> str:
    """``map_kind`` for ``reference_uint8``; ``auto`` is read from the run's method (module docstring)."""
    check_choice("map_kind", kind, MAP_KINDS)
    if kind != "auto":
        return kind
    if method is None:
        raise XattrConfigError("map_kind auto needs the run's method (the engine passes it); valid choices: "
                               "mask, signed, channel_sum")
    if getattr(method, "name", None) == "saved":
        raise XattrConfigError("map_kind auto cannot tell what a saved run's maps are (and they are stored as "
                               "float16); valid choices: mask, signed, channel_sum")
    module = type(method).__module__
    if any(module == f or module.startswith(f + ".") for f in MASK_FAMILIES):
        return "mask"
    reduce = getattr(method, "reduce", None)
    if reduce is None or reduce == "none":
        return "signed"
    if reduce in ("sum", "abs_sum"):
        return "channel_sum"
    raise XattrConfigError(
        f"bad method.reduce {reduce!r} for normalise reference_uint8 (the reference stored Captum's channel mean); "
        "valid choices: sum, abs_sum (or set map_kind)")


def reference_uint8(flat: torch.Tensor, kind: str, channels: int = 1) -> torch.Tensor:
    """The reference's 8-bit map as the evaluator reads it, ``(B, N)`` float64 (module docstring).

    ``kind``: ``mask`` (divided by its max, as ``mask / mask.max()``), ``signed`` (as is) or ``channel_sum``
    (divided by ``channels``). Arithmetic in float32 as the reference's arrays, then ``x 255``, the uint8
    cast, and ``/ 255`` where the 8-bit map's max is above 1 (the evaluator's test)."""
    check_choice("map_kind", kind, MAP_KINDS[1:])
    v = flat.float()
    if kind == "channel_sum":
        v = v / channels
    elif kind == "mask":
        hi = v.amax(1, keepdim=True)
        v = torch.where(hi != 0, v / torch.where(hi != 0, hi, torch.ones_like(hi)), torch.zeros_like(v))
    heat = to_uint8(v * 255).double()
    return torch.where(heat.amax(1, keepdim=True) > 1, heat / 255.0, heat)


def normalise_maps(flat: torch.Tensor, how: str, kind: str = "signed", channels: int = 1) -> torch.Tensor:
    """Per-map scaling of ``(B, N)`` maps, float64 (see the module docstring for ``how`` and ``kind``)."""
    check_choice("normalise", how, NORMALISATIONS)
    if how == "reference_uint8":
        return reference_uint8(flat, kind, channels)
    flat = flat.double()
    if how == "none":
        return flat
    if how == "max":
        pos = flat.clamp_min(0)
        return pos / pos.amax(1, keepdim=True).clamp_min(1e-300)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    scaled = (flat - lo) / (hi - lo).clamp_min(1e-12)
    if how == "minmax":
        return scaled
    inside = (lo >= 0) & (hi <= 1)
    return torch.where(inside, flat, scaled)


class _Localisation(Metric):
    """Shared option handling: ``normalise`` and ``map_kind``."""

    needs = ("boxes", "method")
    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: free (the maps against boxes or masks; no forward)."""
        return 0.0


    def _init_normalise(self, normalise: str, map_kind: str) -> None:
        check_choice("normalise", normalise, NORMALISATIONS)
        check_choice("map_kind", map_kind, MAP_KINDS)
        self.normalise, self.map_kind = normalise, map_kind

    def heat(self, maps: torch.Tensor, x: torch.Tensor, how: str, method: Any = None) -> torch.Tensor:
        """The normalised ``(B, H*W)`` float64 map."""
        kind = resolve_map_kind(self.map_kind, method) if how == "reference_uint8" else "signed"
        return normalise_maps(flat_map(maps, x), how, kind, x.shape[1] if x.dim() == 4 else 1)


def _coverage_filter(values: torch.Tensor, box: torch.Tensor, max_coverage: float | None) -> torch.Tensor:
    """NaN where the box union covers more than ``max_coverage`` of the image, or the image has no box."""
    bad = uncounted(box, max_coverage)  # core.boxes: the same rule as the datasets' max_box_coverage filter
    return torch.where(bad, torch.full_like(values, float("nan")), values)


class BoundingBoxRatio(_Localisation):
    """Bounding-box ratio (Schulz et al., ICLR 2020, sec. 4.5, Table 2): with ``n`` = number of box pixels,
    the share of the ``n`` highest-scored pixels that lie in the box; only images whose boxes cover at most
    ``max_coverage`` (0.33) of the image, NaN otherwise.

    Rank-based, so a map's scale never matters: ``normalise: max`` (default) ranks ``max(map, 0)`` (negative
    scores tie at zero, like no heat), ``none`` / ``minmax`` / ``auto`` rank the raw map (the IBA paper code,
    IBA-paper-code @6bac54a8 ``scripts/eval_bounding_boxes.py``, ranks the float map), ``reference_uint8``
    the InputIBA pipeline's 8-bit map (many ties). Ties are broken stably (raster order) or at random
    (``ties``). Departure: the reference resized a soft box mask with the image and thresholded at 0.5;
    here boxes are given in ``x``'s pixels already.
    """

    name = "bbox_ratio"
    paper = "Schulz et al., ICLR 2020, sec. 4.5 and Table 2"

    def __init__(self, max_coverage: float | None = 0.33, ties: str = "stable", seed: int = 0,
                 normalise: str = "max", map_kind: str = "auto") -> None:
        check_choice("ties", ties, TIES)
        self._init_normalise(normalise, map_kind)
        self.max_coverage, self.ties, self.seed = max_coverage, ties, seed

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        flat = flat_map(maps, x)
        if self.normalise == "reference_uint8":
            flat = self.heat(maps, x, self.normalise, extras.get("method"))
        elif self.normalise == "max":
            flat = flat.clamp_min(0)  # the order of the max-normalised map, without rounding ties
        b = flat.shape[0]
        box = box_masks(extras.get("boxes"), b, x.shape[-2], x.shape[-1], flat.device)
        n = box.sum(1, keepdim=True)
        top = ranks(flat, True, self.ties, self.seed) < n
        ratio = (top & box).sum(1).float() / n[:, 0].clamp_min(1)
        return MetricResult(scores={"bbox_ratio": _coverage_filter(ratio, box, self.max_coverage)})


class EffectiveHeatRatio(_Localisation):
    """Effective heat ratio (InputIBA, dissertation ch. 6, sec. 4.5, Table 2; appendix F).

    As the reference code (InputIBA @5f03549e, ``EffectiveHeatRatios``), on the map scaled by ``normalise``
    (module docstring; ``max`` by default, ``reference_uint8`` for the published pipeline): heat below
    ``base_threshold`` (0.1) is set to 0; for each of ``n_quantiles`` (11) quantiles q in [0, 1]
    (``np.linspace``) of the remaining heat, ``t = min(quantile(q), 0.99 * max heat)`` and
    ``ratio(t) = sum of heat in the box at pixels >= t / number of pixels >= t``; the score is the trapezoid
    AUC of ratio over q. Images whose box covers more than ``max_coverage`` (0.33) get NaN. A map without
    heat >= ``base_threshold`` scores 0 (the reference code raises an IndexError on it).

    ``also_normalise``: further normalisations scored on the same maps, as ``ehr_<normalise>`` (score and
    curve), e.g. ``[reference_uint8]`` for the published pipeline beside xattr's ``max`` in one run.
    """

    name = "ehr"
    paper = "Khakzar et al., CVPR 2021 (InputIBA), sec. 4.5 and Table 2"

    def __init__(
        self,
        base_threshold: float = 0.1,
        n_quantiles: int = 11,
        max_coverage: float | None = 0.33,
        normalise: str = "max",
        weight_by_heat: bool = True,
        map_kind: str = "auto",
        also_normalise: Sequence[str] = (),
    ) -> None:
        self._init_normalise(normalise, map_kind)
        if n_quantiles < 2:
            raise XattrConfigError(f"bad n_quantiles {n_quantiles!r}; valid choices: an integer >= 2")
        self.also_normalise = [str(a) for a in also_normalise]
        for how in self.also_normalise:
            check_choice("also_normalise", how, NORMALISATIONS)
        self.base_threshold, self.n_quantiles = float(base_threshold), int(n_quantiles)
        self.max_coverage, self.weight_by_heat = max_coverage, weight_by_heat

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        box = box_masks(extras.get("boxes"), x.shape[0], x.shape[-2], x.shape[-1], x.device)
        res = MetricResult()
        for name, how in [("ehr", self.normalise)] + [(f"ehr_{a}", a) for a in self.also_normalise]:
            heat = self.heat(maps, x, how, extras.get("method")).to(box.device)
            auc, ratios, q = self.auc(heat, box)
            res.scores[name] = _coverage_filter(auc.float(), box, self.max_coverage)
            res.curves[name], res.x_axis[name] = ratios.float(), q.float()
        return res

    def auc(self, heat: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EHR of normalised ``heat`` ``(B, N)`` float64 with box masks ``(B, N)``: (AUC ``(B,)``, ratio
        curve ``(B, Q)``, quantiles ``(Q,)``)."""
        b = heat.shape[0]
        poi = heat >= self.base_threshold
        heat = heat.masked_fill(~poi, 0.0)
        q = torch.from_numpy(np.linspace(0, 1.0, self.n_quantiles)).to(heat.device)  # the reference's q, bit for bit
        thresholds = torch.stack([_nanquantile(heat[i].masked_fill(~poi[i], float("nan")), q) for i in range(b)])
        thresholds = torch.minimum(thresholds, 0.99 * heat.amax(1, keepdim=True))  # (B, Q)
        weight = heat if self.weight_by_heat else torch.ones_like(heat)
        ratios = []
        for k in range(self.n_quantiles):
            above = heat >= thresholds[:, k : k + 1]  # (B, N)
            ratios.append((weight * (above & box)).sum(1) / (above.sum(1, dtype=torch.float64) + 1e-8))  # as the reference
        ratios = torch.stack(ratios, 1)  # (B, Q)
        ratios = torch.where(poi.any(1, keepdim=True), ratios, torch.zeros_like(ratios))
        return trapezoid(ratios, q), ratios, q


def _nanquantile(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Quantiles of the non-NaN entries (linear interpolation, numpy's default); NaN if there are none."""
    if torch.isnan(v).all():
        return torch.full_like(q, float("nan"))
    return torch.nanquantile(v, q)


class BoxIoU(_Localisation):
    """IoU of the thresholded map with the union of the boxes (chest X-ray chapters, dissertation ch. 8-9,
    sec. 3.2 "Localization": "we threshold the attribution maps and compute their IoU").

    The map is scaled by ``normalise`` (``max`` by default, module docstring) and binarised at
    ``map >= threshold`` (``mode='value'``) or as its top ``threshold`` share of pixels (``mode='quantile'``,
    stable ties). The curve ``iou`` runs over ``curve_thresholds`` (InputIBA's ``IoU`` evaluation: 0, 0.02,
    ..., 0.98, with ``map > t``). Images without boxes get NaN; ``max_coverage`` (None) optionally filters
    large boxes.
    """

    name = "iou"
    paper = "Khakzar et al., MICCAI 2021 (CheXplain-IBA), Table 1"

    def __init__(
        self,
        threshold: float = 0.5,
        mode: str = "value",
        normalise: str = "max",
        curve_thresholds: Sequence[float] | None = None,
        max_coverage: float | None = None,
        map_kind: str = "auto",
    ) -> None:
        check_choice("mode", mode, BINARISE)
        self._init_normalise(normalise, map_kind)
        self.threshold, self.mode, self.max_coverage = float(threshold), mode, max_coverage
        self.curve_thresholds = (
            [round(0.02 * i, 2) for i in range(50)] if curve_thresholds is None else [float(t) for t in curve_thresholds]
        )

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        heat = self.heat(maps, x, self.normalise, extras.get("method"))
        b = heat.shape[0]
        box = box_masks(extras.get("boxes"), b, x.shape[-2], x.shape[-1], heat.device)
        iou = _iou(binarise(heat, self.threshold, self.mode), box)
        t = torch.tensor(self.curve_thresholds, device=heat.device, dtype=torch.float64)
        curve = torch.stack([_iou(heat > v, box) for v in t], 1) if len(t) else torch.zeros(b, 0)
        filt = _coverage_filter(iou, box, self.max_coverage)
        return MetricResult(scores={"iou": filt}, curves={"iou": curve}, x_axis={"iou": t.float()})


BINARISE = ("value", "quantile")


def binarise(heat: torch.Tensor, threshold: float, mode: str) -> torch.Tensor:
    """``(B, N)`` map -> bool: ``heat >= threshold`` (``value``) or its top ``threshold`` share of pixels
    (``quantile``, stable ties)."""
    if mode == "value":
        return heat >= threshold
    return highest(heat, torch.full((heat.shape[0],), round(threshold * heat.shape[1]), device=heat.device))


def _iou(binary: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    inter = (binary & box).sum(1).float()
    union = (binary | box).sum(1).float()
    return inter / union.clamp_min(1)
