"""InputIBA's per-stage timings (issue 18): the stages add up to the total, the total is the wall-clock time
of ``explain`` measured from outside, and the WGAN's critic / generator parts lie within the WGAN stage."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from xattr.methods.input_iba import InputIBA
from xattr.models.tiny import TinyCNN

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread, no contention on a shared CPU

TINY = dict(epochs=1, n_targets=8, n_groups=2, gan_batch=4, critic=2, feat_steps=2, feat_copies=2, steps=2, copies=2)


def test_stage_timings_add_up_to_the_total_and_to_the_wall_clock():
    net = TinyCNN(4).eval()
    m = InputIBA(net, layer="conv2", chunk=4, **TINY)  # 2 copies: groups of 2 images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few estimation samples
        m.fit([{"x": torch.randn(32, 3, 16, 16)}])
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    t0 = time.perf_counter()
    ex = m.explain(x, t)
    wall = time.perf_counter() - t0
    tm = ex.group("timing")
    assert set(tm) == {"feature", "wgan", "wgan_critic", "wgan_generator", "input", "total"}
    assert all(v.shape == (3,) and (v > 0).all() for v in tm.values())
    stages = tm["feature"] + tm["wgan"] + tm["input"]
    assert torch.allclose(stages, tm["total"], rtol=1e-6)  # per image, each group its own
    assert (tm["wgan_critic"] + tm["wgan_generator"] <= tm["wgan"] * (1 + 1e-6)).all()
    # groups (2 + 1 images): per-image times are the group's time / its images, equal within a group
    assert tm["total"][0] == tm["total"][1]
    seconds = float(tm["total"][:2].sum() + tm["total"][2])  # both groups' totals
    assert seconds <= wall and seconds >= 0.9 * wall - 0.05, (seconds, wall)  # nothing left untimed


def test_fused_critic_pair_equals_two_discriminator_calls():
    """``ConvDiscriminators.pair`` (the CUDA path of the critic step) == two calls, values and gradients."""
    from xattr.methods.input_iba.wgan import ConvDiscriminators

    torch.manual_seed(0)
    d = ConvDiscriminators(3, (4, 8, 8))
    real, fake = torch.randn(3, 5, 4, 8, 8), torch.randn(3, 5, 4, 8, 8) * 2 + 1
    grads = []
    for fused in (False, True):
        d.zero_grad()
        r, f = d.pair(real, fake) if fused else (d(real), d(fake))
        (-r.mean(1) + f.mean(1)).sum().backward()
        grads.append([p.grad.clone() for p in d.parameters()])
        if not fused:
            r0, f0 = r.detach(), f.detach()
    assert torch.allclose(r, r0, atol=1e-6) and torch.allclose(f, f0, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
