"""Layer-wise Relevance Propagation through zennit (composites of rules + canonizers).

Bach et al., "On Pixel-Wise Explanations ... by Layer-Wise Relevance Propagation", PLoS ONE 2015:
epsilon rule (Eq. 58) ``R_i = sum_j z_ij / (z_j + eps sign(z_j)) R_j`` and alpha-beta rule (Eq. 60)
``R_i = sum_j (alpha z_ij^+ / z_j^+ - beta z_ij^- / z_j^-) R_j`` (alpha - beta = 1), in the composites of
Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019. Rules (``rule``):

- ``epsilon``: epsilon rule on every conv and linear layer (IBA paper: ``epsilon = 5``);
- ``alpha_beta``: alpha-beta on convolutions, epsilon on linear layers (zennit's ``EpsilonAlpha2Beta1`` with
  free ``alpha``, ``beta``);
- ``epsilon_plus_flat``: zennit's ``EpsilonPlusFlat`` (flat first layer, z+ convs, epsilon dense);
- ``epsilon_alpha2_beta1_flat``: zennit's ``EpsilonAlpha2Beta1Flat``;
- ``b_rule``: the rule of the IBA paper's code (BioroboticsLab/IBA-paper-code @105969b,
  ``attribution/factory.py``: ``LRP(model, eps=5, beta=-1)`` through Böhle et al.'s innvestigator,
  ``method='b-rule'``) on every conv and linear layer, biases left out:
  ``R_i = sum_j ((1 + beta) z_ij^+ / (z_j^+ + eps) - beta z_ij^- / (z_j^- - eps)) R_j``, with
  ``z_ij^+ = w^+ x^+ + w^- x^-`` and ``z_ij^- = w^+ x^- + w^- x^+``. The paper's ``beta = -1`` keeps only the
  negative contributions (the code's warning says "positive"; its arithmetic, re-implemented in
  ``tests/reference/test_lrp_b_rule.py``, does this), ``eps = 5``, and the relevance starts at the target's
  logit (``init: logit``). zennit's ``AlphaBeta`` refuses a negative ``beta``, so this one rule is written here
  on zennit's ``BasicHook`` (:class:`BRule`); pooling, activations and the rest are zennit's.

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

RULES = ("epsilon", "alpha_beta", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "b_rule")

INITS = ("onehot", "logit")


def b_rule(beta: float, epsilon: float):
    """Böhle et al.'s b-rule as the IBA paper's code runs it (module docstring), a zennit rule: zennit's
    ``AlphaBeta`` modifiers (the four sign combinations of inputs and weights, biases zeroed) with
    ``alpha = 1 + beta``, no check that ``beta >= 0``, and the code's norms (:func:`denominators`: its zero and
    "rare neuron" handling, ``eps`` added with the sign). Written here because zennit refuses the paper's
    ``beta = -1`` and has no rare-neuron rescaling."""
    from zennit.core import BasicHook
    from zennit.rules import ClampMod

    eps, alpha, beta = float(epsilon), 1.0 + float(beta), float(beta)
    nobias = {"zero_params": ["bias"]}

    def denominators(out_grad: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The code's norms: zero ones set to 1; a neuron whose positive or negative part is zero ("rare") has
        the other's norm scaled by its factor (1 + beta, or -beta) so that its relevance is conserved; then
        ``eps`` times the sign added."""
        zp, zn = outputs[0] + outputs[1], outputs[2] + outputs[3]
        mp, mn = zp == 0, zn == 0
        rare = mp | mn
        zp, zn = torch.where(mp, torch.ones_like(zp), zp), torch.where(mn, torch.ones_like(zn), zn)
        if beta != -1:
            zp = torch.where(rare, zp * alpha, zp)
        if beta != 0:
            zn = torch.where(rare, zn * -beta, zn)
        zp, zn = zp + eps * torch.sign(zp), zn + eps * torch.sign(zn)
        return [out_grad / zp] * 2 + [out_grad / zn] * 2

    class BRule(BasicHook):
        def __init__(self) -> None:
            super().__init__(
                input_modifiers=[lambda v: v.clamp(min=0), lambda v: v.clamp(max=0),
                                 lambda v: v.clamp(min=0), lambda v: v.clamp(max=0)],
                param_modifiers=[ClampMod(min=0.0, **nobias), ClampMod(max=0.0, **nobias),
                                 ClampMod(max=0.0, **nobias), ClampMod(min=0.0, **nobias)],
                output_modifiers=[lambda out: out] * 4,
                gradient_mapper=denominators,
                reducer=lambda inputs, grads: (alpha * (inputs[0] * grads[0] + inputs[1] * grads[1])
                                               - beta * (inputs[2] * grads[2] + inputs[3] * grads[3])),
            )

    return BRule()


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
    if rule == "b_rule":
        rule_ = b_rule(beta, epsilon)  # zennit copies a rule for each module it hooks
        layer_map = layer_map_base() + [(Convolution, rule_), (nn.Linear, rule_)]
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
