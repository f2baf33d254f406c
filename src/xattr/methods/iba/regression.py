"""Regression IBA (Khakzar, dissertation ch. 8, sec. 2.2; CheXplain-IBA @8290f946).

IBA for a regression head ``Phi`` (one output per image) with one of three model losses in place of
``L_CE`` in ``L = L_model + beta * L_I``:

- ``mse``: ``L_MSE = (Phi(Z) - y)^2`` with ``y`` the regression target (the ``target`` argument, as float);
  with a small target it marks regions informative for a *low* score;
- ``rm`` (regression maximisation): the paper writes ``L_RM = Phi(Z)^2`` and says it favours regions with
  high scores; the reference code minimises ``-Phi(Z)^2`` (``mse_loss_maximize_score``), which is what
  "maximisation" means, so xattr minimises ``-Phi(Z)^2`` (the target is ignored);
- ``dv`` (deviation): ``L_DV = (Phi(Z) - Phi(x))^2``, the clean prediction as target (sufficient
  information for the prediction; the target is ignored).

Each is averaged over the noisy copies. ``inverse: true`` gives the regression Inverse IBA of Fig. 1
(``z_inv``, objective ``beta L_I - L_model``). ``output``: which column of the head is ``Phi`` when the
model has several outputs (``None``: the head must have exactly one).
"""

from __future__ import annotations

import torch

from xattr.errors import XattrConfigError, unknown
from xattr.methods.base import Explanation
from xattr.methods.iba.bottleneck import ModelLoss
from xattr.methods.iba.per_sample import PerSampleIBA

REGRESSION_LOSSES = ("mse", "rm", "dv")


def regression_loss(kind: str, target: torch.Tensor | None = None, clean: torch.Tensor | None = None) -> ModelLoss:
    """``phi (B, copies) -> (B,)`` per-image loss of ``kind`` (see module docstring)."""
    if kind not in REGRESSION_LOSSES:
        raise unknown("regression loss", kind, REGRESSION_LOSSES)

    def loss(phi: torch.Tensor) -> torch.Tensor:
        if kind == "mse":
            return ((phi - target.view(-1, 1).to(phi)) ** 2).mean(1)
        if kind == "rm":
            return -(phi**2).mean(1)
        return ((phi - clean.view(-1, 1).to(phi)) ** 2).mean(1)

    return loss


class RegressionIBA(PerSampleIBA):
    """Per-sample IBA on a regression output; ``regression_loss``: ``mse`` | ``rm`` | ``dv``.

    ``target`` of :meth:`attribute` is the regression target ``y`` (any real values, used by ``mse``).
    Other arguments as :class:`PerSampleIBA`; ``inverse`` switches to the inverse bottleneck.
    """

    name = "regression_iba"
    paper = "Khakzar et al., MICCAI 2021 (dissertation ch. 8, sec. 2.2)"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: :class:`PerSampleIBA`'s, plus ``dv``'s clean prediction (one tail forward)."""
        return super().forwards_per_image(shape) + (self.regression_loss == "dv")

    def __init__(self, model, layer: str, regression_loss: str = "dv", output: int | None = None,
                 inverse: bool = False, **kw) -> None:
        super().__init__(model, layer, **kw)
        if regression_loss not in REGRESSION_LOSSES:
            raise unknown("regression loss", regression_loss, REGRESSION_LOSSES)
        self.regression_loss = regression_loss
        self.output = output
        self.inverse = bool(inverse)

    def phi(self, outputs: torch.Tensor) -> torch.Tensor:
        """The regressed score ``(..., )`` from head outputs ``(..., K)``."""
        if self.output is not None:
            return outputs[..., self.output]
        if outputs.shape[-1] != 1:
            raise XattrConfigError(f"the head has {outputs.shape[-1]} outputs; set output to one of "
                                   f"0..{outputs.shape[-1] - 1}")
        return outputs[..., 0]

    def model_loss(self, target: torch.Tensor, tail) -> ModelLoss:
        clean = None
        if self.regression_loss == "dv":
            with torch.no_grad():
                clean = self.phi(tail(tail.r).float())  # the tail at z = r is the clean prediction
        base = regression_loss(self.regression_loss, target, clean)
        return lambda outputs: base(self.phi(outputs))

    scores = False  # Table 1's accuracies need class targets

    def explain(self, x: torch.Tensor, target: torch.Tensor | float, aux=()) -> Explanation:
        """Like :meth:`Attribution.explain`, but ``target`` is a real-valued regression target ``(B,)``
        (ignored by ``rm`` and ``dv``)."""
        if not torch.is_tensor(target):
            target = torch.full((x.shape[0],), float(target), device=x.device)
        target = target.to(x.device).float().reshape(-1)
        if target.numel() != x.shape[0]:
            raise ValueError(f"target has {target.numel()} entries for a batch of {x.shape[0]}")
        with torch.enable_grad():
            return Explanation(self._attribute(x, target)).detach()
