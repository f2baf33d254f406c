"""The axiom scores of "Do Explanations Explain? Model Knows Best" (dissertation ch. 7, sec. 3.4, eqs. 8-11,
L1184-1196; computed as the reference code does: CAMP-eXplain-AI/Do-Explanations-Explain,
``Attribution_Methods_Submit.ipynb`` (cells "Score") with ``utils.py``), on samples of ``dataset=axioms``.

Each map is first brought to the scale the reference stored (``scale``, per map, before every score):

- ``max``: ``S / max S``. The Captum rows (Integrated Gradients, Guided BP, DeepLiftShap: notebook cell
  ``attrib_captum``) and the TorchRay rows (Gradient, Extremal Perturbation: cell ``attrib_torchray``) store
  ``mask / torch.max(mask)``.
- ``minmax``: ``(S - min S) / (max S - min S + 1e-7)``: Grad-CAM and GradCAM++ come from pytorch-grad-cam
  (cells ``attrib_GradCAM``, ``attrib_GradCAMPlusPlus``), whose ``scale_cam_image`` min-max scales the
  ReLU'd CAM (before its resize; bilinear resizing commutes with it up to the interpolation at the border).
- ``none``: raw: FullGrad (idiap ``FullGrad.saliency``: a sum of per-layer min-max maps, no final scaling)
  and IBA (``iba.analyze``) are stored as returned.
- ``auto`` (default): the reference's choice for the run's method (:data:`REFERENCE_SCALE`; ``max`` for any
  method not listed). Only the double score and, for ``minmax``, the null score depend on it: the null
  ratio, the single-feature ratio and the saturation correlation are unchanged by ``S -> S / c``.

Not reproduced: the notebook's ``save_data_image`` also divides a stored map by 255 when ``max |S| > 1``
after the channel mean (an image-export rule; it changes the double score only when exactly one of the
two maps of a sample crosses 1). The Captum rows divide by the maximum over the three channels before
their channel mean; here the method's reduced ``(B, 1, H, W)`` map is divided by its own maximum (the
same up to a positive constant per map). Per sample (the scenario comes with the batch; scores of other
scenarios are NaN):

- null feature (eq. 8), on the signed map ``S_a`` (``utils.get_null_player``: ``abs`` commented out):
  ``null_metric="ratio"`` (default, the code's) ``sum_{f_null} S_a / sum_{f_a} S_a``; ``"share"`` (the printed
  eq. 8 read as a share) ``sum_{f_null} S_a / sum_all S_a``. The notebook's null cell scores the map of the
  class whose feature is patch 1 and takes ``1 / get_null_player``, i.e. null patch over feature patch;
  averaged over samples. Score ``null``.
- double feature (eq. 9, ``utils.get_class_sensitivity``), on ``|S|``: ``[sum_{f_a} min(S_a, S_b) +
  sum_{f_b} min(S_a, S_b)] / [sum_{f_a} S_a + sum_{f_b} S_b]``, averaged over samples. Score ``double``.
- single feature (eq. 10, ``utils.single_patch_hm_sum`` on ``abs``): ``r_t = (mean_{f_a} |S_t| + 1e-5) /
  (mean_outside |S_t| + 1e-5)`` for ``t = a, b``; scores ``single_ra``, ``single_rb``; the dataset number
  ``single`` is Spearman's rho of (r_a, r_b) over samples (:meth:`AxiomScores.summarise`).
- saturation (eq. 11, ``utils.two_patch_corr_score`` on ``abs``): ``saturation_f1 = mean_{f_a1} |S_a|``,
  ``saturation_f2 = mean_{f_a2} |S_a|``; the dataset number ``saturation`` is Spearman's rho of the two
  over samples.

``S_b`` (the map for the second class) is computed here with the run's method (extra ``method``), so every
method is scored on the same samples by the ordinary ``python -m xattr.run ... dataset=axioms
metric=axioms``. Maps are the method's ``(B, 1, H, W)`` maps (its own channel reduction: the reference's
Gradient is TorchRay's ``max_c |grad|``, its Captum rows the signed channel mean; see
``conf/row/*_axioms.yaml``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from xattr.core.checks import check_choice
from xattr.core.summary import mean_and_sem
from xattr.metrics.base import Metric, MetricResult

NULL_METRICS = ("ratio", "share")
SCALES = ("auto", "max", "minmax", "none")
#: ``scale=auto``: how the reference code stored each method's map (any other method: ``max``)
REFERENCE_SCALE = {"grad_cam": "minmax", "grad_cam_pp": "minmax", "fullgrad": "none", "iba": "none",
                   "input_iba": "none"}
#: scenario codes, as ``xattr.data.axioms`` numbers them (``SCENARIOS``)
NULL, SINGLE, DOUBLE, SATURATION = 0, 1, 2, 3


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 4)`` xyxy pixel boxes (NaN: none) -> ``(B, H, W)`` bool masks."""
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    b = torch.nan_to_num(boxes, nan=-1.0)
    return (xs >= b[:, 0, None, None]) & (xs < b[:, 2, None, None]) & (ys >= b[:, 1, None, None]) & \
        (ys < b[:, 3, None, None])


def scale_maps(s: torch.Tensor, how: str) -> torch.Tensor:
    """Per map of ``(B, H, W)``: ``max`` divides by the map's maximum, ``minmax`` maps it to [0, 1] as
    pytorch-grad-cam's ``scale_cam_image`` (``(S - min) / (max(S - min) + 1e-7)``), ``none`` keeps it."""
    if how == "none":
        return s
    flat = s.flatten(1)
    if how == "max":
        return s / flat.amax(1)[:, None, None]
    shifted = s - flat.amin(1)[:, None, None]
    return shifted / (shifted.flatten(1).amax(1)[:, None, None] + 1e-7)


def null_score(s_a: torch.Tensor, f_a: torch.Tensor, f_null: torch.Tensor, how: str = "ratio") -> torch.Tensor:
    """Eq. 8 on raw maps ``(B, H, W)``: null patch's sum over the feature patch's (``ratio``) or over the
    whole map (``share``)."""
    num = (s_a * f_null).sum((1, 2))
    den = (s_a * f_a).sum((1, 2)) if how == "ratio" else s_a.sum((1, 2))
    return num / den


def double_score(s_a: torch.Tensor, s_b: torch.Tensor, f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """Eq. 9 on ``|S|`` ``(B, H, W)``: overlap of the two classes' maps on the two patches."""
    s_a, s_b = s_a.abs(), s_b.abs()
    m = torch.minimum(s_a, s_b)
    return ((m * f_a).sum((1, 2)) + (m * f_b).sum((1, 2))) / ((s_a * f_a).sum((1, 2)) + (s_b * f_b).sum((1, 2)))


def inside_outside_ratio(s: torch.Tensor, f: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Eq. 10's ``r = (mean_f |S| + eps) / (mean_outside |S| + eps)`` per sample."""
    s, f = s.abs(), f.float()
    inside = (s * f).sum((1, 2)) / f.sum((1, 2))
    outside = (s * (1 - f)).sum((1, 2)) / (1 - f).sum((1, 2))
    return (inside + eps) / (outside + eps)


def spearman(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, int]:
    """Spearman's rho of the finite pairs (mean slot), no standard error, their count."""
    a, b = a.double().numpy(), b.double().numpy()
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 2:
        return math.nan, math.nan, n
    rho = spearmanr(a[ok], b[ok]).statistic
    return float(rho), math.nan, n


class AxiomScores(Metric):
    """Null feature, class sensitivity (double, single) and saturation scores of ch. 7.

    >>> m = AxiomScores()
    >>> res = m(net, x, target, maps, feature_boxes=fb, other=other, scenario=sc, method=method)
    >>> res.scores["null"]      # (B,), NaN for samples of other scenarios
    """

    name = "axioms"
    needs = ("feature_boxes", "other", "scenario", "method")
    #: only the samples of the two-feature scenarios are attributed again (the others cost nothing)
    cost_bounds = (0.0, 1.0)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: the method once more, for the other class (``method_cost``; only samples of the
        single- and double-feature scenarios, see :attr:`cost_bounds`)."""
        return float(method_cost)

    paper = "Khakzar et al., 'Do Explanations Explain? Model Knows Best', CVPR 2022 (dissertation ch. 7)"

    def __init__(self, null_metric: str = "ratio", eps: float = 1e-5, scale: str = "auto") -> None:
        check_choice("metric.axioms.null_metric", null_metric, NULL_METRICS)
        check_choice("metric.axioms.scale", scale, SCALES)
        self.null_metric, self.eps, self.scale = null_metric, float(eps), scale

    def scale_for(self, method: Any) -> str:
        """``scale``, with ``auto`` resolved by the method's name (:data:`REFERENCE_SCALE`)."""
        if self.scale != "auto":
            return self.scale
        return REFERENCE_SCALE.get(str(getattr(method, "name", "")), "max")

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 feature_boxes: torch.Tensor | None = None, other: torch.Tensor | None = None,
                 scenario: torch.Tensor | None = None, method: Any = None, **_: Any) -> MetricResult:
        if feature_boxes is None or scenario is None:
            raise ValueError("metric=axioms needs dataset=axioms (feature boxes and scenarios per sample)")
        b = x.shape[0]
        how = self.scale_for(method)
        s_a = scale_maps(maps.float().mean(1), how)  # (B, H, W)
        f1 = box_masks(feature_boxes[:, 0].float(), s_a.shape[-2:]).float()
        f2 = box_masks(feature_boxes[:, 1].float(), s_a.shape[-2:]).float()
        nan = torch.full((b,), math.nan, device=x.device)
        scores = {k: nan.clone() for k in ("null", "double", "single_ra", "single_rb", "saturation_f1",
                                           "saturation_f2")}
        scenario = scenario.to(x.device)
        sel = scenario == NULL
        if sel.any():
            scores["null"][sel] = null_score(s_a[sel], f1[sel], f2[sel], self.null_metric)
        two = (scenario == DOUBLE) | (scenario == SINGLE)
        if two.any():
            if method is None:
                raise ValueError("metric=axioms needs the run's method for the second class's map")
            s_b = scale_maps(method.attribute(x[two], other.to(x.device)[two].long()).float().mean(1), how)
            sub = scenario[two]
            d, s = sub == DOUBLE, sub == SINGLE
            idx = two.nonzero().flatten()
            if d.any():
                scores["double"][idx[d]] = double_score(s_a[two][d], s_b[d], f1[two][d], f2[two][d])
            if s.any():
                scores["single_ra"][idx[s]] = inside_outside_ratio(s_a[two][s], f1[two][s], self.eps)
                scores["single_rb"][idx[s]] = inside_outside_ratio(s_b[s], f1[two][s], self.eps)
        sel = scenario == SATURATION
        if sel.any():
            a = s_a[sel].abs()
            scores["saturation_f1"][sel] = (a * f1[sel]).sum((1, 2)) / f1[sel].sum((1, 2))
            scores["saturation_f2"][sel] = (a * f2[sel]).sum((1, 2)) / f2[sel].sum((1, 2))
        return MetricResult(scores=scores)

    def summarise(self, scores: dict[str, torch.Tensor]) -> dict[str, tuple[float, float, int]]:
        """``null`` and ``double``: mean and s.e. over samples; ``single`` and ``saturation``: Spearman's rho
        over samples (eqs. 10-11, pooled over the dataset); the per-sample columns: mean and s.e."""
        out = {k: mean_and_sem(v) for k, v in scores.items()}
        if "single_ra" in scores and "single_rb" in scores:
            out["single"] = spearman(scores["single_ra"], scores["single_rb"])
        if "saturation_f1" in scores and "saturation_f2" in scores:
            out["saturation"] = spearman(scores["saturation_f1"], scores["saturation_f2"])
        return out
