"""Multi-layer IBA (Khakzar, dissertation ch. 8, sec. 2.3, eq. 5).

``T(IBA_{L_1}) n T(IBA_{L_2}) n ... n T(IBA_{L_L})``: Per-Sample IBA at several layers, each map
binarised by a threshold ``T`` and the binary maps intersected. Early layers give crisp maps with extra
non-predictive regions, late layers blurry but predictive ones; the intersection keeps both qualities.
The paper does not fix ``T``; xattr offers (per image and per layer map, after resizing to the input):
``relative`` (``m >= threshold * max m``, default 0.5), ``quantile`` (``m >= quantile_threshold(m)``)
and ``absolute`` (``m >= threshold`` bits). ``combine: binary`` returns the 0/1 intersection (eq. 5);
``mean`` returns the intersection times the mean of the max-normalised maps (same support, ranked inside).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xattr.errors import unknown
from xattr.methods.iba.inverse import InverseIBA
from xattr.methods.iba.per_sample import IBABase, PerSampleIBA

THRESHOLDS = ("relative", "quantile", "absolute")
COMBINE = ("binary", "mean")


def binarize(maps: torch.Tensor, threshold: float = 0.5, mode: str = "relative") -> torch.Tensor:
    """``T`` of eq. 5: ``(B, 1, H, W)`` maps -> 0/1 float maps, per image."""
    if mode not in THRESHOLDS:
        raise unknown("threshold mode", mode, THRESHOLDS)
    flat = maps.flatten(1)
    if mode == "relative":
        t = threshold * flat.amax(1)
    elif mode == "quantile":
        t = torch.quantile(flat.float(), threshold, dim=1)
    else:
        t = torch.full((maps.shape[0],), float(threshold), device=maps.device)
    return (maps >= t.view(-1, 1, 1, 1)).float()


def intersect(maps: Sequence[torch.Tensor], threshold: float = 0.5, mode: str = "relative",
              combine: str = "binary") -> torch.Tensor:
    """Eq. 5 on a list of ``(B, 1, H, W)`` maps (one per layer, same size)."""
    if combine not in COMBINE:
        raise unknown("combine", combine, COMBINE)
    masks = torch.stack([binarize(m, threshold, mode) for m in maps])
    inter = masks.prod(0)
    if combine == "binary":
        return inter
    norm = torch.stack([m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1) for m in maps])
    return inter * norm.mean(0)


class MultiLayerIBA(IBABase):
    """Per-Sample (or Inverse, ``inverse: true``) IBA at each of ``layers``, combined by eq. 5.

    Args:
        model: classifier; ``layers``: bottleneck layers (paper names or module paths).
        threshold, threshold_mode, combine: see the module docstring.
        inverse: use :class:`InverseIBA` per layer.
        resize: each layer's map to the input size (``reference`` | ``bilinear``, see :class:`IBABase`).
        Other arguments (``beta``, ``steps``, ``lr``, ``copies``, ``sigma``, ``init_alpha``, ``seed``, ...):
            passed to each layer's :class:`PerSampleIBA`; statistics of all layers come from one ``fit``.
    """

    name = "multilayer_iba"
    paper = "Khakzar et al., MICCAI 2021 (dissertation ch. 8, eq. 5)"

    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one Per-Sample IBA per layer, the sum of their costs."""
        return float(sum(m.forwards_per_image(shape) for m in self.methods))

    def __init__(self, model: nn.Module, layers: Sequence[str], threshold: float = 0.5,
                 threshold_mode: str = "relative", combine: str = "binary", inverse: bool = False,
                 n_samples: int = 10_000, min_std: float = 0.01, active_threshold: float = 0.01,
                 sigma: float | None = 1.0, relu: bool = False, model_name: str | None = None,
                 weights: str | None = None, dataset: str | None = None, resize: str = "reference",
                 **iba_kw) -> None:
        super().__init__(model, list(layers), n_samples=n_samples, min_std=min_std,
                         active_threshold=active_threshold, sigma=sigma, relu=relu, model_name=model_name,
                         weights=weights, dataset=dataset, resize=resize)
        self.refuse_tokens("its layer maps are combined as (B, C, h, w) feature maps (not adapted to tokens)")
        if threshold_mode not in THRESHOLDS:
            raise unknown("threshold mode", threshold_mode, THRESHOLDS)
        if combine not in COMBINE:
            raise unknown("combine", combine, COMBINE)
        self.threshold, self.threshold_mode, self.combine = float(threshold), threshold_mode, combine
        cls = InverseIBA if inverse else PerSampleIBA
        common = dict(min_std=min_std, active_threshold=active_threshold, sigma=sigma, relu=relu, resize=resize)
        self.methods = [cls(model, layer, **common, **iba_kw) for layer in self.layers]

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        maps = []
        for layer, method in zip(self.layers, self.methods):
            method.set_statistics({layer: self.stats[layer]} if layer in self.stats else {})
            maps.append(method._attribute(x, target))
        return intersect(maps, self.threshold, self.threshold_mode, self.combine)
