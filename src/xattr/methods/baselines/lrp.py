"""Layer-wise Relevance Propagation through zennit (composites of rules + canonizers).

Bach et al., "On Pixel-Wise Explanations ... by Layer-Wise Relevance Propagation", PLoS ONE 2015:
epsilon rule (Eq. 58) ``R_i = sum_j z_ij / (z_j + eps sign(z_j)) R_j`` and alpha-beta rule (Eq. 60)
``R_i = sum_j (alpha z_ij^+ / z_j^+ - beta z_ij^- / z_j^-) R_j`` (alpha - beta = 1), in the composites of
Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019. Rules (``rule``):

- ``epsilon``: epsilon rule on every conv and linear layer (IBA paper: ``epsilon = 5``);
- ``alpha_beta``: alpha-beta on convolutions, epsilon on linear layers (zennit's ``EpsilonAlpha2Beta1`` with
  free ``alpha``, ``beta``);
- ``epsilon_plus_flat``: zennit's ``EpsilonPlusFlat`` (flat first layer, z+ convs, epsilon dense);
- ``epsilon_alpha2_beta1_flat``: zennit's ``EpsilonAlpha2Beta1Flat``.

Activations pass relevance through (zennit's ``Pass``), batch-norms are merged into the preceding conv by a
canonizer (``ResNetCanonizer`` for torchvision ResNets, whose residual sums also get zennit's ``Sum`` module
and the ``Norm`` rule; ``SequentialMergeBatchNorm`` otherwise; none for DenseNet, whose BNs follow
concatenations; an unmerged BN passes relevance unchanged, zennit's ``Pass``). Captum's LRP
was not used: it rejects batch-norm, residual additions and the functional ops of torchvision's models.

The LRP runs on a fixed copy (:mod:`xattr.methods.baselines.model_fixes`): zennit keeps one stored input per hooked
module and does not support in-place activations, so activations are made out-of-place and one module per call
site. The canonizer merges BN into the *shared* conv weights for the duration of the call and restores them
on exit (also on error).

The initial relevance is the one-hot target (``init="onehot"``, zennit's convention) or the target logit
(``init="logit"``). The signed ``(B, C, H, W)`` relevance is reduced by ``reduce`` (``sum``, the IBA code's
channel sum).
"""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.checks import check_choice
from xattr.core.hooks import frozen
from xattr.core.tokens import no_transformer_form
from xattr.methods.base import Attribution, reduce_channels
from xattr.methods.baselines.model_fixes import fixed_copy

RULES = ("epsilon", "alpha_beta", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat")
INITS = ("onehot", "logit")


def _composite(rule: str, epsilon: float, alpha: float, beta: float, canonizers: list):
    from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlusFlat, LayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta, Epsilon
    from zennit.types import Convolution

    if rule == "epsilon":
        layer_map = layer_map_base() + [(Convolution, Epsilon(epsilon=epsilon)), (nn.Linear, Epsilon(epsilon=epsilon))]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if rule == "alpha_beta":
        layer_map = layer_map_base() + [
            (Convolution, AlphaBeta(alpha=alpha, beta=beta)),
            (nn.Linear, Epsilon(epsilon=epsilon)),
        ]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if rule == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers)
    return EpsilonAlpha2Beta1Flat(epsilon=epsilon, canonizers=canonizers)


def _canonizers(model: nn.Module) -> list:
    from torchvision.models import DenseNet, ResNet
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    if any(isinstance(m, ResNet) for m in model.modules()):
        return [ResNetCanonizer()]
    if any(isinstance(m, DenseNet) for m in model.modules()):
        return []  # its BNs follow concatenations: a sequential merge would pair them with the wrong conv
    return [SequentialMergeBatchNorm()]


class LRP(Attribution):
    """LRP relevance of the target class (zennit), ``(B, 1, H, W)``.

    >>> maps = LRP(model, rule="alpha_beta", alpha=2.0, beta=1.0).attribute(x, target)
    """

    name = "lrp"
    paper = "Bach et al., PLoS ONE 2015"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: zennit's ``Gradient`` attributor runs the model twice, each a forward and a modified
        backward (6; counted on the tiny CNN)."""
        return 6.0

    def __init__(
        self,
        model: nn.Module,
        rule: str = "epsilon",
        epsilon: float = 5.0,
        alpha: float = 2.0,
        beta: float = 1.0,
        init: str = "onehot",
        canonize: bool = True,
        reduce: str = "sum",
    ) -> None:
        super().__init__(model)
        no_transformer_form(model, self.name, "zennit's rules cover convolutions, linear layers, ReLU and BatchNorm, not attention, LayerNorm or GELU (use chefer: the gradient-weighted attention relevance of LRP's authors' line of work)")
        check_choice("LRP rule", rule, RULES)
        check_choice("LRP init", init, INITS)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)
        if rule == "alpha_beta" and abs(alpha - beta - 1.0) > 1e-6:
            from xattr.errors import XattrConfigError

            raise XattrConfigError(f"LRP alpha-beta needs alpha - beta = 1, got alpha={alpha}, beta={beta}")
        self.rule, self.epsilon, self.alpha, self.beta = rule, float(epsilon), float(alpha), float(beta)
        self.init, self.canonize, self.reduce = init, canonize, reduce

    def attribute_channels(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The signed ``(B, C, H, W)`` relevance."""
        from zennit.attribution import Gradient

        fixed = fixed_copy(self.model, x)
        canon = _canonizers(fixed) if self.canonize else []
        composite = _composite(self.rule, self.epsilon, self.alpha, self.beta, canon)

        def start(out: torch.Tensor) -> torch.Tensor:
            onehot = torch.zeros_like(out)
            onehot[torch.arange(out.shape[0], device=out.device), target] = 1.0
            return onehot * out if self.init == "logit" else onehot

        with torch.enable_grad(), frozen(self.model):
            with Gradient(model=fixed, composite=composite) as attributor:
                _, relevance = attributor(x.detach().clone(), start)
        return relevance.detach()

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce_channels(self.attribute_channels(x, target), self.reduce)
