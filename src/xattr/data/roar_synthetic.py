"""A synthetic ROAR check (issue 12's test): the class is written in one known image region.

:class:`RegionClasses` holds ``n_train + n_test`` images (``parts`` = ``train`` / ``test``, like CIFAR-10
``split: all``): uniform noise in [-0.5, 0.5] everywhere, and in the ``region`` square (top-left corner
``(top, left)``, side ``side``) the colour of the class (one of ``classes`` well-separated RGB colours) plus
small noise. Nothing outside the region tells the class, so removing the region (:meth:`true_maps`, 1 there)
leaves chance accuracy, while removing as many random pixels (:meth:`random_maps`) leaves the class readable.
Values are already in the network's input space (``preprocess`` is accepted and ignored).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from xattr.errors import XattrConfigError

COLOURS = ((2.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, 0.0, 2.0), (-2.0, -2.0, -2.0), (2.0, 2.0, 0.0), (0.0, 2.0, 2.0))


class RegionClasses(Dataset):
    def __init__(self, n_train: int = 400, n_test: int = 200, classes: int = 4, region: tuple = (0, 0, 8),
                 size: int = 32, seed: int = 0, preprocess: Any = None) -> None:
        if not 2 <= int(classes) <= len(COLOURS):
            raise XattrConfigError(f"bad classes {classes!r}; valid choices: 2..{len(COLOURS)}")
        self.top, self.left, self.side = (int(v) for v in region)
        self.size, self.classes, self.seed = int(size), int(classes), int(seed)
        if self.top + self.side > self.size or self.left + self.side > self.size:
            raise XattrConfigError(f"region {tuple(region)} does not fit a {size}x{size} image")
        n = int(n_train) + int(n_test)
        self.parts = ["train"] * int(n_train) + ["test"] * int(n_test)
        self.labels = [i % self.classes for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        x = torch.rand(3, self.size, self.size, generator=g) - 0.5
        t, left, s = self.top, self.left, self.side
        colour = torch.tensor(COLOURS[self.labels[i]]).view(3, 1, 1)
        x[:, t : t + s, left : left + s] = colour + 0.1 * torch.randn(3, s, s, generator=g)
        return {"x": x, "label": self.labels[i], "boxes": torch.zeros(0, 4), "id": f"region_{i}", "index": i}

    def ids(self) -> list[str]:
        return [f"region_{i}" for i in range(len(self))]

    def true_maps(self) -> torch.Tensor:
        """``(N, H, W)``: 1 in the class region, 0 elsewhere."""
        m = torch.zeros(len(self), self.size, self.size)
        m[:, self.top : self.top + self.side, self.left : self.left + self.side] = 1.0
        return m

    def random_maps(self, seed: int = 1) -> torch.Tensor:
        """``(N, H, W)``: 1 at ``side**2`` random pixels per image (as many as the region), 0 elsewhere."""
        g = torch.Generator().manual_seed(int(seed))
        n, hw = len(self), self.size * self.size
        order = torch.rand(n, hw, generator=g).argsort(1)[:, : self.side ** 2]
        m = torch.zeros(n, hw)
        m.scatter_(1, order, 1.0)
        return m.view(n, self.size, self.size)
