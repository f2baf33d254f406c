"""A text model seen from its embedding layer: the padding id, a forward with the embedding output replaced,
and the ``embed`` / ``forward_embedded`` / ``pad_index`` view of any ``nn.Module`` on token ids.

Shared by the text methods (:mod:`xattr.methods.text`) and InputIBA's text form
(:mod:`xattr.methods.input_iba.text`): it lives beside :mod:`xattr.methods.base`, so InputIBA's text form
needs nothing of :mod:`xattr.methods.text` (which imports it, one way).
"""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.hooks import hooked
from xattr.core.layers import layer_aliases, resolve


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
