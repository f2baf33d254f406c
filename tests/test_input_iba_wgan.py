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
