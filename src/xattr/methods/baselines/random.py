"""Random baseline: i.i.d. uniform maps (the "Random" row of every table)."""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.seeding import image_seeds, make_generators
from xattr.methods.base import Attribution


class RandomAttribution(Attribution):
    """Uniform random map per image, ``(B, 1, H, W)``; ``seed`` makes it reproducible (``None``: fresh).

    ``tile`` > 1 draws one value per ``tile x tile`` block (a coarse random map).
    """

    name = "random"
    requires_grad = False

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: free (no forward)."""
        return 0.0

    def __init__(self, model: nn.Module, seed: int | None = 0, tile: int = 1) -> None:
        super().__init__(model)
        self.seed = seed
        self.tile = tile

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        hh, ww = -(-h // self.tile), -(-w // self.tile)
        # one generator per image, seeded by ``seed`` and the image's bytes: distinct maps for distinct
        # images, the same map for an image wherever it sits in a batch
        gens = (make_generators(image_seeds(x, self.seed), torch.device("cpu"))
                if self.seed is not None else [None] * x.shape[0])
        maps = torch.stack([torch.rand(1, hh, ww, generator=g) for g in gens])
        if self.tile > 1:
            maps = maps.repeat_interleave(self.tile, -2).repeat_interleave(self.tile, -1)[..., :h, :w]
        return maps.to(x.device)
