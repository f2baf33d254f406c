"""Occlusion through Captum (``captum.attr.Occlusion``).

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, Sec. 4.2: slide a
``window x window`` patch over the image, replace it by a baseline and record the drop of the target logit;
a pixel's value is the mean drop of the windows covering it. IBA paper (Sec. 4): windows 8x8 and 14x14;
its code used stride = window and the per-image mean colour as the fill (``baseline="mean"``, the default here;
``"zero"`` fills 0 in normalised space, as the paper's text says).

Every channel of Captum's result is the same map (a window covers all channels), so the first channel is kept
and ``reduce`` acts on it (``sum``: the signed drop; ``abs``; ``positive``).
"""

from __future__ import annotations

import torch
from captum.attr import Occlusion as _CaptumOcclusion
from torch import nn

from xattr.methods._utils import baseline_tensor, check_choice, check_positive
from xattr.methods.base import Attribution, reduce_channels


class Occlusion(Attribution):
    """Logit drop when a ``window`` patch (moved by ``stride``, default = window) is filled by ``baseline``.

    ``internal_batch_size``: forward rows per pass (``perturbations_per_eval = max(1, ibs // B)``); the
    result does not depend on it.
    """

    name = "occlusion"
    paper = "Zeiler & Fergus, ECCV 2014"
    requires_grad = False

    def __init__(
        self,
        model: nn.Module,
        window: int = 8,
        stride: int | None = None,
        baseline: str | float = "mean",
        internal_batch_size: int | None = 256,
        reduce: str = "sum",
    ) -> None:
        super().__init__(model)
        check_positive("window", window)
        check_positive("stride", stride, allow_none=True)
        check_positive("internal_batch_size", internal_batch_size, allow_none=True)
        check_choice("occlusion reduce", reduce, ("sum", "abs", "positive", "none"))
        baseline_tensor(torch.zeros(1, 1, 1, 1), baseline)
        self.window, self.stride = int(window), int(stride or window)
        self.baseline, self.internal_batch_size, self.reduce = baseline, internal_batch_size, reduce

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        h, w = x.shape[-2:]
        n_windows = ((h - self.window) // self.stride + 1) * ((w - self.window) // self.stride + 1)
        if self.internal_batch_size is None:
            ppe = n_windows  # all windows in one pass
        else:
            ppe = max(1, min(n_windows, int(self.internal_batch_size) // x.shape[0]))
        with torch.no_grad():
            attr = _CaptumOcclusion(self.model).attribute(
                x,
                sliding_window_shapes=(c, self.window, self.window),
                strides=(c, self.stride, self.stride),
                baselines=baseline_tensor(x, self.baseline),
                target=target,
                perturbations_per_eval=ppe,
            )
        return reduce_channels(attr[:, :1], self.reduce)
