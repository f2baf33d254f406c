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


# ---------------------------------------------------------------- oracles of the sanity check (issue 26)
def test_normalise_map_by_hand_in_every_mode():
    """0..100 has its 1st / 99th percentiles at 1 / 99 (linear interpolation): the clamp and rescale by hand."""
    from xattr.metrics.sanity_check import normalise_map

    a = np.arange(101.0).reshape(1, 101)
    expected = (np.clip(a, 1, 99) - 1) / 98
    assert np.allclose(normalise_map(a), expected)  # default: percentile
    assert np.array_equal(normalise_map(a, to_8bit=True), np.round(expected * 255).astype(np.uint8))
    assert np.allclose(normalise_map(a, "minmax"), a / 100)
    assert np.allclose(normalise_map(a, "none"), a)
    assert np.array_equal(normalise_map(np.full((2, 2), 3.0), "minmax"), np.zeros((2, 2)))  # constant: zeros
    s = np.array([[-2.0, 1.0, 0.5, 0.0]])
    assert np.allclose(normalise_map(s, "max_abs"), [[-1.0, 0.5, 0.25, 0.0]])  # sign kept
    assert np.array_equal(normalise_map(s, "max_abs", to_8bit=True), [[0, 191, 159, 128]])  # [-1, 1] onto 0..255
    assert np.array_equal(normalise_map(np.zeros((1, 3)), "max_abs"), np.zeros((1, 3)))
    assert np.allclose(normalise_map(np.array([[0.5, -0.25]]), "max_abs"), [[1.0, -0.5]])  # max |.| below 1


@pytest.mark.parametrize("how, to_8bit, data_range", [("percentile", False, 1.0), ("minmax", False, 1.0),
                                                       ("percentile", True, 255), ("max_abs", False, 2.0)])
def test_ssim_is_scikit_images_on_the_normalised_maps_with_the_papers_window(how, to_8bit, data_range):
    from skimage.metrics import structural_similarity

    from xattr.metrics.sanity_check import normalise_map

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    b[:6] = a[:6]  # half shared: an SSIM between 0 and 1
    na, nb = normalise_map(a, how, to_8bit), normalise_map(b, how, to_8bit)
    ref = structural_similarity(na, nb, win_size=5, data_range=data_range)  # window 5 (IBA paper, G.3)
    assert ssim(a, b, how, to_8bit) == pytest.approx(ref, abs=1e-12)
    assert ssim(a, b, how, to_8bit, win_size=7) == pytest.approx(
        structural_similarity(na, nb, win_size=7, data_range=data_range), abs=1e-12)
    # no normalisation: the data range of the two maps together
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    assert ssim(a, b, "none") == pytest.approx(structural_similarity(a, b, win_size=5, data_range=hi - lo), abs=1e-12)


def test_spearman_is_scipys_with_average_ranks_and_nan_for_a_constant_map():
    from scipy.stats import spearmanr

    from xattr.metrics.sanity_check import spearman

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (6, 6)).astype(float), rng.normal(size=(6, 6))  # many ties in a
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones((3, 3)), b[:3, :3]))


class _Wide(torch.nn.Module):
    """conv(3->64, 5x5) -> BN -> linear(64->300): enough weights to check each init's distribution."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 64, 5, padding=2)
        self.bn = torch.nn.BatchNorm2d(64)
        self.fc = torch.nn.Linear(64, 300)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_inputiba_init_is_xavier_uniform_convs_normal_005_linears_zero_biases_and_the_rest_untouched():
    net = _Wide().requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(7.0)
    metric = CascadingRandomisation(init="inputiba")
    g = torch.Generator().manual_seed(0)
    for name in ("conv", "bn", "fc"):
        metric._randomise(getattr(net, name), g)
    bound = (6 / (3 * 25 + 64 * 25)) ** 0.5  # xavier uniform: fan_in + fan_out of a 5x5 conv
    w = net.conv.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.98 * bound and w.std() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert w.mean().abs() < 0.05 * bound
    assert net.fc.weight.std() == pytest.approx(0.05, rel=0.03) and net.fc.weight.mean().abs() < 0.005
    assert (net.conv.bias == 0).all() and (net.fc.bias == 0).all()
    assert (net.bn.weight == 7).all() and (net.bn.bias == 7).all()  # not a conv nor a linear: untouched
    normal = _Wide().requires_grad_(False)
    m2 = CascadingRandomisation(init="normal", std=0.3)
    for name in ("conv", "bn", "fc"):
        m2._randomise(getattr(normal, name), g)
    every = torch.cat([p.flatten() for p in normal.parameters()])  # biases and BN too
    assert every.std() == pytest.approx(0.3, rel=0.03) and every.mean().abs() < 0.02
    assert normal.bn.weight.std() == pytest.approx(0.3, rel=0.3) and normal.conv.bias.abs().min() > 0
    assert CascadingRandomisation(init="inputiba", linear_std=0.2).linear_std == 0.2


def test_cascading_steps_re_attribute_on_copies_randomised_from_the_top_and_compare_by_hand():
    """Every copy the method is rebuilt on is recorded: step 0 is the model itself, step k has exactly the
    leaves of the first k stops re-drawn (cascading) and the rest unchanged; each curve value is SSIM /
    Spearman of the original map and the recorded copy's map, and the scores average steps 1..K."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    from xattr.metrics.sanity_check import normalise_map

    torch.manual_seed(0)
    net = TinyCNN(num_classes=4).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    maps = Gradient(net, reduce="sum", abs=False).attribute(x, t)
    assert (maps < 0).any()  # signed maps: Spearman of the maps and of their absolute values differ
    seen = []

    def factory(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return Gradient(m, reduce="sum", abs=False)

    metric = CascadingRandomisation(layers=["fc", "conv3"], normalise="minmax")
    res = metric(net, x, t, maps, method_factory=factory)
    orig = net.state_dict()
    assert len(seen) == 3 and all(torch.equal(seen[0][k], v) for k, v in orig.items())
    changed = [{k.rsplit(".", 1)[0] for k, v in s.items() if not torch.equal(v, orig[k])} for s in seen[1:]]
    assert changed == [{"fc"}, {"fc", "features.5"}]
    assert torch.equal(seen[2]["fc.weight"], seen[1]["fc.weight"])  # a stop is drawn once, then kept
    for k, state in enumerate(seen):
        copy_ = TinyCNN(num_classes=4).eval()
        copy_.load_state_dict(state)
        new = Gradient(copy_, reduce="sum", abs=False).attribute(x, t)
        for i in range(2):
            o, r = maps[i].mean(0).numpy().astype(np.float64), new[i].mean(0).detach().numpy().astype(np.float64)
            s = structural_similarity(normalise_map(o, "minmax"), normalise_map(r, "minmax"), win_size=5, data_range=1.0)
            assert res.curves["ssim"][i, k] == pytest.approx(s, abs=1e-5)
            assert res.curves["spearman"][i, k] == pytest.approx(spearmanr(o.ravel(), r.ravel()).statistic, abs=1e-5)
            assert res.curves["spearman_abs"][i, k] == pytest.approx(
                spearmanr(np.abs(o).ravel(), np.abs(r).ravel()).statistic, abs=1e-5)
    for key in ("ssim", "spearman", "spearman_abs"):
        assert torch.allclose(res.scores[key], res.curves[key][:, 1:].mean(1))
    only = CascadingRandomisation(layers=[])(net, x, t, maps, method_factory=lambda m: Gradient(m, reduce="sum", abs=False))
    assert torch.allclose(only.scores["ssim"], torch.ones(2))  # no step: the original's own score
    other_seed = CascadingRandomisation(layers=["fc"], seed=1)(net, x, t, maps, method=Gradient(net, reduce="sum", abs=False))
    assert not torch.allclose(other_seed.curves["spearman"][:, 1], res.curves["spearman"][:, 1])


def test_method_is_rebuilt_with_its_own_settings_and_unrebuildable_ones_fail_clearly():
    from xattr.metrics.sanity_check import _method_factory

    net = TinyCNN(num_classes=4).eval()
    rebuilt = _method_factory(Gradient(net, reduce="sum", abs=False), None)(net)
    assert type(rebuilt) is Gradient and rebuilt.reduce == "sum" and rebuilt.abs is False and rebuilt.model is net
    with pytest.raises(XattrConfigError, match=r"^missing extra 'method'; valid choices: an Attribution or a "
                                               r"'method_factory' callable$"):
        _method_factory(None, None)

    class Fitted(Gradient):
        def fit(self, *args, **kwargs):
            return self

    with pytest.raises(XattrConfigError, match=r"^method 'Fitted' needs fit\(\); valid choices: pass a "
                                               r"'method_factory' that fits it$"):
        _method_factory(Fitted(net), None)

    class Hidden(Gradient):
        def __init__(self, model, secret):
            super().__init__(model)

    with pytest.raises(XattrConfigError, match=r"^cannot rebuild Hidden: argument 'secret' is not stored on the "
                                               r"method; valid choices: pass a 'method_factory' callable$"):
        _method_factory(Hidden(net, 1), None)
    factory = lambda m: Gradient(m)  # noqa: E731
    assert _method_factory(None, factory) is factory


def test_sanity_check_cost_is_the_method_once_per_step_and_on_the_original():
    assert CascadingRandomisation(layers=["fc", "conv3", "conv2"]).forwards_per_image((3, 8, 8), 2.0) == 8.0
    assert CascadingRandomisation().forwards_per_image((3, 8, 8), 2.0) == 22.0  # layers: null counts 10 steps
    assert CascadingRandomisation.name == "sanity_check" and CascadingRandomisation.needs == ("method", "method_factory")


def test_sanity_check_defaults_plan_of_leaves_and_containers_and_whole_error_lines():
    """Defaults: InputIBA's init (linear N(0, 0.05)), PathwayGrad's std 0.1, SSIM window 5 on percentile-clamped
    float maps, seed 0; ``layers: null`` steps through every parametric leaf, last first; a stop may name a
    container (its leaves go at once); a module without parameters, or a bad option, is one whole line."""
    import re

    from xattr.metrics.sanity_check import parametric_leaves

    m = CascadingRandomisation()
    assert (m.layers, m.init, m.std, m.linear_std, m.normalise, m.to_8bit, m.win_size, m.seed) == (
        None, "inputiba", 0.1, 0.05, "percentile", False, 5, 0)
    for how in ("percentile", "minmax", "none", "max_abs"):
        assert CascadingRandomisation(normalise=how).normalise == how
    net = TinyCNN(num_classes=4)
    assert parametric_leaves(net) == ["features.0", "features.2", "features.5", "fc"]
    assert m.step_names(net) == ["original", "fc", "features.5", "features.2", "features.0"]
    assert CascadingRandomisation(layers=["fc", "features"]).plan(net) == [["fc"], ["features.0", "features.2", "features.5"]]
    for kwargs, msg in (({"init": "zeros"}, "unknown init 'zeros'; valid choices: inputiba, normal"),
                        ({"normalise": "l2"}, "unknown normalise 'l2'; valid choices: percentile, minmax, none, max_abs")):
        with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
            CascadingRandomisation(**kwargs)
    msg = "unknown layer with parameters 'features.1'; valid choices: features.0, features.2, features.5, fc"
    with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
        CascadingRandomisation(layers=["features.1"]).plan(net)
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10, 10)), rng.normal(size=(10, 10))
    assert ssim(a, b) == ssim(a, b, "percentile", False, 5)


def test_randomise_draws_a_modules_own_parameters_not_its_childrens_and_one_step_scores_it():
    class Owner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.s = torch.nn.Parameter(torch.full((50,), 7.0))
            self.child = torch.nn.Linear(3, 3)

    owner = Owner().requires_grad_(False)
    before = owner.child.weight.clone()
    CascadingRandomisation(init="normal")._randomise(owner, torch.Generator().manual_seed(0))
    assert (owner.s != 7).all() and torch.equal(owner.child.weight, before)  # its own parameters only
    torch.manual_seed(0)
    net = TinyCNN(num_classes=4).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    maps = Gradient(net, abs=False).attribute(x, t)
    one = CascadingRandomisation(layers=["fc"])(net, x, t, maps, method=Gradient(net, abs=False))
    for key in ("ssim", "spearman", "spearman_abs"):
        assert torch.equal(one.scores[key], one.curves[key][:, 1])  # one step: its value


def test_a_method_without_needs_fit_is_rebuilt_from_its_stored_arguments():
    from xattr.metrics.sanity_check import _method_factory

    class Plain:  # not an Attribution: no needs_fit
        def __init__(self, model, k=2):
            self.model, self.k = model, k

    net = TinyCNN(num_classes=4)
    rebuilt = _method_factory(Plain(net, k=5), None)(net)
    assert isinstance(rebuilt, Plain) and rebuilt.k == 5
