"""The benches' arithmetic counter (scripts/timing.flops) against closed forms, grouped convolutions included
(torch's own count of a grouped convolution's weight gradient ignores the groups)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from timing import flops  # noqa: E402


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_conv_forward_and_backward_match_closed_forms(groups):
    n, c, h, k = 2, 8, 10, 3
    conv = torch.nn.Conv2d(c, c, k, padding=1, groups=groups)
    x = torch.randn(n, c, h, h, requires_grad=True)
    macs = n * c * (c // groups) * k * k * h * h           # one multiply-add per weight per output position
    assert flops(lambda: conv(x)) == 2 * macs
    # backward: input gradient (a transposed conv of the same size) and weight gradient, each = the forward
    assert flops(lambda: conv(x).sum().backward()) == 3 * 2 * macs
    conv.requires_grad_(False)
    assert flops(lambda: conv(x).sum().backward()) == 2 * 2 * macs


def test_linear_counts_two_per_multiply_add():
    lin = torch.nn.Linear(5, 7)
    x = torch.randn(3, 5)
    assert flops(lambda: lin(x)) == 2 * 3 * 5 * 7
