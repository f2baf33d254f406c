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

:func:`embedded_forward` runs the model on its own token ids with the embedding layer's output replaced
by given embeddings (a forward hook), so ``f(emb)`` exists for any text model, not only ones with a
``forward_embedded`` method.

cuDNN refuses the backward of an RNN in eval mode ("cudnn RNN backward can only be called in training
mode"); :func:`xattr.core.rnn.rnn_backward_ok` disables cuDNN for the block on CUDA (no effect on CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.hooks import hooked
from xattr.core.layers import layer_aliases, resolve
from xattr.core.rnn import rnn_backward_ok
from xattr.errors import unknown
from xattr.methods.base import Attribution

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


def pad_index_of(model: nn.Module, embedding: nn.Module, pad_index: int | None = None) -> int:
    """The padding id: given, else ``model.pad_index``, else the embedding's ``padding_idx``, else 0."""
    if pad_index is not None:
        return int(pad_index)
    if getattr(model, "pad_index", None) is not None:
        return int(model.pad_index)
    if getattr(embedding, "padding_idx", None) is not None:
        return int(embedding.padding_idx)
    return 0


def embedded_forward(model: nn.Module, embedding: nn.Module, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``model(tokens)`` with ``embedding``'s output replaced by ``emb`` ``(N, L, D)``. ``tokens`` may have
    fewer rows than ``emb`` when ``N`` is a multiple (each review's rows consecutive, as Captum expands)."""
    if tokens.shape[0] != emb.shape[0]:
        tokens = tokens.repeat_interleave(emb.shape[0] // tokens.shape[0], 0)
    with hooked(embedding, lambda _out: emb):
        return model(tokens)


class EmbeddedModel(nn.Module):
    """``forward(emb, tokens) -> logits``: the model with the embedding output replaced (a module, as
    Captum's DeepLift needs)."""

    def __init__(self, model: nn.Module, embedding: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._embedding = [embedding]  # not a submodule twice

    def forward(self, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return embedded_forward(self.model, self._embedding[0], emb, tokens)


class EmbeddingAdapter(nn.Module):
    """A text model seen through ``embed(x)``, ``forward_embedded(emb, mask)`` and ``pad_index`` (the interface
    of :class:`xattr.models.text.LSTMClassifier` that InputIBA's text form uses), for any ``nn.Module`` on
    ``(B, L)`` token ids whose embedding layer is named. ``forward_embedded`` runs the model on stand-in ids
    (``<unk>`` where ``mask``, ``<pad>`` elsewhere) with the embedding output replaced. Layer names of the
    wrapped model (paper names and module paths) stay valid."""

    def __init__(self, model: nn.Module, embedding: str, pad_index: int | None = None, unk_index: int = 1) -> None:
        super().__init__()
        layer = resolve(model, embedding)
        self.model = model
        self._embedding = [layer.module]  # not registered twice
        self.pad_index = pad_index_of(model, layer.module, pad_index)
        self.unk_index = int(unk_index)
        self.num_classes = getattr(model, "num_classes", None)
        self.xattr_layers = {**{n: f"model.{n}" for n, _ in model.named_modules() if n},
                             **{k: f"model.{v}" for k, v in layer_aliases(model).items()}}

    @property
    def embedding(self) -> nn.Module:
        return self._embedding[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self._embedding[0](x)

    def forward_embedded(self, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        tokens = torch.where(mask.bool(), torch.full_like(mask, self.unk_index, dtype=torch.long),
                             torch.full_like(mask, self.pad_index, dtype=torch.long))
        return embedded_forward(self.model, self._embedding[0], emb, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


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
