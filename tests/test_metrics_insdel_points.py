"""Insertion / deletion with fewer forwards (``points``), ``chunk: auto`` and channels-last (issue 18).

Closed forms on a linear model whose every pixel moves the logit by the same amount (the curve is then a
straight line, so the trapezoid over any subset of its points, first and last kept, is its exact area),
and subset checks on a CNN: the sparse curve's points are the full curve's points at the chosen steps.
"""

from __future__ import annotations

import pytest
import torch

from xattr.errors import XattrConfigError
from xattr.metrics._perturb import CPU_CHUNK, resolve_chunk
from xattr.metrics.insertion_deletion import InsertionDeletion
from xattr.models.tiny import PixelLinear, TinyCNN

S = 16  # 256 pixels


def equal_pixel_model(c: float = 0.02):
    """logit_0 = sum_{c,h,w} W x with every pixel contributing exactly ``c`` (each channel ``c / 3``),
    logit_1 = 0; the maps rank pixels in a random order, which cannot matter here."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, S, S, generator=g) + 0.5
    w = torch.zeros(2, 3, S, S)
    w[0] = c / 3 / x[0]  # image 0: each pixel's three channels add up to c
    maps = torch.rand(2, 1, S, S, generator=g)
    return PixelLinear(w).eval(), x[:1], maps[:1]


@pytest.mark.parametrize("x_axis", ["reference", "xattr"])
@pytest.mark.parametrize("points", [2, 7, 30])
def test_points_auc_equals_the_full_auc_and_the_closed_form_on_a_linear_curve(x_axis, points):
    model, x, maps = equal_pixel_model(c=0.02)
    t = torch.zeros(1, dtype=torch.long)
    kw = dict(per_step=4, modes=["deletion"], output="logit", min_prob=None, x_axis=x_axis)
    full = InsertionDeletion(**kw)(model, x, t, maps)
    sparse = InsertionDeletion(points=points, **kw)(model, x, t, maps)
    n, per = S * S, 4
    total = 0.02 * n  # logit of the clean image: 5.12
    if x_axis == "reference":  # k = 1..64 at x = (k - 1) / 64: a line from total - 0.08 to 0
        steps = n // per
        expected = (steps - 1) / steps * ((total - 0.02 * per) + 0.0) / 2
    else:  # k = 0..64 at x = k / 64: from total to 0 over [0, 1]
        expected = total / 2
    assert sparse.curves["deletion"].shape == (1, points)
    assert full.scores["deletion"].item() == pytest.approx(expected, abs=1e-4)
    assert sparse.scores["deletion"].item() == pytest.approx(expected, abs=1e-4)


def test_points_are_the_full_curve_at_the_chosen_steps_first_and_last_kept():
    torch.manual_seed(0)
    net = TinyCNN(num_classes=3).eval()
    x, maps, t = torch.randn(3, 3, S, S), torch.rand(3, 1, S, S), torch.tensor([0, 1, 2])
    kw = dict(per_step=3, blur_sigma=3.0, min_prob=None, chunk=64)
    full = InsertionDeletion(**kw)(net, x, t, maps)  # T = ceil(256 / 3) = 86 steps
    sparse = InsertionDeletion(points=10, **kw)(net, x, t, maps)
    # k_j = 1 + round(j * 85 / 9): 1, 10, 20, 29, 39, 48, 58, 67, 77, 86 (hand computed)
    idx = torch.tensor([1, 10, 20, 29, 39, 48, 58, 67, 77, 86]) - 1
    for mode in ("insertion", "deletion"):
        assert torch.allclose(sparse.curves[mode], full.curves[mode][:, idx], atol=1e-6)
        assert torch.allclose(sparse.x_axis[mode], full.x_axis[mode][idx].float())
        auc = torch.trapezoid(full.curves[mode][:, idx].double(), full.x_axis[mode][idx].double())
        assert torch.allclose(sparse.scores[mode].double(), auc, atol=1e-6)
    assert torch.equal(sparse.scores["prob"], full.scores["prob"])


def test_points_at_least_the_steps_is_the_full_protocol():
    torch.manual_seed(1)
    net = TinyCNN(num_classes=3).eval()
    x, maps, t = torch.randn(2, 3, S, S), torch.rand(2, 1, S, S), torch.tensor([0, 1])
    kw = dict(per_step=16, blur_sigma=3.0, min_prob=None)  # 16 steps
    full = InsertionDeletion(points="all", **kw)(net, x, t, maps)
    many = InsertionDeletion(points=16, **kw)(net, x, t, maps)
    assert torch.equal(full.curves["insertion"], many.curves["insertion"])
    assert torch.equal(full.scores["deletion"], many.scores["deletion"])


def test_points_batched_equals_one_at_a_time_on_texts_of_different_lengths():
    class Bag(torch.nn.Module):  # logit_1 = sum of token weights
        w = torch.linspace(0, 2, 50)

        def forward(self, tok):
            s = self.w[tok].sum(1) - 10
            return torch.stack([torch.zeros_like(s), s], 1)

    g = torch.Generator().manual_seed(2)
    x = torch.randint(2, 50, (3, 40), generator=g)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 25:] = False
    mask[2, 7:] = False
    maps = torch.rand(3, 40, generator=g)
    t = torch.ones(3, dtype=torch.long)
    metric = InsertionDeletion(per_step=1, unk_index=1, min_prob=None, points=6)
    res = metric(Bag(), x, t, maps, mask=mask)
    assert res.curves["deletion"].shape == (3, 6)
    assert res.x_axis["deletion"].tolist() == [1, 9, 17, 24, 32, 40]  # longest text: 1 + round(j * 39 / 5)
    for i in range(3):
        one = metric(Bag(), x[i : i + 1], t[i : i + 1], maps[i : i + 1], mask=mask[i : i + 1])
        for mode in ("insertion", "deletion"):
            assert torch.allclose(one.scores[mode], res.scores[mode][i : i + 1], atol=1e-6)
    # the 7-token text has 6 points at steps 1, 2, 3, 5, 6, 7 of its full 7-point curve
    full = InsertionDeletion(per_step=1, unk_index=1, min_prob=None)(Bag(), x[2:], t[2:], maps[2:], mask=mask[2:])
    assert torch.allclose(res.curves["deletion"][2], full.curves["deletion"][0, [0, 1, 2, 4, 5, 6]], atol=1e-6)


@pytest.mark.parametrize("bad", [1, 0, "some", 2.5, True])
def test_bad_points_name_the_value_and_the_choices(bad):
    with pytest.raises(XattrConfigError, match=r"bad points .*valid choices: all, or an integer >= 2"):
        InsertionDeletion(points=bad)


def test_chunk_auto_and_channels_last_do_not_change_results():
    torch.manual_seed(2)
    net = TinyCNN(num_classes=3).eval()
    x, maps, t = torch.randn(2, 3, S, S), torch.rand(2, 1, S, S), torch.tensor([0, 2])
    kw = dict(per_step=8, blur_sigma=3.0, min_prob=None)
    base = InsertionDeletion(chunk=5, **kw)(net, x, t, maps)
    auto = InsertionDeletion(chunk="auto", channels_last=True, **kw)(net, x, t, maps)
    for mode in ("insertion", "deletion"):
        assert torch.allclose(base.curves[mode], auto.curves[mode], atol=1e-5)
    assert all(p.is_contiguous() for p in net.parameters())  # format restored after the call
    assert resolve_chunk("auto", net, x[:1]) == CPU_CHUNK and resolve_chunk(7, net, x[:1]) == 7
    with pytest.raises(XattrConfigError, match="bad chunk 0; valid choices: a positive integer, or auto"):
        InsertionDeletion(chunk=0)
