"""Token <-> id table of the text models, shared by ``data`` (encodes reviews) and ``models`` (stored in
a checkpoint)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAD, UNK = "<pad>", "<unk>"


class Vocab:
    """Token <-> id table; id 0 is ``<pad>``, id 1 is ``<unk>`` (every unknown word)."""

    pad_index = 0
    unk_index = 1

    def __init__(self, itos: Sequence[str]) -> None:
        if list(itos[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {list(itos[:2])}")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(t, 1) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]
