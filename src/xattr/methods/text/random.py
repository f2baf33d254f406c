"""Random baseline on tokens (the "random" row of ch. 6's IMDB comparison, L900): i.i.d. U(0, 1) per real
token, 0 on padding. Each review draws from a generator seeded by ``seed`` and its own token ids (without
padding), so its scores do not depend on the batch or on how much it is padded."""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.seeding import image_seeds
from xattr.methods.text.base import TokenAttribution


class TextRandom(TokenAttribution):
    """Uniform random score per real token, ``(B, L)``; ``seed=None`` draws fresh ones."""

    name = "random"
    text_form_of = ("random",)
    requires_grad = False

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: free (no forward)."""
        return 0.0

    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 seed: int | None = 0, unk_index: int = 1) -> None:
        super().__init__(model, embedding, pad_index, unk_index)
        self.seed = seed

    def _scores(self, x, target, mask):
        out = torch.zeros(x.shape, dtype=torch.float32)
        for i in range(x.shape[0]):
            real = x[i : i + 1, mask[i]]
            g = None if self.seed is None else torch.Generator().manual_seed(image_seeds(real, self.seed)[0])
            out[i, mask[i].cpu()] = torch.rand(real.shape[1], generator=g)
        return out.to(x.device)
