"""Ch. 7 axiom scores (eqs. 8-11) on constructed maps, and the focal-loss keys (eqs. 12-13) by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xattr.data.axioms_generation import focal_neg, focal_pos, removal_ratio, smooth
from xattr.errors import XattrConfigError
from xattr.metrics.axioms import DOUBLE, NULL, SATURATION, SINGLE, AxiomScores, box_masks, scale_maps

S = 16
FA = torch.tensor([1.0, 2.0, 5.0, 6.0])     # xyxy: 4 x 4 patch at columns 1-4, rows 2-5
FB = torch.tensor([9.0, 8.0, 13.0, 12.0])   # 4 x 4 patch at columns 9-12, rows 8-11


def _ind(box):
    m = torch.zeros(S, S)
    m[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 1
    return m


class _Method:
    """Stands in for the run's method: the map of class c is maps_by_class[c]."""

    def __init__(self, maps_by_class, name="stand_in"):
        self.maps, self.name = maps_by_class, name

    def attribute(self, x, target):
        return torch.stack([self.maps[int(t)] for t in target])[:, None]


def _call(scenario, s_a, s_b=None, null_metric="ratio", fb=FB, scale="none", name="stand_in"):
    """Scores of one-scenario batch ``s_a`` (raw maps unless ``scale`` says otherwise)."""
    b = s_a.shape[0]
    boxes = torch.stack([torch.stack([FA, fb])] * b)
    method = _Method({1: s_b[0]}, name) if s_b is not None else _Method({}, name)
    return AxiomScores(null_metric, scale=scale)(torch.nn.Identity(), torch.zeros(b, 3, S, S), torch.zeros(b), s_a[:, None],
                                    feature_boxes=boxes, other=torch.ones(b, dtype=torch.long),
                                    scenario=torch.full((b,), scenario), method=method).scores


def test_box_masks_match_hand_indicator():
    m = box_masks(torch.stack([FA, torch.full((4,), float("nan"))]), (S, S))
    assert torch.equal(m[0].float(), _ind(FA)) and not m[1].any()


def test_null_patch_indicator_scores_0_and_uniform_map_scores_1():
    assert _call(NULL, _ind(FA)[None])["null"].item() == 0.0          # attribution only on the feature
    assert _call(NULL, torch.ones(1, S, S))["null"].item() == pytest.approx(1.0)  # equal-size patches
    # share (eq. 8 as printed): null patch's 16 of the map's 256
    assert _call(NULL, torch.ones(1, S, S), null_metric="share")["null"].item() == pytest.approx(16 / 256)
    # signed raw map: the ratio keeps the sign (DeepSHAP's published 1.03 needs a ratio, not a share)
    s = _ind(FA) * 2 - _ind(FB) * 1
    assert _call(NULL, s[None])["null"].item() == pytest.approx(-16 / 32)


def test_double_equal_maps_score_1_and_disjoint_indicators_score_0():
    s = torch.rand(1, S, S) + 0.1
    assert _call(DOUBLE, s, s)["double"].item() == pytest.approx(1.0)
    assert _call(DOUBLE, _ind(FA)[None], _ind(FB)[None])["double"].item() == 0.0
    # hand computation: S_a = 1 on f_a, 0.5 on f_b; S_b = 0.25 on f_a, 1 on f_b
    sa, sb = _ind(FA) + 0.5 * _ind(FB), 0.25 * _ind(FA) + _ind(FB)
    want = (16 * 0.25 + 16 * 0.5) / (16 * 1 + 16 * 1)
    assert _call(DOUBLE, sa[None], sb[None])["double"].item() == pytest.approx(want)


def test_single_ratio_by_hand_and_spearman_summary():
    sa = 3 * _ind(FA) + 1.0 * (1 - _ind(FA))     # inside mean 3, outside mean 1
    sb = torch.full((S, S), 2.0)
    out = _call(SINGLE, sa[None], sb[None], fb=torch.full((4,), float("nan")))
    assert out["single_ra"].item() == pytest.approx((3 + 1e-5) / (1 + 1e-5))
    assert out["single_rb"].item() == pytest.approx(1.0)
    m = AxiomScores()
    summ = m.summarise({"single_ra": torch.tensor([1.0, 2, 3, 4]), "single_rb": torch.tensor([10.0, 20, 30, 40])})
    assert summ["single"][0] == pytest.approx(1.0) and summ["single"][2] == 4
    summ = m.summarise({"saturation_f1": torch.tensor([1.0, 2, 3, float("nan")]),
                        "saturation_f2": torch.tensor([3.0, 2, 1, 5])})
    assert summ["saturation"][0] == pytest.approx(-1.0) and summ["saturation"][2] == 3


def test_saturation_means_of_abs_map_per_patch():
    s = -2 * _ind(FA) + 0.5 * _ind(FB)
    out = _call(SATURATION, s[None])
    assert out["saturation_f1"].item() == pytest.approx(2.0) and out["saturation_f2"].item() == pytest.approx(0.5)
    assert math.isnan(out["null"].item()) and math.isnan(out["double"].item())


def test_bad_null_metric_is_one_line():
    with pytest.raises(XattrConfigError, match="ratio, share"):
        AxiomScores(null_metric="fraction")
    with pytest.raises(XattrConfigError, match="'peak'.*auto, max, minmax, none"):
        AxiomScores(scale="peak")


def test_scale_maps_by_hand():
    s = torch.tensor([[[-1.0, 1.0], [2.0, 4.0]]])
    torch.testing.assert_close(scale_maps(s, "max"), s / 4)
    torch.testing.assert_close(scale_maps(s, "minmax"), (s + 1) / (5 + 1e-7))
    assert scale_maps(s, "none") is s


def test_double_per_map_max_scaling_changes_the_overlap():
    # The reference divides each class's map by its own maximum (mask / max(mask), Captum / TorchRay rows):
    # S_b = 10 S_a is the same map at another scale: 1 after scaling, 16 * 1 / (16 + 16 * 10) raw.
    sa = _ind(FA) + _ind(FB)
    raw = _call(DOUBLE, sa[None], 10 * sa[None], scale="none")["double"].item()
    assert raw == pytest.approx((16 + 16) / (16 + 160))
    assert _call(DOUBLE, sa[None], 10 * sa[None], scale="max")["double"].item() == pytest.approx(1.0)
    # S_a peaks 2 on f_a, 1 on f_b; S_b peaks 4 on f_b, 1 on f_a. max: S_a = 1 | 0.5, S_b = 0.25 | 1
    sa, sb = 2 * _ind(FA) + _ind(FB), _ind(FA) + 4 * _ind(FB)
    want = (16 * 0.25 + 16 * 0.5) / (16 * 1 + 16 * 1)
    assert _call(DOUBLE, sa[None], sb[None], scale="max")["double"].item() == pytest.approx(want)
    assert _call(DOUBLE, sa[None], sb[None], scale="none")["double"].item() == pytest.approx((16 + 16) / (32 + 64))


def test_minmax_scaling_shifts_the_null_ratio_and_scale_free_scores_do_not_move():
    # Grad-CAM as pytorch-grad-cam stores it: a floor of 1 everywhere is removed before the ratio.
    s = 1 + 3 * _ind(FA) + 1 * _ind(FB)          # feature 4, null 2, background 1
    assert _call(NULL, s[None], scale="none")["null"].item() == pytest.approx(2 / 4)
    assert _call(NULL, s[None], scale="minmax")["null"].item() == pytest.approx(1 / 3, rel=1e-6)
    assert _call(NULL, s[None], scale="max")["null"].item() == pytest.approx(2 / 4)
    # auto picks minmax for Grad-CAM / GradCAM++, none for FullGrad / IBA, max otherwise
    assert _call(NULL, s[None], scale="auto", name="grad_cam")["null"].item() == pytest.approx(1 / 3, rel=1e-6)
    assert _call(NULL, s[None], scale="auto", name="grad_cam_pp")["null"].item() == pytest.approx(1 / 3, rel=1e-6)
    sa = _ind(FA) + _ind(FB)
    assert _call(DOUBLE, sa[None], 10 * sa[None], scale="auto", name="fullgrad")["double"].item() == \
        pytest.approx(32 / 176)
    assert _call(DOUBLE, sa[None], 10 * sa[None], scale="auto", name="iba")["double"].item() == pytest.approx(32 / 176)
    assert _call(DOUBLE, sa[None], 10 * sa[None], scale="auto", name="gradient")["double"].item() == pytest.approx(1.0)
    # a scale change leaves the single ratio and the saturation means' ranking alone (max: both / 3)
    sg = 3 * _ind(FA) + 1.0 * (1 - _ind(FA))
    ra = [_call(SINGLE, sg[None], sg[None], fb=torch.full((4,), float("nan")), scale=h)["single_ra"].item()
          for h in ("none", "max")]
    assert ra[0] == pytest.approx((3 + 1e-5) / (1 + 1e-5)) and ra[1] == pytest.approx((1 + 1e-5) / (1 / 3 + 1e-5))


def test_null_of_signed_gradient_vs_max_abs_gradient():
    # The reference's Gradient row is TorchRay's max_c |grad| (>= 0); a signed channel sum can make eq. 8
    # negative. Channels (f_a: +1, +1, +1; f_null: -2, +0.5, +0.5): signed sum 3 | -1, max_abs 1 | 2.
    g = torch.zeros(3, S, S)
    g[:, 2:6, 1:5] = 1.0
    g[0, 8:12, 9:13], g[1, 8:12, 9:13], g[2, 8:12, 9:13] = -2.0, 0.5, 0.5
    signed = g.sum(0)
    max_abs = g.abs().amax(0)
    assert _call(NULL, signed[None], scale="max")["null"].item() == pytest.approx(-1 / 3)
    assert _call(NULL, max_abs[None], scale="max")["null"].item() == pytest.approx(2.0)


def test_focal_weights_and_smoothing_match_hand_computation():
    # FL(v, 1) = -(1 - v)^0.8 log v; FL(v, 0) = -v^0.8 log(1 - v) (appendix 6.3)
    assert focal_pos(torch.tensor(0.5)).item() == pytest.approx(0.5 ** 0.8 * math.log(2), rel=1e-6)
    assert focal_pos(torch.tensor(0.9)).item() == pytest.approx(-(0.1 ** 0.8) * math.log(0.9), rel=1e-5)
    assert focal_neg(torch.tensor(0.2)).item() == pytest.approx(-(0.2 ** 0.8) * math.log(0.8), rel=1e-5)
    # eq. 13 from 0.5 with alpha 0.1: 0.1 * 1 + 0.9 * 0.5 = 0.55, then 0.1 * 0 + 0.9 * 0.55 = 0.495
    k = smooth(torch.tensor(0.5), torch.tensor(1.0), 0.1)
    assert k.item() == pytest.approx(0.55)
    assert smooth(k, torch.tensor(0.0), 0.1).item() == pytest.approx(0.495)
    # eq. 12: |2 - 1.5| / min(2, 1.5) = 1/3; signs do not matter
    assert removal_ratio(torch.tensor(2.0), torch.tensor(1.5)).item() == pytest.approx(1 / 3)
    assert removal_ratio(torch.tensor(-2.0), torch.tensor(-1.5)).item() == pytest.approx(1 / 3)


def test_axioms_figure_draws_one_row_per_sample_with_boxes(tmp_path):
    import matplotlib.image as mpimg

    from xattr.viz.axioms_figure import axioms_figure

    img = np.full((S, S, 3), 0.5)
    boxes = np.stack([FA.numpy(), FB.numpy()])
    out = axioms_figure([img, img], [boxes, boxes], {"gradient": [_ind(FA).numpy()] * 2, "iba": [_ind(FB).numpy()] * 2},
                        ["s0", "s1"], tmp_path / "fig.png")
    pix = mpimg.imread(out)
    assert pix.shape[0] > pix.shape[1] / 3 * 2 * 0.8   # 2 rows x 3 columns
    # the feature box is drawn in lime, a colour neither the grey sample nor the jet colour map has
    rgb = pix[..., :3]
    assert ((rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3)).any()


def test_deepshap_baselines_clamped_normal_for_ch7():  # the pixel-space reading (method.mean/std/clamp)
    from xattr.methods.baselines.deepshap import DeepSHAP

    x = torch.zeros(1, 3, 8, 8)
    plain = DeepSHAP(torch.nn.Identity(), n_baselines=10, seed=3).reference_set(x)
    torch.testing.assert_close(plain, torch.randn((10, 3, 8, 8), generator=torch.Generator().manual_seed(3)))
    # clamp(N(0.5, 0.1), 0, 1) in pixels = clamp(N(0, 0.2), -1, 1) in MobileNet-V2's (x - 0.5) / 0.5 space
    refs = DeepSHAP(torch.nn.Identity(), n_baselines=10, seed=3, mean=0.0, std=0.2, clamp=(-1.0, 1.0)).reference_set(x)
    torch.testing.assert_close(refs, (plain * 0.2).clamp(-1, 1))
    with pytest.raises(XattrConfigError):
        DeepSHAP(torch.nn.Identity(), std=0.0)


def test_axioms_rows_compose_to_the_reference_notebooks_maps():
    # Do-Explanations-Explain notebook: Gradient = TorchRay max_c |grad|; Guided BP, IG, DeepLiftShap = Captum's
    # signed maps (IG with Captum's defaults); DeepLiftShap baselines clamp(N(0.5, 0.1), 0, 1) in input space
    from tests.helpers import compose_cfg

    def method(row):
        return compose_cfg(["experiment=axioms_t1", f"row={row}"]).method

    g = method("gradient_axioms")
    assert (g.reduce, g.abs) == ("max_abs", True)
    assert method("guided_backprop_axioms").reduce == "sum"
    ig = method("integrated_gradients_axioms")
    assert (ig.method, ig.n_steps, ig.baseline, ig.reduce) == ("gausslegendre", 50, "zero", "sum")
    ds = method("deepshap_axioms")
    assert (ds.n_baselines, ds.mean, ds.std, list(ds.clamp), ds.reduce) == (10, 0.5, 0.1, [0.0, 1.0], "sum")
    cfg = compose_cfg(["experiment=axioms_t1", "row=grad_cam"])
    assert cfg.metric.axioms.scale == "auto" and cfg.metric.axioms.null_metric == "ratio"
    # IBA, Grad-CAM and GradCAM++ after the last stage (ResNet-18 layer4[-1] in the notebook: Table 1's IBA null
    # 0.211 and GradCAM++ 0.452 are Table 2's layer-4 values)
    stages = cfg.model.layers.stages
    for row in ("iba_axioms", "grad_cam", "grad_cam_pp"):
        assert method(row).layer == stages.layer4 == "last_conv", row


def test_axioms_t1_rows_land_in_the_published_rows():
    """Each swept row of axioms_t1 lands in exactly one row of the paper's Table 1 (InputIBA: an extra row)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from tests.helpers import compose_cfg
    from xattr.config import CONF_DIR
    from xattr.tables import load_published
    from xattr.tables.match import matches as _matches

    def hydra_cfg(overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose("config", overrides=overrides, return_hydra_config=True)

    rows = str(hydra_cfg(["experiment=axioms_t1"]).hydra.sweeper.params["row"]).split(",")
    spec = load_published()["axioms_t1"]
    hit = set()
    for row in rows:
        overrides = ["experiment=axioms_t1", f"row={row}"]
        cfg = compose_cfg(overrides)
        with open_dict(cfg):
            cfg.method_name = hydra_cfg(overrides).hydra.runtime.choices.method
        matched = [r["name"] for r in spec["rows"] if _matches(cfg, r.get("match"))]
        assert len(matched) == (0 if row == "input_iba" else 1), (row, matched)
        hit.update(matched)
    assert hit == {r["name"] for r in spec["rows"]}


def test_deepshap_train_mode_is_the_notebooks_model_without_eval():
    """model_mode=train (ch. 7's notebook: resnet18 without .eval()): BatchNorm on the batch statistics of one
    image's input and reference rows, per image. Equal to Captum's DeepLiftShap on a copy put in train mode
    (running statistics frozen), image by image; the model itself (mode, running statistics) is untouched."""
    import copy

    from captum.attr import DeepLiftShap
    from torch import nn

    from xattr.methods.baselines.deepshap import DeepSHAP

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    method = DeepSHAP(net, n_baselines=4, seed=1, model_mode="train")
    ours = method.attribute_channels(x, t)
    assert not net.training and all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    ref = copy.deepcopy(net).train()
    ref[1].track_running_stats = False
    refs = method.reference_set(x)
    theirs = torch.cat([DeepLiftShap(ref).attribute(x[i : i + 1], baselines=refs, target=int(t[i])) for i in range(3)])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    evald = DeepSHAP(net, n_baselines=4, seed=1).attribute_channels(x, t)
    assert not torch.allclose(ours, evald, atol=1e-3)


def test_axioms_figure_shows_the_samples_maps_and_boxes_by_hand(tmp_path, monkeypatch):
    """Issue 26: what the figure shows, read back from its axes. Two rows (samples), three columns (the sample,
    then one column per method in the order given); row 0's maps are the indicator of f_a (gradient) and
    -2 x the indicator of f_b (iba: |map|, then the 1st-99th percentile rescale of a 0/1 map is the map
    itself); row 1's are swapped. Boxes: f_a lime, f_b red, drawn on the pixel edges (x0 - 0.5, y0 - 0.5,
    width x1 - x0, height y1 - y0); a NaN box (a one-patch sample) is not drawn."""
    import matplotlib.colors as mcolors

    import xattr.viz.axioms_figure as af

    figs = []
    real = af.save_figure
    monkeypatch.setattr(af, "save_figure", lambda fig, path, **kw: figs.append(fig) or real(fig, path, **kw))
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(S, S, 3, generator=g).numpy() for _ in range(2)]
    ia, ib = _ind(FA).numpy(), _ind(FB).numpy()
    boxes = [np.stack([FA.numpy(), FB.numpy()]), np.stack([FA.numpy(), np.full(4, np.nan)])]
    af.axioms_figure(imgs, boxes, {"gradient": [ia, ib], "iba": [-2 * ib, -2 * ia]}, ["s0", "s1"], tmp_path / "f.png")
    (fig,) = figs
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["s0", "gradient", "iba"] and axes[1, 0].get_title() == "s1"
    shown = {(r, c): np.asarray(axes[r, c].images[0].get_array()) for r in range(2) for c in range(3)}
    for r in range(2):
        np.testing.assert_allclose(shown[r, 0], imgs[r])
    for (r, c), want in {(0, 1): ia, (0, 2): ib, (1, 1): ib, (1, 2): ia}.items():
        np.testing.assert_array_equal(shown[r, c], want, err_msg=f"row {r} column {c}")
        assert axes[r, c].images[0].get_cmap().name == "jet" and axes[r, c].images[0].get_clim() == (0, 1)
    lime, red = mcolors.to_rgba("lime"), mcolors.to_rgba("red")
    for r, want in ((0, [((0.5, 1.5), 4, 4, lime), ((8.5, 7.5), 4, 4, red)]), (1, [((0.5, 1.5), 4, 4, lime)])):
        for c in range(3):
            got = [(tuple(p.get_xy()), p.get_width(), p.get_height(), p.get_edgecolor()) for p in axes[r, c].patches]
            assert got == want, (r, c)


def test_auto_scale_is_the_reference_notebooks_per_method():
    """``scale: auto``: pytorch-grad-cam's rows (Grad-CAM, GradCAM++) min-max, FullGrad and IBA / InputIBA raw,
    every other method (Captum, TorchRay rows) divided by its maximum; an explicit scale wins."""
    from xattr.metrics.axioms import REFERENCE_SCALE

    expected = {"grad_cam": "minmax", "grad_cam_pp": "minmax", "fullgrad": "none", "iba": "none", "input_iba": "none",
                "gradient": "max", "integrated_gradients": "max", "": "max"}
    auto = AxiomScores()
    assert auto.scale == "auto" and auto.null_metric == "ratio" and auto.eps == 1e-5
    for name, how in expected.items():
        assert auto.scale_for(_Method({}, name)) == how, name
    assert auto.scale_for(None) == "max" and AxiomScores(scale="none").scale_for(_Method({}, "grad_cam")) == "none"
    assert REFERENCE_SCALE == {k: v for k, v in expected.items() if v != "max"}
    assert AxiomScores.needs == ("feature_boxes", "other", "scenario", "method") and AxiomScores.name == "axioms"
    assert AxiomScores.cost_bounds == (0.0, 1.0) and AxiomScores().forwards_per_image((3, 8, 8), 2.5) == 2.5


def test_minmax_is_grad_cams_scale_cam_image_with_its_1e_7_and_boxes_are_half_open():
    """pytorch-grad-cam's ``scale_cam_image``: ``(S - min) / (1e-7 + max(S - min))``: on a map whose range is
    1e-7 the epsilon halves it. Boxes are half-open on pixel indices: x1 <= col < x2, y1 <= row < y2."""
    s = torch.tensor([[[0.0, 1e-7], [0.0, 0.0]]], dtype=torch.float64)
    assert scale_maps(s, "minmax")[0, 0, 1].item() == pytest.approx(0.5)
    m = box_masks(torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 2.0, 4.0, 4.0]]), (4, 4))
    assert m[0].nonzero().tolist() == [[r, c] for r in range(3) for c in range(2)]
    assert m[1].nonzero().tolist() == [[r, c] for r in (2, 3) for c in (1, 2, 3)]
    from xattr.metrics.axioms import null_score

    s_a = torch.ones(1, 4, 4)
    assert null_score(s_a, m[1:2].float(), m[:1].float()).item() == pytest.approx(6 / 6)  # default: the ratio
    assert null_score(s_a, m[1:2].float(), m[:1].float(), "share").item() == pytest.approx(6 / 16)


def test_single_ratio_default_eps_and_spearman_from_two_pairs():
    """Eq. 10's ``+ 1e-5`` (``utils.single_patch_hm_sum``) is the default: a map that is 0 outside scores
    (1 + 1e-5) / 1e-5; Spearman's rho of two finite pairs is +-1 (scipy's), of one pair NaN."""
    from xattr.metrics.axioms import inside_outside_ratio, spearman

    f = _ind(FA)[None]
    assert inside_outside_ratio(f, f).item() == pytest.approx((1 + 1e-5) / 1e-5)
    rho, _, n = spearman(torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([5.0, 3.0, 1.0]))
    assert rho == pytest.approx(-1.0) and n == 2
    rho, sem, n = spearman(torch.tensor([1.0, float("nan")]), torch.tensor([5.0, 3.0]))
    assert math.isnan(rho) and math.isnan(sem) and n == 1


def test_scenario_codes_are_the_datasets_and_missing_inputs_are_whole_lines():
    """The codes are the positions in the dataset's ``SCENARIOS`` (``xattr.data.axioms`` emits
    ``SCENARIOS.index(name)``); a batch without boxes or scenarios, or a two-feature batch without the method,
    is one whole line; a summary of one column of a pair has no rho."""
    import re

    from xattr.data.axioms_generation import SCENARIOS

    assert [SCENARIOS[c] for c in (NULL, SINGLE, DOUBLE, SATURATION)] == ["null", "single", "double", "saturation"]
    m, x = AxiomScores(), torch.zeros(1, 3, S, S)
    boxes, sc = torch.stack([FA, FB])[None], torch.tensor([SINGLE])
    msg = "metric=axioms needs dataset=axioms (feature boxes and scenarios per sample)"
    for kw in ({"feature_boxes": boxes}, {"scenario": sc}):
        with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
            m(torch.nn.Identity(), x, torch.zeros(1), torch.ones(1, 1, S, S), **kw)
    with pytest.raises(ValueError, match="^metric=axioms needs the run's method for the second class's map$"):
        m(torch.nn.Identity(), x, torch.zeros(1), torch.ones(1, 1, S, S), feature_boxes=boxes, scenario=sc,
          other=torch.ones(1, dtype=torch.long))
    for kw, line in (({"null_metric": "fraction"}, "unknown metric.axioms.null_metric 'fraction'; valid choices: ratio, share"),
                     ({"scale": "peak"}, "unknown metric.axioms.scale 'peak'; valid choices: auto, max, minmax, none")):
        with pytest.raises(XattrConfigError, match="^" + re.escape(line) + "$"):
            AxiomScores(**kw)
    out = m.summarise({"single_ra": torch.tensor([1.0, 2.0]), "saturation_f2": torch.tensor([1.0, 2.0])})
    assert "single" not in out and "saturation" not in out and out["single_ra"][0] == pytest.approx(1.5)
