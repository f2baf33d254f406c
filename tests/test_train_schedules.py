"""The warm-up + cosine learning-rate schedule (conf/scheduler/warmup_cosine.yaml), against hand values."""

import math

import pytest
import torch

from xattr.errors import XattrConfigError
from xattr.training.schedules import warmup_cosine


def _rates(warmup, total, steps, min_factor=0.0):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = warmup_cosine(opt, warmup, total, min_factor)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_half_cosine_by_hand():
    # warm-up 2: 1/3, 2/3 of the rate; then cos from 1 at step 2 to 0 at step 6 (4 steps: cos(pi k / 4))
    got = _rates(2, 6, 8)
    want = [2 / 3, 4 / 3] + [2 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)] + [0.0, 0.0]
    assert got == pytest.approx(want, abs=1e-12)


def test_min_factor_floor_and_bad_values():
    got = _rates(0, 2, 3, min_factor=0.1)
    assert got == pytest.approx([2.0, 2 * (0.1 + 0.9 * 0.5), 0.2])
    with pytest.raises(XattrConfigError, match="scheduler.warmup"):
        _rates(3, 3, 1)
