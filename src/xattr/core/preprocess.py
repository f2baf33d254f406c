"""How images become a model's input (resize, centre crop, normalise), shared by ``data`` (which applies
it) and ``models`` (which declares it per model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How images become the model's input: resize shorter side, centre crop, normalise."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    size: int = 224
    resize: int = 256

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB ``(B, 3, H, W)`` -> the model's input space."""
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input space -> [0, 1] RGB (for figures)."""
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x * s + m
