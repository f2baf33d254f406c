"""Small models for tests and synthetic cases (the papers' axioms on models we can reason about)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv(3->8) ReLU conv(8->16) ReLU maxpool conv(16->16) ReLU avgpool linear(16->n).

    Paper-style names: ``conv1``, ``conv2``, ``conv3`` (the last conv, post-pool), ``fc``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)
        self.num_classes = num_classes
        self.xattr_layers = {"conv1": "features.0", "conv2": "features.2", "conv3": "features.5", "fc": "fc"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class PixelLinear(nn.Module):
    """logit_k(x) = sum_{c,h,w} W_k[c,h,w] x[c,h,w] + b_k: the output is a known weighted sum of pixels.

    Gradient x input is exact here, so the true-weight map ``W_target * x`` is the ground truth for
    faithfulness metrics, and an input region with zero weight is a null feature.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())  # (K, C, H, W)
        self.bias = nn.Parameter(torch.zeros(weight.shape[0]) if bias is None else bias.clone())
        self.num_classes = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias

