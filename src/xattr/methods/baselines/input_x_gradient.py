"""Gradient x Input through Captum (``captum.attr.InputXGradient``).

Shrikumar et al., "Not Just a Black Box", 2016 (arXiv:1605.01713): ``a_i = x_i * d S_c / d x_i``. On a linear
model it is each pixel's exact contribution to the logit; a feature with zero weight gets zero.
"""

from __future__ import annotations

import torch
from captum.attr import InputXGradient as _CaptumIxG
from torch import nn

from xattr.core.hooks import frozen
from xattr.methods.base import Attribution, reduce_channels


class InputXGradient(Attribution):
    """``x * grad`` of the target logit, reduced over channels by ``reduce`` (default ``sum``: the signed
    contribution of each pixel, so the map sums to the first-order Taylor term).

    >>> maps = InputXGradient(model).attribute(x, target)   # (B, 1, H, W)
    """

    name = "input_x_gradient"
    paper = "Shrikumar et al., arXiv 2016"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward and one backward (3)."""
        return 3.0

    def __init__(self, model: nn.Module, reduce: str = "sum") -> None:
        super().__init__(model)
        self.reduce = reduce
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with frozen(self.model):
            attr = _CaptumIxG(self.model).attribute(x.detach().clone().requires_grad_(True), target=target)
        return reduce_channels(attr, self.reduce)
