"""Table 1 quantities: L_I/k and accuracy with the bottleneck, against direct computations."""

from __future__ import annotations

import math

import torch

from tests.test_iba_bottleneck import _iba
from xattr.methods.baselines.gradient import Gradient
from xattr.metrics.bottleneck_accuracy import BottleneckAccuracy
from xattr.models.tiny import TinyCNN


def test_initial_info_matches_closed_form_at_alpha_5():
    """With alpha = 5 everywhere (sigma-blur of a constant is the constant), lambda = sigmoid(5) and
    KL = -0.5 (1 + log (1-l)^2 - l^2 r_n^2 - (1-l)^2) per active feature, r_n = (r - mu) / max(std, 0.01)."""
    torch.manual_seed(0)
    model = TinyCNN(5).eval()
    iba = _iba(model, "conv2", beta=10.0, steps=2)
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 1, 2])
    ex = iba.explain(x, target, aux=BottleneckAccuracy.needs)
    res = BottleneckAccuracy()(model, x, target, torch.zeros(3, 1, 16, 16), **ex.aux)

    stats = iba.stats["conv2"]
    r = {}
    h = model.features[2].register_forward_hook(lambda m, i, o: r.setdefault("r", o))
    model(x)
    h.remove()
    mean, std, active = stats.mean, stats.std.clamp_min(0.01), stats.active(0.01)
    lam = 1 / (1 + math.exp(-5))
    rn = (r["r"] - mean) / std
    kl = -0.5 * (1 + math.log((1 - lam) ** 2) - (lam * rn) ** 2 - (1 - lam) ** 2) * active
    expect = kl.flatten(1).mean(1)
    assert torch.allclose(res.scores["initial_info_per_k"], expect, rtol=1e-3)
    # the plain model's accuracy, computed directly
    logits = model(x)
    assert torch.equal(res.scores["model_top1"], (logits.argmax(1) == target).float())
    # trained bottleneck: less information than the untrained one, top-k shares in [0, 1]
    assert (res.scores["info_per_k"] < res.scores["initial_info_per_k"]).all()
    for k in ("top1", "top5", "initial_top1"):
        assert ((res.scores[k] >= 0) & (res.scores[k] <= 1)).all()


def test_methods_without_bottleneck_get_only_model_scores():
    model = TinyCNN(5).eval()
    x = torch.randn(2, 3, 16, 16)
    ex = Gradient(model).explain(x, torch.tensor([0, 1]), aux=BottleneckAccuracy.needs)
    res = BottleneckAccuracy()(model, x, torch.tensor([0, 1]), torch.zeros(2, 1, 16, 16), **ex.aux)
    assert torch.isnan(res.scores["info_per_k"]).all() and torch.isfinite(res.scores["model_top5"]).all()


def test_readout_bottleneck_accuracy(tmp_path):
    """Readout rows of Table 1: finite L_I/k equal to the mean KL of the read-out's alpha; copies' top-k
    shares in [0, 1]; a fully open read-out (alpha = +5 everywhere) keeps the model's predictions."""
    import warnings

    from tests.test_iba_readout import _loader
    from xattr.methods.iba.readout import ReadoutIBA

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = TinyCNN().eval()
    rb = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], epochs=1, lr=1e-2, n_samples=24)
    rb.fit(_loader(), tmp_path)
    x = torch.randn(4, 3, 16, 16)
    target = model(x).argmax(1)
    res = BottleneckAccuracy()(model, x, target, torch.zeros(4, 1, 16, 16),
                               **rb.explain(x, target, aux=BottleneckAccuracy.needs).aux)
    _, kl, _ = rb.alpha_and_kl(x)
    assert torch.allclose(res.scores["info_per_k"], kl.flatten(1).mean(1))
    assert ((res.scores["top1"] >= 0) & (res.scores["top1"] <= 1)).all()
    assert torch.isnan(res.scores["initial_top1"]).all()
    # a fully open read-out (alpha = +5, the trained net's start) keeps the model's predictions
    rb.readout.forward = lambda feats: torch.full_like(rb.features(x)[0], 5.0)
    open_res = BottleneckAccuracy()(model, x, target, torch.zeros(4, 1, 16, 16),
                                    **rb.explain(x, target, aux=BottleneckAccuracy.needs).aux)
    assert open_res.scores["top1"].mean() > 0.9
