"""The transformer-native baselines of a vision transformer, from its attention probabilities.

- :class:`AttentionRollout` (``method=attention_rollout``): Abnar & Zuidema, ACL 2020, Sec. 3
  (:func:`xattr.core.attention.rollout`): heads fused, ``A_hat = (1 - r) A + r I`` renormalised, layers
  multiplied. The map is the class token's row over the patch tokens, on the patch grid, bilinearly resized
  to the input (as in the rollout of Chefer et al.'s ViT code). Class-agnostic.
- :class:`Chefer` (``method=chefer``): Chefer, Gur & Wolf, ICCV 2021, eqs. 5-6
  (:func:`xattr.core.attention.chefer_relevance`): ``A_bar = E_h[(dy_t/dA * A)^+]``, ``R <- R + A_bar R``;
  the same row, grid and resize.

The attention probabilities come from :func:`xattr.core.tokens.capture_attention` (torchvision and timm
ViT / DeiT). Query row: the class token (position 0) when the model has special tokens; a model without
one (timm ``global_pool='avg'``) reads the mean of its patch tokens, so the row is the patch rows'
average. Swin's shifted-window attention has no image-wide token-to-token matrix: both stop with one line.
The text forms (:mod:`xattr.methods.text.attention`) share the math and replace these for text models.
"""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.attention import HEAD_FUSIONS, chefer_relevance, rollout
from xattr.core.checks import check_choice
from xattr.core.hooks import frozen
from xattr.core.tokens import attention_modules, capture_attention, token_layout, transformer_family
from xattr.errors import XattrConfigError
from xattr.methods.base import Attribution, upsample


class _AttentionMap(Attribution):
    """Shared: the model's attention maps, the query row, the patch grid and the resize."""

    def __init__(self, model: nn.Module, interpolation: str = "bilinear") -> None:
        super().__init__(model)
        paths = attention_modules(model)
        if not paths:
            family = transformer_family(model)
            why = ("Swin's attention is windowed and shifted, with no token-to-token matrix over the image"
                   if family and "swin" in family else f"{type(model).__name__} is no ViT / DeiT")
            raise XattrConfigError(f"method {self.name} needs a vision transformer with global self-attention "
                                   f"(torchvision or timm ViT / DeiT): {why}")
        self.layout = token_layout(model, paths[0])
        check_choice("interpolation", interpolation, ("bilinear", "nearest", "bicubic"))
        self.interpolation = interpolation

    def _row(self, rel: torch.Tensor) -> torch.Tensor:
        """``(B, N, N)`` -> the query's relevance of every token ``(B, N)``."""
        p = self.layout.prefix
        return rel[:, 0] if p > 0 else rel.mean(1)

    def _map(self, rel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        row = self._row(rel)[..., None]  # (B, N, 1): one "channel"
        grid = self.layout.to_grid(row, tuple(x.shape[-2:]))  # (B, 1, h, w): patch tokens only
        return upsample(grid.to(x.dtype), tuple(x.shape[-2:]), self.interpolation)


class AttentionRollout(_AttentionMap):
    """Attention rollout of a ViT (see the module docstring), ``(B, 1, H, W)``.

    Args:
        residual: weight ``r`` of the identity (the residual connection): 0.5 in the paper.
        head_fusion: ``mean`` over heads (the paper), ``max`` or ``min``.
        interpolation: patch grid to input size.
    """

    name = "attention_rollout"
    paper = "Abnar & Zuidema, ACL 2020 (Sec. 3, attention rollout)"
    requires_grad = False

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward recording the attention maps (1)."""
        return 1.0

    def __init__(self, model: nn.Module, residual: float = 0.5, head_fusion: str = "mean",
                 interpolation: str = "bilinear") -> None:
        super().__init__(model, interpolation)
        if not 0.0 <= float(residual) <= 1.0:
            raise XattrConfigError(f"bad method.residual {residual}; valid choices: a number in [0, 1]")
        check_choice("method.head_fusion", head_fusion, HEAD_FUSIONS)
        self.residual, self.head_fusion = float(residual), head_fusion

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        atts: list[torch.Tensor] = []
        with torch.no_grad(), capture_attention(self.model, atts):
            self.model(x)
        return self._map(rollout(atts, self.residual, self.head_fusion), x)


class Chefer(_AttentionMap):
    """Gradient-weighted attention relevance of a ViT (Chefer et al., ICCV 2021, eqs. 5-6), ``(B, 1, H, W)``.

    Args:
        interpolation: patch grid to input size.
    """

    name = "chefer"
    paper = "Chefer, Gur & Wolf, ICCV 2021 (eqs. 5-6)"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward recording the attention maps and one backward to them (3)."""
        return 3.0

    def __init__(self, model: nn.Module, interpolation: str = "bilinear") -> None:
        super().__init__(model, interpolation)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        atts: list[torch.Tensor] = []
        with frozen(self.model), torch.enable_grad(), capture_attention(self.model, atts):
            xin = x.detach().clone().requires_grad_(True)  # the maps need a graph; the weights stay frozen
            logits = self.model(xin)
            grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), atts)
        return self._map(chefer_relevance([a.detach() for a in atts], grads), x)


__all__ = ["AttentionRollout", "Chefer"]
