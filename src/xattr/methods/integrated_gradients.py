"""Integrated Gradients through Captum (``captum.attr.IntegratedGradients``).

Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017, Eq. 1 and its Riemann
approximation Eq. 3: ``IG_i = (x_i - x'_i) * 1/m sum_{k=1..m} dF(x' + k/m (x - x')) / dx_i``. Defaults of the
InputIBA dissertation (appendix D.1): zero baseline, 50 steps. ``method="riemann_right"`` is Eq. 3 (the IBA paper
code's sum too); Captum's ``gausslegendre`` is available. The IBA paper code used the per-image mean colour as
baseline (``baseline="mean"``).
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients as _CaptumIG
from torch import nn

from xattr.methods._utils import baseline_tensor, check_choice, check_positive, frozen_params
from xattr.methods.base import Attribution, reduce_channels

METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")


class IntegratedGradients(Attribution):
    """Integrated gradients from ``baseline`` to ``x`` in ``n_steps`` steps.

    Args:
        baseline: ``"zero"`` | ``"mean"`` | a float (see :func:`xattr.methods._utils.baseline_tensor`).
        n_steps: number of points on the path (50).
        method: Captum's integral approximation (``riemann_right`` is the paper's Eq. 3).
        internal_batch_size: forward passes per chunk of the ``B * n_steps`` path points (``None``: one
            pass); the result does not depend on it.
        reduce: channel reduction of the signed ``(B, C, H, W)`` attribution (``sum`` keeps completeness:
            the map sums to ``F(x) - F(x')``).
    """

    name = "integrated_gradients"
    paper = "Sundararajan et al., ICML 2017"

    def __init__(
        self,
        model: nn.Module,
        baseline: str | float = "zero",
        n_steps: int = 50,
        method: str = "riemann_right",
        internal_batch_size: int | None = None,
        reduce: str = "sum",
    ) -> None:
        super().__init__(model)
        check_choice("integration method", method, METHODS)
        check_positive("n_steps", n_steps)
        check_positive("internal_batch_size", internal_batch_size, allow_none=True)
        baseline_tensor(torch.zeros(1, 1, 1, 1), baseline)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)
        self.baseline, self.n_steps, self.method = baseline, int(n_steps), method
        self.internal_batch_size, self.reduce = internal_batch_size, reduce

    def attribute_channels(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The un-reduced ``(B, C, H, W)`` attribution (for completeness checks)."""
        ibs = self.internal_batch_size
        if ibs is not None:
            ibs = max(int(ibs), x.shape[0])  # Captum needs at least one step per example in a chunk
        with torch.enable_grad(), frozen_params(self.model):
            return _CaptumIG(self.model).attribute(
                x.detach(),
                baselines=baseline_tensor(x.detach(), self.baseline),
                target=target,
                n_steps=self.n_steps,
                method=self.method,
                internal_batch_size=ibs,
            ).detach()

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce_channels(self.attribute_channels(x, target), self.reduce)
