"""InputIBA stage 3: Proposition 3's KL against Monte-Carlo and its limits; the bottleneck samples Remark 2."""

from __future__ import annotations

import math

import pytest
import torch

from xattr.methods.iba import kl_divergence
from xattr.methods.input_iba import InputBottleneck, input_kl

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread, no contention on a shared CPU


def _normal_logpdf(z: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((z - mu) / sd) ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi)


def test_prop3_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(1)
    k = 6
    x = torch.randn(k, generator=g, dtype=torch.float64) * 2
    lam = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.7, 0.95], dtype=torch.float64)  # Lambda
    lam_g = torch.tensor([0.0, 0.4, 0.8, 1.0, 0.2, 0.6], dtype=torch.float64)  # lambda_G
    mu = torch.tensor([0.0, 0.5, -1.0, 0.2, 1.0, -0.3], dtype=torch.float64)
    sd = torch.tensor([1.0, 0.5, 2.0, 1.5, 0.8, 1.2], dtype=torch.float64)
    # posterior (Remark 2) and prior (Remark 1), written independently of the code under test
    p_mu, p_sd = lam * x + (1 - lam) * mu, (1 - lam) * sd
    q_mu, q_sd = lam_g * lam * x + (1 - lam_g * lam) * mu, (1 - lam_g * lam) * sd
    n = 400_000
    z = p_mu + p_sd * torch.randn(n, k, generator=g, dtype=torch.float64)
    mc = (_normal_logpdf(z, p_mu, p_sd) - _normal_logpdf(z, q_mu, q_sd)).mean(0)
    closed = input_kl(x, lam, lam_g, mu, sd)
    assert torch.allclose(closed, mc, atol=4e-3, rtol=1e-2), (closed, mc)
    assert closed[3] >= 0 and (closed >= -1e-12).all()


def test_prop3_limits() -> None:
    x, lam = torch.randn(50), torch.rand(50) * 0.98
    mu, sd = torch.tensor(0.3), torch.tensor(1.7)
    # lambda_G = 0: the prior is the noise itself, IBA's KL (eq. 5 of IBA)
    assert torch.allclose(input_kl(x, lam, torch.zeros(50), mu, sd), kl_divergence(x, lam, mu, sd), atol=1e-5)
    # lambda_G = 1: prior == posterior
    assert input_kl(x, lam, torch.ones(50), mu, sd).abs().max() < 1e-5


def test_input_bottleneck_samples_remark2_and_weights_kl() -> None:
    b, shape = 2, (3, 4, 4)
    gan = torch.rand(b, *shape)
    bn = InputBottleneck(gan, mean=0.5, std=2.0, sigma=None)
    x = torch.randn(b, *shape)
    lam = bn.lam(torch.full((b, *shape), 0.3))  # sigmoid(0.3), no smoothing
    eps = torch.randn(20_000, b, *shape)
    z = bn.sample(x, lam, eps)
    assert torch.allclose(z.mean(0), lam * x + (1 - lam) * 0.5, atol=0.06)
    assert torch.allclose(z.std(0), (1 - lam) * 2.0, atol=0.04)
    assert torch.allclose(bn.kl(x, lam), input_kl(x, lam, gan, 0.5, 2.0))
    w = torch.zeros(b, 3, 1, 1)
    w[:, 0] = 3.0
    bw = InputBottleneck(gan, sigma=None, weight=w)
    kl = bw.kl(x, lam)
    assert (kl[:, 1:] == 0).all() and torch.allclose(kl[:, 0], 3 * input_kl(x, lam, gan, 0.0, 1.0)[:, 0])


def test_input_bottleneck_defaults_are_the_references_per_image_and_channel():
    """REFERENCE.md (InputIBA): the input noise is N(0, 1) and sigmoid(alpha) is smoothed with sigma 1; the
    mask has the image's shape without the batch axis (per channel and pixel), for 3-channel images too."""
    gan_mask = torch.rand(1, 3, 5, 4)
    b = InputBottleneck(gan_mask)
    assert b.smooth.sigma == 1.0 and b.mean.shape == (3, 5, 4)
    assert torch.equal(b.mean, torch.zeros(3, 5, 4)) and torch.equal(b.std, torch.ones(3, 5, 4))
    assert InputBottleneck(gan_mask, sigma=None).smooth.sigma == 0.0


def test_input_kl_at_lambda_one_uses_the_documented_floors():
    """``Lambda = 1`` (a saturated sigmoid): ``1 - Lambda`` is floored at 1e-6 (variance 1e-12), so against the
    plain prior (``lambda_G = 0``) the KL is ``-0.5 ln 1e-12 + 0.5e-12 + 0.5 x^2 - 0.5``, finite; with ``lambda_G
    = 1`` both factors take the same floor and the KL stays 0 (prior = posterior)."""
    x = torch.tensor([0.0, 1.5, -2.0])
    one = torch.ones(3)
    got = input_kl(x, one, torch.zeros(3), 0.0, 1.0)
    want = -0.5 * math.log(1e-12) + 0.5e-12 + 0.5 * x.double() ** 2 - 0.5
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(input_kl(x, one, one, 0.0, 1.0), torch.zeros(3))
