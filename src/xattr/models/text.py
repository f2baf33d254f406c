"""The 4-layer LSTM sentiment classifier of the InputIBA paper's IMDB experiment (ch. 6, Sec. 4.1).

``embedding`` (GloVe 50-d initialised) -> ``rnn_1`` ... ``rnn_4`` (one uni-directional LSTM layer each,
so a bottleneck can sit after any of them; each returns only its output sequence ``(B, L, H)``) ->
the output at the last real token -> dropout -> ``fc`` (2 classes). Padding is on the right, and an
LSTM is causal, so outputs at real positions never see the padding: the prediction is exactly that of
the unpadded review, and a method may put anything at padded positions.

Departure from the reference code: the reference uses torchtext's packed sequences and its own
pretrained checkpoint; xattr's checkpoint comes from ``python -m xattr.train recipe=imdb_lstm`` (smaller: hidden 64-128,
reviews truncated) and packs nothing (the causal right-padding argument above makes packing unneeded).

>>> model, vocab = load_imdb_lstm("assets/text/imdb_lstm.pt")
>>> logits = model(x)                     # x (B, L) long, 0 = <pad>
>>> emb = model.embed(x); logits = model.forward_embedded(emb, x != 0)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xattr.core.vocab import Vocab
from xattr.errors import missing_file, unknown

POOLS = ("last", "max", "mean")


class LSTMLayer(nn.Module):
    """One batch-first LSTM layer returning only its output sequence ``(B, L, H)`` (hook-friendly)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class LSTMClassifier(nn.Module):
    """Embedding -> ``num_layers`` stacked LSTM layers ``rnn_1..rnn_n`` -> pooled state -> ``fc``.

    Args:
        vocab_size: rows of the embedding table (id 0 = padding).
        embedding_dim: 50 for GloVe 6B 50-d.
        hidden_size: LSTM width.
        num_layers: 4 in the paper.
        num_classes: 2 (negative, positive).
        dropout: between layers and before ``fc`` (training only).
        pool: ``last`` (output at the last real token, the paper's choice), ``max`` or ``mean`` over
            real tokens.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 50,
        hidden_size: int = 64,
        num_layers: int = 4,
        num_classes: int = 2,
        dropout: float = 0.3,
        pool: str = "last",
        pad_index: int = 0,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise unknown("pooling", pool, POOLS)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_index)
        self.num_layers = num_layers
        for k in range(1, num_layers + 1):
            self.add_module(f"rnn_{k}", LSTMLayer(embedding_dim if k == 1 else hidden_size, hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, num_classes)
        self.pool, self.pad_index, self.num_classes = pool, pad_index, num_classes
        self.unk_index = 1  # xattr's vocabularies (xattr.core.vocab.Vocab): <pad> 0, <unk> 1
        self.hparams = dict(
            vocab_size=vocab_size, embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=num_layers,
            num_classes=num_classes, dropout=dropout, pool=pool, pad_index=pad_index,
        )  # fmt: skip
        self.xattr_layers = {"embedding": "embedding", **{f"rnn_{k}": f"rnn_{k}" for k in range(1, num_layers + 1)}}
        self.xattr_layers["fc"] = "fc"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L)`` -> embeddings ``(B, L, D)``."""
        return self.embedding(x)

    def forward_embedded(self, emb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, K)`` from embeddings ``(B, L, D)``; ``mask`` ``(B, L)`` bool marks real tokens
        (all real when None). Only positions where ``mask`` is True influence the result."""
        if mask is None:
            mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
        h = emb
        for k in range(1, self.num_layers + 1):
            h = getattr(self, f"rnn_{k}")(self.dropout(h) if k > 1 else h)
        return self.fc(self.dropout(pool_states(h, mask, self.pool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` from token ids ``(B, L)``; the real tokens are ``x != pad_index`` (one argument,
        so ``torch.fx`` can split the network at a layer)."""
        return self.forward_embedded(self.embed(x), x != self.pad_index)


def pool_states(h: torch.Tensor, mask: torch.Tensor, how: str = "last") -> torch.Tensor:
    """``(B, L, H)`` states -> ``(B, H)``: at the last True of ``mask``, or max / mean over True."""
    mask = mask.to(torch.bool)
    if how == "last":
        last = (mask.long().cumsum(1) * mask).argmax(1)  # index of the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]
    if how == "max":
        return h.masked_fill(~mask[..., None], float("-inf")).amax(1)
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


def save_imdb_lstm(path: str | Path, model: LSTMClassifier, vocab: Vocab, **meta: object) -> None:
    """A small checkpoint: hyper-parameters, the vocabulary, the weights (embedding table in float16)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state["embedding.weight"] = state["embedding.weight"].half()
    torch.save({"hparams": model.hparams, "itos": vocab.itos, "state_dict": state, "meta": dict(meta)}, path)


def load_imdb_lstm(path: str | Path, device: str | torch.device = "cpu") -> tuple[LSTMClassifier, Vocab]:
    """The classifier (eval mode, on ``device``) and its vocabulary from :func:`save_imdb_lstm`'s file."""
    path = Path(path)
    if not path.is_file():
        raise missing_file("IMDB LSTM checkpoint", path, "run python -m xattr.train recipe=imdb_lstm")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = LSTMClassifier(**ckpt["hparams"])
    state = ckpt["state_dict"]
    state["embedding.weight"] = state["embedding.weight"].float()
    model.load_state_dict(state)
    model.meta = ckpt.get("meta", {})
    return model.eval().to(device), Vocab(ckpt["itos"])
