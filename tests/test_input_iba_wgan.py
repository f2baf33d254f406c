"""InputIBA stage 2: the batched WGAN reproduces a target distribution; batched == one image at a time."""

from __future__ import annotations

import pytest
import torch

from xattr.core.seeding import make_generators
from xattr.methods.input_iba import ConvDiscriminators, MaskGenerator, RNNDiscriminators, WGANConfig, fit_wgan

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread, no contention on a shared CPU


def _fit(x, r, m, cfg, seeds, gm, gs):
    gens = make_generators(seeds, x.device)
    gen = MaskGenerator(x, lambda z: z, torch.zeros_like(x), (x.shape[1], 1, 1))
    disc = ConvDiscriminators(x.shape[0], r.shape[1:], gens)
    res = fit_wgan(gen, disc, r, m, cfg, gens, gm, gs)
    return gen, res


def test_generator_reproduces_target_mean_and_spread() -> None:
    # toy problem: f = identity, x = r = 2 everywhere; the target keeps the left half (M = 1: mean 2,
    # spread 0) and replaces the right half by N(0, 1) noise (M = 0). The generator starts at
    # lambda_G = 0.5 everywhere (mean 1, spread 0.5 on both halves) and must learn the left/right contrast.
    # (The critic's BatchNorm normalises each batch, so only structure across features is visible to it.)
    b, shape = 2, (1, 8, 8)
    x = torch.full((b, *shape), 2.0)
    m = torch.zeros_like(x)
    m[..., :4] = 1
    cfg = WGANConfig(epochs=50, n_targets=32, n_groups=1, batch=32, critic=1, lr_disc=1e-3, lr_mask=0.05,
                     lr_mean=0.05, lr_std=0.05, clip=0.05)
    gm, gs = torch.zeros(b, 1), torch.ones(b, 1)
    gen, res = _fit(x, x, m, cfg, [1, 2], gm, gs)
    with torch.no_grad():
        z = gen(2000)  # (B, n, 1, 8, 8)
    left, right = z[..., :4], z[..., 4:]
    assert (left.mean((1, 2, 3, 4)) - right.mean((1, 2, 3, 4)) > 0.5).all()  # target 2, start 0
    assert (right.mean((1, 2, 3, 4)).abs() < 0.5).all()  # target 0, start 1
    assert (right.std(1).mean((1, 2, 3)) > 1.3 * left.std(1).mean((1, 2, 3))).all()  # target inf, start 1
    lam = gen.lam()
    assert (lam[..., :4].mean((1, 2, 3)) > lam[..., 4:].mean((1, 2, 3)) + 0.15).all()
    assert res.d_loss.shape == (50, b) and res.g_loss.shape == (50, b)


def test_batched_equals_single() -> None:
    b, shape = 3, (2, 4, 4)
    x, r = torch.randn(b, *shape), torch.randn(b, *shape)
    m = torch.rand(b, *shape)
    cfg = WGANConfig(epochs=2, n_targets=20, n_groups=2, batch=8, critic=2)
    seeds = [11, 12, 13]
    _, res = _fit(x, r, m, cfg, seeds, None, None)
    for i in range(b):
        _, one = _fit(x[i : i + 1], r[i : i + 1], m[i : i + 1], cfg, seeds[i : i + 1], None, None)
        assert torch.allclose(one.mask, res.mask[i : i + 1], atol=1e-6)
        assert torch.allclose(one.mean, res.mean[i : i + 1], atol=1e-6)
        assert torch.allclose(one.d_loss, res.d_loss[:, i : i + 1], atol=1e-5)


def test_rnn_discriminator_reads_only_real_tokens() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    d = RNNDiscriminators(2, (5, 3), mask, hidden=4)
    z = torch.randn(2, 6, 5, 3)
    z2 = z.clone()
    z2[0, :, 3:] = 100.0  # change the padding of image 0
    assert torch.allclose(d(z), d(z2))


def test_lightning_wrapper_runs_the_same_fit() -> None:
    from xattr.methods.input_iba import WGANFit

    b, shape = 2, (2, 4, 4)
    x, r, m = torch.randn(b, *shape), torch.randn(b, *shape), torch.rand(b, *shape)
    cfg = WGANConfig(epochs=1, n_targets=16, n_groups=2, batch=8, critic=2)
    _, direct = _fit(x, r, m, cfg, [5, 6], None, None)
    gens = make_generators([5, 6], x.device)
    gen = MaskGenerator(x, lambda z: z, torch.zeros_like(x), (2, 1, 1))
    module = WGANFit(gen, ConvDiscriminators(b, shape, gens), r, m, cfg, gens)
    module.training_step()
    assert torch.allclose(module.result.mask, direct.mask, atol=1e-6)


def test_initial_draws_follow_the_stated_distributions() -> None:
    """``_rand`` is U(0, 1) (the target groups' std is ``U(0, std_max)``); the discriminators' weights are drawn like
    PyTorch's defaults, uniform with bound ``1/sqrt(fan_in)`` (conv fan-in ``cin k k``, linear ``fin``)."""
    import math

    from xattr.methods.input_iba import wgan

    u = wgan._rand((20_000,), None, 2, torch.device("cpu"))
    assert u.shape == (2, 20_000) and u.min() >= 0 and u.max() <= 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003
    d = ConvDiscriminators(2, (3, 8, 8), make_generators([1, 2], torch.device("cpu")))
    for (cin, _cout, k, _s, _p), i in zip(d.spec, range(0, 6, 2), strict=True):
        bound = 1 / math.sqrt(cin * k * k)
        assert bound >= d.convs[i].abs().max() > 0.9 * bound and d.convs[i + 1].abs().max() <= bound
    for fin, i in zip((d.flat, 512, 256), range(0, 6, 2), strict=True):
        bound = 1 / math.sqrt(fin)
        assert bound >= d.linears[i].abs().max() > 0.9 * bound and d.linears[i + 1].abs().max() <= bound


def test_the_text_critics_are_a_64_unit_rnn_drawn_like_pytorchs() -> None:
    """The text critics are a 64-unit RNN (the reference's) drawn like PyTorch's ``nn.RNN``, uniform with bound
    ``1/sqrt(hidden)``."""
    import inspect

    assert inspect.signature(RNNDiscriminators.__init__).parameters["hidden"].default == 64
    gens = make_generators([3, 4], torch.device("cpu"))
    rnn = RNNDiscriminators(2, (5, 7), torch.ones(2, 5, dtype=torch.bool), hidden=16, gens=gens)
    assert 0.25 >= rnn.w_hh.abs().max() > 0.9 * 0.25 and rnn.w_ih.abs().max() <= 0.25  # 1 / sqrt(16)


def test_wgan_defaults_are_the_references_and_the_group_noise_ranges(monkeypatch) -> None:
    """The reference's stage-2 settings (module docstring / REFERENCE.md): 20 epochs over 200 targets in 10 groups,
    batch 32, a generator step every 5th batch, RMSprop lrs 5e-5 / 0.003 / 0.1 / 0.05, clipping 0.01; target groups
    ``N(mu, s^2)`` with ``mu ~ U(-2, 2)``, ``s ~ U(0, 5)`` when not given."""
    from xattr.methods.input_iba import wgan

    assert WGANConfig() == WGANConfig(epochs=20, n_targets=200, n_groups=10, batch=32, critic=5, lr_disc=5e-5,
                                      lr_mask=0.003, lr_mean=0.1, lr_std=0.05, clip=0.01, mean_range=2.0,
                                      std_max=5.0, redraw_targets=True)
    seen = []
    real = wgan.sample_targets

    def spy(r, m, gm, gs, groups, gens):
        seen.append((gm, gs))
        return real(r, m, gm, gs, groups, gens)

    monkeypatch.setattr(wgan, "sample_targets", spy)
    x = torch.randn(1, 1, 4, 4)
    cfg = WGANConfig(epochs=1, n_targets=4000, n_groups=4000, batch=4000, critic=1)
    _fit(x, x, torch.rand_like(x), cfg, [7], None, None)
    gm, gs = seen[0]
    assert gm.shape == gs.shape == (1, 4000)
    assert -2 <= gm.min() < -1.95 and 1.95 < gm.max() <= 2 and 0 <= gs.min() < 0.05 and 4.95 < gs.max() <= 5


def test_clock_marks_each_critic_and_generator_step_and_odd_group_sizes_fit() -> None:
    """``clock`` is called ``wgan_critic`` after every critic step and ``wgan_generator`` after each generator step,
    which comes when the batch index is a multiple of ``critic``: 20 targets in batches of 4 (5 batches) with
    critic 2 give c g, c, c g, c, c g per epoch. 20 targets in 3 groups (6 per group, the last two targets in
    the last group) fit too."""
    x = torch.randn(1, 1, 4, 4)
    ticks = []
    gens = make_generators([3], x.device)
    gen = MaskGenerator(x, lambda z: z, torch.zeros_like(x), (1, 1, 1))
    cfg = WGANConfig(epochs=1, n_targets=20, n_groups=3, batch=4, critic=2)
    res = fit_wgan(gen, ConvDiscriminators(1, (1, 4, 4), gens), x, torch.rand_like(x), cfg, gens, clock=ticks.append)
    c, g = "wgan_critic", "wgan_generator"
    assert ticks == [c, g, c, c, g, c, c, g]
    assert res.d_loss.shape == (5, 1) and res.g_loss.shape == (3, 1)


def test_fixed_targets_are_drawn_once_in_their_groups_and_reshuffled_per_epoch(monkeypatch) -> None:
    """``redraw_targets=False`` (the reference's text GAN): the ``n_targets`` samples are drawn once, target ``j`` in
    group ``j // per_group`` (the remainder in the last group), and every epoch's critic sees each of them once."""
    from xattr.methods.input_iba import wgan

    drawn = []
    real_fn = wgan.sample_targets

    def spy(r, m, gm, gs, groups, gens):
        drawn.append(groups.clone())
        return real_fn(r, m, gm, gs, groups, gens)

    monkeypatch.setattr(wgan, "sample_targets", spy)
    x = torch.randn(2, 1, 4, 4)
    gens = make_generators([3, 4], x.device)
    gen = MaskGenerator(x, lambda z: z, torch.zeros_like(x), (1, 1, 1))
    disc = ConvDiscriminators(2, (1, 4, 4), gens)
    calls = []
    forward = disc.forward
    monkeypatch.setattr(disc, "forward", lambda z: calls.append(z.detach().clone()) or forward(z))
    cfg = WGANConfig(epochs=2, n_targets=11, n_groups=3, batch=4, critic=100, redraw_targets=False)
    fit_wgan(gen, disc, x, torch.rand_like(x), cfg, gens)
    assert len(drawn) == 1 and torch.equal(drawn[0], torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]] * 2))
    # per epoch: batch 0 calls the critic on real, fake, then the generator's step; batches 1, 2 on real, fake
    epochs = [torch.cat([calls[7 * e + k] for k in (0, 3, 5)], 1) for e in range(2)]  # (B, 11, 1, 4, 4) each
    assert len(calls) == 14 and epochs[0].shape == (2, 11, 1, 4, 4)
    for i in range(2):
        a, b = (ep[i].flatten(1) for ep in epochs)
        assert not torch.equal(a, b)  # reshuffled
        assert torch.equal(a[a[:, 0].argsort()], b[b[:, 0].argsort()])  # the same eleven samples


def test_no_epoch_no_step_and_the_lightning_wrapper_optimises_by_hand() -> None:
    """0 epochs: no step, the losses are ``(0, B)`` and the mask is the initial one; the Lightning wrapper runs the
    fit itself (manual optimisation) and has no result before it."""
    from xattr.methods.input_iba import WGANFit

    x = torch.randn(2, 1, 4, 4)
    gens = make_generators([1, 2], x.device)
    init = torch.randn_like(x)
    gen = MaskGenerator(x, lambda z: z, init, (1, 1, 1))
    disc = ConvDiscriminators(2, (1, 4, 4), gens)
    res = fit_wgan(gen, disc, x, torch.rand_like(x), WGANConfig(epochs=0), gens)
    assert res.d_loss.shape == (0, 2) and res.g_loss.shape == (0, 2)
    assert torch.equal(res.mask, torch.sigmoid(init))
    module = WGANFit(gen, disc, x, torch.rand_like(x), WGANConfig(epochs=0), gens)
    assert module.automatic_optimization is False and module.result is None
