"""Table 1 quantities: L_I/k and accuracy with the bottleneck, against direct computations."""

from __future__ import annotations

import math

import torch
from torch import nn

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
    """Readout rows of Table 1: finite L_I/k (its value at a constant alpha: the closed-form test); copies' top-k
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
    assert torch.isfinite(res.scores["info_per_k"]).all()  # its value: the closed-form test below
    assert ((res.scores["top1"] >= 0) & (res.scores["top1"] <= 1)).all()
    assert torch.isnan(res.scores["initial_top1"]).all()
    # a fully open read-out (alpha = +5, the trained net's start) keeps the model's predictions
    rb.readout.forward_parts = lambda parts, size: torch.full_like(rb.features(x)[0], 5.0)
    open_res = BottleneckAccuracy()(model, x, target, torch.zeros(4, 1, 16, 16),
                                    **rb.explain(x, target, aux=BottleneckAccuracy.needs).aux)
    assert open_res.scores["top1"].mean() > 0.9


def _closed_form_info_per_k(model, module, x, stats, alpha, min_std=0.01, active_threshold=0.01):
    """Eq. 5 written out per image at a constant alpha (sigma-blur of a constant is the constant):
    mean over (C, h, w) of -0.5 (1 + log (1-l)^2 - (l r_n)^2 - (1-l)^2) on the active features."""
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.setdefault("r", o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    lam = 1.0 / (1.0 + math.exp(-alpha))
    out = []
    for i in range(x.shape[0]):  # one image at a time, from the equation
        rn = (got["r"][i] - stats.mean) / stats.std.clamp_min(min_std)
        kl = -0.5 * (1 + math.log((1 - lam) ** 2) - (lam * rn) ** 2 - (1 - lam) ** 2)
        out.append((kl * stats.active(active_threshold)).mean())
    return torch.stack(out)


def test_per_sample_info_per_k_closed_form_at_a_constant_alpha():
    """With a learning rate of 1e-9 alpha stays at init_alpha = 1.5: L_I/k of the last pass and of the first
    both equal eq. 5's closed form at lambda = sigmoid(1.5)."""
    torch.manual_seed(0)
    model = TinyCNN(10).eval()
    iba = _iba(model, "conv2", beta=10.0, steps=2, lr=1e-9, init_alpha=1.5)
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 4, 9])
    ex = iba.explain(x, target, aux=BottleneckAccuracy.needs)
    expect = _closed_form_info_per_k(model, model.features[2], x, iba.stats["conv2"], 1.5)
    torch.testing.assert_close(ex.aux["bottleneck/info_per_k"], expect, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ex.aux["bottleneck/initial_info_per_k"], expect, rtol=1e-4, atol=1e-6)


def test_readout_info_per_k_closed_form_at_a_constant_alpha():
    """A read-out that outputs alpha = 0.7 everywhere: Readout IBA's L_I/k is eq. 5's closed form at
    lambda = sigmoid(0.7), and its map's total is the summed KL in bits (to_bits_map keeps the mass)."""
    import warnings

    from tests.test_iba_variants import _fit
    from xattr.methods.iba.readout import ReadoutIBA

    torch.manual_seed(0)
    model = TinyCNN(10).eval()
    rb = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], copies=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(rb, rb.layers)

    class Constant(nn.Module):
        def forward(self, feats):
            return torch.full((feats.shape[0], 16, *feats.shape[-2:]), 0.7)

        def forward_parts(self, parts, size):  # the read-out's own path (ReadoutNet.forward_parts)
            return torch.full((parts[0].shape[0], 16, *size), 0.7)

    rb.readout = Constant()
    x = torch.randn(4, 3, 16, 16)
    target = torch.tensor([0, 3, 5, 9])
    ex = rb.explain(x, target, aux=BottleneckAccuracy.needs)
    expect = _closed_form_info_per_k(model, model.features[2], x, rb.stats["conv2"], 0.7)
    torch.testing.assert_close(ex.aux["bottleneck/info_per_k"], expect, rtol=1e-4, atol=1e-6)
    k = rb.stats["conv2"].mean.numel()
    torch.testing.assert_close(rb.attribute(x, target).sum((1, 2, 3)), expect * k / math.log(2), rtol=1e-3, atol=1e-4)


def test_top5_hand_case_on_ten_classes():
    """Ten classes, logits 9, 8, ..., 0 for classes 0..9: target 4 is 5th (in the top 5), target 5 is 6th
    (not); the model's own top-5 and the bottleneck copies' top-5 share by hand."""
    from xattr.methods.iba.per_sample import bottleneck_scores

    class Fixed(nn.Module):
        num_classes = 10

        def forward(self, x):
            return torch.arange(9.0, -1.0, -1.0).expand(x.shape[0], 10) + 0 * x.sum()

    x = torch.zeros(4, 3, 4, 4)
    target = torch.tensor([0, 4, 5, 9])
    res = BottleneckAccuracy()(Fixed(), x, target, torch.zeros(4, 1, 4, 4))
    assert res.scores["model_top1"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert res.scores["model_top5"].tolist() == [1.0, 1.0, 0.0, 0.0]
    # 2 images x 4 noisy copies x 10 classes: the target's rank in each copy
    out = torch.zeros(2, 4, 10)
    ranks = [[0, 4, 5, 9], [1, 0, 0, 7]]  # rank of the target class (0 = top) per copy
    target = torch.tensor([3, 8])
    for b in range(2):
        for c in range(4):
            others = [k for k in range(10) if k != int(target[b])]
            order = others[: ranks[b][c]] + [int(target[b])] + others[ranks[b][c]:]
            for rank, cls in enumerate(order):
                out[b, c, cls] = 10.0 - rank
    kl = torch.zeros(2, 2, 3, 3)
    from xattr.methods.iba.bottleneck import AlphaResult

    s = bottleneck_scores(AlphaResult(alpha=kl, kl=kl, outputs=out, losses=kl[:0, :, 0, 0], info=kl[:0, :, 0, 0]), target)
    assert s["top1"].tolist() == [0.25, 0.5]  # rank 0: one of four copies; two of four
    assert s["top5"].tolist() == [0.5, 0.75]  # ranks 0 and 4 of {0, 4, 5, 9}; 1, 0, 0 of {1, 0, 0, 7}


def test_needs_are_the_keys_the_methods_emit_and_one_forward_is_counted():
    """The metric's ``needs`` are the auxiliaries Per-Sample IBA emits (an engine passes only those);
    ``initial=False`` keeps the three trained-bottleneck scores as given; the model runs once (its stated
    cost), counted by a hook; its name is its config option."""
    from pathlib import Path

    torch.manual_seed(0)
    model = TinyCNN(10).eval()
    iba = _iba(model, "conv2", steps=1, copies=2)
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    aux = iba.explain(x, target, aux=BottleneckAccuracy.needs).aux
    assert set(BottleneckAccuracy.needs) == {k for k in aux if k.startswith("bottleneck/")}
    metric = BottleneckAccuracy(initial=False)
    calls = []
    h = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    res = metric(model, x, target, torch.zeros(2, 1, 16, 16), **{k: aux[k] for k in BottleneckAccuracy.needs})
    h.remove()
    assert set(res.scores) == {"model_top1", "model_top5", "info_per_k", "top1", "top5"}
    for k in ("info_per_k", "top1", "top5"):
        assert torch.equal(res.scores[k], aux[f"bottleneck/{k}"].float())
    assert len(calls) == metric.forwards_per_image((3, 16, 16), 0.0) == 1
    conf = Path(__file__).resolve().parents[1] / "conf" / "metric" / f"{BottleneckAccuracy.name}.yaml"
    assert conf.is_file()
