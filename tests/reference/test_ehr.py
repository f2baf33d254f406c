"""EHR: xattr's ``normalise`` modes against the reference pipeline of tests/reference/protocols.py (InputIBA
@5f03549e, vision_attributor.py + effective_heat_ratios.py), on the same maps, to 1e-6."""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from tests.reference import protocols as ref
from xattr.errors import XattrConfigError
from xattr.methods.base import reduce_channels
from xattr.methods.baselines.cam import GradCAM
from xattr.methods.baselines.gradient import Gradient
from xattr.methods.iba import PerSampleIBA
from xattr.methods.input_iba import InputIBA
from xattr.metrics.localisation import EffectiveHeatRatio, to_uint8
from xattr.models.tiny import TinyCNN

x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                         reason="the reference's float -> uint8 cast is numpy's on x86-64")
S, B = 24, 5
BOXES = [(3, 4, 13, 12), (10, 10, 20, 21), (0, 0, 9, 9), (12, 2, 24, 9), (5, 14, 14, 24)]  # xyxy, <= 33%


def smooth(b: int, c: int = 1, seed: int = 0) -> torch.Tensor:
    """Spatially smooth random fields (maps with a spread of values, like real heatmaps), ``(b, c, S, S)``."""
    g = torch.Generator().manual_seed(seed)
    return gaussian_blur(torch.randn(b, c, S, S, generator=g), [7, 7], [2.0, 2.0])


def xattr_ehr(maps: torch.Tensor, c: int = 3, **kw) -> torch.Tensor:
    method = kw.pop("method", None)
    metric = EffectiveHeatRatio(max_coverage=None, **kw)
    x = torch.zeros(maps.shape[0], c, S, S)
    boxes = [torch.tensor([b], dtype=torch.float32) for b in BOXES[: maps.shape[0]]]
    return metric(None, x, torch.zeros(maps.shape[0], dtype=torch.long), maps, boxes=boxes,
                  **({"method": method} if method is not None else {})).scores["ehr"].double()


def reference_ehr(maps_8bit_or_float: list[np.ndarray]) -> torch.Tensor:
    return torch.tensor([ref.ehr(m, [b])[0] for m, b in zip(maps_8bit_or_float, BOXES)], dtype=torch.float64)


@x86
def test_uint8_cast_is_numpys_x86_cast():
    v = np.concatenate([np.linspace(-600, 600, 4801), [-2.55, -0.3, 0.999, 255.9, 256.2, 1e9 + 77, 2.1e9, 3e9, -3e9,
                                                       2.0**31 + 5, -(2.0**31) - 3, 2.0**33 + 7]])  # not multiples of 256
    for dtype in (np.float32, np.float64):
        a = v.astype(dtype)
        with np.errstate(invalid="ignore"):
            expected = a.astype(np.uint8)
        assert np.array_equal(to_uint8(torch.from_numpy(a)).numpy(), expected.astype(np.int64)), dtype


def test_max_is_scale_free_and_equals_the_reference_function_on_max_normalised_maps():
    m = smooth(B).abs()
    ours = xattr_ehr(m)
    assert torch.allclose(ours, xattr_ehr(m * 1e-4), atol=1e-12) and torch.allclose(ours, xattr_ehr(m * 37.0), atol=1e-12)
    normalised = [(mi[0] / mi.max()).numpy().astype(np.float64) for mi in m]
    assert torch.allclose(ours, reference_ehr(normalised), atol=1e-6)
    # negative scores are no heat: a signed map scores as its positive part
    signed = smooth(B, seed=1)
    assert torch.allclose(xattr_ehr(signed), xattr_ehr(signed.clamp_min(0)), atol=1e-12)


def test_legacy_auto_depends_on_the_scale():
    m = smooth(B).abs()
    m = m / m.amax((1, 2, 3), keepdim=True)  # in [0, 1]: auto keeps it raw
    assert not torch.allclose(xattr_ehr(0.5 * m, normalise="auto"), xattr_ehr(m, normalise="auto"))


@x86
def test_reference_uint8_of_masks_equals_the_reference_pipeline():
    """IBA maps: divided by their max, 8-bit, read back / 255."""
    m = smooth(B).abs() * 3e-3  # bits per pixel: small numbers
    expected = reference_ehr([ref.store_mask_uint8(mi[0].numpy()) for mi in m])
    assert torch.allclose(xattr_ehr(m, normalise="reference_uint8", map_kind="mask"), expected, atol=1e-6)
    iba = PerSampleIBA(TinyCNN(), layer="conv2")  # map_kind auto: the IBA family is a mask
    assert torch.allclose(xattr_ehr(m, normalise="reference_uint8", method=iba), expected, atol=1e-6)


@x86
def test_reference_uint8_of_input_iba_masks_keeps_their_scale_as_the_reference_pipeline():
    """InputIBA's input masks (``sigmoid(alpha)`` channel mean, in (0, 1)): x 255, 8-bit, no division by the
    max (``show_input_mask``). A mask whose max is 0.6 scores lower than divided by its max would."""
    m = torch.sigmoid(smooth(B) * 8 - 3)
    m = 0.6 * m / m.amax((1, 2, 3), keepdim=True)  # max 0.6: the division would matter
    expected = reference_ehr([ref.store_input_mask_uint8(mi[0].numpy()) for mi in m])
    method = InputIBA(TinyCNN(), layer="conv2")  # map_kind auto: InputIBA is stored as it is
    assert torch.allclose(xattr_ehr(m, normalise="reference_uint8", method=method), expected, atol=1e-6)
    assert torch.allclose(xattr_ehr(m, normalise="reference_uint8", map_kind="signed"), expected, atol=1e-6)
    as_iba = reference_ehr([ref.store_mask_uint8(mi[0].numpy()) for mi in m])
    assert (as_iba >= expected - 1e-9).all() and (as_iba - expected).max() > 0.03  # the division raises scores


@x86
def test_reference_uint8_of_signed_baselines_wraps_as_the_reference_pipeline():
    """Baseline maps: Captum's signed attribution, channel mean, x 255, uint8 (negatives wrap to ~255)."""
    attr = smooth(B, c=3, seed=2) * 0.4  # values about +-1: many negatives wrap, a few values exceed 1 and wrap
    stored = [ref.store_baseline_uint8(a.numpy()) for a in attr]
    assert all((s[a.mean(0).numpy() < -1 / 255] > 200).mean() > 0.95 for s, a in zip(stored, attr))  # wrap-around
    expected = reference_ehr(stored)
    summed = reduce_channels(attr, "sum")  # xattr's `reduce: sum`; the metric divides by the 3 channels
    assert torch.allclose(xattr_ehr(summed, normalise="reference_uint8", map_kind="channel_sum"), expected, atol=1e-6)
    grad = Gradient(TinyCNN(), reduce="sum", abs=False)  # map_kind auto from the method's reduction
    assert torch.allclose(xattr_ehr(summed, normalise="reference_uint8", method=grad), expected, atol=1e-6)
    # a one-channel baseline (Grad-CAM, Extremal Perturbation): its own values x 255
    one = attr[:, :1]
    expected_one = reference_ehr([ref.store_baseline_uint8(a.numpy()) for a in one])
    cam = GradCAM(TinyCNN(), layer="conv3")
    assert torch.allclose(xattr_ehr(one, normalise="reference_uint8", method=cam), expected_one, atol=1e-6)
    assert torch.allclose(xattr_ehr(one, normalise="reference_uint8", map_kind="signed"), expected_one, atol=1e-6)
    # the wrap-around is where the reference's heat comes from: max-normalising the positive part differs
    assert not torch.allclose(xattr_ehr(summed), expected, atol=1e-2)


@x86
def test_a_map_without_heat_scores_zero_where_the_reference_raises():
    tiny = torch.full((1, 1, S, S), 0.2 / 255)  # x 255 -> 0.2 -> uint8 0: no heat at all
    with pytest.raises(IndexError):
        ref.ehr(ref.store_baseline_uint8(tiny[0].numpy()), [BOXES[0]])
    assert xattr_ehr(tiny, normalise="reference_uint8", map_kind="signed").item() == 0.0
    assert xattr_ehr(torch.zeros(1, 1, S, S)).item() == 0.0


def test_reference_uint8_needs_a_reproducible_map_kind():
    m = smooth(1).abs()
    with pytest.raises(XattrConfigError, match="valid choices: sum, abs_sum"):
        xattr_ehr(m, normalise="reference_uint8", method=Gradient(TinyCNN()))  # max_abs: no reference counterpart
    with pytest.raises(XattrConfigError, match="map_kind auto needs the run's method"):
        xattr_ehr(m, normalise="reference_uint8")


def test_also_normalise_scores_the_same_maps_twice():
    m = smooth(B).abs()
    metric = EffectiveHeatRatio(max_coverage=None, also_normalise=["reference_uint8"], map_kind="mask")
    boxes = [torch.tensor([b], dtype=torch.float32) for b in BOXES]
    res = metric(None, torch.zeros(B, 3, S, S), torch.zeros(B, dtype=torch.long), m, boxes=boxes)
    assert set(res.scores) == {"ehr", "ehr_reference_uint8"} and res.curves["ehr_reference_uint8"].shape == (B, 11)
    assert torch.allclose(res.scores["ehr"].double(), xattr_ehr(m), atol=1e-7)
    assert torch.allclose(res.scores["ehr_reference_uint8"].double(),
                          xattr_ehr(m, normalise="reference_uint8", map_kind="mask"), atol=1e-7)


def _full(message: str) -> str:
    """The whole one-line message (anchored: a decorated or shortened message fails)."""
    import re

    return "^" + re.escape(message) + "$"


def test_map_kind_auto_reads_the_method_and_bad_ones_are_one_line():
    """``map_kind: auto`` by hand (module docstring): the IBA package stores masks, InputIBA its map as it is;
    ``reduce`` none ->
    signed, sum / abs_sum -> channel_sum; no method, a saved run, another reduce: one whole-line error each."""
    from xattr.metrics.localisation import resolve_map_kind

    def method(module, **attrs):
        return type("M", (), {"__module__": module, **attrs})()

    assert resolve_map_kind("signed", None) == "signed"
    assert resolve_map_kind("auto", method("xattr.methods.iba.per_sample")) == "mask"
    assert resolve_map_kind("auto", method("xattr.methods.input_iba.input_iba")) == "signed"  # stored as it is
    assert resolve_map_kind("auto", method("xattr.methods.input_iba_like")) == "signed"   # not the package
    assert resolve_map_kind("auto", method("xattr.methods.gradients", reduce="none")) == "signed"
    for r in ("sum", "abs_sum"):
        assert resolve_map_kind("auto", method("xattr.methods.gradients", reduce=r)) == "channel_sum"
    with pytest.raises(XattrConfigError, match=_full("unknown map_kind 'bogus'; valid choices: auto, mask, signed, "
                                                     "channel_sum")):
        resolve_map_kind("bogus", None)
    with pytest.raises(XattrConfigError, match=_full("map_kind auto needs the run's method (the engine passes it); "
                                                     "valid choices: mask, signed, channel_sum")):
        resolve_map_kind("auto", None)
    with pytest.raises(XattrConfigError, match=_full(
            "map_kind auto cannot tell what a saved run's maps are (and they are stored as float16); valid "
            "choices: mask, signed, channel_sum")):
        resolve_map_kind("auto", method("xattr.methods.saved", name="saved"))
    with pytest.raises(XattrConfigError, match=_full(
            "bad method.reduce 'mean' for normalise reference_uint8 (the reference stored Captum's channel mean); "
            "valid choices: sum, abs_sum (or set map_kind)")):
        resolve_map_kind("auto", method("xattr.methods.gradients", reduce="mean"))


def test_reference_uint8_by_hand():
    """The evaluator's 8-bit map by hand: x 255, truncation, the low byte, / 255 where the max is above 1.
    mask (divided by its max): (0, 0.5, 1, 2) -> (0, 63, 127, 255) / 255; a mask whose max is exactly 1 is
    unchanged before the cast; an all-zero mask stays 0 (max 0: not divided); signed (-0.5, 0.2) -> -127
    wraps to 129, and 51; channel_sum divides by ``channels`` (default 1)."""
    from xattr.metrics.localisation import normalise_maps, reference_uint8

    t = torch.tensor
    torch.testing.assert_close(reference_uint8(t([[0.0, 0.5, 1.0, 2.0]]), "mask"),
                               t([[0.0, 63.0, 127.0, 255.0]], dtype=torch.float64) / 255)
    torch.testing.assert_close(reference_uint8(t([[0.5, 1.0]]), "mask"), t([[127.0, 255.0]], dtype=torch.float64) / 255)
    torch.testing.assert_close(reference_uint8(t([[0.0, 0.0]]), "mask"), t([[0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(reference_uint8(t([[-0.5, 0.2]]), "signed"), t([[129.0, 51.0]], dtype=torch.float64) / 255)
    torch.testing.assert_close(reference_uint8(t([[1.0, 0.2]]), "channel_sum"), t([[255.0, 51.0]], dtype=torch.float64) / 255)
    torch.testing.assert_close(reference_uint8(t([[1.0, 0.2]]), "channel_sum", channels=2),
                               t([[127.0, 25.0]], dtype=torch.float64) / 255)
    with pytest.raises(XattrConfigError, match=_full("unknown map_kind 'auto'; valid choices: mask, signed, channel_sum")):
        reference_uint8(t([[1.0]]), "auto")
    # the / 255 only where the 8-bit max is above 1: max 1 stays, max 2 is divided
    torch.testing.assert_close(reference_uint8(t([[1.5 / 255, 0.0]]), "signed"), t([[1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(reference_uint8(t([[2.5 / 255, 0.0]]), "signed"), t([[2.0, 0.0]], dtype=torch.float64) / 255)
    # normalise_maps: reference_uint8 defaults to signed maps and channels 1; none is the map itself; minmax
    # (x - min) / (max - min) even for a map inside [0, 1] (auto keeps that one)
    torch.testing.assert_close(normalise_maps(t([[-0.5, 0.2]]), "reference_uint8"),
                               t([[129.0, 51.0]], dtype=torch.float64) / 255)
    torch.testing.assert_close(normalise_maps(t([[1.0, 0.2]]), "reference_uint8", "channel_sum"),
                               t([[255.0, 51.0]], dtype=torch.float64) / 255)
    torch.testing.assert_close(normalise_maps(t([[-1.0, 2.0]]), "none"), t([[-1.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(normalise_maps(t([[0.2, 0.6, 0.4]]), "minmax"), t([[0.0, 1.0, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(normalise_maps(t([[0.2, 0.6, 0.4]]), "auto"), t([[0.2, 0.6, 0.4]], dtype=torch.float64))
    # auto rescales a map that leaves [0, 1] on either side
    for outside in ([0.5, 1.5], [-1.0, 0.5]):
        torch.testing.assert_close(normalise_maps(t([outside]), "auto"), t([[0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(XattrConfigError, match=_full("unknown normalise 'bogus'; valid choices: max, reference_uint8, "
                                                     "none, minmax, auto")):
        normalise_maps(t([[1.0]]), "bogus")


def test_localisation_metrics_ask_for_the_boxes_and_the_method_and_cost_no_forward():
    """What the engine must hand the localisation metrics (``needs``): the batch's boxes and the run's method
    (``map_kind: auto`` reads it); they compare maps with boxes, so they cost no forward."""
    from xattr.metrics.localisation import BoundingBoxRatio, BoxIoU, EffectiveHeatRatio

    for cls in (BoundingBoxRatio, EffectiveHeatRatio, BoxIoU):
        assert cls.needs == ("boxes", "method") and cls().forwards_per_image((1, 3, 8, 8), 5.0) == 0.0


def test_localisation_metrics_bad_options_are_one_whole_line():
    from xattr.metrics.localisation import BoundingBoxRatio

    with pytest.raises(XattrConfigError, match=_full("unknown normalise 'bogus'; valid choices: max, reference_uint8, "
                                                     "none, minmax, auto")):
        BoundingBoxRatio(normalise="bogus")
    with pytest.raises(XattrConfigError, match=_full("unknown map_kind 'bogus'; valid choices: auto, mask, signed, "
                                                     "channel_sum")):
        BoundingBoxRatio(map_kind="bogus")


def test_bbox_ratio_by_hand_on_a_non_square_image():
    """Bounding-box ratio by hand on 2 x 3 images (raster p0 p1 p2 / p3 p4 p5), box = column 0 ({p0, p3}, n = 2):
    ``none`` ranks the raw map; ``max`` ties the negatives at 0 (broken in raster order); ``reference_uint8``
    ties the 8-bit values (0.5 and 0.501 both give 127). Coverage: an image without a box is NaN, a box
    covering exactly ``max_coverage`` is kept, a one-pixel box is a box."""
    from xattr.metrics.localisation import BoundingBoxRatio

    x = torch.zeros(1, 1, 2, 3)
    col0 = [torch.tensor([[0.0, 0.0, 1.0, 2.0]])]

    def score(m, boxes=col0, **kw):
        maps = torch.tensor(m).view(-1, 1, 2, 3)
        return BoundingBoxRatio(**{"max_coverage": None, **kw})(None, x.expand(len(boxes), -1, -1, -1),
                                                                 torch.zeros(len(boxes)), maps,
                                                                 boxes=boxes).scores["bbox_ratio"].tolist()

    quantised = [1.0, 0.5, -1.0, 0.501, -2.0, -3.0]   # raw top 2: p0, p3; 8-bit: 255, 127 (p1), 127 (p3)
    assert score([quantised], normalise="none") == [1.0]
    assert score([quantised], normalise="reference_uint8", map_kind="signed") == [0.5]
    negative = [1.0, -0.5, -1.0, -0.1, -2.0, -3.0]    # raw top 2: p0, p3; max: p0, then p1 (tie at 0)
    assert score([negative], normalise="none") == [1.0]
    assert score([negative], normalise="max") == [0.5]
    # coverage on 2 x 2 images: no box -> NaN; one pixel of four (0.25) with max_coverage 0.25 -> kept
    x = torch.zeros(1, 1, 2, 2)
    m = [[4.0, 3.0, 2.0, 1.0]] * 3
    boxes = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 2.0, 2.0]])]
    maps = torch.tensor(m).view(3, 1, 2, 2)
    got = BoundingBoxRatio(max_coverage=0.25, normalise="none")(None, x.expand(3, -1, -1, -1), torch.zeros(3), maps,
                                                                boxes=boxes).scores["bbox_ratio"]
    assert math.isnan(got[0]) and got[1:].tolist() == [1.0, 0.0]


def test_ehr_by_hand_at_its_threshold_ties_the_099_cap_and_coverage():
    """EHR worked by hand on a 2 x 4 map already in [0, 1] (``normalise: none``), raster p0..p7 =
    1.0, 0.995, 0.5, 0.25 / 0.125, 0.0, 0.3, 0.25; boxes {p1, p5} and {p3} (3 of 8 pixels). With
    ``base_threshold`` 0.25 (exact in float32, so the tie is real; the default 0.1 is REFERENCE.md's "heat >=
    0.1") heat >= 0.25 counts, both 0.25s included: sorted 0.25, 0.25, 0.3, 0.5, 0.995, 1.0. With 3 quantiles
    q = 0, 0.5, 1: t = 0.25, 0.4 (between 0.3 and 0.5), min(1.0, 0.99 x 1.0) = 0.99, so the last keeps 0.995
    too. ratio(t) = heat in the box at pixels >= t / their count: 1.245 / 6, 0.995 / 3, 0.995 / 2; trapezoid
    over q. Counting pixels instead of heat: 2/6, 1/3, 1/2. The box union covers 3/8 > 0.33 (the default):
    NaN."""
    x = torch.zeros(1, 1, 2, 4)
    maps = torch.tensor([1.0, 0.995, 0.5, 0.25, 0.125, 0.0, 0.3, 0.25]).view(1, 1, 2, 4)
    boxes = [torch.tensor([[1.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])]

    def run(**kw):
        m = EffectiveHeatRatio(**{"normalise": "none", "max_coverage": None, "n_quantiles": 3, "base_threshold": 0.25,
                                  **kw})
        return m(None, x, torch.zeros(1, dtype=torch.long), maps, boxes=boxes)

    res = run()
    curve = [1.245 / 6, 0.995 / 3, 0.995 / 2]
    assert res.curves["ehr"][0].double().tolist() == pytest.approx(curve, rel=1e-6)
    assert res.x_axis["ehr"].tolist() == [0.0, 0.5, 1.0]
    auc = 0.5 * (curve[0] + curve[1]) / 2 + 0.5 * (curve[1] + curve[2]) / 2
    assert res.scores["ehr"].item() == pytest.approx(auc, rel=1e-6)
    counted = [2 / 6, 1 / 3, 1 / 2]
    assert run(weight_by_heat=False).scores["ehr"].item() == pytest.approx(
        0.5 * (counted[0] + counted[1]) / 2 + 0.5 * (counted[1] + counted[2]) / 2, rel=1e-6)
    assert math.isnan(run(max_coverage=0.33).scores["ehr"].item())
    assert run(max_coverage=0.375).scores["ehr"].item() == pytest.approx(auc, rel=1e-6)  # exactly 3/8: kept
    # the defaults are the reference's (REFERENCE.md): heat >= 0.1, 11 quantiles, boxes covering <= 33%
    d = EffectiveHeatRatio()
    assert (d.base_threshold, d.n_quantiles, d.max_coverage, d.normalise, d.weight_by_heat) == (0.1, 11, 0.33, "max",
                                                                                                True)
    assert EffectiveHeatRatio(n_quantiles=2).n_quantiles == 2
    with pytest.raises(XattrConfigError, match=_full("bad n_quantiles 1; valid choices: an integer >= 2")):
        EffectiveHeatRatio(n_quantiles=1)


def test_box_iou_curve_is_strict_the_score_is_not_and_the_defaults_are_the_references():
    """BoxIoU on a 1 x 4 map 1.0, 0.5, 0.5, 0.0 (``normalise: none``) with the box {p0, p1}: the score binarises
    at ``map >= 0.5`` ({p0, p1, p2}: IoU 2/3), InputIBA's curve at ``map > t`` (at t = 0.5: {p0}: IoU 1/2; at
    t = 0: {p0, p1, p2}). The curve's thresholds default to InputIBA's 0, 0.02, ..., 0.98; no coverage filter."""
    from xattr.metrics.localisation import BoxIoU

    x = torch.zeros(1, 1, 1, 4)
    maps = torch.tensor([1.0, 0.5, 0.5, 0.0]).view(1, 1, 1, 4)
    box = [torch.tensor([[0.0, 0.0, 2.0, 1.0]])]
    res = BoxIoU(normalise="none")(None, x, torch.zeros(1, dtype=torch.long), maps, boxes=box)
    assert res.scores["iou"].item() == pytest.approx(2 / 3)
    t = res.x_axis["iou"].double()
    assert len(t) == 50 and t.tolist() == pytest.approx([0.02 * i for i in range(50)], abs=1e-7)
    assert res.curves["iou"][0, 25].item() == pytest.approx(1 / 2)  # t = 0.5, strict
    assert res.curves["iou"][0, 0].item() == pytest.approx(2 / 3)  # t = 0: the 0.0 pixel is out
    d = BoxIoU()
    assert (d.threshold, d.mode, d.normalise, d.max_coverage) == (0.5, "value", "max", None)


def test_localisation_metrics_pass_the_method_to_map_kind_auto_and_name_their_bad_options():
    """Each localisation metric hands the run's method to ``map_kind: auto`` under ``reference_uint8`` (an IBA
    mask is stored x 255 without wrap: all three see the same 8-bit map as with ``map_kind: mask``); EHR's
    threshold cap scales with the map's maximum (a map x 2 with ``base_threshold`` x 2 gives twice the AUC); the
    bbox ratio's defaults; bad ``ties``, ``also_normalise`` and ``mode`` are one whole line each."""
    from xattr.metrics.localisation import BoundingBoxRatio, BoxIoU

    mask_method = type("M", (), {"__module__": "xattr.methods.iba.per_sample"})()
    x = torch.zeros(2, 1, 6, 6)
    maps = smooth(2)[:, :1].sigmoid()
    boxes = [torch.tensor([[1.0, 1.0, 3.0, 4.0]]), torch.tensor([[2.0, 0.0, 5.0, 2.0]])]
    t = torch.zeros(2, dtype=torch.long)
    for cls, key in ((BoundingBoxRatio, "bbox_ratio"), (EffectiveHeatRatio, "ehr"), (BoxIoU, "iou")):
        kw = {"normalise": "reference_uint8", "max_coverage": None}
        auto = cls(**kw)(None, x, t, maps[:, :, :6, :6], boxes=boxes, method=mask_method).scores[key]
        fixed = cls(map_kind="mask", **kw)(None, x, t, maps[:, :, :6, :6], boxes=boxes).scores[key]
        torch.testing.assert_close(auto, fixed)
    one = torch.tensor([1.0, 0.995, 0.5, 0.25, 0.125, 0.0, 0.3, 0.25]).view(1, 1, 2, 4)
    box = [torch.tensor([[1.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])]

    def ehr(m, threshold):
        return EffectiveHeatRatio(normalise="none", max_coverage=None, n_quantiles=3, base_threshold=threshold)(
            None, torch.zeros(1, 1, 2, 4), t[:1], m, boxes=box).scores["ehr"].item()

    assert ehr(2 * one, 0.5) == pytest.approx(2 * ehr(one, 0.25), rel=1e-6)
    d = BoundingBoxRatio()
    assert (d.max_coverage, d.ties, d.seed, d.normalise) == (0.33, "stable", 0, "max")
    with pytest.raises(XattrConfigError, match=_full("unknown ties 'bogus'; valid choices: stable, random, numpy")):
        BoundingBoxRatio(ties="bogus")
    with pytest.raises(XattrConfigError, match=_full("unknown also_normalise 'bogus'; valid choices: max, "
                                                     "reference_uint8, none, minmax, auto")):
        EffectiveHeatRatio(also_normalise=["bogus"])
    with pytest.raises(XattrConfigError, match=_full("unknown mode 'bogus'; valid choices: value, quantile")):
        BoxIoU(mode="bogus")


def test_localisation_metrics_on_a_grey_non_square_image_without_a_channel_axis_match_the_references():
    """A ``(B, H, W)`` image (no channel axis; H = 4 rows, W = 6 columns) with ``(B, H, W)`` maps: the box
    mask has H rows (the box is rows 2-3, columns 3-5: 6 of 24 pixels), and ``channel_sum`` divides by one
    channel. Oracles: the reference protocols' bbox ratio (stable ranking) and EHR, the reference's 8-bit
    baseline map of the one-channel map, and the IoU of ``map >= 0.5`` with the box counted in numpy."""
    from xattr.metrics.localisation import BoundingBoxRatio, BoxIoU

    g = torch.Generator().manual_seed(3)
    m = torch.rand(1, 4, 6, generator=g) * 0.9 + 0.05
    x, t = torch.zeros(1, 4, 6), torch.zeros(1, dtype=torch.long)
    boxes = [torch.tensor([[3.0, 2.0, 6.0, 4.0]])]
    roi = np.zeros((4, 6), dtype=bool)
    roi[2:4, 3:6] = True
    mn = m[0].numpy()
    bbox = BoundingBoxRatio(normalise="none", max_coverage=None)(None, x, t, m, boxes=boxes).scores["bbox_ratio"]
    assert bbox.item() == pytest.approx(ref.bbox_ratio(mn, roi))
    ehr = EffectiveHeatRatio(normalise="none", max_coverage=None)(None, x, t, m, boxes=boxes).scores["ehr"]
    assert ehr.item() == pytest.approx(ref.ehr(mn, [(3, 2, 6, 4)])[0], rel=1e-6)
    eight = EffectiveHeatRatio(normalise="reference_uint8", map_kind="channel_sum", max_coverage=None)
    assert eight(None, x, t, m, boxes=boxes).scores["ehr"].item() == pytest.approx(
        ref.ehr(ref.store_baseline_uint8(mn[None]), [(3, 2, 6, 4)])[0], rel=1e-6)
    binary = mn >= 0.5
    iou = BoxIoU(normalise="none")(None, x, t, m, boxes=boxes).scores["iou"]
    assert iou.item() == pytest.approx((binary & roi).sum() / (binary | roi).sum())


def test_box_iou_of_a_one_pixel_box_and_without_curve_thresholds():
    """The only pixel at or above 0.5 is the one-pixel box: IoU 1 / 1 = 1 (the union of one pixel is not
    floored higher); ``curve_thresholds: []`` gives an empty curve, ``(B, 0)``, and an empty x axis."""
    from xattr.metrics.localisation import BoxIoU

    x = torch.zeros(1, 1, 2, 2)
    maps = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    boxes = [torch.tensor([[1.0, 1.0, 2.0, 2.0]])]
    res = BoxIoU(normalise="none", curve_thresholds=[])(None, x, torch.zeros(1, dtype=torch.long), maps, boxes=boxes)
    assert res.scores["iou"].tolist() == [1.0]
    assert tuple(res.curves["iou"].shape) == (1, 0) and tuple(res.x_axis["iou"].shape) == (0,)


def test_localisation_normalise_max_and_minmax_of_tiny_maps_by_hand():
    """``max`` divides a map by its own maximum and ``minmax`` by its own range, however small (float64 maps
    whose maximum is 1.5e-300, a range of 1.5e-12): the floors only guard an all-zero map or a zero range."""
    from xattr.metrics.localisation import normalise_maps

    tiny = torch.tensor([[1.5e-300, 0.75e-300, -1.0, 0.0]], dtype=torch.float64)
    assert normalise_maps(tiny, "max").tolist() == [[1.0, 0.5, 0.0, 0.0]]
    narrow = torch.tensor([[2.0, 2.0 + 1.5e-12, 2.0 + 0.75e-12]], dtype=torch.float64)
    got = normalise_maps(narrow, "minmax")[0].tolist()
    assert got == pytest.approx([0.0, 1.0, 0.5], abs=1e-3)
    assert normalise_maps(torch.zeros(1, 3, dtype=torch.float64), "max").tolist() == [[0.0, 0.0, 0.0]]
