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
- :class:`ImdbTransformerNet` (``net=imdb_transformer``): a small BERT encoder (HuggingFace
  ``BertForSequenceClassification``, [CLS] pooling) over the word-level tokenizer of the training reviews,
  word embeddings initialised from GloVe; exported in the HuggingFace layout (``save_pretrained`` of model and
  tokenizer), like ``assets/text/imdb_transformer/``, so it loads as any ``model=hf`` folder does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from xattr.core.preprocess import Preprocess
from xattr.data.imdb import load_glove
from xattr.errors import XattrConfigError, unknown
from xattr.models.hf import HFClassifier, save_hf
from xattr.models.text import LSTMClassifier, save_imdb_lstm
from xattr.models.zoo import ZOO, load_model

# zoo models whose architecture depends on the training data (their own net recipe)
NEEDS_DATA = {"imdb_lstm": "recipe=imdb_lstm (net=imdb_lstm dataset=imdb)",
              "imdb_transformer": "recipe=imdb_transformer (net=imdb_transformer dataset=imdb)"}


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


class ImdbTransformerNet:
    """A small BERT sentiment classifier (see the module docstring) over ``data.vocab`` (the tokenizer that
    ``xattr.data.imdb.build_tokenizer`` built from the training reviews). The first ``min(50, hidden_size)``
    dimensions of each word embedding start from GloVe (words not found: N(0, 0.1^2); the other dimensions and
    the special tokens: BERT's N(0, 0.02))."""

    preprocess = None

    def __init__(self, glove: str | Path, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                 intermediate_size: int = 256, dropout: float = 0.1, attention_dropout: float = 0.0,
                 max_positions: int = 512,
                 num_classes: int = 2, seed: int = 0) -> None:
        self.glove = Path(glove)
        if int(hidden_size) % int(num_heads):
            raise XattrConfigError(f"bad net.hidden_size {hidden_size}; valid choices: a multiple of net.num_heads "
                                   f"({num_heads})")
        self.kw = dict(hidden_size=int(hidden_size), num_hidden_layers=int(num_layers),
                       num_attention_heads=int(num_heads), intermediate_size=int(intermediate_size),
                       hidden_dropout_prob=float(dropout), attention_probs_dropout_prob=float(attention_dropout),
                       max_position_embeddings=int(max_positions), num_labels=int(num_classes))
        self.seed = int(seed)
        self.meta: dict[str, Any] = {}

    def build(self, data: Any) -> nn.Module:
        from xattr.core.hf import TokenizerVocab, transformers_module

        vocab = getattr(data, "vocab", None)
        if not isinstance(vocab, TokenizerVocab):
            raise XattrConfigError("net=imdb_transformer needs the word tokenizer of the training reviews: "
                                   "recipe=imdb_transformer (dataset.build_vocab builds it)")
        tr = transformers_module()
        torch.manual_seed(self.seed)
        labels = {0: "negative", 1: "positive"} if self.kw["num_labels"] == 2 else None
        config = tr.BertConfig(vocab_size=len(vocab), pad_token_id=vocab.pad_index,
                               **({"id2label": labels, "label2id": {v: k for k, v in labels.items()}} if labels else {}),
                               **self.kw)
        config._attn_implementation = "sdpa"  # training: fused attention; xattr loads it with eager (maps)
        model = tr.BertForSequenceClassification(config)
        dim = min(50, self.kw["hidden_size"])
        table, found = load_glove(self.glove, vocab, dim=50, seed=self.seed)
        emb = model.get_input_embeddings().weight
        with torch.no_grad():
            skip = {*vocab.special_ids, vocab.pad_index, vocab.unk_index}  # the special tokens keep BERT's init
            rows = torch.tensor([i for i in range(len(vocab)) if i not in skip])
            emb[rows, :dim] = table[rows, :dim]  # GloVe where found, N(0, 0.1^2) elsewhere (load_glove)
            emb[vocab.pad_index] = 0
        self.meta = {"glove_found": found}
        return HFClassifier(model, vocab.tokenizer).train()

    def export(self, path: str | Path, net: nn.Module, data: Any, **meta: Any) -> Path:
        ds = data.dataset_cfg
        meta = {"train_reviews": len(data.train_set), "test_reviews": len(data.test_set), **self.meta,
                "max_len": ds.get("max_len"), "truncate": ds.get("truncate"), **meta}
        return save_hf(Path(path).with_suffix(""), net, **meta)
