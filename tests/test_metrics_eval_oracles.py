"""Issue 26's oracles for the robustness and randomisation metrics (``metrics/robustness.py``,
``metrics/randomisation.py``) beside their Quantus / Captum comparisons in ``test_metrics_eval.py``, which feed
both sides the same draws: here the draws themselves (uniform in the L-inf ball, sMPRT's Gaussian scaled by the
image's range), the formulas by hand per draw (zeros of the map and of the input, copies that change the
prediction), the defaults against Captum's / Quantus' signatures and the yaml the CLI reads, the cost rules, the
public API's hand-over of the method, the layer plan, and every bad value as its whole error line."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch

import xattr
from tests.test_metrics_eval import ClassBlind, setup
from xattr.core.seeding import image_seeds
from xattr.errors import XattrConfigError
from xattr.methods.baselines.gradient import Gradient
from xattr.metrics.randomisation import (
    EfficientMPRT,
    RandomLogit,
    SmoothMPRT,
    discrete_entropies,
    discrete_entropy,
    resettable,
)
from xattr.metrics.robustness import (
    AvgSensitivity,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
)


class Square:
    """A method whose map is the squared input: its mean over noisy copies estimates ``x^2 + sigma^2``."""

    def __init__(self, model=None):
        pass

    def attribute(self, x, target):
        return (x ** 2).sum(1, keepdim=True)


def tiny(b: int = 2, s: int = 6):
    """``test_metrics_eval.setup``'s tiny CNN, inputs and targets (one channel)."""
    net, x, t, _ = setup(c=1, b=b, s=s)
    return net, x, t


def whole_line(make, line: str) -> None:
    with pytest.raises(XattrConfigError, match="^" + re.escape(line) + "$"):
        make()


# ------------------------------------------------------------------------------------------------ robustness
def test_perturbations_are_uniform_in_the_linf_ball_of_the_radius():
    """2 000 draws of 2 x 36 pixels at radius 0.3: inside [-0.3, 0.3], reaching both ends, mean 0 and variance
    r^2 / 3 (the uniform law's, Captum's default_perturb_func) within 6 standard errors; per image, the draws of
    an image do not depend on the batch it sits in."""
    r, n = 0.3, 2000
    x = torch.randn(2, 1, 6, 6)
    d = MaxSensitivity(n_samples=n, radius=r, seed=5).noise(x)
    assert d.shape == (n, 2, 1, 6, 6) and d.dtype == x.dtype
    assert d.abs().max().item() <= r and d.min().item() < -0.99 * r and d.max().item() > 0.99 * r
    m = d.double().numel()
    assert abs(d.double().mean().item()) < 6 * r / np.sqrt(3 * m)
    var = d.double().var().item()
    assert abs(var - r * r / 3) < 6 * r * r * np.sqrt(4 / 45 / m)  # Var(U^2) = 4 r^4 / 45 for U ~ U(-r, r)
    one = MaxSensitivity(n_samples=n, radius=r, seed=5).noise(x[1:])
    torch.testing.assert_close(one[:, 0], d[:, 1], rtol=0, atol=0)


@pytest.mark.parametrize("relative", [True, False])
def test_sensitivity_by_hand_per_draw_with_a_zero_map(relative):
    """With the identity map, ``||Phi(x + d) - Phi(x)|| = ||d||``: max- and average-sensitivity are the largest
    and the mean of ``||d_i|| / ||Phi(x)||`` over the draws (``relative``), or of ``||d_i||``; an all-zero map
    divides by 1 (Captum), not by 0."""
    net, x, t = tiny()
    x[1] = 0.0  # the second image's map is all zero
    method = ClassBlind()
    maps = method.attribute(x, t)
    for cls, reduce in ((MaxSensitivity, np.max), (AvgSensitivity, np.mean)):
        metric = cls(n_samples=5, radius=0.1, relative=relative, seed=3)
        d = metric.noise(x).double().numpy()  # pinned by the test above
        got = metric(net, x, t, maps, method=method).scores[metric.name].numpy()
        for i in range(2):
            norm = np.linalg.norm(maps[i].double().numpy()) if relative else 1.0
            per_draw = [np.linalg.norm(d[k, i].sum(0)) / (norm or 1.0) for k in range(5)]
            np.testing.assert_allclose(got[i], reduce(per_draw), rtol=1e-5)
        assert np.isfinite(got).all()


def _ris_by_hand(e, ep, x, xp, eps=1e-6):
    e_safe = np.where(e == 0, eps, e)
    x_safe = np.where(x == 0, eps, x)
    return np.linalg.norm((e - ep) / e_safe) / max(np.linalg.norm((x - xp) / x_safe), eps)


class Margin(torch.nn.Module):
    """Logits ``[100 + w.x, w.x]``: class 0 always; both logits change by ``w.d`` (ROS's denominator)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        s = (x.flatten(1) * self.w).sum(1)
        return torch.stack([100 + s, s], 1)


def test_relative_stability_by_hand_with_zeros_in_the_map_and_the_input():
    """RIS and ROS by hand per draw (Agarwal et al.): zeros of ``e_x`` and of ``x`` divided by ``eps_min``; no
    copy changes the prediction (a 100-logit margin), so the score is the largest ratio over the draws."""
    torch.manual_seed(1)
    x = torch.randn(1, 1, 4, 4)
    x[0, 0, 0, :2] = 0.0  # zeros in the input and (identity map) in the map
    w = torch.randn(16)
    net, method = Margin(w), ClassBlind()
    e = method.attribute(x, None)
    for metric in (RelativeInputStability(n_samples=4, radius=0.05, seed=2),
                   RelativeOutputStability(n_samples=4, radius=0.05, seed=2)):
        d = metric.noise(x)
        got = metric(net, x, torch.zeros(1), e, method=method).scores[metric.name].item()
        vals = []
        for k in range(4):
            xp = x + d[k]
            ed, epd = e.double().numpy().ravel(), method.attribute(xp, None).double().numpy().ravel()
            if isinstance(metric, RelativeInputStability):
                vals.append(_ris_by_hand(ed, epd, x.double().numpy().ravel(), xp.double().numpy().ravel()))
            else:
                num = np.linalg.norm((ed - epd) / np.where(ed == 0, 1e-6, ed))
                # both logits move by w.d: the L2 norm of the logits' change is sqrt(2) |w.d|
                vals.append(num / max(np.sqrt(2) * abs(float((w.double() * d[k].double().flatten()).sum())), 1e-6))
        assert got == pytest.approx(max(vals), rel=1e-4)


def test_relative_stability_takes_the_largest_over_the_copies_that_keep_the_prediction():
    """Some copies flip the prediction (class 1 once the first pixel rose), the rest keep it: the score is the
    largest RIS over the kept copies (by hand), not NaN and not infinite."""

    class FirstPixel(torch.nn.Module):
        def forward(self, x):
            v = x.flatten(1)[:, 0]
            return torch.stack([torch.full_like(v, 0.5), 1000 * (v - 1.0)], 1)  # class 1 iff pixel 0 > 1.0005

    x = torch.full((1, 1, 3, 3), 1.0)
    metric = RelativeInputStability(n_samples=8, radius=0.02, seed=0)
    d = metric.noise(x)
    kept = [k for k in range(8) if (x + d[k]).flatten()[0] <= 1.0005]
    assert 0 < len(kept) < 8  # both kinds among the draws
    method = ClassBlind()
    got = metric(FirstPixel(), x, torch.zeros(1), method.attribute(x, None), method=method).scores
    e = x.sum(1).double().numpy().ravel()
    expected = max(_ris_by_hand(e, (x + d[k]).sum(1).double().numpy().ravel(), x.double().numpy().ravel(),
                                (x + d[k]).double().numpy().ravel()) for k in kept)
    assert got["relative_input_stability"].item() == pytest.approx(expected, rel=1e-4)


def test_robustness_defaults_are_captums_and_quantus_and_the_clis():
    """10 draws in the L-inf ball of 0.02: Captum's ``sensitivity_max`` defaults (the docstrings say so); eps_min
    1e-6: Quantus' relative stability default; and a class built in Python equals ``xattr.metric(name)``."""
    from captum.metrics import sensitivity_max

    quantus = pytest.importorskip("quantus")
    sig = inspect.signature(sensitivity_max).parameters
    for cls in (MaxSensitivity, AvgSensitivity, RelativeInputStability, RelativeOutputStability):
        m = cls()
        assert (m.n_samples, m.radius) == (sig["n_perturb_samples"].default, sig["perturb_radius"].default)
        assert m.hparams == xattr.metric(cls.name).hparams
    for cls in (RelativeInputStability, RelativeOutputStability):
        assert cls().eps_min == inspect.signature(getattr(quantus, cls.__name__).__init__).parameters["eps_min"].default
    assert MaxSensitivity().relative is True and MaxSensitivity().seed == 0 == RelativeInputStability().seed


def test_robustness_cost_rules_and_whole_error_lines():
    """The method once per draw (sensitivity), plus one forward per draw and the clean one (stability)."""
    assert MaxSensitivity(n_samples=7).forwards_per_image((1, 4, 4), 3.0) == 21.0
    assert AvgSensitivity(n_samples=7).forwards_per_image((1, 4, 4), 3.0) == 21.0
    assert RelativeInputStability(n_samples=7).forwards_per_image((1, 4, 4), 3.0) == 29.0  # 7 x (3 + 1) + 1
    assert RelativeOutputStability(n_samples=2).forwards_per_image((1, 4, 4), 0.5) == 4.0  # 2 x 1.5 + 1
    whole_line(lambda: MaxSensitivity(n_samples=0), "bad n_samples 0; valid choices: an integer >= 1")
    whole_line(lambda: AvgSensitivity(radius=0), "bad radius 0; valid choices: a number > 0")
    whole_line(lambda: RelativeInputStability(eps_min=-1.0), "bad eps_min -1.0; valid choices: a number > 0")
    net, x, t = tiny()
    whole_line(lambda: MaxSensitivity()(net, x, t, x), "missing extra 'method'; valid choices: the run's "
               "Attribution (the engine passes it)")


def test_the_public_api_hands_the_method_to_the_metrics_that_rerun_it():
    """``xattr.evaluate(..., method=m)`` passes ``m`` to each metric that declares it (``needs``), and the
    rebuilding factory to the randomisation checks: the scores equal the direct calls'."""
    net, x, t = tiny(s=8)
    method = Gradient(net, reduce="sum")
    maps = method.attribute(x, t)
    factory = lambda m: Gradient(m, reduce="sum")  # noqa: E731
    zoo = xattr.load_model(net)  # wrapped once (each evaluate of a bare module would wrap it again)
    for metric, key, extras in ((MaxSensitivity(n_samples=2), "max_sensitivity", dict(method=method)),
                                (RelativeOutputStability(n_samples=2), "relative_output_stability", dict(method=method)),
                                (RandomLogit(), "random_logit", dict(method=method)),
                                (EfficientMPRT(), "efficient_mprt", dict(method_factory=factory)),
                                (SmoothMPRT(n_samples=2, layers=["fc"]), "smooth_mprt", dict(method_factory=factory))):
        df = xattr.evaluate(zoo, x, maps, target=t, metrics=[metric], method=method)
        direct = metric(net, x, t, maps, **extras).scores[key].numpy()
        np.testing.assert_allclose(df[f"{metric.name}/{key}"].to_numpy(), direct, rtol=1e-5)
    # the randomisation checks rebuild a plain method themselves when only the method is given (no factory)
    for metric in (EfficientMPRT(), SmoothMPRT(n_samples=2, layers=["fc"])):
        by_method = metric(net, x, t, maps, method=method).scores[metric.name]
        torch.testing.assert_close(by_method, metric(net, x, t, maps, method_factory=factory).scores[metric.name])


# --------------------------------------------------------------------------------------------- randomisation
def test_the_layer_plan_bottom_up_top_down_and_a_subset_in_order():
    """Quantus' layer list (modules with ``reset_parameters``, definition order) or its reverse; a subset keeps
    the plan's order whatever the order given; an unknown layer and an unknown order are whole error lines."""
    net, _, _ = tiny()
    every = resettable(net)
    assert every == ["features.0", "features.2", "features.5", "fc"]
    assert EfficientMPRT().plan(net) == every
    assert EfficientMPRT(layer_order="top_down").plan(net) == every[::-1]
    assert EfficientMPRT(layers=["fc", "features.0"]).plan(net) == ["features.0", "fc"]
    assert SmoothMPRT(layers=["features.0", "fc"], layer_order="top_down").plan(net) == ["fc", "features.0"]
    whole_line(lambda: EfficientMPRT(layer_order="sideways"),
               "unknown layer_order 'sideways'; valid choices: bottom_up, top_down")
    with pytest.raises(XattrConfigError, match=re.escape("unknown layer with reset_parameters 'features.1'; valid "
                                                         "choices: features.0, features.2, features.5, fc")):
        EfficientMPRT(layers=["features.1"]).plan(net)


def test_top_down_randomisation_resets_the_last_module_first_with_the_seed_plus_one():
    """The cascade's first step top-down resets only ``fc``, with ``torch.manual_seed(seed + 1)`` before it (as
    Quantus): the copy's fc equals a fresh reset under that seed, the convolutions are the original's."""
    net, _, _ = tiny()
    path, copy_ = next(iter(EfficientMPRT(layer_order="top_down", seed=7).randomised(net)))
    assert path == "fc"
    torch.manual_seed(8)
    fresh = torch.nn.Linear(16, 3)
    assert torch.equal(copy_.fc.weight, fresh.weight) and torch.equal(copy_.fc.bias, fresh.bias)
    assert torch.equal(copy_.features[0].weight, net.features[0].weight)


def test_random_logit_by_hand_with_a_smaller_window_and_its_other_class():
    """SSIM (scikit-image, the maps' joint range) of the map for the target and for the other class, at
    ``win_size`` 3; the other class is uniform over the classes but the target (never the target, each of the
    others drawn over many images)."""
    from skimage.metrics import structural_similarity

    net, x, t = tiny(s=12, b=2)
    method = Gradient(net, reduce="sum")
    maps = method.attribute(x, t)
    metric = RandomLogit(win_size=3)
    other = metric.other_class(x, t, 3)
    got = metric(net, x, t, maps, method=method).scores["random_logit"].numpy()
    b = method.attribute(x, other)
    for i in range(2):
        p, q = maps[i, 0].double().numpy(), b[i, 0].double().numpy()
        rng = max(p.max(), q.max()) - min(p.min(), q.min())
        assert got[i] == pytest.approx(structural_similarity(p, q, win_size=3, data_range=rng), abs=1e-6)
    many = torch.randn(300, 1, 2, 2)
    target = torch.randint(0, 4, (300,))
    drawn = RandomLogit().other_class(many, target, 4)
    assert (drawn != target).all() and set(drawn.tolist()) == {0, 1, 2, 3}
    counts = np.bincount(drawn[target == 0].numpy(), minlength=4)
    assert counts[0] == 0 and counts[1:].min() > 0.2 * counts.sum()  # uniform over the 3 others (~1/3 each)


def test_randomisation_defaults_are_quantus_and_the_clis_and_whole_error_lines():
    """sMPRT: 50 samples, noise 0.1, bottom-up, seed 42; eMPRT: bottom-up, seed 42, 100 bins (Quantus'
    ``discrete_entropy`` default); a class built in Python equals ``xattr.metric(name)``."""
    quantus = pytest.importorskip("quantus")
    q = {k: v.default for k, v in inspect.signature(quantus.SmoothMPRT.__init__).parameters.items()}
    s = SmoothMPRT()
    assert (s.n_samples, s.noise_magnitude, s.layer_order, s.seed) == (q["nr_samples"], q["noise_magnitude"],
                                                                       q["layer_order"], q["seed"])
    q = {k: v.default for k, v in inspect.signature(quantus.EfficientMPRT.__init__).parameters.items()}
    e = EfficientMPRT()
    assert (e.layer_order, e.seed, e.n_bins) == (q["layer_order"], q["seed"], 100)
    a = np.random.default_rng(0).standard_normal(500)
    from quantus.functions.complexity_func import discrete_entropy as quantus_entropy

    assert discrete_entropy(a) == pytest.approx(quantus_entropy(a, a), abs=1e-12)  # its default n_bins
    assert discrete_entropies(a[None])[0] == pytest.approx(quantus_entropy(a, a), abs=1e-12)
    assert RandomLogit().win_size == 7 and RandomLogit().seed == 0
    for cls in (SmoothMPRT, EfficientMPRT, RandomLogit):
        assert cls().hparams == xattr.metric(cls.name).hparams
    whole_line(lambda: RandomLogit(win_size=0), "bad win_size 0; valid choices: an integer >= 1")
    whole_line(lambda: SmoothMPRT(n_samples=0), "bad n_samples 0; valid choices: an integer >= 1")
    whole_line(lambda: SmoothMPRT(noise_magnitude=0), "bad noise_magnitude 0; valid choices: a number > 0")
    whole_line(lambda: EfficientMPRT(n_bins=0), "bad n_bins 0; valid choices: an integer >= 1")
    net, x, t = tiny()
    whole_line(lambda: RandomLogit()(net, x, t, x), "missing extra 'method'; valid choices: the run's Attribution")


def test_randomisation_cost_rules():
    """Random logit: the method once more and one forward; sMPRT: the smoothed method on the original and after
    each layer (``layers: null`` taken as 10 without the model); eMPRT: the method once."""
    assert RandomLogit().forwards_per_image((1, 4, 4), 3.0) == 4.0
    assert SmoothMPRT(n_samples=5, layers=["a", "b"]).forwards_per_image((1, 4, 4), 2.0) == 30.0  # 3 x 5 x 2
    assert SmoothMPRT(n_samples=5).forwards_per_image((1, 4, 4), 2.0) == 110.0  # 11 x 5 x 2
    assert EfficientMPRT().forwards_per_image((1, 4, 4), 2.5) == 2.5


def test_smooth_mprt_noise_by_hand_and_its_scale():
    """sMPRT's smoothing written out from its definition: ``n - 1`` copies ``x + N(0, (0.1 (max x - min x))^2)``
    (per-image torch generators seeded from the image, float64 draws) and the clean input last, the maps
    averaged, then absolute. And the scale without the code's draws: with the squared-input map the average over
    400 copies is ``x^2 + sigma^2 (n - 1) / n`` up to Monte-Carlo error, sigma = 0.1 x the image's range."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 3, 3) * torch.tensor([2.0, 5.0])[:, None, None, None] + 1.0  # ranges ~2 and ~5, min > 0
    metric = SmoothMPRT(n_samples=4, seed=9)
    method = ClassBlind()
    got = metric.smoothed(method, x, None)
    gens = [torch.Generator().manual_seed(s) for s in image_seeds(x, 9)]
    total = np.zeros((2, 9))
    for k in range(4):
        for i in range(2):
            sigma = 0.1 * (x[i].max() - x[i].min()).double()
            eps = torch.zeros(1, 3, 3, dtype=torch.float64) if k == 3 else torch.randn(
                (1, 3, 3), generator=gens[i], dtype=torch.float64) * sigma
            total[i] += (x[i].double() + eps).sum(0).numpy().ravel() / 4
    np.testing.assert_allclose(got, np.abs(total), rtol=1e-6)
    n = 400
    sq = SmoothMPRT(n_samples=n, seed=1).smoothed(Square(), x, None)
    for i in range(2):
        sigma2 = (0.1 * (x[i].max() - x[i].min()).item()) ** 2
        excess = sq[i] - (x[i, 0].double() ** 2).numpy().ravel()
        # each pixel: mean of n - 1 terms 2 x eps + eps^2 (sd ~ 2 x sigma), averaged over 9 pixels
        se = 2 * x[i].abs().max().item() * np.sqrt(sigma2) / np.sqrt(9 * (n - 1)) + np.sqrt(2 / (9 * n)) * sigma2
        assert abs(excess.mean() - sigma2 * (n - 1) / n) < 5 * se


def test_smooth_mprt_curve_has_one_point_per_randomised_layer():
    """The curve's x axis counts the layers randomised so far: 1, 2, ..., L (four modules of the tiny CNN)."""
    net, x, t = tiny(s=8)
    res = SmoothMPRT(n_samples=1)(net, x, t, x, method_factory=lambda m: Gradient(m, reduce="sum"))
    assert res.curves["smooth_mprt"].shape == (2, 4)
    torch.testing.assert_close(res.x_axis["smooth_mprt"], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_discrete_entropies_on_exact_fractions_and_no_rows():
    """Rows of exact thirds, where the scaled bin index of a value on an edge lands one bin off and
    ``np.histogram``'s edge comparisons move it back (either correction left out gives another histogram);
    an empty batch gives an empty result."""
    for a, bins in ((np.arange(-16, -6) / 3, 3), (np.arange(-60, -56) / 3, 3)):
        assert discrete_entropies(a[None], bins)[0] == discrete_entropy(a, bins)
        hist = np.histogram(a, bins=bins)[0]
        import scipy.stats

        assert discrete_entropies(a[None], bins)[0] == scipy.stats.entropy(hist)
    assert discrete_entropies(np.zeros((0, 5))).shape == (0,)


def test_evaluate_refits_a_method_that_needs_fitting_on_each_randomised_copy():
    """eMPRT of Per-Sample IBA through ``xattr.evaluate(..., method=iba, fit_data=x)``: the API hands the metric
    a factory that rebuilds and re-fits the bottleneck's statistics on the randomised copy (the method alone
    cannot be rebuilt: it needs fit); the score equals the direct call with that factory written out."""
    from xattr.methods.iba.per_sample import PerSampleIBA as IBA

    net, x, t = tiny(s=8, b=2)
    kw = dict(layer="features.2", steps=2, copies=2, n_samples=4)

    def fitted(model):
        m = IBA(model, **kw)
        xattr.fit(m, x)
        return m

    iba = fitted(net)
    maps = iba.attribute(x, t)
    metric = EfficientMPRT(layers=["fc"])
    df = xattr.evaluate(net, x, maps, target=t, metrics=[metric], method=iba, fit_data=x)
    direct = metric(net, x, t, maps, method_factory=fitted).scores["efficient_mprt"].numpy()
    np.testing.assert_allclose(df["efficient_mprt/efficient_mprt"].to_numpy(), direct, rtol=1e-5)
    with pytest.raises(XattrConfigError, match="needs fit"):
        metric(net, x, t, maps, method=iba)  # no factory: the fitted method cannot be rebuilt as it is
