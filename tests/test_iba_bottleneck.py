"""The bottleneck of IBA: closed-form KL, smoothing, bits maps, alpha = 5, batched == one at a time,
the half-ignored input, hooks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xattr.core.hooks import hook_count
from xattr.errors import XattrConfigError
from xattr.methods.iba import bottleneck as bnm
from xattr.methods.iba import statistics as st
from xattr.methods.iba.per_sample import PerSampleIBA
from xattr.methods.iba.tail import NetworkTail
from xattr.models.tiny import TinyCNN


def _stats(model, layers, n=64, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    loader = [{"x": torch.randn(16, 3, size, size, generator=g)} for _ in range(n // 16)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return st.estimate(model, layers, loader, n_samples=n)


def _iba(model, layer, size=16, **kw):
    iba = PerSampleIBA(model, layer, **kw)
    iba.set_statistics(_stats(model, [layer], size=size))
    return iba


class HalfIgnoring(nn.Module):
    """conv + ReLU (``feat``), then the right half of the feature map is multiplied by 0, then a head."""

    def __init__(self, k: int = 4, size: int = 16) -> None:
        super().__init__()
        mask = torch.ones(1, 1, size, size)
        mask[..., size // 2 :] = 0
        self.register_buffer("mask", mask)
        self.feat = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, k))
        self.num_classes = k

    def forward(self, x):
        return self.head(self.feat(x) * self.mask)


class Residual(nn.Module):
    """A skip connection around the bottleneck layer (the fx tail must carry the pre-layer value)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
        self.num_classes = 5

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.out(torch.relu(self.inner(s)) + s)


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    mean, std = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.5, 0.5, 2.0])
    r = torch.tensor([1.0, -0.2, 5.0])
    for lam_v in (0.1, 0.5, 0.9):
        lam = torch.full((3,), lam_v)
        p = torch.distributions.Normal(lam * r + (1 - lam) * mean, (1 - lam) * std)
        q = torch.distributions.Normal(mean, std)
        z = p.sample((400_000,))
        mc = (p.log_prob(z) - q.log_prob(z)).mean(0)
        closed = bnm.kl_divergence(r, lam, mean, std)
        assert torch.allclose(closed, mc, rtol=0.02, atol=0.01), (lam_v, closed, mc)
    # lambda -> 0: z is pure prior noise, no information
    assert bnm.kl_divergence(r, torch.zeros(3), mean, std).abs().max() < 1e-6


def test_sample_is_eq2_and_inverse_swaps_roles():
    bn = bnm.Bottleneck(torch.full((2, 1, 1), 1.0), torch.full((2, 1, 1), 2.0), sigma=0)
    r, lam, eps = torch.full((1, 2, 1, 1), 3.0), torch.full((1, 2, 1, 1), 0.25), torch.full((1, 2, 1, 1), 0.5)
    noise = 1.0 + 2.0 * 0.5
    assert torch.allclose(bn.sample(r, lam, eps), torch.full_like(r, 0.25 * 3 + 0.75 * noise))
    assert torch.allclose(bn.sample(r, lam, eps, inverse=True), torch.full_like(r, 0.25 * noise + 0.75 * 3))
    relu = bnm.Bottleneck(torch.zeros(2, 1, 1), torch.ones(2, 1, 1), sigma=0, relu=True)
    assert relu.sample(torch.full((1, 2, 1, 1), -5.0), torch.ones(1, 2, 1, 1), eps).min() == 0
    inactive = bnm.Bottleneck(torch.zeros(2, 1, 1), torch.ones(2, 1, 1), active=torch.tensor([1.0, 0.0]).view(2, 1, 1))
    assert inactive.kl(r, lam)[0, 1].abs().max() == 0 and inactive.sample(r, lam, eps)[0, 1].abs().max() == 0


def test_std_floor_and_smoothing_kernel():
    bn = bnm.Bottleneck(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), min_std=0.01)
    assert torch.all(bn.std == 0.01)
    k = bnm.gaussian_kernel(1.0)
    assert k.shape == (5, 5) and math.isclose(float(k.sum()), 1.0, rel_tol=1e-6)
    assert torch.allclose(k[2, 2] / k[2, 3], torch.tensor(math.exp(0.5)), rtol=1e-5)
    s = bnm.Smoothing(1.0)
    const = torch.full((2, 3, 7, 7), 0.3)
    assert torch.allclose(s(const), const, atol=1e-6)  # reflection padding keeps constants
    assert torch.allclose(s(torch.full((1, 1, 2, 2), 0.5)), torch.full((1, 1, 2, 2), 0.5))  # tiny map


def test_bits_map_is_channel_sum_over_ln2_scaled():
    kl = torch.rand(2, 5, 4, 4)
    m = bnm.to_bits_map(kl, (4, 4))
    assert torch.allclose(m, kl.sum(1, keepdim=True) / math.log(2))
    const = torch.full((1, 3, 4, 4), 2.0)
    up = bnm.to_bits_map(const, (16, 16))
    assert up.shape == (1, 1, 16, 16)
    assert torch.allclose(up, torch.full_like(up, 3 * 2.0 / math.log(2) * 16 / 256))
    # total bits are preserved by the (h w)/(H W) scaling
    assert math.isclose(float(up.sum()), float(const.sum() / math.log(2)), rel_tol=1e-5)


def test_alpha_5_keeps_logits():
    model = TinyCNN(num_classes=6).eval()
    x = torch.randn(3, 3, 16, 16)
    iba = _iba(model, "conv2")
    bn = iba.bottleneck("conv2")
    tail = NetworkTail(model, "conv2", x)
    res = bnm.optimize_alpha(tail, tail.r, bn, bnm.cross_entropy_loss(torch.zeros(3, dtype=torch.long)),
                             steps=1, lr=0.0, copies=4, init_alpha=5.0)
    plain = model(x).detach()
    scale = plain.abs().max()
    assert (res.outputs - plain[:, None]).abs().max() < 0.05 * scale
    # while a low alpha destroys them
    res0 = bnm.optimize_alpha(tail, tail.r, bn, bnm.cross_entropy_loss(torch.zeros(3, dtype=torch.long)),
                              steps=1, lr=0.0, copies=4, init_alpha=-5.0)
    assert (res0.outputs - plain[:, None]).abs().max() > 5 * (res.outputs - plain[:, None]).abs().max()


def test_batched_equals_one_at_a_time():
    model = TinyCNN(num_classes=5).eval()
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([1, 4, 0])
    iba = _iba(model, "conv2", steps=4, copies=3)
    together = iba.attribute(x, target)
    single = torch.cat([iba.attribute(x[i : i + 1], target[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, single, rtol=1e-4, atol=1e-6)
    chunked = _iba(model, "conv2", steps=4, copies=3, chunk=6).attribute(x, target)  # 2 images per call
    assert torch.allclose(together, chunked, rtol=1e-4, atol=1e-6)
    # reversed batch order: same map per image
    rev = iba.attribute(x.flip(0), target.flip(0)).flip(0)
    assert torch.allclose(together, rev, rtol=1e-4, atol=1e-6)
    # the noisy outputs are seed-identical too, and another seed changes them
    out = iba.optimize(x, target).outputs
    assert torch.allclose(out[1:2], iba.optimize(x[1:2], target[1:2]).outputs, rtol=1e-4, atol=1e-5)
    other = _iba(model, "conv2", steps=4, copies=3, seed=7).optimize(x, target).outputs
    assert not torch.allclose(out, other)


def test_fx_tail_equals_hook_tail_with_skip_connection():
    model = Residual().eval()
    x = torch.randn(2, 3, 8, 8)
    fx_tail = NetworkTail(model, "inner", x, "fx")
    hook_tail = NetworkTail(model, "inner", x, "hook")
    assert fx_tail.mode == "fx" and len(fx_tail.pre) == 1  # the skip value is computed once
    z = torch.randn(6, 8, 8, 8)
    assert torch.allclose(fx_tail(z), hook_tail(z), atol=1e-5)
    a = _iba(model, "inner", size=8, steps=3, copies=3, tail="fx").attribute(x, torch.tensor([0, 1]))
    b = _iba(model, "inner", size=8, steps=3, copies=3, tail="hook").attribute(x, torch.tensor([0, 1]))
    with pytest.raises(XattrConfigError, match="statistics"):
        _iba(model, "inner", size=16).attribute(x, torch.tensor([0, 1]))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


class ViewsByBatchSize(nn.Module):
    """``x.view(x.size(0), -1)`` after the layer, as EfficientNet-lite's head: the traced batch size must
    follow the noisy copies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        return self.fc(torch.relu(self.inner(torch.relu(self.conv(x)))).view(b, -1))


def test_fx_tail_scales_the_batch_size_read_from_the_input():
    model = ViewsByBatchSize().eval()
    x = torch.randn(2, 3, 8, 8)
    fx_tail = NetworkTail(model, "inner", x, "fx")
    hook_tail = NetworkTail(model, "inner", x, "hook")
    assert fx_tail.mode == "fx"
    z = torch.randn(6, 4, 8, 8)  # 3 copies of 2 images
    assert torch.allclose(fx_tail(z), hook_tail(z), atol=1e-5)


@pytest.mark.parametrize("make,layer,mode", [(Residual, "inner", "fx"), (ViewsByBatchSize, "inner", "fx"),
                                             (Residual, "inner", "hook")])
def test_a_tail_moved_to_another_batch_equals_a_tail_built_on_it(make, layer, mode):
    """``for_input`` (one split, many batches: the read-out's training) gives the tail a fresh split on the
    new batch would: its ``r``, the skip value and the batch size read from the input (3 images after 2)."""
    torch.manual_seed(0)
    model = make().eval()
    first, second = torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8)
    moved = NetworkTail(model, layer, first, mode).for_input(second)
    fresh = NetworkTail(model, layer, second, mode)
    assert moved.mode == fresh.mode == mode
    torch.testing.assert_close(moved.r, fresh.r, rtol=0, atol=0)
    z = torch.randn(6, *fresh.r.shape[1:])  # 2 copies of the 3 images
    torch.testing.assert_close(moved(z), fresh(z), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(moved(moved.r), model(second), rtol=1e-4, atol=1e-5)
    given = NetworkTail(model, layer, first, mode).for_input(second, fresh.r.clone())  # r known: the same tail
    torch.testing.assert_close(given(z), fresh(z), rtol=1e-6, atol=1e-6)


def test_a_sequential_tail_given_r_runs_no_forward():
    """``for_input(x, r)`` on a tail that needs nothing from before the layer but ``r`` (TinyCNN at conv2): no
    forward of the network; the same outputs as a split built on the new batch."""
    torch.manual_seed(0)
    model = TinyCNN(num_classes=4).eval()
    first, second = torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)
    tail = NetworkTail(model, "conv2", first)
    fresh = NetworkTail(model, "conv2", second)
    calls = []
    handle = model.features[0].register_forward_hook(lambda *a: calls.append(1))  # conv1
    try:
        tail.for_input(second, fresh.r.clone())
    finally:
        handle.remove()
    assert calls == [] and tail.mode == "fx"
    z = torch.randn(6, *fresh.r.shape[1:])
    torch.testing.assert_close(tail(z), fresh(z), rtol=1e-6, atol=1e-6)


def test_heatmap_in_bits_and_ignored_half_gets_near_zero():
    torch.manual_seed(0)
    model = HalfIgnoring().eval()
    x = torch.randn(2, 3, 16, 16)
    iba = _iba(model, "feat", steps=10, copies=5, sigma=0.0, beta=1e-3)
    maps = iba.attribute(x, torch.tensor([0, 2]))
    assert maps.shape == (2, 1, 16, 16) and torch.all(maps >= 0)
    res = iba.optimize(x, torch.tensor([0, 2]))
    assert torch.allclose(iba.attribute(x, torch.tensor([0, 2])),
                          res.kl.sum(1, keepdim=True) / math.log(2))  # same size: bits = channel sum / ln 2
    left, right = maps[..., :8].mean(), maps[..., 8:].mean()
    assert right < 0.02 * left, (left, right)
    assert right < 0.05  # bits per pixel


def test_hooks_removed_and_grad_flags_restored_also_on_error():
    model = TinyCNN(num_classes=5).eval()
    x = torch.randn(2, 3, 16, 16)
    for mode in ("fx", "hook"):
        iba = _iba(model, "conv2", steps=2, copies=2, tail=mode)
        iba.attribute(x, torch.tensor([0, 1]))
        assert hook_count(model) == 0
        assert all(p.requires_grad for p in model.parameters())
    broken = TinyCNN(num_classes=5).eval()
    iba = _iba(broken, "conv2", steps=2, copies=2, tail="hook")
    broken.fc.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        iba.attribute(x, torch.tensor([0, 1]))
    assert len(broken.fc._forward_pre_hooks) == 1 and not broken.features[2]._forward_hooks
    assert all(p.requires_grad for p in broken.parameters())


def test_bad_input_raises_clear_errors():
    model = TinyCNN().eval()
    with pytest.raises(XattrConfigError, match="valid choices"):
        PerSampleIBA(model, "conv9")
    with pytest.raises(XattrConfigError, match="autocast"):
        PerSampleIBA(model, "conv2", autocast="int4")
    with pytest.raises(XattrConfigError, match="fit"):
        PerSampleIBA(model, "conv2").attribute(torch.randn(1, 3, 16, 16), torch.tensor([0]))


@pytest.mark.parametrize("sigma", [0.4, 1.0, 1.5, 2.0])
def test_smoothing_equals_scipys_gaussian_filter(sigma):
    """Eq. 7's blur against an independent library: ``scipy.ndimage.gaussian_filter`` with the reference's
    radius ``round(2 sigma)`` (``truncate = radius / sigma``) and torch's ``reflect`` padding (scipy's
    ``mirror``: d c b | a b c d); a map no larger than the radius is padded by replication (scipy's
    ``nearest``). Issue 26's mutation run: sigma 1 alone let ``2 / sigma``, ``t**3`` and ``sigma**3`` live."""
    from scipy.ndimage import gaussian_filter

    radius = int(round(2 * sigma))
    g = torch.Generator().manual_seed(1)
    for size, mode in ((9, "mirror"), (radius, "nearest")):
        m = torch.rand(2, 3, size, size, generator=g, dtype=torch.float64)
        want = [[gaussian_filter(m[b, c].numpy(), sigma, mode=mode, truncate=radius / sigma) for c in range(3)]
                for b in range(2)]
        got = bnm.Smoothing(sigma)(m.float())
        torch.testing.assert_close(got, torch.tensor(np.array(want), dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_bottleneck_defaults_are_the_papers():
    """Defaults of :class:`Bottleneck` by hand: sigma 1 (the paper's smoothing), no ReLU clamp, std floored at
    0.01; no smoothing for sigma 0 or None; the kernel is not saved in a state dict (it is derived)."""
    bn = bnm.Bottleneck(torch.zeros(1, 3, 3), torch.full((1, 3, 3), 0.001))
    assert bn.smooth.sigma == 1.0 and bn.relu is False and torch.all(bn.std == 0.01)
    lam = torch.ones(1, 1, 3, 3)
    assert bn.sample(torch.full((1, 1, 3, 3), -2.0), lam, torch.zeros(1, 1, 3, 3)).max() == -2.0
    m = torch.rand(1, 1, 3, 3)
    for s in (0, None):
        assert torch.equal(bnm.Smoothing(s)(m), m)
    assert "kernel" not in bnm.Smoothing(1.0).state_dict() and bnm.Smoothing(1.0).state_dict() == {}


def test_kl_at_lambda_one_uses_the_variance_floor():
    """lam = 1 (sigmoid rounding): var_z = 0 is floored at 1e-12, KL = -0.5 (1 + ln 1e-12 - r_n^2) (finite)."""
    r_n = 2.0
    kl = bnm.kl_divergence(torch.tensor([1.0 + 0.5 * r_n]), torch.ones(1), torch.tensor([1.0]), torch.tensor([0.5]))
    assert kl.item() == pytest.approx(-0.5 * (1 + math.log(1e-12) - r_n**2), rel=1e-6)


def test_optimisation_defaults_are_eq6s_and_first_pass_fields_default_to_none():
    """Eq. 6's settings by hand (Schulz et al. sec. 3: beta 10 (/k, see the module docstring), Adam lr 1, 10
    steps, 10 noisy copies, alpha initialised to 5); an :class:`AlphaResult` built without the first pass
    (Readout's) has ``first_kl = first_outputs = None``, and so has a concatenation of such results."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(bnm.optimize_alpha).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert {k: defaults[k] for k in ("beta", "steps", "lr", "copies", "init_alpha", "inverse")} == \
        {"beta": 10.0, "steps": 10, "lr": 1.0, "copies": 10, "init_alpha": 5.0, "inverse": False}
    t = torch.zeros(1, 2)
    part = bnm.AlphaResult(alpha=t, kl=t, outputs=t, losses=t, info=t)
    assert part.first_kl is None and part.first_outputs is None
    both = bnm.AlphaResult.cat([part, part])
    assert both.first_kl is None and both.first_outputs is None and both.losses.shape == (1, 4)


@pytest.mark.parametrize("inverse,copies", [(False, 3), (True, 1)])
def test_one_step_of_eq6_by_hand(inverse, copies):
    """One step of :func:`optimize_alpha` against a per-image loop written from the paper: eq. 2's ``z`` (Inverse
    IBA: ``lam eps' + (1 - lam) r``) with the noise each image's generator draws, the tail's outputs, eq. 6's
    ``L_CE + beta mean KL`` (Inverse: ``-L_CE + ...``), the closed-form KL, and Adam's first step
    ``alpha - lr g / (|g| + 1e-8)`` (bias-corrected moments are g and g^2). Issue 26's mutation run: the
    sign of the Inverse loss, the sign of the cross-entropy and autocast left on without a dtype all survived."""
    b, c, h, w, k, beta, lr, a0 = 2, 3, 2, 2, 4, 0.5, 0.7, 1.5
    g = torch.Generator().manual_seed(5)
    r = torch.randn(b, c, h, w, generator=g)
    mean, std = torch.randn(c, h, w, generator=g) * 0.1, torch.rand(c, h, w, generator=g) + 0.5
    weight = torch.randn(k, c * h * w, generator=g)
    target = torch.tensor([1, 3])
    res = bnm.optimize_alpha(lambda z: z.flatten(1) @ weight.T, r, bnm.Bottleneck(mean, std, sigma=0),
                             bnm.cross_entropy_loss(target), beta=beta, steps=1, lr=lr, copies=copies, init_alpha=a0,
                             inverse=inverse, generators=[torch.Generator().manual_seed(10 + i) for i in range(b)])
    for i in range(b):
        alpha = torch.full((c, h, w), a0, requires_grad=True)
        lam = torch.sigmoid(alpha)
        noise = mean + std * torch.randn((copies, c, h, w), generator=torch.Generator().manual_seed(10 + i))
        z = lam * noise + (1 - lam) * r[i] if inverse else lam * r[i] + (1 - lam) * noise
        out = z.flatten(1) @ weight.T                                        # (copies, K)
        ce = -torch.log(torch.exp(out[:, target[i]]) / torch.exp(out).sum(1)).mean()
        r_n = (r[i] - mean) / std
        kl = -0.5 * (1 + torch.log((1 - lam) ** 2) - (lam * r_n) ** 2 - (1 - lam) ** 2)
        ((-ce if inverse else ce) + beta * kl.mean()).backward()
        step = lr * alpha.grad / (alpha.grad.abs() + 1e-8)
        torch.testing.assert_close(res.first_outputs[i], out.detach())
        torch.testing.assert_close(res.losses[0, i], ce.detach())
        torch.testing.assert_close(res.info[0, i], kl.mean().detach())
        torch.testing.assert_close(res.kl[i], kl.detach())
        torch.testing.assert_close(res.alpha[i], a0 - step, rtol=1e-5, atol=1e-5)


def test_steps_and_copies_below_one_are_one_line():
    r, bn = torch.zeros(1, 1, 2, 2), bnm.Bottleneck(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), sigma=0)
    for kw in ({"steps": 0}, {"copies": 0}, {"steps": 0, "copies": 0}):
        with pytest.raises(XattrConfigError, match="steps and copies must be >= 1"):
            bnm.optimize_alpha(lambda z: z.flatten(1), r, bn, bnm.cross_entropy_loss(torch.zeros(1).long()), **kw)


def test_bce_loss_by_hand():
    """The multi-label loss (CheXplain heads): BCE with logits against the one-hot target, mean over copies and
    classes. Logits 0 give ln 2 each; logits (ln 3, -ln 3, ln 3) with target class 2 give ln 4, ln 4/3 and
    ln 4/3 (sigmoid(ln 3) = 3/4). ``model_loss: bce`` names it."""
    ln3 = math.log(3)
    outputs = torch.tensor([[[0.0, 0.0, 0.0], [ln3, -ln3, ln3]], [[ln3, -ln3, ln3], [ln3, -ln3, ln3]]])
    got = bnm.bce_loss(torch.tensor([2, 0]))(outputs)
    first = (3 * math.log(2) + math.log(4) + 2 * math.log(4 / 3)) / 6
    second = (2 * math.log(4 / 3) + math.log(4)) / 3  # target 0: ln 4/3 (class 0, 1), ln 4 (class 2, wrong)
    torch.testing.assert_close(got, torch.tensor([first, second]))
    assert bnm.MODEL_LOSSES == {"ce": bnm.cross_entropy_loss, "bce": bnm.bce_loss}


# ------------------------------------------------------------- Per-Sample IBA's options (issue 26's mutation run)


def test_per_sample_iba_defaults_are_the_papers_and_its_options_are_kept():
    """Per-Sample IBA's defaults by hand (Schulz et al. sec. 3 / appendix F: beta 10, 10 Adam steps at lr 1, 10
    noisy copies, alpha initialised to 5, smoothing sigma 1; the module docstring: seed 0, the whole batch in
    one graph, fp32, the fx tail folded, softmax cross-entropy); the class is ``iba``, not inverse, scores Table
    1, and its memory knob is its ``chunk`` argument; every option given is what the method keeps."""
    import inspect

    params = inspect.signature(PerSampleIBA.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"beta": 10.0, "steps": 10, "lr": 1.0, "copies": 10, "sigma": 1.0, "init_alpha": 5.0,
                        "chunk": None, "seed": 0, "autocast": None, "tail": "auto", "loss": "ce",
                        "optimise_tail": True}
    assert PerSampleIBA.name == "iba" and PerSampleIBA.inverse is False and PerSampleIBA.scores is True
    assert PerSampleIBA.memory_knob == "chunk" and PerSampleIBA.memory_knob in params
    model = TinyCNN(num_classes=5).eval()
    assert PerSampleIBA(model, "conv2").optimise_tail is True
    path = "stats.pt"
    iba = PerSampleIBA(model, "conv2", beta=2, lr=0.5, steps=3, copies=2, init_alpha=1.5, chunk=4, seed=7,
                       autocast="bf16", tail="hook", loss="bce", optimise_tail=False, sigma=2.0, relu=True,
                       min_std=0, active_threshold=0.2, statistics=path)
    kept = (iba.beta, iba.lr, iba.steps, iba.copies, iba.init_alpha, iba.chunk, iba.seed, iba.autocast, iba.tail_mode,
            iba.loss, iba.optimise_tail, iba.sigma, iba.relu, iba.min_std, iba.active_threshold, iba.statistics)
    assert kept == (2.0, 0.5, 3, 2, 1.5, 4, 7, "bf16", "hook", "bce", False, 2.0, True, 0.0, 0.2, path)
    assert iba.relu is True and iba.optimise_tail is False
    for name in ("none", "fp16"):  # the other documented autocast values are accepted
        assert PerSampleIBA(model, "conv2", autocast=name).autocast == name
    assert repr(iba) == "PerSampleIBA(layer='conv2', beta=2.0, steps=3)"


def test_per_sample_iba_bad_options_are_whole_lines():
    model = TinyCNN(num_classes=5).eval()
    cases = [
        ({"autocast": "bogus"}, "unknown autocast 'bogus'; valid choices: none, bf16, fp16"),
        ({"tail": "bogus"}, "unknown tail mode 'bogus'; valid choices: auto, fx, hook"),
        ({"loss": "bogus"}, "unknown loss 'bogus'; valid choices: ce, bce"),
        ({"beta": 0}, "bad beta 0; valid choices: a number > 0"),
        ({"lr": -1}, "bad lr -1; valid choices: a number > 0"),
        ({"steps": 0}, "bad steps 0; valid choices: an integer >= 1"),
        ({"copies": 0}, "bad copies 0; valid choices: an integer >= 1"),
        ({"n_samples": 0}, "bad n_samples 0; valid choices: an integer >= 1"),
        ({"min_std": -0.5}, "bad min_std -0.5; valid choices: a number >= 0"),
        ({"min_std": True}, "bad min_std True; valid choices: a number >= 0"),
        ({"min_std": "0.1"}, "bad min_std '0.1'; valid choices: a number >= 0"),
    ]
    for kw, line in cases:
        with pytest.raises(XattrConfigError) as err:
            PerSampleIBA(model, "conv2", **kw)
        assert str(err.value) == line, kw
    with pytest.raises(XattrConfigError) as err:
        PerSampleIBA(model, "conv2").bottleneck("conv2")
    assert str(err.value) == "no feature statistics for layer 'conv2': call fit(loader, cache_dir) first"
    iba = _iba(model, "conv2", size=16)  # statistics of 16 x 16 inputs: conv2 gives (16, 16, 16)
    with pytest.raises(XattrConfigError) as err:
        iba.attribute(torch.randn(1, 3, 8, 8), torch.tensor([0]))
    assert str(err.value) == ("feature shape (16, 8, 8) at layer 'conv2' differs from its statistics' (16, 16, 16): "
                              "estimate them at the input size used for attribution")


def test_per_sample_iba_cost_rule_by_hand():
    """``3 steps copies`` forwards (a forward and a backward of each copy per step) plus the fx tail's set-up of 4
    (one full forward and three tail rows); ``tail: hook`` has no set-up."""
    model = TinyCNN(num_classes=5).eval()
    assert PerSampleIBA(model, "conv2", steps=3, copies=2, tail="hook").forwards_per_image((3, 16, 16)) == 18.0
    assert PerSampleIBA(model, "conv2", steps=3, copies=2).forwards_per_image((3, 16, 16)) == 22.0
    assert PerSampleIBA(model, "conv2", steps=5, copies=7, tail="fx").forwards_per_image((3, 16, 16)) == 109.0


def test_per_sample_iba_groups_images_by_chunk_and_reads_a_statistics_file(tmp_path):
    """``chunk`` forwards per call hold ``max(1, chunk // copies)`` images (None: the whole batch); a statistics
    file given as ``statistics`` is what ``fit`` uses, reading no data; the bottleneck is built from the
    statistics with the method's sigma, ReLU, std floor and active threshold."""
    model = TinyCNN(num_classes=5).eval()
    x = torch.randn(5, 3, 16, 16)
    assert PerSampleIBA(model, "conv2", copies=2, chunk=4).images_per_group(x) == 2
    assert PerSampleIBA(model, "conv2", copies=2, chunk=1).images_per_group(x) == 1
    assert PerSampleIBA(model, "conv2", copies=2).images_per_group(x[:2]) == 2
    g = torch.Generator().manual_seed(1)
    loader = [{"x": torch.randn(16, 3, 16, 16, generator=g)} for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = st.load_or_estimate(model, ["conv2"], loader, tmp_path, n_samples=32)["conv2"]
    (path,) = (tmp_path / "iba_stats").glob("*.pt")

    class NoData:
        def __iter__(self):
            raise AssertionError("a statistics file reads no data")

    iba = PerSampleIBA(model, "conv2", statistics=path, sigma=2.0, relu=True, min_std=0.05, active_threshold=0.3)
    iba.fit(NoData(), tmp_path / "other")
    assert torch.equal(iba.stats["conv2"].mean, want.mean) and torch.equal(iba.stats["conv2"].std, want.std)
    bn = iba.bottleneck("conv2")
    assert bn.smooth.sigma == 2.0 and bn.relu is True
    assert torch.equal(bn.std, want.std.clamp_min(0.05))
    assert torch.equal(bn.active, (want.nonzero > 0.3).float())


def test_per_sample_iba_autocast_bf16_runs_the_tail_in_bfloat16_and_scores_only_when_defined():
    """``autocast: bf16`` runs the tail under autocast (on this CPU too): every logit of the optimisation is a
    bfloat16 number, where fp32 logits are not; a subclass without Table 1 scores explains with no
    ``bottleneck/`` scores and the same map."""
    model = TinyCNN(num_classes=5).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    out = {}
    for name in (None, "bf16"):
        iba = _iba(model, "conv2", steps=2, copies=2, autocast=name)
        out[name] = iba.optimize(x, t).outputs
    assert torch.equal(out["bf16"], out["bf16"].bfloat16().float())
    assert not torch.equal(out[None], out[None].bfloat16().float())

    class NoScores(PerSampleIBA):
        scores = False

    ns = _iba(model, "conv2", steps=2, copies=2)
    ns.__class__ = NoScores
    e = ns.explain(x, t)
    assert not [k for k in e.aux if k.startswith("bottleneck/")]
    torch.testing.assert_close(e.maps, ns.attribute(x, t))


def test_token_bottleneck_blurs_the_patch_grid_as_the_map_bottleneck_and_keeps_the_class_token():
    """A ViT token layer's ``lam``: the patch tokens' ``sigmoid(alpha)`` laid on the patch grid (3 x 4 for a 3:4
    input) and blurred exactly as the map bottleneck blurs a feature map (eq. 7, tested against scipy), the class
    token's left unblurred; the defaults are the map bottleneck's (sigma 1, no ReLU, std floor 0.01)."""
    import inspect

    from xattr.core.tokens import TokenLayout

    tok = inspect.signature(bnm.TokenBottleneck.__init__).parameters
    for name, p in inspect.signature(bnm.Bottleneck.__init__).parameters.items():
        if p.default is not inspect.Parameter.empty:
            assert tok[name].default == p.default, name
    layout = TokenLayout("tokens", 1, ("cls",), "torchvision ViT")
    c = 5
    tbn = bnm.TokenBottleneck(torch.zeros(13, c), torch.ones(13, c), layout=layout, image_hw=(24, 32))
    alpha = torch.randn(2, 13, c, generator=torch.Generator().manual_seed(0)) * 2
    lam = tbn.lam(alpha)
    grid = torch.sigmoid(alpha[:, 1:]).reshape(2, 3, 4, c).permute(0, 3, 1, 2)  # row-major patches
    want = bnm.Bottleneck(torch.zeros(c, 3, 4), torch.ones(c, 3, 4)).lam(torch.logit(grid))
    torch.testing.assert_close(lam[:, 1:], want.permute(0, 2, 3, 1).reshape(2, 12, c), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lam[:, 0], torch.sigmoid(alpha[:, 0]))
    assert not torch.allclose(lam[:, 1:], torch.sigmoid(alpha[:, 1:]), atol=1e-3)  # blurred
    assert torch.equal(bnm.TokenBottleneck(torch.zeros(13, c), torch.ones(13, c), sigma=0, layout=layout).lam(alpha),
                       torch.sigmoid(alpha))
    with pytest.raises(XattrConfigError) as err:
        bnm.optimize_alpha(lambda z: z.flatten(1), torch.zeros(1, 1, 2, 2), bnm.Bottleneck(torch.zeros(1, 2, 2),
                           torch.ones(1, 2, 2)), bnm.cross_entropy_loss(torch.zeros(1).long()), steps=0, copies=2)
    assert str(err.value) == "steps and copies must be >= 1; got steps=0, copies=2"
