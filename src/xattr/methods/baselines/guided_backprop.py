"""Guided Backpropagation through Captum (``captum.attr.GuidedBackprop``).

Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR-W 2015, Fig. 1: at every ReLU
the backward signal is ``1[x > 0] * relu(g)`` (positive gradient through active units).

Captum overrides the backward of ``nn.ReLU`` modules only, so the model is first turned into a fixed copy
(:mod:`xattr.methods.baselines.model_fixes`): out-of-place activations, one module per call site, ReLU6 written as
``min(relu(x), 6)`` (the ReLU part is guided, the clamp keeps its gradient ``1[x < 6]``) and DenseNet's final
functional ReLU as a module. The copy shares the model's weights; the model itself is never changed.
"""

from __future__ import annotations

import torch
from captum.attr import GuidedBackprop as _CaptumGBP
from torch import nn

from xattr.core.hooks import frozen
from xattr.core.tokens import no_transformer_form
from xattr.methods.base import Attribution, reduce_channels
from xattr.methods.baselines.model_fixes import fixed_copy


class GuidedBackprop(Attribution):
    """Guided-backprop gradient of the target logit, reduced over channels (``max_abs`` by default).

    >>> maps = GuidedBackprop(model).attribute(x, target)   # (B, 1, H, W)
    """

    name = "guided_backprop"
    paper = "Springenberg et al., ICLR-W 2015"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward and one (guided) backward (3)."""
        return 3.0

    def __init__(self, model: nn.Module, reduce: str = "max_abs") -> None:
        super().__init__(model)
        no_transformer_form(model, self.name, "Guided Backprop's rule gates ReLUs; a ViT's GELU has none")
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)
        self.reduce = reduce

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fixed = fixed_copy(self.model, x, relu6="clamp")
        with frozen(self.model):
            attr = _CaptumGBP(fixed).attribute(x.detach().clone().requires_grad_(True), target=target)
        return reduce_channels(attr, self.reduce)
