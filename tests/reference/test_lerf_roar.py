"""LeRF and ROAR's pixel removal against RoarTorch's protocol (tests/reference/protocols.py), to 1e-6: LeRF's
counting (``int``) and ranking (signed channel max, ascending), ROAR's tie order on a uint8 map with many
zeros, its training-image fill (mean, then uint8) and its fixed validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.reference import protocols as ref
from xattr.metrics.lerf import LeRF

H = W = 12  # 144 pixels: 1% -> 1.44, 2% -> 2.88, 3% -> 4.32, 4% -> 5.76 ...: int() and round() differ at 2, 4, 6, 8, 9%


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 5)).eval()


def test_lerf_reference_mode_equals_the_authors_protocol():
    model = net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, H, W, generator=g)
    maps = torch.randn(4, 3, H, W, generator=g)             # signed, three channels: the channel max matters
    with torch.no_grad():
        target = model(x).argmax(1)
    res = LeRF(ties="numpy", chunk=7)(model, x, target, maps)
    q = np.arange(1, 11) / 100
    for i in range(4):
        theirs = ref.lerf_curve(model, x[i], maps[i].numpy(), list(range(1, 11)))
        np.testing.assert_allclose(res.curves["change"][i].numpy(), theirs, atol=1e-6)
        auc = np.trapezoid(theirs, q)
        assert res.scores["auc"][i].item() == pytest.approx(auc, abs=1e-6)
        assert res.scores["auc_normalised"][i].item() == pytest.approx(auc / 0.09, abs=1e-6)


def test_lerf_round_and_abs_modes_remove_other_pixels_than_the_reference():
    """The non-reference switches really change the removal (else the test above could not tell them apart)."""
    model = net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, H, W, generator=g)
    maps = torch.randn(3, 3, H, W, generator=g)
    target = torch.zeros(3, dtype=torch.long)
    base = LeRF(ties="numpy")(model, x, target, maps).curves["change"]
    rounded = LeRF(ties="numpy", count="round")(model, x, target, maps).curves["change"]
    same, other = [0, 2, 4, 6, 9], [1, 3, 5, 7, 8]                         # 1.44, 4.32, 7.2, 10.08, 14.4 px: one count
    assert torch.equal(base[:, same], rounded[:, same])
    assert (base[:, other] != rounded[:, other]).any(0).all()                # 2.88 -> 2 vs 3 pixels, ...
    assert not torch.allclose(base, LeRF(ties="numpy", rank="abs")(model, x, target, maps).curves["change"])
    assert not torch.allclose(base, LeRF(ties="numpy", channels="mean")(model, x, target, maps).curves["change"])
