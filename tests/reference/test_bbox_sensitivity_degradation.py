"""Bounding-box ratio, Sensitivity-N (both protocols) and MoRF / LeRF degradation against the reference
protocols of tests/reference/protocols.py (IBA-paper-code @6bac54a8, InputIBA @5f03549e), on the same maps
(and, for Sensitivity-N, the same random masks: xattr's draw is given to the reference), to 1e-6."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference import protocols as ref
from xattr.analyses.sensitivity_n import pooled_curve
from xattr.metrics.degradation import Degradation
from xattr.metrics.localisation import BoundingBoxRatio
from xattr.metrics.sensitivity_n import SensitivityN
from xattr.models.tiny import TinyCNN

S = 16


def test_bbox_ratio_equals_the_reference_ranking():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 1, S, S, generator=g)  # signed, no ties
    boxes = [(2, 3, 9, 8), (0, 0, 5, 16), (8, 8, 16, 13), (4, 4, 10, 10)]
    tb = [torch.tensor([b], dtype=torch.float32) for b in boxes]
    x, t = torch.zeros(4, 3, S, S), torch.zeros(4, dtype=torch.long)
    masks = []
    for x1, y1, x2, y2 in boxes:
        m = np.zeros((S, S), dtype=bool)
        m[y1:y2, x1:x2] = True
        masks.append(m)
    # the reference ranks the raw float map: normalise none; max ranks the non-negative part (same for maps >= 0)
    expected = torch.tensor([ref.bbox_ratio(m[0].numpy(), mk) for m, mk in zip(maps, masks)], dtype=torch.float64)
    got = BoundingBoxRatio(max_coverage=None, normalise="none")(None, x, t, maps, boxes=tb).scores["bbox_ratio"]
    assert torch.allclose(got.double(), expected, atol=1e-6)
    pos = maps.abs()
    expected_pos = torch.tensor([ref.bbox_ratio(m[0].numpy(), mk) for m, mk in zip(pos, masks)], dtype=torch.float64)
    for how in ("max", "none"):
        got = BoundingBoxRatio(max_coverage=None, normalise=how)(None, x, t, pos * 1e-3, boxes=tb).scores["bbox_ratio"]
        assert torch.allclose(got.double(), expected_pos, atol=1e-6), how


def _unit_masks(metric: SensitivityN, k: int) -> list[torch.Tensor]:
    units, tid, _ = metric.masks(S, S, torch.device("cpu"))
    return [u[tid].view(S, S).float() for u in units[k]]


def test_sensitivity_n_inputiba_protocol_per_image():
    torch.manual_seed(0)
    net = TinyCNN(num_classes=3).eval()
    x, maps, t = torch.randn(3, 3, S, S), torch.randn(3, 1, S, S), torch.tensor([0, 1, 2])
    metric = SensitivityN(protocol="inputiba", n=[1, 5, 40], n_masks=12)
    res = metric(net, x, t, maps)
    for k in range(3):
        masks = _unit_masks(metric, k)  # the same masks for every image, as the reference
        expected = [ref.sensitivity_n_per_image(net, maps[i, 0], x[i], int(t[i]), masks) for i in range(3)]
        # 1e-4: the metric runs channels-last forwards; float rounding of the tiny n = 1 drops moves r by ~2e-5
        assert np.allclose(res.curves["sensitivity_n"][:, k].numpy(), expected, atol=1e-4)


def test_sensitivity_n_iba_protocol_pooled():
    torch.manual_seed(0)
    net = TinyCNN(num_classes=3).eval()
    x, maps, t = torch.randn(4, 3, S, S), torch.randn(4, 1, S, S), torch.tensor([0, 1, 2, 0])
    metric = SensitivityN(protocol="iba", tile=4, n_masks=10)  # 16 tiles, n log-spaced up to 80%
    res = metric(net, x, t, maps)
    _, pooled = pooled_curve(res.curves["attr_sum"], res.curves["output_drop"], res.x_axis["attr_sum"])
    n_values = metric.masks(S, S, torch.device("cpu"))[2]
    for k in range(len(n_values)):
        expected = ref.sensitivity_n_pooled(net, maps[:, 0], x, t, _unit_masks(metric, k))
        assert pooled[k].item() == pytest.approx(expected, abs=1e-6)


def test_degradation_equals_the_protocol_and_quantifies_the_reference_points():
    """Tiles ranked by the map, filled with the image's channel means, softmax of the target: xattr's curves
    equal the protocol at xattr's points (exactly round(k / 99 * n) tiles removed, first none, last all). The
    reference's points (the original, then after round(k / 99 * n) + 1 tiles, never all) are not an xattr
    mode: their effect on the area is measured here."""
    torch.manual_seed(0)
    net = TinyCNN(num_classes=3).eval()
    x, t = torch.randn(2, 3, S, S), torch.tensor([1, 2])
    maps = torch.rand(2, 1, S, S)
    tile, n_points = 2, 20  # 64 tiles
    res = Degradation(tile=tile, n_points=n_points)(net, x, t, maps)
    frac = res.x_axis["morf"].double()
    for i in range(2):
        exact = ref.degradation_curves(net, maps[i, 0].numpy(), x[i], int(t[i]), tile, n_points, points="exact")
        for name in ("morf", "lerf"):
            assert np.allclose(res.curves[name][i].numpy(), exact[name], atol=1e-6), name
        area = np.trapezoid(exact["lerf"] - exact["morf"], frac.numpy())
        assert res.scores["degradation"][i].item() == pytest.approx(area, abs=1e-6)
        theirs = ref.degradation_curves(net, maps[i, 0].numpy(), x[i], int(t[i]), tile, n_points)
        assert len(theirs["morf"]) == n_points  # original + 19 points, the last with 63 of 64 tiles removed
        gap = abs(np.trapezoid(theirs["lerf"] - theirs["morf"], frac.numpy()) - area)
        assert 0 < gap < 0.2, gap
