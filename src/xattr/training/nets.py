"""How the network to train is built and how the trained weights are exported (config group ``net``).

A net recipe has ``preprocess`` (what the image datasets apply; None for text), ``build(data) -> nn.Module``
(called after ``data.setup()``, so a text model can read ``data.vocab``) and
``export(path, net, data, **meta) -> Path``: a file that ``xattr.models.zoo.load_model(name, weights=path)``
accepts, so ``python -m xattr.run model=<name> model.weights=<path>`` explains the trained model.

- :class:`ZooNet` (``net=zoo``): the zoo's architecture ``name`` with ``weights`` (``random`` trains from
  scratch; a zoo name or a state-dict path fine-tunes); exported as a plain state dict.
- :class:`ImdbLSTMNet` (``net=imdb_lstm``): the 4-layer IMDB LSTM over the vocabulary of the training
  reviews, embeddings initialised from GloVe; exported in :func:`xattr.models.text.save_imdb_lstm`'s format
  (hyper-parameters, vocabulary, weights, ``meta``), like ``assets/text/imdb_lstm.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from xattr.core.preprocess import Preprocess
from xattr.data.imdb import load_glove
from xattr.errors import XattrConfigError, unknown
from xattr.models.text import LSTMClassifier, save_imdb_lstm
from xattr.models.zoo import ZOO, load_model

# zoo models whose architecture depends on the training data (their own net recipe)
NEEDS_DATA = {"imdb_lstm": "recipe=imdb_lstm (net=imdb_lstm dataset=imdb)"}


class ZooNet:
    """A zoo model to train: ``load_model(name, weights, weights_dir=...)`` in train mode with gradients."""

    def __init__(self, name: str, weights: str = "random", weights_dir: str | Path | None = None) -> None:
        if name not in ZOO:
            raise unknown("model", name, sorted(ZOO))
        if name in NEEDS_DATA:
            raise XattrConfigError(f"model {name} is built from its training data: use {NEEDS_DATA[name]}")
        self.name, self.weights, self.weights_dir = name, str(weights), weights_dir
        self.meta: dict[str, Any] = {}

    @property
    def preprocess(self) -> Preprocess:
        return ZOO[self.name].preprocess

    def build(self, data: Any = None) -> nn.Module:
        net = load_model(self.name, weights=self.weights, weights_dir=self.weights_dir).net
        return net.train().requires_grad_(True)

    def export(self, path: str | Path, net: nn.Module, data: Any = None, **meta: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
        return path


class ImdbLSTMNet:
    """The IMDB sentiment LSTM (:class:`xattr.models.text.LSTMClassifier`) over ``data.vocab``, with its
    embedding table initialised from the GloVe file ``glove`` (words not found: N(0, 0.1^2), ``<pad>`` 0)."""

    preprocess = None

    def __init__(self, glove: str | Path, embedding_dim: int = 50, hidden_size: int = 64, num_layers: int = 4,
                 dropout: float = 0.3, pool: str = "max", num_classes: int = 2, seed: int = 0) -> None:
        self.glove = Path(glove)
        self.kw = dict(embedding_dim=int(embedding_dim), hidden_size=int(hidden_size), num_layers=int(num_layers),
                       num_classes=int(num_classes), dropout=float(dropout), pool=pool)
        self.seed = int(seed)
        self.meta: dict[str, Any] = {}

    def build(self, data: Any) -> nn.Module:
        vocab = getattr(data, "vocab", None)
        if vocab is None:
            raise XattrConfigError("net=imdb_lstm needs a text dataset whose vocabulary comes from its training "
                                   "reviews: dataset=imdb (or recipe=imdb_lstm)")
        table, found = load_glove(self.glove, vocab, dim=self.kw["embedding_dim"], seed=self.seed)
        net = LSTMClassifier(len(vocab), **self.kw)
        with torch.no_grad():
            net.embedding.weight.copy_(table)
        self.meta = {"glove_found": found}
        return net

    def export(self, path: str | Path, net: nn.Module, data: Any, **meta: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds = data.dataset_cfg
        meta = {"train_reviews": len(data.train_set), "test_reviews": len(data.test_set), **self.meta,
                "max_len": ds.get("max_len"), "truncate": ds.get("truncate"), **meta}
        save_imdb_lstm(path, net, data.vocab, **meta)
        return path
