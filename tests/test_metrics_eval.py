"""The evaluation metrics of issue 28 (Quantus' core set): each against Quantus 0.6 (or Captum, TorchRay) on the
same model, inputs and maps where the definitions agree, a hand case where xattr follows the paper and the
library does not, a closed form, and batched == one image at a time. Tiny models, 8-16 px images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xattr.errors import XattrConfigError
from xattr.methods.baselines.gradient import Gradient
from xattr.metrics.complexity import Complexity, Sparseness
from xattr.metrics.faithfulness import IROF, FaithfulnessCorrelation, Infidelity
from xattr.metrics.pointing import PointingGame, RelevanceMass, RelevanceRank, TopKIntersection
from xattr.metrics.randomisation import EfficientMPRT, RandomLogit, SmoothMPRT
from xattr.metrics.road import ROAD, linear_imputation
from xattr.metrics.robustness import (
    AvgSensitivity,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
)
from xattr.models.tiny import PixelLinear, TinyCNN

quantus = pytest.importorskip("quantus")
QKW = dict(disable_warnings=True, display_progressbar=False)
S = 8


def setup(c: int = 1, b: int = 3, seed: int = 0, s: int = S):
    torch.manual_seed(seed)
    net = TinyCNN(num_classes=3, in_channels=c).eval()
    x = torch.randn(b, c, s, s)
    t = torch.tensor([0, 1, 2, 0, 1][:b])
    maps = torch.rand(b, 1, s, s)  # no ties
    return net, x, t, maps


def boxes_and_masks(b: int, s: int = S):
    boxes = [torch.tensor([[1.0, 2.0, 5.0, 6.0]]), torch.tensor([[0.0, 0.0, 3.0, 8.0]]),
             torch.tensor([[4.0, 4.0, 8.0, 8.0], [0.0, 0.0, 2.0, 2.0]])][:b]
    masks = np.zeros((b, 1, s, s))
    for i, bx in enumerate(boxes):
        for x1, y1, x2, y2 in bx.int().tolist():
            masks[i, 0, y1:y2, x1:x2] = 1
    return boxes, masks


def gradient_explain(model, inputs, targets, **kwargs):
    """Quantus' explain_func: xattr's Gradient (signed channel sum: no ties), numpy in and out."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    return Gradient(model, reduce="sum").attribute(x, torch.as_tensor(np.asarray(targets)).long()).numpy()


def batched_equals_single(metric, net, x, t, maps, atol=1e-5, **extras):
    whole = metric(net, x, t, maps, **extras).scores
    for i in range(x.shape[0]):
        ex = {k: (v[i:i + 1] if k == "boxes" else v) for k, v in extras.items()}
        one = metric(net, x[i:i + 1], t[i:i + 1], maps[i:i + 1], **ex).scores
        for k in whole:
            torch.testing.assert_close(one[k], whole[k][i:i + 1], atol=atol, rtol=1e-4, equal_nan=True)


# ------------------------------------------------------------------------------------------------ localisation
def test_localisation_metrics_match_quantus_and_batched_equals_single():
    net, x, t, maps = setup()
    boxes, masks = boxes_and_masks(3)
    kw = dict(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), s_batch=masks, device="cpu")
    pairs = [(PointingGame(tolerance=1), quantus.PointingGame(abs=False, normalise=False, **QKW)),
             (RelevanceMass(positive=False), quantus.RelevanceMassAccuracy(abs=False, normalise=False, **QKW)),
             (RelevanceRank(), quantus.RelevanceRankAccuracy(abs=False, normalise=False, **QKW)),
             (TopKIntersection(k=10), quantus.TopKIntersection(k=10, abs=False, normalise=False, **QKW)),
             (TopKIntersection(k=10, concept_influence=True),
              quantus.TopKIntersection(k=10, concept_influence=True, abs=False, normalise=False, **QKW))]
    for ours, theirs in pairs:
        got = ours(net, x, t, maps, boxes=boxes).scores[ours.name].numpy()
        np.testing.assert_allclose(got, np.asarray(theirs(**kw), dtype=float), atol=1e-6, err_msg=ours.name)
        batched_equals_single(ours, net, x, t, maps, boxes=boxes)


def test_pointing_game_is_torchray_with_its_tolerance_band():
    pytest.importorskip("torchray")
    from torchray.benchmark.pointing_game import PointingGame as TorchRayPG

    s = 32
    box = [torch.tensor([[10.0, 12.0, 20.0, 18.0]])]
    region = torch.zeros(s, s, dtype=torch.bool)
    region[12:18, 10:20] = True
    x = torch.zeros(1, 3, s, s)
    for tol in (1, 3, 15):
        for py, px in [(14, 15), (12, 10), (11, 15), (8, 15), (15, 22), (20, 24), (0, 0), (17, 19)]:
            m = torch.zeros(1, 1, s, s)
            m[0, 0, py, px] = 1.0
            ours = PointingGame(tolerance=tol)(None, x, torch.zeros(1), m, boxes=box).scores["pointing_game"].item()
            ref = TorchRayPG(1, tolerance=tol).evaluate(region, (px, py))
            assert ours == (1.0 if ref == 1 else 0.0), (tol, py, px)
    # hand cases: inside hits; 4 px above the box misses at tolerance 3 (9 < 16) and hits at 5 (16 < 25)
    m = torch.zeros(1, 1, s, s)
    m[0, 0, 8, 15] = 1
    assert PointingGame(tolerance=3)(None, x, torch.zeros(1), m, boxes=box).scores["pointing_game"].item() == 0
    assert PointingGame(tolerance=5)(None, x, torch.zeros(1), m, boxes=box).scores["pointing_game"].item() == 1


def test_relevance_mass_closed_form_and_the_negative_relevance_case():
    x = torch.zeros(1, 1, 4, 4)
    box = [torch.tensor([[0.0, 0.0, 2.0, 2.0]])]  # the top-left 4 pixels
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, :2, :2] = 1.0  # 4 inside
    m[0, 0, 3, 3] = 4.0  # 4 outside
    assert RelevanceMass()(None, x, torch.zeros(1), m, boxes=box).scores["relevance_mass"].item() == pytest.approx(0.5)
    m[0, 0, 3, 2] = -3.0  # negative relevance outside: raw sums give 4 / 5 = 0.8 (Quantus), positive 4 / 8
    assert RelevanceMass()(None, x, torch.zeros(1), m, boxes=box).scores["relevance_mass"].item() == pytest.approx(0.5)
    raw = RelevanceMass(positive=False)(None, x, torch.zeros(1), m, boxes=box).scores["relevance_mass"].item()
    q = quantus.RelevanceMassAccuracy(abs=False, normalise=False, **QKW)(
        model=None, x_batch=x.numpy(), y_batch=np.zeros(1, int), a_batch=m.numpy(),
        s_batch=(m.numpy() * 0 + np.pad(np.ones((2, 2)), ((0, 2), (0, 2))))[:, :1])
    assert raw == pytest.approx(0.8) and q[0] == pytest.approx(0.8)
    assert torch.isnan(RelevanceMass()(None, x, torch.zeros(1), m, boxes=[torch.zeros(0, 4)]).scores["relevance_mass"])


def test_relevance_rank_is_the_bbox_ratio_without_its_filter():
    from xattr.metrics.localisation import BoundingBoxRatio

    net, x, t, maps = setup()
    boxes, _ = boxes_and_masks(3)
    ours = RelevanceRank()(net, x, t, maps, boxes=boxes).scores["relevance_rank"]
    ref = BoundingBoxRatio(max_coverage=None, normalise="none")(net, x, t, maps, boxes=boxes).scores["bbox_ratio"]
    torch.testing.assert_close(ours, ref)


# -------------------------------------------------------------------------------------------------- complexity
def test_sparseness_and_complexity_match_quantus_and_closed_forms():
    net, x, t, maps = setup()
    maps = maps - 0.3  # signed: both take |a|
    kw = dict(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu")
    sp = Sparseness()(net, x, t, maps).scores["sparseness"].numpy()
    np.testing.assert_allclose(sp, quantus.Sparseness(abs=True, normalise=False, **QKW)(**kw), atol=1e-5)
    cx = Complexity()(net, x, t, maps).scores["complexity"].numpy()
    np.testing.assert_allclose(cx, quantus.Complexity(abs=True, normalise=False, **QKW)(**kw), atol=1e-5)
    n = S * S
    one_hot = torch.zeros(1, 1, S, S)
    one_hot[0, 0, 3, 5] = -2.0
    uniform = torch.full((1, 1, S, S), 0.7)
    assert Sparseness()(net, x[:1], t[:1], one_hot).scores["sparseness"].item() == pytest.approx(1 - 1 / n)
    assert Sparseness()(net, x[:1], t[:1], uniform).scores["sparseness"].item() == pytest.approx(0, abs=1e-6)
    assert Complexity()(net, x[:1], t[:1], uniform).scores["complexity"].item() == pytest.approx(math.log(n))
    assert Complexity()(net, x[:1], t[:1], one_hot).scores["complexity"].item() == pytest.approx(0, abs=1e-7)
    for m in (Sparseness(), Complexity()):
        batched_equals_single(m, net, x, t, maps)


# ------------------------------------------------------------------------------------------------------- ROAD
def test_road_imputation_matches_quantus_and_keeps_a_constant():
    from quantus.functions.perturb_func import noisy_linear_imputation

    g = np.random.default_rng(0)
    img = g.normal(size=(3, 7, 9))
    removed = g.random(63) < 0.4
    ours = linear_imputation(img, removed)
    theirs = noisy_linear_imputation(img.copy(), np.flatnonzero(removed), noise=0.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    assert np.array_equal(ours.reshape(3, -1)[:, ~removed], img.reshape(3, -1)[:, ~removed])
    const = np.full((2, 6, 6), 0.37)
    almost_all = np.ones(36, bool)
    almost_all[[0, 20]] = False
    np.testing.assert_allclose(linear_imputation(const, almost_all), const, atol=1e-12)
    # a hand case: one removed pixel in the middle of a 3x3 image is the 1/6-1/12 weighted neighbour mean
    img = np.arange(9.0).reshape(1, 3, 3)
    centre = np.zeros(9, bool)
    centre[4] = True
    expect = (1 / 6) * (1 + 3 + 5 + 7) + (1 / 12) * (0 + 2 + 6 + 8)
    assert linear_imputation(img, centre)[0, 1, 1] == pytest.approx(expect)


def test_road_noise_is_the_references_std_on_the_imputed_pixels_only():
    x = torch.randn(3, 40, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    removed = torch.rand(2000, generator=torch.Generator().manual_seed(2)) < 0.5
    noisy = ROAD(noise=0.05).impute(x, removed, torch.Generator().manual_seed(3)).reshape(3, -1)
    clean = torch.from_numpy(linear_imputation(x.numpy(), removed.numpy())).reshape(3, -1)
    d = noisy - clean
    assert d[:, ~removed].abs().max() == 0 and d[:, removed].std().item() == pytest.approx(0.05, rel=0.05)
    assert d[:, removed].mean().abs().item() < 0.005


def test_road_morf_matches_quantus_and_batched_equals_single():
    net, x, _, maps = setup(b=4)
    t = net(x).argmax(1)  # correctly classified at 0 %
    pct = [10, 30, 50, 70, 90]
    ours = ROAD(percentages=pct, noise=0.0, orders=["morf"])(net, x, t, maps)
    theirs = quantus.ROAD(percentages=pct, noise=0.0, abs=False, normalise=False, **QKW)(
        model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu")
    np.testing.assert_allclose(ours.curves["road_morf"].mean(0).numpy(), [theirs[p] for p in pct], atol=1e-6)
    batched_equals_single(ROAD(percentages=[20, 60], noise=0.05, output="softmax", chunk=3), net, x, t, maps)


# ---------------------------------------------------------------------------------------- faithfulness corr.
def test_faithfulness_correlation_matches_quantus_on_the_same_subsets(monkeypatch):
    net, x, t, maps = setup()
    metric = FaithfulnessCorrelation(n_runs=12, subset_size=9)
    ours = metric(net, x, t, maps).scores["faithfulness_correlation"].numpy()
    sub = metric.subsets(x).numpy()  # (B, R, S)
    calls = iter([(r, i) for r in range(12) for i in range(3)])

    def choice(n, size, replace=False):
        r, i = next(calls)
        return sub[i, r]

    monkeypatch.setattr(np.random, "choice", choice)
    theirs = quantus.FaithfulnessCorrelation(nr_runs=12, subset_size=9, abs=False, normalise=False,
                                             return_aggregate=False, perturb_baseline="black", **QKW)(
        model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu", softmax=False)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    batched_equals_single(metric, net, x, t, maps)


# ------------------------------------------------------------------------------------------------------ IROF
def test_irof_matches_quantus_with_a_fixed_fill_and_batched_equals_single(monkeypatch):
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 calls np.trapz (gone in numpy 2)
    net, x, t, maps = setup(c=1, b=2, s=12)  # Quantus' IROF masks one channel only (its mask is (B, 1, H, W))
    res = IROF(n_segments=100, baseline="zero")(net, x, t, maps)  # Quantus: slic with its default 100
    theirs = quantus.IROF(abs=False, normalise=False, return_aggregate=False, perturb_baseline=0.0, **QKW)(
        model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu")
    seg = IROF(n_segments=100).segments(x)
    for i in range(2):
        n = int(seg[i].max()) + 1
        y = res.curves["irof"][i, : n + 1].double().numpy()
        # Quantus: n - trapz(y_1..y_n, dx=1); ours: 1 - trapz(y_0..y_n, dx=1/n) with y_0 = 1
        assert y[0] == 1 and theirs[i] == pytest.approx(n - np.trapezoid(y[1:]), abs=1e-4)
        assert res.scores["irof"][i].item() == pytest.approx(1 - np.trapezoid(y, dx=1 / n), abs=1e-6)
    batched_equals_single(IROF(n_segments=8), net, x, t, maps)


def test_irof_closed_form_on_a_model_that_ignores_the_input():
    class Const(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0, -1.0]]).expand(x.shape[0], -1)

    _, x, t, maps = setup(c=3, b=1, s=16)
    assert IROF(n_segments=8)(Const(), x, t, maps).scores["irof"].item() == pytest.approx(0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ infidelity
@pytest.mark.parametrize("normalise", [True, False])
def test_infidelity_matches_captum_on_the_same_perturbations(normalise):
    from captum.metrics import infidelity

    net, x, t, maps = setup(c=3, b=2)
    metric = Infidelity(n_samples=6, std=0.2, normalise=normalise)
    ours = metric(net, x, t, maps).scores["infidelity"]
    pert = metric.perturbations(x)  # (B, S, C, H, W)
    for i in range(2):
        draws = iter(pert[i])

        def perturb(inputs, draws=draws):
            noise = torch.stack([next(draws) for _ in range(inputs.shape[0])])
            return noise, inputs - noise

        ref = infidelity(net, perturb, x[i:i + 1], maps[i:i + 1].expand(-1, 3, -1, -1), target=t[i:i + 1],
                         n_perturb_samples=6, max_examples_per_batch=1, normalize=normalise)
        assert ours[i].item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-7)
    batched_equals_single(metric, net, x, t, maps)


def test_infidelity_of_gradient_x_perturbation_on_a_linear_model_is_zero():
    torch.manual_seed(0)
    w = torch.randn(3, 1, S, S)
    net = PixelLinear(w).eval()
    x, t = torch.randn(2, 1, S, S), torch.tensor([0, 2])
    maps = w[t]  # the exact gradient: I^T a = f(x) - f(x - I) for every I
    for norm in (True, False):
        got = Infidelity(n_samples=5, normalise=norm)(net, x, t, maps).scores["infidelity"]
        assert got.abs().max().item() < 1e-8


# ---------------------------------------------------------------------------- faithfulness: by hand, config
def test_faithfulness_correlation_by_hand_softmax_mean_fill_on_a_non_square_rgb_image():
    """Bhatt et al.'s def. 3 written here, per image: for each drawn pixel subset S, the drop of the target's
    softmax when S (all channels) takes the image's per-channel mean, against the map's sum over S; Pearson by
    scipy. The draws are row-major pixel indices of the whole 6 x 10 image: distinct within a subset, every
    pixel drawn at least once in 40 runs."""
    from scipy.stats import pearsonr

    torch.manual_seed(1)
    h, w = 6, 10
    net = TinyCNN(num_classes=3, in_channels=3).eval()
    x, t, maps = torch.randn(2, 3, h, w), torch.tensor([2, 0]), torch.rand(2, 1, h, w)
    metric = FaithfulnessCorrelation(n_runs=40, subset_size=20, baseline="mean", output="softmax")
    got = metric(net, x, t, maps).scores["faithfulness_correlation"]
    sub = metric.subsets(x)
    assert sub.shape == (2, 40, 20)
    for i in range(2):
        assert all(len(set(s)) == 20 for s in sub[i].tolist())
        assert sorted(set(sub[i].reshape(-1).tolist())) == list(range(h * w))
        clean = torch.softmax(net(x[i:i + 1]), 1)[0, t[i]].item()
        drops, sums = [], []
        for s in sub[i].tolist():
            img = x[i].clone()
            for p in s:
                img[:, p // w, p % w] = x[i].mean((1, 2))
            drops.append(clean - torch.softmax(net(img[None]), 1)[0, t[i]].item())
            sums.append(sum(maps[i, 0, p // w, p % w].item() for p in s))
        assert got[i].item() == pytest.approx(pearsonr(sums, drops)[0], abs=1e-4)


class GivenSegments(IROF):
    """IROF on segments given here instead of SLIC's."""

    def __init__(self, labels: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.labels = labels

    def segments(self, x):
        return self.labels


def irof_labels(s: int = 10) -> np.ndarray:
    """Three images' segments: 25 2 x 2 blocks; 4 uneven ones (one pixel, the rest of row 0, rows 1-4, rows
    5-9); 9 blocks of 4 x 4, 4 x 2, 2 x 4 and 2 x 2 pixels."""
    r, c = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    uneven = np.where(r == 0, np.where(c == 0, 0, 1), np.where(r < 5, 2, 3))
    return np.stack([(r // 2) * 5 + c // 2, uneven, (r // 4) * 3 + c // 4])


def test_irof_by_hand_on_given_segments_ranked_by_mean_with_ties_in_label_order():
    """IROF (Rieger & Hansen, sec. 2) written here per image on given segments: rank them by *mean* relevance,
    highest first, equal means in label order; remove them one after another (all channels take the clean
    image's per-channel mean); y_k = softmax after k removals / clean, y_0 = 1; IROF = 1 - trapz(y, dx=1/n).
    Image 0: 25 segments of one relevance (the tie order shows); image 1: a 1-pixel segment of the highest mean
    but the lowest sum; image 2: a random map. The curves are padded with NaN to the longest, on the axis
    k = 0..25."""
    torch.manual_seed(2)
    net = TinyCNN(num_classes=3, in_channels=3).eval()
    labels = irof_labels()
    x, t = torch.randn(3, 3, 10, 10), torch.tensor([0, 1, 2])
    maps = torch.stack([torch.full((10, 10), 0.5), torch.tensor([0.9, 0.5, 0.3, 0.1])[labels[1]],
                        torch.rand(10, 10)])[:, None]
    res = GivenSegments(labels)(net, x, t, maps)
    assert res.curves["irof"].shape == (3, 26) and res.x_axis["irof"].tolist() == list(range(26))
    for i in range(3):
        lab = torch.from_numpy(labels[i])
        n = int(lab.max()) + 1
        means = [maps[i, 0][lab == k].double().mean().item() for k in range(n)]
        order = sorted(range(n), key=lambda k: -means[k])  # Python's sort is stable

        def prob(img, i=i):
            return torch.softmax(net(img[None]), 1)[0, t[i]].item()

        img, y = x[i].clone(), [1.0]
        for k in order:
            img[:, lab == k] = x[i].mean((1, 2))[:, None]
            y.append(prob(img) / prob(x[i]))
        np.testing.assert_allclose(res.curves["irof"][i, : n + 1].numpy(), y, rtol=1e-5, atol=1e-6)
        assert res.curves["irof"][i, n + 1:].isnan().all()
        assert res.scores["irof"][i].item() == pytest.approx(1 - np.trapezoid(y, dx=1 / n), abs=1e-5)


def test_infidelity_closed_form_on_a_linear_model_with_twice_the_map():
    """A linear model with the same weight v in every channel: f(x) - f(x - I) = I^T v exactly. Given the map
    2 v, def. 2.1 as written (``normalise: false``) is E[(I^T v)^2] = std^2 C ||v||^2 for I ~ N(0, std^2) per
    value (the default std 0.1), here within sampling error (4000 draws: ~2 %)."""
    torch.manual_seed(0)
    v = torch.randn(3, 1, 4, 4)
    net = PixelLinear(v.expand(-1, 3, -1, -1)).eval()
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([1, 0])
    got = Infidelity(n_samples=4000, normalise=False)(net, x, t, 2 * v[t]).scores["infidelity"]
    torch.testing.assert_close(got, 0.1**2 * 3 * (v[t] ** 2).sum((1, 2, 3)), rtol=0.15, atol=0)


class RowsSeen(torch.nn.Module):
    """A model that records the rows of each forward."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.net(x)


def test_faithfulness_metrics_forward_chunk_rows_per_call_and_their_stated_cost():
    """``chunk: k`` sends the perturbed inputs k at a time (:mod:`xattr.core.chunk`: at most k rows a call, as
    few calls as that allows), ``null`` all at once, after the clean forward of the batch; the rows counted per
    image are the stated cost (IROF: on given segments, as many as asked)."""
    torch.manual_seed(0)
    net = RowsSeen(TinyCNN(num_classes=3, in_channels=3).eval())
    x, t, maps = torch.randn(2, 3, 10, 10), torch.tensor([0, 2]), torch.rand(2, 1, 10, 10)
    labels = np.stack([(np.arange(100) // 25).reshape(10, 10)] * 2)  # 4 segments of 25 pixels
    for make, n in [(lambda chunk: FaithfulnessCorrelation(n_runs=5, subset_size=9, chunk=chunk), 10),
                    (lambda chunk: Infidelity(n_samples=5, chunk=chunk), 10),
                    (lambda chunk: GivenSegments(labels, n_segments=4, chunk=chunk), 8)]:
        for chunk, rows in [(4, [4] * (n // 4) + [n % 4] * (n % 4 > 0)), (None, [n])]:
            net.rows.clear()
            metric = make(chunk)
            metric(net, x, t, maps)
            assert net.rows == [2, *rows], (metric.name, chunk)
            assert metric.forwards_per_image(tuple(x.shape[1:]), 1.0) == sum(net.rows) / 2


def test_faithfulness_defaults_are_quantus_captum_and_the_configs_and_bad_values_are_whole_lines():
    """FaithfulnessCorrelation's run count and subset size are Quantus 0.6's defaults, IROF's segment count is
    slic's default (what Quantus' IROF asks), Infidelity's sample count is Captum's; every default is the one
    ``conf/metric/<name>.yaml`` states; the memory knob is ``chunk``; each bad value is its whole line naming
    the setting (a subset of all the pixels leaves nothing to compare: refused)."""
    import inspect

    from captum.metrics import infidelity
    from omegaconf import OmegaConf
    from skimage.segmentation import slic

    from xattr.config import CONF_DIR

    q = quantus.FaithfulnessCorrelation(**QKW)
    assert (FaithfulnessCorrelation().n_runs, FaithfulnessCorrelation().subset_size) == (q.nr_runs, q.subset_size)
    assert IROF().n_segments == inspect.signature(slic).parameters["n_segments"].default
    assert Infidelity().n_samples == inspect.signature(infidelity).parameters["n_perturb_samples"].default
    for cls in (FaithfulnessCorrelation, IROF, Infidelity):
        conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "metric" / f"{cls.name}.yaml"))
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        assert defaults == {k: v for k, v in conf.items() if k != "_target_"} and cls.memory_knob == "chunk"
    img = torch.zeros(1, 1, 8, 8)
    assert FaithfulnessCorrelation(n_runs=2, subset_size=63).subsets(img).shape == (1, 2, 63)
    for make, line in [
            (lambda: FaithfulnessCorrelation(subset_size=64).subsets(img),
             "bad subset_size 64; valid choices: an integer below 64 (the pixels)"),
            (lambda: FaithfulnessCorrelation(n_runs=0), "bad n_runs 0; valid choices: an integer >= 1"),
            (lambda: FaithfulnessCorrelation(subset_size=0), "bad subset_size 0; valid choices: an integer >= 1"),
            (lambda: FaithfulnessCorrelation(baseline="black"),
             "unknown baseline 'black'; valid choices: zero, min, mean"),
            (lambda: FaithfulnessCorrelation(output="prob"), "unknown output 'prob'; valid choices: logit, softmax"),
            (lambda: IROF(n_segments=0), "bad n_segments 0; valid choices: an integer >= 1"),
            (lambda: IROF(baseline="blur"), "unknown baseline 'blur'; valid choices: zero, min, mean"),
            (lambda: Infidelity(n_samples=0), "bad n_samples 0; valid choices: an integer >= 1"),
            (lambda: Infidelity(std=0), "bad std 0; valid choices: a number > 0"),
            (lambda: Infidelity(output="prob"), "unknown output 'prob'; valid choices: logit, softmax")]:
        with pytest.raises(XattrConfigError) as err:
            make()
        assert str(err.value) == line


# ------------------------------------------------------------------------------------------------ robustness
class Draws:
    """Quantus' perturb_func fed with xattr's noise, sample after sample."""

    def __init__(self, noise: torch.Tensor):
        self.it = iter(noise.numpy())

    def __call__(self, arr, indices, **kwargs):
        return arr + next(self.it).reshape(arr.shape)


@pytest.mark.parametrize("cls,qname", [(MaxSensitivity, "MaxSensitivity"), (AvgSensitivity, "AvgSensitivity")])
def test_sensitivity_matches_quantus_and_captum(cls, qname):
    from captum.metrics import sensitivity_max

    net, x, t, _ = setup(c=1, b=2)
    method = Gradient(net, reduce="sum")
    maps = method.attribute(x, t)
    metric = cls(n_samples=3, radius=0.1)
    ours = metric(net, x, t, maps, method=method).scores[metric.name].numpy()
    noise = metric.noise(x)  # (n, B, C, H, W)
    theirs = getattr(quantus, qname)(nr_samples=3, perturb_func=Draws(noise.reshape(3, 2, -1)), abs=False,
                                     normalise=False, **QKW)(
        model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu",
        explain_func=gradient_explain)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    if cls is MaxSensitivity:
        draws = iter(noise.transpose(0, 1).reshape(-1, *x.shape[1:]))
        def explain(inp, target):
            inp = inp[0] if isinstance(inp, tuple) else inp
            return (Gradient(net, reduce="sum").attribute(inp, torch.as_tensor(target)),)  # Captum wants a tuple

        def perturb(inp):
            inp = inp[0] if isinstance(inp, tuple) else inp
            return inp + torch.stack([next(draws) for _ in inp])

        captum = sensitivity_max(explain, x, perturb_func=perturb,
                                 n_perturb_samples=3, target=t, max_examples_per_batch=6)
        np.testing.assert_allclose(ours, captum.numpy(), rtol=1e-4, atol=1e-6)
    batched_equals_single(metric, net, x, t, maps, method=method)


def test_max_sensitivity_of_a_linear_models_gradient_is_zero():
    torch.manual_seed(0)
    net = PixelLinear(torch.randn(3, 1, S, S)).eval()
    x, t = torch.randn(2, 1, S, S), torch.tensor([0, 2])
    method = Gradient(net, reduce="sum")
    got = MaxSensitivity(n_samples=4, radius=0.5)(net, x, t, method.attribute(x, t), method=method)
    assert got.scores["max_sensitivity"].abs().max().item() == 0.0


@pytest.mark.parametrize("cls,qname", [(RelativeInputStability, "RelativeInputStability"),
                                       (RelativeOutputStability, "RelativeOutputStability")])
def test_relative_stability_matches_quantus_where_no_prediction_changes(cls, qname):
    net, x, t, _ = setup(c=1, b=2)
    method = Gradient(net, reduce="sum")
    maps = method.attribute(x, t)
    metric = cls(n_samples=3, radius=1e-3)  # small: no prediction changes, where both agree
    ours = metric(net, x, t, maps, method=method).scores[metric.name].numpy()
    noise = metric.noise(x)
    theirs = getattr(quantus, qname)(nr_samples=3, perturb_func=Draws(noise.reshape(3, 2, -1)), **QKW)(
        model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu",
        explain_func=gradient_explain)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3)
    # at 1e-3 the ratios divide float rounding by tiny changes; batched == single where the maps really change
    batched_equals_single(cls(n_samples=3, radius=0.2), net, x, t, maps, method=method, atol=1e-3)


def test_relative_stability_skips_copies_that_change_the_prediction():
    """A hand case: a model whose prediction flips for every perturbed copy gives NaN (no copy counts);
    Quantus takes np.max over NaN-marked draws, so one flipped copy already makes its score NaN."""
    class Flip(torch.nn.Module):
        def forward(self, x):
            s = (x.flatten(1) != 0.5).any(1).float()  # the clean input is all 0.5
            return torch.stack([1 - s, s], 1)

    class Ones:
        def attribute(self, x, target):
            return torch.ones(x.shape[0], 1, *x.shape[-2:])

    x = torch.full((1, 1, 4, 4), 0.5)
    res = RelativeInputStability(n_samples=3)(Flip(), x, torch.zeros(1), torch.ones(1, 1, 4, 4), method=Ones())
    assert torch.isnan(res.scores["relative_input_stability"]).all()


# ---------------------------------------------------------------------------------------------- randomisation
class ClassBlind:
    """A method whose map ignores the class and the parameters: x summed over channels."""

    def __init__(self, model=None):
        pass

    def attribute(self, x, target):
        return x.sum(1, keepdim=True).detach()


def test_random_logit_matches_quantus_and_a_class_blind_map_scores_one():
    from skimage.metrics import structural_similarity

    net, x, t, _ = setup(c=1, s=12)
    t = torch.tensor([0, 1, 0])
    net2 = TinyCNN(num_classes=2, in_channels=1).eval()  # two classes: the other class is fixed
    method = Gradient(net2, reduce="sum")
    maps = method.attribute(x, t)
    ours = RandomLogit()(net2, x, t, maps, method=method).scores["random_logit"].numpy()

    def ssim_2d(a, b, batched=True, **kw):
        out = []
        for aa, bb in zip(a, b):
            aa, bb = aa.reshape(12, 12), bb.reshape(12, 12)
            rng = float(max(aa.max(), bb.max()) - min(aa.min(), bb.min()))
            out.append(structural_similarity(aa, bb, data_range=rng))
        return out

    theirs = quantus.RandomLogit(num_classes=2, similarity_func=ssim_2d, abs=False, normalise=False, **QKW)(
        model=net2, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu",
        explain_func=gradient_explain)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    blind = ClassBlind()
    res = RandomLogit()(net, x, t, blind.attribute(x, t), method=blind).scores["random_logit"]
    torch.testing.assert_close(res, torch.ones(3))
    batched_equals_single(RandomLogit(), net, x, t, Gradient(net, reduce="sum").attribute(x, t),
                          method=Gradient(net, reduce="sum"))


def test_efficient_mprt_matches_quantus_and_is_one_for_a_parameter_blind_method():
    net, x, t, _ = setup(c=1, s=12)
    method = Gradient(net, reduce="sum")
    maps = method.attribute(x, t)
    ours = EfficientMPRT()(net, x, t, maps, method_factory=lambda m: Gradient(m, reduce="sum"))
    theirs = quantus.EfficientMPRT(**QKW)(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(),
                                          device="cpu", explain_func=gradient_explain)
    np.testing.assert_allclose(ours.scores["efficient_mprt"].numpy() - 1, theirs, rtol=1e-5, atol=1e-6)
    blind = EfficientMPRT()(net, x, t, x.sum(1, keepdim=True), method_factory=ClassBlind).scores["efficient_mprt"]
    torch.testing.assert_close(blind, torch.ones(3))
    batched_equals_single(EfficientMPRT(), net, x, t, maps, method_factory=lambda m: Gradient(m, reduce="sum"))


def test_discrete_entropies_of_all_rows_equal_np_histogram_and_scipy_row_by_row():
    """eMPRT's vectorised histogram entropy against its oracle, ``np.histogram`` + ``scipy.stats.entropy`` per row
    (``discrete_entropy``): values on bin edges (rounded rows), constant rows (range widened by 0.5), one bin,
    tiny values, float32 data read as float64; exactly equal. Non-finite rows keep numpy's error."""
    from xattr.metrics.randomisation import discrete_entropies, discrete_entropy

    rng = np.random.default_rng(0)
    for trial in range(120):
        b, n = int(rng.integers(1, 6)), int(rng.integers(1, 2500))
        a = rng.standard_normal((b, n)) ** int(rng.integers(1, 4))
        if trial % 4 == 0:
            a = np.round(a * 3) / 3  # many values exactly on bin edges
        if trial % 9 == 0:
            a[0] = 1.5  # a constant row
        if trial % 5 == 0:
            a = a.astype(np.float32).astype(np.float64)
        if trial % 7 == 0:
            a = a * 1e-300
        bins = int(rng.choice([1, 7, 100, 256]))
        expected = np.array([discrete_entropy(row, bins) for row in a])
        assert np.array_equal(discrete_entropies(a, bins), expected), trial
    # by hand: 4 values over 2 bins of [0, 3]: {0, 1} and {2, 3} (last bin closed): entropy log 2
    assert discrete_entropies(np.array([[0.0, 1.0, 2.0, 3.0]]), 2)[0] == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="finite"):
        discrete_entropies(np.array([[0.0, np.inf]]))


def test_efficient_mprt_keeps_its_randomised_copy_while_the_model_is_unchanged():
    """The fully randomised copy is built once per model state: a second batch reuses it (same weights as a
    fresh metric's, equal scores); an in-place change of the model or another model builds a new one. Its
    weights are the seeded resets of every module (torch.manual_seed(seed + 1) before each, as Quantus)."""
    import copy

    net, x, t, _ = setup(c=1, s=12)
    factory = lambda m: Gradient(m, reduce="sum")  # noqa: E731
    maps = factory(net).attribute(x, t)
    metric = EfficientMPRT()
    first = metric.fully_randomised(net)
    assert metric.fully_randomised(net) is first
    expected = copy.deepcopy(net)
    for m in expected.modules():
        if hasattr(m, "reset_parameters"):
            torch.manual_seed(43)
            m.reset_parameters()
    for p, q in zip(first.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    a = metric(net, x[:2], t[:2], maps[:2], method_factory=factory).scores["efficient_mprt"]
    b = metric(net, x[2:], t[2:], maps[2:], method_factory=factory).scores["efficient_mprt"]
    assert metric.fully_randomised(net) is first
    fresh = EfficientMPRT()(net, x, t, maps, method_factory=factory).scores["efficient_mprt"]
    torch.testing.assert_close(torch.cat([a, b]), fresh)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)  # in place: the version moves
    assert metric.fully_randomised(net) is not first
    other = copy.deepcopy(net)
    assert metric.fully_randomised(other) is not metric.fully_randomised(net)
    assert EfficientMPRT(layers=["fc"]).fully_randomised(net).state_dict()["features.0.weight"].equal(
        net.state_dict()["features.0.weight"])  # only the planned modules are reset
    import pickle

    clone = pickle.loads(pickle.dumps(metric))  # the kept copy stays behind; the settings travel
    assert not hasattr(clone, "_full") and clone.seed == metric.seed and copy.deepcopy(metric).layers == metric.layers


def test_smooth_mprt_without_noise_matches_quantus_and_batched_equals_single(monkeypatch):
    net, x, t, _ = setup(c=1, b=2, s=12)
    monkeypatch.setattr(quantus, "explain", gradient_explain)  # its SmoothMPRT calls quantus.explain itself
    factory = lambda m: Gradient(m, reduce="sum")  # noqa: E731
    maps = factory(net).attribute(x, t)
    ours = SmoothMPRT(n_samples=1)(net, x, t, maps, method_factory=factory)  # one sample: the clean input
    kw = dict(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None, device="cpu", explain_func=gradient_explain)
    layers = quantus.SmoothMPRT(nr_samples=1, **QKW)(**kw)  # {"original": [1, 1, 1], layer: [...], ...}
    assert list(layers)[1:] == ["features.0", "features.2", "features.5", "fc"]
    np.testing.assert_allclose(ours.curves["smooth_mprt"].numpy(), np.array(list(layers.values())[1:]).T, atol=1e-6)
    # Quantus' average also counts the original-vs-original correlation (1): it skips a key "orig", not "original"
    average = quantus.SmoothMPRT(nr_samples=1, return_average_correlation=True, **QKW)(**kw)
    np.testing.assert_allclose((1 + 4 * ours.scores["smooth_mprt"].numpy()) / 5, average, atol=1e-6)
    assert ours.curves["smooth_mprt"].shape == (2, 4)  # 3 convs + fc, bottom-up
    blind = SmoothMPRT(n_samples=3)(net, x, t, maps, method_factory=ClassBlind).scores["smooth_mprt"]
    torch.testing.assert_close(blind, torch.ones(2))
    batched_equals_single(SmoothMPRT(n_samples=2, layers=["conv3", "fc"]), net, x, t, maps, method_factory=factory)

    class Flip:  # the map's sign flips on a randomised copy: the absolute maps are equal (Spearman 1)
        def __init__(self, model):
            self.sign = 1.0 if model is net else -1.0

        def attribute(self, x, target):
            return self.sign * x.sum(1, keepdim=True)

    flipped = SmoothMPRT(n_samples=1, layers=["fc"])(net, x, t, maps, method_factory=Flip).scores["smooth_mprt"]
    torch.testing.assert_close(flipped, torch.ones(2))


def test_region_and_map_only_metrics_labels_bounds_and_edge_cases_by_hand():
    """Names, needs and the free cost; TorchRay's tolerance 15 and Quantus' k 1000 by default, tolerance 0 and
    k below the pixels valid, the rest whole error lines; a non-square image (a box right of column 4); a total
    relevance of exactly 1; a one-pixel region; an all-zero map is NaN and a one-hot map of total 1 is not."""
    import re

    from xattr.errors import XattrConfigError

    for cls, name in ((PointingGame, "pointing_game"), (RelevanceMass, "relevance_mass"),
                      (RelevanceRank, "relevance_rank"), (TopKIntersection, "top_k_intersection")):
        assert cls.name == name and cls.needs == ("boxes",) and cls().forwards_per_image((1, 4, 6), 3.0) == 0.0
    assert (Sparseness.name, Complexity.name) == ("sparseness", "complexity")
    assert Sparseness().forwards_per_image((1, 4, 6), 3.0) == 0.0 == Complexity().forwards_per_image((1, 4, 6), 3.0)
    assert PointingGame().tolerance == 15 and PointingGame(tolerance=0).tolerance == 0
    assert TopKIntersection().k == 1000 and TopKIntersection(k=23).k == 23
    for make, msg in ((lambda: PointingGame(tolerance=-1), "bad tolerance -1; valid choices: an integer >= 0 (pixels)"),
                      (lambda: PointingGame(tolerance=1.5), "bad tolerance 1.5; valid choices: an integer >= 0 (pixels)"),
                      (lambda: TopKIntersection(k=0), "bad k 0; valid choices: an integer >= 1")):
        with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
            make()
    x, t = torch.zeros(1, 1, 4, 6), torch.zeros(1, dtype=torch.long)
    with pytest.raises(XattrConfigError, match="^" + re.escape("bad k 24 for 24-pixel maps; valid choices: an integer "
                                                               "below 24") + "$"):
        TopKIntersection(k=24)(None, x, t, torch.rand(1, 1, 4, 6), boxes=[torch.tensor([[0.0, 0.0, 1.0, 1.0]])])
    m = torch.zeros(1, 1, 4, 6)
    m[0, 0, 2, 5] = 1.0  # total relevance exactly 1, at column 5 of a 4 x 6 image
    box = [torch.tensor([[5.0, 2.0, 6.0, 3.0]])]  # that one pixel
    assert PointingGame(tolerance=1)(None, x, t, m, boxes=box).scores["pointing_game"].item() == 1.0
    assert RelevanceMass()(None, x, t, m, boxes=box).scores["relevance_mass"].item() == 1.0
    assert RelevanceRank()(None, x, t, m, boxes=box).scores["relevance_rank"].item() == 1.0  # K = 1
    ti = TopKIntersection(k=1, concept_influence=True)(None, x, t, m, boxes=box).scores["top_k_intersection"]
    assert ti.item() == pytest.approx(24.0)  # 1 / (1 / 24)
    zero = torch.zeros(1, 1, 4, 6)
    for metric, key, hot in ((Sparseness(), "sparseness", 1 - 1 / 24), (Complexity(), "complexity", 0.0)):
        assert math.isnan(metric(None, x, t, zero).scores[key].item())
        assert metric(None, x, t, m).scores[key].item() == pytest.approx(hot)


def test_road_defaults_edges_and_whole_error_lines():
    """ROAD's defaults are the paper's figures and the reference's (10..90 %, noise 0.01, MoRF and LeRF, accuracy,
    seed 0, chunk auto, the memory knob chunk); 0 and 100 % are valid levels; each bad value is its whole line."""
    m = ROAD()
    assert m.percentages == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0] and m.noise == 0.01
    assert m.orders == ("morf", "lerf") and m.output == "accuracy" and m.seed == 0 and m.chunk == "auto"
    assert ROAD.memory_knob == "chunk" and ROAD(chunk=4).chunk == 4
    assert ROAD(percentages=[0, 100]).percentages == [0.0, 100.0]
    for kw, line in [({"percentages": [101]}, "bad percentages [101]; valid choices: numbers in [0, 100]"),
                     ({"percentages": [-1]}, "bad percentages [-1]; valid choices: numbers in [0, 100]"),
                     ({"percentages": []}, "bad percentages []; valid choices: numbers in [0, 100]"),
                     ({"noise": -0.1}, "bad noise -0.1; valid choices: a number >= 0"),
                     ({"orders": ["up"]}, "unknown order 'up'; valid choices: morf, lerf"),
                     ({"output": "logit"}, "unknown output 'logit'; valid choices: accuracy, softmax")]:
        with pytest.raises(XattrConfigError) as err:
            ROAD(**kw)
        assert str(err.value) == line


def test_road_imputes_one_removed_pixel_as_its_neighbours_weighted_mean():
    """One removed pixel (the centre of a 3 x 3 image): the reference's equation makes it the mean of its 8
    neighbours weighted 1/6 (edge) and 1/12 (corner), the weights summing to 1; the other pixels are unchanged."""
    img = np.arange(18, dtype=np.float64).reshape(2, 3, 3) ** 1.5
    removed = np.zeros(9, dtype=bool)
    removed[4] = True
    out = linear_imputation(img, removed)
    edge, corner = [(0, 1), (1, 0), (1, 2), (2, 1)], [(0, 0), (0, 2), (2, 0), (2, 2)]
    for ch in range(2):
        want = sum(img[ch][p] for p in edge) / 6 + sum(img[ch][p] for p in corner) / 12
        assert out[ch, 1, 1] == pytest.approx(want, rel=1e-12)
    keep = np.ones((3, 3), dtype=bool)
    keep[1, 1] = False
    assert np.array_equal(out[:, keep], img[:, keep])


def test_road_both_orders_by_hand_per_image_with_the_softmax_readout():
    """Without noise, per image and level p written here: MoRF imputes the int(H W p / 100) pixels of the largest
    map values, LeRF those of the smallest (``linear_imputation``, checked above), the read-out is the target's
    softmax probability; the curves, their x axis (the levels), the per-order means and ``road`` = LeRF - MoRF."""
    net, x, t, maps = setup(b=2)
    pct = [10, 50, 70]  # 50 % of 64 pixels: 32 (a level where the count's rounding shows)
    res = ROAD(percentages=pct, noise=0.0, output="softmax")(net, x, t, maps)
    n = x.shape[-1] * x.shape[-2]
    for i in range(2):
        order = np.argsort(maps[i, 0].numpy().reshape(-1))  # ascending, no ties
        for o, ranked in (("morf", order[::-1]), ("lerf", order)):
            for j, p in enumerate(pct):
                removed = np.zeros(n, dtype=bool)
                removed[ranked[: int(n * p / 100)]] = True
                img = torch.from_numpy(linear_imputation(x[i].numpy(), removed)).float()
                want = torch.softmax(net(img[None]), 1)[0, t[i]]
                assert float(res.curves[f"road_{o}"][i, j]) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
            assert res.x_axis[f"road_{o}"].tolist() == [float(p) for p in pct]
    for o in ("morf", "lerf"):
        torch.testing.assert_close(res.scores[f"road_{o}"], res.curves[f"road_{o}"].mean(1))
    torch.testing.assert_close(res.scores["road"], res.scores["road_lerf"] - res.scores["road_morf"])
