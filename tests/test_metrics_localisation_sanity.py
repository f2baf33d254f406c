"""Bounding-box ratio, EHR, box IoU (appendix F synthetic maps of the InputIBA chapter, hand-computed
values) and the cascading randomisation sanity check on tiny models; the curves plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattr.errors import XattrConfigError
from xattr.methods.baselines.gradient import Gradient
from xattr.methods.baselines.random import RandomAttribution
from xattr.metrics.localisation import BoundingBoxRatio, BoxIoU, EffectiveHeatRatio
from xattr.metrics.sanity_check import CascadingRandomisation, ssim
from xattr.models.tiny import TinyCNN
from xattr.viz.curves import plot_curves

H = 20
BOX = torch.tensor([[5.0, 5.0, 15.0, 15.0]])  # 10 x 10 = 25% of the image, as in Fig. 11


def synthetic_maps() -> torch.Tensor:
    """Appendix F, Fig. 11: (a) 1 in / 0 out, (b) 1 in / 0.25 out, (c) 0.25 in / 0 out."""
    maps = torch.zeros(3, 1, H, H)
    maps[1] = 0.25
    maps[:2, :, 5:15, 5:15] = 1.0
    maps[2, :, 5:15, 5:15] = 0.25
    return maps


def run(metric, maps, boxes=None):
    x = torch.zeros(maps.shape[0], 3, H, H)
    return metric(None, x, torch.zeros(maps.shape[0], dtype=torch.long), maps, boxes=boxes or [BOX] * maps.shape[0])


def test_appendix_f_bbox_is_one_for_all_and_ehr_lower_for_b_and_c():
    maps = synthetic_maps()
    assert torch.equal(run(BoundingBoxRatio(), maps).scores["bbox_ratio"], torch.ones(3))
    ehr = run(EffectiveHeatRatio(normalise="auto"), maps)  # raw heat: (c) keeps its 0.25 (max would scale it to 1)
    a, b, c = ehr.scores["ehr"].tolist()
    assert a == pytest.approx(1.0) and b < a and c < a
    # hand computation (reference algorithm): (c) every threshold keeps the box, ratio 0.25 -> AUC 0.25;
    # (b) quantiles <= 0.7 keep all pixels (ratio 0.25), 0.8 .. 1 keep the box (ratio 1)
    assert c == pytest.approx(0.25, abs=1e-6)
    assert b == pytest.approx(0.25 * 0.7 + 0.5 * (0.25 + 1.0) * 0.1 + 1.0 * 0.2, abs=1e-6)
    assert ehr.curves["ehr"].shape == (3, 11)


def test_bbox_ratio_counts_top_n_and_filters_large_boxes():
    maps = torch.zeros(2, 1, H, H)
    maps[:, :, 5:15, 5:10] = 2.0  # half the box area is hot
    maps[:, :, 0:10, 15:20] = 1.0  # 50 outside pixels, next best
    res = run(BoundingBoxRatio(), maps, [BOX, torch.tensor([[0.0, 0.0, 20.0, 8.0]])])
    assert res.scores["bbox_ratio"][0] == pytest.approx(0.5)  # top 100: 50 hot in box + 50 outside
    assert torch.isnan(res.scores["bbox_ratio"][1])  # box covers 40% > 33%
    none = run(BoundingBoxRatio(max_coverage=None), maps, [BOX, torch.tensor([[0.0, 0.0, 20.0, 8.0]])])
    assert torch.isfinite(none.scores["bbox_ratio"]).all()


def test_union_of_boxes_and_iou():
    maps = torch.zeros(1, 1, H, H)
    maps[..., 0:5, 0:5] = 1.0
    maps[..., 10:15, 10:20] = 1.0
    boxes = [torch.tensor([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0]])]
    res = run(BoxIoU(), maps, boxes)
    assert res.scores["iou"].item() == pytest.approx(75 / 125)
    assert res.curves["iou"].shape == (1, 50)
    # quantile mode: a map decreasing in raster order keeps its first 25% of pixels (rows 0-4, 100 pixels);
    # with the boxes' 125 pixels they share the 25 of the top-left box: IoU 25 / (100 + 125 - 25) = 1/8
    ramp = (H * H - torch.arange(H * H, dtype=torch.float32)).view(1, 1, H, H)
    q = run(BoxIoU(threshold=0.25, mode="quantile"), ramp, boxes)
    assert q.scores["iou"].item() == pytest.approx(25 / 200)
    with pytest.raises(XattrConfigError, match="boxes"):
        run(BoxIoU(), maps, [BOX, BOX])


def test_ssim_of_a_map_with_itself_is_one():
    m = np.random.default_rng(0).random((H, H))
    assert ssim(m, m) == pytest.approx(1.0)
    assert ssim(m, np.random.default_rng(1).random((H, H))) < 0.5


def test_sanity_check_steps_and_rebuilding():
    torch.manual_seed(0)
    net = TinyCNN(num_classes=4).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    method = Gradient(net)
    maps = method.attribute(x, t)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}  # a copy: compared after the metric
    metric = CascadingRandomisation(layers=["fc", "conv3", "conv2"])
    res = metric(net, x, t, maps, method=method)
    assert res.curves["ssim"].shape == (2, 4) and torch.equal(res.x_axis["ssim"], torch.arange(4.0))
    assert torch.allclose(res.curves["ssim"][:, 0], torch.ones(2))  # step 0: no randomisation
    assert torch.allclose(res.curves["spearman"][:, 0], torch.ones(2))
    assert (res.curves["ssim"][:, 1:] < 0.9).all()  # a gradient depends on the weights
    assert metric.step_names(net) == ["original", "fc", "features.5", "features.2"]
    assert metric.plan(net) == [["fc"], ["features.5"], ["features.2"]]
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # the original model is untouched
    same = metric(net, x, t, maps, method_factory=lambda m: Gradient(m))
    assert torch.allclose(same.curves["ssim"], res.curves["ssim"])  # same seed, same random weights
    # a method that ignores the model: SSIM stays 1 at every step
    rnd = RandomAttribution(net, seed=0)
    flat = CascadingRandomisation(init="normal")(net, x, t, rnd.attribute(x, t), method=rnd)
    assert torch.allclose(flat.curves["ssim"], torch.ones_like(flat.curves["ssim"]))
    with pytest.raises(XattrConfigError, match="valid choices"):
        CascadingRandomisation(layers=["conv9"]).plan(net)


def test_plot_curves_writes_png(tmp_path):
    path = plot_curves({"a": torch.rand(5, 7), "b": torch.rand(3, 7)}, torch.linspace(0, 1, 7), tmp_path / "c.png")
    assert path.stat().st_size > 1000
