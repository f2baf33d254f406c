"""scripts/bench_input_iba.py's limit row (issue 31): the plain critic's FLOPs against the closed form of its
conv stack, and the WGAN stage's rate over the limit's in (0, 1.2] on a tiny model."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_input_iba as bench  # noqa: E402
from timing import flops  # noqa: E402
from xattr.methods.input_iba import ConvDiscriminators, InputIBA  # noqa: E402
from xattr.models.tiny import TinyCNN  # noqa: E402


def test_plain_critic_flops_match_the_closed_form(one_thread) -> None:
    c, h, n = 4, 8, 3
    crit = bench.plain_critic(ConvDiscriminators(1, (c, h, h)), (c, h, h))
    rr = torch.randn(n, c, h, h)
    # conv c->2c k4 s2 p1 (8 -> 4 px), 2c->4c k4 s2 p1 (4 -> 2 px), 4c->c k3 p1 (2 px); linears 16->512->256->1
    convs = [2 * c * c * 16 * 4 * 4, 4 * c * 2 * c * 16 * 2 * 2, c * 4 * c * 9 * 2 * 2]
    linears = [c * 2 * 2 * 512, 512 * 256, 256]
    fwd = 2 * n * (sum(convs) + sum(linears))
    assert flops(lambda: crit(rr)) == fwd
    # backward: weight gradients of every layer, input gradients of every layer but the first (rr has none)
    assert flops(lambda: crit(rr).sum().backward()) == 3 * fwd - 2 * n * convs[0]


def test_limit_row_and_ratio_on_a_tiny_model(one_thread) -> None:
    net = TinyCNN(4).eval()
    m = InputIBA(net, layer="conv2", epochs=1, n_targets=16, n_groups=2, gan_batch=8, critic=2, feat_steps=2,
                 feat_copies=2, steps=2, copies=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit([{"x": torch.randn(16, 3, 16, 16)}])
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    assert bench.step_counts(m) == (2, 1) and bench.step_rows(m) == (16, 8)
    rows = {name: rest for name, *rest in bench.wgan_rows(m, x, t, "cpu", repeats=3, old=False)}
    stage, limit = rows["WGAN stage"], rows["limit: plain batched passes"]
    assert stage[0] == limit[0] > 0  # the same GFLOP per image: the limit does the stage's arithmetic
    assert 0 < stage[3] <= 1.2 and limit[3] == 1.0
    assert abs(stage[2] / limit[2] - stage[3]) < 1e-9  # the ratio is rate over rate
