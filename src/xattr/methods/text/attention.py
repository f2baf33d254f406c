"""The transformer-native attributions of a text transformer's tokens, from its attention maps.

- :class:`TextAttentionRollout` (``method=attention_rollout``): Abnar & Zuidema, ACL 2020, "Quantifying
  Attention Flow in Transformers", Sec. 3: each layer's attention averaged over heads, the residual added as
  ``A_hat = (1 - r) A + r I`` (``r = 0.5``) and rows renormalised; the layers multiplied,
  ``R = A_hat_L ... A_hat_1``; the score of token ``j`` is ``R[q, j]`` for the query position ``q`` the
  classifier reads (``[CLS]``, position 0). Class-agnostic (the target is not used).
- :class:`TextChefer` (``method=chefer``): Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
  Explainability", eqs. 5-6: ``A_bar = E_h[(grad A * A)^+]`` with ``grad A = d y_t / d A`` (the target's
  logit), ``R = I``, then ``R <- R + A_bar R`` layer by layer; the score is ``R[q, j]``.

The token-level math (:func:`~xattr.core.attention.rollout`, :func:`~xattr.core.attention.chefer_relevance`)
lives in :mod:`xattr.core.attention`, shared with the image forms (:mod:`xattr.methods.baselines.attention`).
With every gradient equal to 1, Chefer's relevance is ``2^L`` times the rollout's: ``tests/test_text_transformers.py``
checks both on hand matrices.

The model must return its attention probabilities: :class:`xattr.models.hf.HFClassifier` does
(``attentions(x, emb)``; loaded with the eager attention implementation). Padding keys get no attention, so
their scores are 0 by construction; ``[CLS]`` keeps its own (identity) relevance and is reported as a special
token. Why written here: Captum and the other attribution libraries have neither method for HuggingFace
models; the formulas are a few tensor products (Chefer's reference code is per-layer hooks on its own BERT).
"""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.attention import HEAD_FUSIONS, chefer_relevance, rollout
from xattr.core.checks import check_choice
from xattr.errors import XattrConfigError
from xattr.methods.text.base import TokenAttribution


class _AttentionMethod(TokenAttribution):
    """Shared: the model must give its attention maps; ``query`` is the position whose row is read."""

    def __init__(self, model: nn.Module, embedding: str, pad_index: int | None, unk_index: int, query: int) -> None:
        if not callable(getattr(model, "attentions", None)):
            raise XattrConfigError(
                f"method {self.name} needs a transformer that returns its attention maps (model kind hf, "
                f"xattr.models.hf.HFClassifier); {type(model).__name__} has none")
        super().__init__(model, embedding, pad_index, unk_index)
        if int(query) < 0:
            raise XattrConfigError(f"bad method.query {query}; valid choices: a token position >= 0 (0: [CLS])")
        self.query = int(query)


class TextAttentionRollout(_AttentionMethod):
    """Attention rollout (see the module docstring): ``(B, L)`` share of the query token's attention flow.

    Args:
        residual: weight ``r`` of the identity (the residual connection): 0.5 in the paper.
        head_fusion: ``mean`` over heads (the paper), ``max`` or ``min``.
        query: position whose rollout row is the score (0: ``[CLS]``, what BERT-style classifiers read).
    """

    name = "attention_rollout"
    text_form_of = ("attention_rollout",)
    paper = "Abnar & Zuidema, ACL 2020 (Sec. 3, attention rollout)"
    requires_grad = False

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward returning the attention maps (1)."""
        return 1.0

    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 unk_index: int = 1, residual: float = 0.5, head_fusion: str = "mean", query: int = 0) -> None:
        super().__init__(model, embedding, pad_index, unk_index, query)
        if not 0.0 <= float(residual) <= 1.0:
            raise XattrConfigError(f"bad method.residual {residual}; valid choices: a number in [0, 1]")
        check_choice("method.head_fusion", head_fusion, HEAD_FUSIONS)
        self.residual, self.head_fusion = float(residual), head_fusion

    def _scores(self, x, target, mask):
        with torch.no_grad():
            _, atts = self.model.attentions(x)
        return rollout(atts, self.residual, self.head_fusion)[:, self.query]


class TextChefer(_AttentionMethod):
    """Gradient-weighted attention relevance (Chefer et al., ICCV 2021; see the module docstring), ``(B, L)``.

    Args:
        query: position whose relevance row is the score (0: ``[CLS]``).
    """

    name = "chefer"
    text_form_of = ("chefer",)
    paper = "Chefer, Gur & Wolf, ICCV 2021 (eqs. 5-6)"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward with the attention maps and one backward to them (3)."""
        return 3.0

    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 unk_index: int = 1, query: int = 0) -> None:
        super().__init__(model, embedding, pad_index, unk_index, query)

    def _scores(self, x, target, mask):
        with torch.enable_grad():
            emb = self.embed(x).detach().requires_grad_(True)  # the maps need a graph; the weights stay frozen
            logits, atts = self.model.attentions(x, emb)
            grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), atts)
        return chefer_relevance([a.detach() for a in atts], grads)[:, self.query]


__all__ = ["TextAttentionRollout", "TextChefer"]
