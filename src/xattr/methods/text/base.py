"""What every text method shares: the embedding layer, padding, the reduction over the embedding
dimension, a forward from embeddings, and cuDNN's RNN backward in eval mode.

A *text model* is any ``nn.Module`` taking ``(B, L)`` long token ids whose embedding layer is named in
config (``model.layers.embedding``: a paper name of ``xattr_layers`` or a module path). Methods attribute
the embedding layer's output ``(B, L, D)`` (Captum's layer view, InputIBA ch. 6 sec. 4.1: "we generate
attributions at embedding space") and give one score per token ``(B, L)``:

- ``token_reduce`` over ``D``: ``sum`` (signed sum: keeps IG's completeness, sum of scores =
  ``f(x) - f(x')``), ``l2`` (Euclidean norm, the usual "gradient norm" saliency of NLP), ``abs_sum``;
- padding (``x == pad_index``) gets 0 and never changes the others' scores: the padded positions carry
  their own embedding through the model, and every method here either runs a review without its padding
  (LIME, random) or depends only on the model's output, which a padding-aware model (e.g.
  :class:`xattr.models.text.LSTMClassifier`: right padding, causal RNN, last real token) computes
  independently of the padding.

:func:`~xattr.methods.embedding.embedded_forward` runs the model on its own token ids with the embedding
layer's output replaced by given embeddings (a forward hook), so ``f(emb)`` exists for any text model, not
only ones with a ``forward_embedded`` method.

cuDNN refuses the backward of an RNN in eval mode ("cudnn RNN backward can only be called in training
mode"); :func:`xattr.core.rnn.rnn_backward_ok` disables cuDNN for the block on CUDA (no effect on CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.layers import resolve
from xattr.core.rnn import rnn_backward_ok
from xattr.errors import unknown
from xattr.methods.base import Attribution
from xattr.methods.embedding import EmbeddedModel, EmbeddingAdapter, embedded_forward, pad_index_of

TOKEN_REDUCTIONS = ("sum", "l2", "abs_sum")
TOKEN_BASELINES = ("pad", "unk", "zero")


def reduce_tokens(attr: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """``(B, L, D)`` attribution of the embeddings -> ``(B, L)`` token scores (see module docstring)."""
    if how not in TOKEN_REDUCTIONS:
        raise unknown("token reduction", how, TOKEN_REDUCTIONS)
    if how == "sum":
        return attr.sum(-1)
    if how == "l2":
        return attr.norm(dim=-1)
    return attr.abs().sum(-1)


class TokenAttribution(Attribution):
    """Base of the text methods: resolves the embedding layer, finds the padding id, zeroes padding.

    Args:
        model: a text model (``(B, L)`` long token ids -> logits).
        embedding: its embedding layer (paper name or module path; ``model.layers.embedding`` in config).
        pad_index: the padding id (``None``: the model's ``pad_index``, the embedding's ``padding_idx``, 0).
        unk_index: the ``<unk>`` id (token baseline ``unk``).

    Subclasses implement :meth:`_scores` ``(x, target, mask) -> (B, L)``.
    """

    #: the image config keys this text form takes (``None``: every keyword its ``__init__`` accepts)
    image_keys: tuple[str, ...] | None = None

    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 unk_index: int = 1) -> None:
        super().__init__(model)
        self.embedding = resolve(model, embedding)
        self.pad_index = pad_index_of(model, self.embedding.module, pad_index)
        self.unk_index = int(unk_index)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding layer's output for token ids ``x`` ``(B, L) -> (B, L, D)``."""
        return self.embedding.module(x)

    def forward_embedded(self, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return embedded_forward(self.model, self.embedding.module, emb, tokens)

    def baseline_embedding(self, x: torch.Tensor, how: str) -> torch.Tensor:
        """Reference embeddings ``(B, L, D)``: every token -> ``<pad>`` (``pad``), ``<unk>`` (``unk``), or 0."""
        if how not in TOKEN_BASELINES:
            raise unknown("token baseline", how, TOKEN_BASELINES)
        if how == "zero":
            return torch.zeros_like(self.embed(x))
        return self.embed(torch.full_like(x, self.pad_index if how == "pad" else self.unk_index))

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.is_floating_point():
            raise ValueError(f"{self.name} on text takes (B, L) long token ids; got {tuple(x.shape)} {x.dtype}")
        mask = x != self.pad_index
        with rnn_backward_ok(x.device):
            scores = self._scores(x, target, mask)
        return (scores.float() * mask).detach()

    def _scores(self, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(embedding={self.embedding.name!r})"


__all__ = ["TOKEN_BASELINES", "TOKEN_REDUCTIONS", "EmbeddedModel", "EmbeddingAdapter", "TokenAttribution",
           "embedded_forward", "pad_index_of", "reduce_tokens"]
