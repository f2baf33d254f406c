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

import math

import torch
from captum.attr import Occlusion as _CaptumOcclusion
from torch import nn

from xattr.core.checks import check_choice, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.methods.base import Attribution, reduce_channels
from xattr.methods.baselines._utils import baseline_tensor


class Occlusion(Attribution):
    """Logit drop when a ``window`` patch (moved by ``stride``, default = window) is filled by ``baseline``.

    ``chunk``: forward rows (occluded copies) per device call, ``None``: all windows of all images in one
    call, ``"auto"`` (the default): :func:`~xattr.core.chunk.resolve_chunk` (on a CPU ~13 rows of 224 px,
    which ran 2x faster than the 256 of before in the bench and 3x in a bbox run: docs/speed.md); the
    result does not depend on it. Mapping: ``chunk`` -> Captum's
    ``perturbations_per_eval = max(1, min(n_windows, chunk // b))`` for groups of ``b = min(B, chunk)``
    images per Captum call (Captum runs each perturbation on every image of its call).
    """

    name = "occlusion"
    paper = "Zeiler & Fergus, ECCV 2014"
    requires_grad = False

    memory_knob = "chunk"

    def n_windows(self, shape: tuple[int, ...]) -> int:
        """Window positions for an input of ``shape`` ``(C, H, W)`` (Captum's: ``ceil((H - w) / s) + 1`` per side)."""
        h, w = shape[-2:]
        return (math.ceil(max(0, h - self.window) / self.stride) + 1) * (math.ceil(max(0, w - self.window) / self.stride) + 1)

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward per window position and one of the clean image, no backward."""
        return float(self.n_windows(shape) + 1)

    def __init__(
        self,
        model: nn.Module,
        window: int = 8,
        stride: int | None = None,
        baseline: str | float = "mean",
        chunk: int | str | None = "auto",
        reduce: str = "sum",
    ) -> None:
        super().__init__(model)
        check_positive_int("window", window)
        check_positive_int("stride", stride, allow_none=True)
        check_chunk(chunk)
        check_choice("occlusion reduce", reduce, ("sum", "abs", "positive", "none"))
        baseline_tensor(torch.zeros(1, 1, 1, 1), baseline)
        self.window, self.stride = int(window), int(stride or window)
        self.baseline, self.chunk, self.reduce = baseline, chunk, reduce

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        h, w = x.shape[-2:]
        n_windows = ((h - self.window) // self.stride + 1) * ((w - self.window) // self.stride + 1)
        chunk = resolve_chunk(self.chunk, self.model, x[:1])
        step = items_per_call(x.shape[0], 1, chunk)
        # windows per call: all of them (chunk=None) or as many as fit in chunk rows for `step` images
        ppe = items_per_call(n_windows, step, chunk)
        out = []
        with torch.no_grad():
            occlusion = _CaptumOcclusion(self.model)
            for i in range(0, x.shape[0], step):
                xi = x[i : i + step]
                attr = occlusion.attribute(
                    xi,
                    sliding_window_shapes=(c, self.window, self.window),
                    strides=(c, self.stride, self.stride),
                    baselines=baseline_tensor(xi, self.baseline),
                    target=target[i : i + step],
                    perturbations_per_eval=ppe,
                )
                out.append(attr[:, :1])
        return reduce_channels(torch.cat(out), self.reduce)
