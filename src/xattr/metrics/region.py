"""Localisation against per-pixel regions instead of boxes (chest X-ray chapters, dissertation ch. 8-9).

- :class:`MaskIoU` (``metric=mask_iou``): IoU of the thresholded map with the explained finding's exact mask,
  ``concept_masks[b, target[b]]`` (``dataset=synthetic_cxr``'s lesion masks; NIH's box masks): the
  ``metric=iou`` of ch. 8 sec. 3.2 "Localization" (L1552) with a mask in place of the box union. Map scaling
  and binarisation as :class:`~xattr.metrics.localisation.BoxIoU` (``normalise``, ``threshold``, ``mode``).
  An image whose mask for the target is empty (or a target outside the masks) gets NaN.
- :class:`SeverityCorrelation` (``metric=severity_pcc``): Pearson correlation of the flattened map with the
  flattened per-pixel severity score map (``severity``: each pixel its BrixIA zone's score; ch. 8 L1554,
  "random heatmaps 0.0004"). NaN where the severity map is constant (no lung mask).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xattr.core.checks import check_choice
from xattr.metrics.base import MetricResult
from xattr.metrics.localisation import BINARISE, _iou, _Localisation, binarise


class MaskIoU(_Localisation):
    """IoU of the thresholded map with ``concept_masks[b, target[b]]`` (module docstring)."""

    name = "mask_iou"
    needs = ("concept_masks", "method")
    paper = "Khakzar et al., MICCAI 2021 (CheXplain-IBA), Tables 1-3, with exact masks"

    def __init__(self, threshold: float = 0.5, mode: str = "value", normalise: str = "max",
                 map_kind: str = "auto") -> None:
        check_choice("mode", mode, BINARISE)
        self._init_normalise(normalise, map_kind)
        self.threshold, self.mode = float(threshold), mode

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        heat = self.heat(maps, x, self.normalise, extras.get("method"))
        masks = extras.get("concept_masks")
        b = heat.shape[0]
        if masks is None:
            return MetricResult(scores={"mask_iou": torch.full((b,), float("nan"), device=heat.device)})
        masks = masks.to(heat.device).bool()
        k = masks.shape[1]
        ok = (target >= 0) & (target < k)
        idx = target.clamp(0, k - 1)
        region = masks[torch.arange(b, device=heat.device), idx].flatten(1)
        if region.shape[1] != heat.shape[1]:
            raise ValueError(f"concept_masks {tuple(masks.shape[-2:])} do not match the map size {tuple(x.shape[-2:])}")
        iou = _iou(binarise(heat, self.threshold, self.mode), region)
        bad = ~ok | (region.sum(1) == 0)
        return MetricResult(scores={"mask_iou": torch.where(bad, torch.full_like(iou, float("nan")), iou)})


class SeverityCorrelation(_Localisation):
    """Pearson correlation of the map with the per-pixel severity map (module docstring)."""

    name = "severity_pcc"
    needs = ("severity", "method")
    paper = "Khakzar et al., MICCAI 2021 (CheXplain-IBA), sec. 3.2 Correlation Analysis"

    def __init__(self, normalise: str = "none", map_kind: str = "auto") -> None:
        self._init_normalise(normalise, map_kind)

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        heat = self.heat(maps, x, self.normalise, extras.get("method"))
        sev = extras.get("severity")
        b = heat.shape[0]
        if sev is None:
            return MetricResult(scores={"severity_pcc": torch.full((b,), float("nan"), device=heat.device)})
        s = sev.to(heat.device).double().flatten(1)
        a = heat - heat.mean(1, keepdim=True)
        c = s - s.mean(1, keepdim=True)
        den = a.norm(dim=1) * c.norm(dim=1)
        pcc = (a * c).sum(1) / den.clamp_min(1e-300)
        return MetricResult(scores={"severity_pcc": torch.where(den > 0, pcc, torch.full_like(pcc, float("nan")))})
