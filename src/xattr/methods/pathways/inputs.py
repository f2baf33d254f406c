"""The input-space counterparts of NeuronMCT and NeuronIntGrad (dissertation ch. 5, sec. 4.2, Fig. 5, L583):
InputMCT = input x gradient (Shrikumar et al.), InputIntGrad = integrated gradients on the pixels (baseline 0,
50 steps), both through the Captum wrappers of :mod:`xattr.methods.baselines`, with the pathway methods'
channel reduction (per pixel the signed channel value of largest magnitude) and optional ``*`` opening.
"""

from __future__ import annotations

import torch
from captum.attr import InputXGradient as _CaptumIxG
from torch import nn

from xattr.core.hooks import frozen
from xattr.methods.baselines.input_x_gradient import InputXGradient
from xattr.methods.baselines.integrated_gradients import IntegratedGradients
from xattr.methods.pathways.maps import check_opening, check_reduce, finish_map


class InputMCT(InputXGradient):
    """``x * dPhi/dx`` (the marginal contribution of pixels by Taylor), reduced by ``reduce``."""

    name = "input_mct"
    paper = "Khakzar et al., CVPR 2021 (dissertation ch. 5): InputMCT = Shrikumar et al. 2016"

    def __init__(self, model: nn.Module, reduce: str = "signed_max_abs", opening_size: int = 0) -> None:
        super().__init__(model, reduce="sum")
        self.reduce = check_reduce(reduce)
        self.opening_size = check_opening(opening_size)

    def attribute_channels(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with frozen(self.model):
            return _CaptumIxG(self.model).attribute(x.detach().clone().requires_grad_(True), target=target).detach()

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return finish_map(self.attribute_channels(x, target), self.reduce, self.opening_size)


class InputIntGrad(IntegratedGradients):
    """Integrated gradients on the pixels (baseline 0, 50 steps by default), reduced by ``reduce``."""

    name = "input_intgrad"
    paper = "Khakzar et al., CVPR 2021 (dissertation ch. 5): InputIntGrad = Sundararajan et al. 2017"

    def __init__(self, model: nn.Module, baseline: str | float = "zero", n_steps: int = 50,
                 method: str = "riemann_right", chunk: int | str | None = None, reduce: str = "signed_max_abs",
                 opening_size: int = 0) -> None:
        super().__init__(model, baseline=baseline, n_steps=n_steps, method=method, chunk=chunk, reduce="sum")
        self.reduce = check_reduce(reduce)
        self.opening_size = check_opening(opening_size)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return finish_map(self.attribute_channels(x, target), self.reduce, self.opening_size)
