"""Gradient (Saliency) through Captum.

Simonyan et al., "Deep Inside Convolutional Networks", ICLR-W 2014, eq. 1: the map is
``|d S_c / d x|``, reduced over colour channels (``reduce``: ``max_abs`` as in the paper by default).
"""

from __future__ import annotations

import torch
from captum.attr import Saliency
from torch import nn

from xattr.methods.base import Attribution, reduce_channels


class Gradient(Attribution):
    """Vanilla gradient of the target logit w.r.t. the input, via ``captum.attr.Saliency``.

    Args:
        model: classifier taking ``x`` ``(B, C, H, W)``.
        reduce: how the 3-channel gradient becomes one map (see :func:`reduce_channels`).
        abs: take ``|grad|`` before reducing (Captum's ``abs``); False keeps the signed gradient.

    >>> maps = Gradient(model).attribute(x, target)   # (B, 1, H, W)
    """

    name = "gradient"
    paper = "Simonyan et al., ICLR-W 2014"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward and one backward (3)."""
        return 3.0

    def __init__(self, model: nn.Module, reduce: str = "max_abs", abs: bool = True) -> None:
        super().__init__(model)
        self.reduce = reduce
        self.abs = abs
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)  # validate early

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        grads = Saliency(self.model).attribute(x.detach().clone().requires_grad_(True), target=target, abs=self.abs)
        return reduce_channels(grads, self.reduce)
