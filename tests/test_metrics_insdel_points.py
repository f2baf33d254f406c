"""Insertion / deletion with fewer forwards (``points``, ``spacing``), ``chunk: auto`` and channels-last (issue 18).

Closed forms on a linear model whose every pixel moves the logit by the same amount (the curve is then a
straight line, so the trapezoid over any subset of its points, first and last kept, is its exact area),
a linear model with one heavy pixel (the deletion curve is one jump at a known step: the adaptive points
close in on it, even ones leave a hand-computed error), and subset checks on a CNN: the sparse curve's
points are the full curve's points at the chosen steps.
"""

from __future__ import annotations

import pytest
import torch

from xattr.core.chunk import CPU_CHUNK, resolve_chunk
from xattr.errors import XattrConfigError
from xattr.metrics.insertion_deletion import InsertionDeletion, refine
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


@pytest.mark.parametrize("spacing", ["even", "adaptive"])
@pytest.mark.parametrize("x_axis", ["reference", "xattr"])
@pytest.mark.parametrize("points", [2, 7, 30])
def test_points_auc_equals_the_full_auc_and_the_closed_form_on_a_linear_curve(x_axis, points, spacing):
    model, x, maps = equal_pixel_model(c=0.02)
    t = torch.zeros(1, dtype=torch.long)
    kw = dict(per_step=4, modes=["deletion"], output="logit", min_prob=None, x_axis=x_axis)
    full = InsertionDeletion(**kw)(model, x, t, maps)
    sparse = InsertionDeletion(points=points, spacing=spacing, **kw)(model, x, t, maps)
    n, per = S * S, 4
    total = 0.02 * n  # logit of the clean image: 5.12
    if x_axis == "reference":  # k = 1..64 at x = (k - 1) / 64: a line from total - 0.08 to 0
        steps = n // per
        expected = (steps - 1) / steps * ((total - 0.02 * per) + 0.0) / 2
    else:  # k = 0..64 at x = k / 64: from total to 0 over [0, 1]
        expected = total / 2
    shown = points if spacing == "even" else max(2, -(-points // 2))  # adaptive: the first, even set
    assert sparse.curves["deletion"].shape == (1, shown)
    assert full.scores["deletion"].item() == pytest.approx(expected, abs=1e-4)
    assert sparse.scores["deletion"].item() == pytest.approx(expected, abs=1e-4)


def test_points_are_the_full_curve_at_the_chosen_steps_first_and_last_kept():
    torch.manual_seed(0)
    net = TinyCNN(num_classes=3).eval()
    x, maps, t = torch.randn(3, 3, S, S), torch.rand(3, 1, S, S), torch.tensor([0, 1, 2])
    kw = dict(per_step=3, blur_sigma=3.0, min_prob=None, chunk=64)
    full = InsertionDeletion(**kw)(net, x, t, maps)  # T = ceil(256 / 3) = 86 steps
    sparse = InsertionDeletion(points=10, spacing="even", **kw)(net, x, t, maps)
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


class Bag(torch.nn.Module):
    """A text model: logit_1 = sum of the tokens' weights - 10, logit_0 = 0."""

    w = torch.linspace(0, 2, 50)

    def forward(self, tok):
        s = self.w[tok].sum(1) - 10
        return torch.stack([torch.zeros_like(s), s], 1)


def test_points_batched_equals_one_at_a_time_on_texts_of_different_lengths():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(2, 50, (3, 40), generator=g)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 25:] = False
    mask[2, 7:] = False
    maps = torch.rand(3, 40, generator=g)
    t = torch.ones(3, dtype=torch.long)
    metric = InsertionDeletion(per_step=1, unk_index=1, min_prob=None, points=6, spacing="even")
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


def one_jump_model(heavy: int, weight: float = 3.0):
    """A 16 x 16 image of ones whose logit_0 is ``weight`` x pixel ``heavy`` (all other pixels: weight 0), and
    a map ranking pixel p p-th (flat order), so with 1 pixel per step the deletion curve (logit) is ``weight``
    up to step ``heavy`` and 0 from step ``heavy + 1`` on: one jump between those two steps."""
    w = torch.zeros(2, 3, S, S)
    w[0].view(3, -1)[:, heavy] = weight / 3
    maps = (S * S - 1 - torch.arange(S * S, dtype=torch.float32)).view(1, 1, S, S)
    return PixelLinear(w).eval(), torch.ones(1, 3, S, S), maps


def test_adaptive_points_close_in_on_a_jump_and_recover_its_area_where_even_ones_cannot():
    model, x, maps = one_jump_model(heavy=100)
    t = torch.zeros(1, dtype=torch.long)
    kw = dict(per_step=1, modes=["deletion"], output="logit", min_prob=None)
    full = InsertionDeletion(**kw)(model, x, t, maps)
    # k = 1..256 at x = (k - 1) / 256: 3 for k <= 100, 0 from k = 101; area 3 x 99 / 256 + the jump's 3 / 2 / 256
    assert full.scores["deletion"].item() == pytest.approx(3 * 99.5 / 256, abs=1e-6)
    even = InsertionDeletion(points=20, spacing="even", **kw)(model, x, t, maps)
    # even: k_j = 1 + round(j 255 / 19); the jump lies between k = 95 (j = 7) and k = 108 (j = 8), so the
    # trapezoid counts 3 up to x = 94 / 256 and half of 3 over the 13 steps to x = 107 / 256
    assert even.scores["deletion"].item() == pytest.approx(3 * (94 + 6.5) / 256, abs=1e-6)
    adaptive = InsertionDeletion(points=20, spacing="adaptive", **kw)(model, x, t, maps)
    assert adaptive.scores["deletion"].item() == pytest.approx(3 * 99.5 / 256, abs=1e-6)
    # the first, even set of 10 points is what ``curves`` holds: k = 1 + round(j 255 / 9)
    assert adaptive.x_axis["deletion"].mul(256).round().long().tolist() == [0, 28, 57, 85, 113, 142, 170, 198, 227, 255]


def test_refine_puts_the_points_into_the_jump_interval_split_evenly():
    # steps 1, 65, 129, 192, 256; the curve falls by 0.1 on [1, 65] and by 0.9 on [65, 129], then stays at 0
    k = torch.tensor([[1, 65, 129, 192, 256]])
    y = torch.tensor([[1.0, 0.9, 0.0, 0.0, 0.0]], dtype=torch.float64)
    x = (k - 1).double() / 256
    new, valid = refine(k, y, x, 4)
    # weights dx (|dy| + max of the neighbours' |dy| / 2): [1, 65] 0.25 (0.1 + 0.45) = 0.1375, [65, 129]
    # 0.25 (0.9 + 0.05) = 0.2375, [129, 192] 63 / 256 (0 + 0.45) = 0.1107, [192, 256] 0; the 4 largest of
    # weight / j: 0.2375 ([65, 129], 1st), 0.1375 ([1, 65]), 0.11875 ([65, 129], 2nd), 0.1107 ([129, 192]);
    # [65, 129] in thirds: 65 + round(64 / 3) = 86, 65 + round(128 / 3) = 108; halves: 33, 129 + round(31.5) = 161
    assert valid.all() and new.tolist() == [[86, 33, 108, 161]]
    # no room left in a 2-step interval: one seat (the step between), the rest go to the zero boxes in order
    k2 = torch.tensor([[1, 3, 6]])
    y2 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    new2, valid2 = refine(k2, y2, (k2 - 1).double() / 6, 3)
    # weights: [1, 3] (2 / 6) (1 + 0) = 0.333 (room for 1), [3, 6] (3 / 6) (0 + 1 / 2) = 0.25, then 0.25 / 2
    assert valid2.all() and new2.tolist() == [[2, 4, 5]]  # 2 (the jump's interval), then 3 + round(t 3 / 3)
    # fewer free steps than seats: the extra ones are flagged and repeat the last step
    new3, valid3 = refine(torch.tensor([[1, 2, 4]]), y2, torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64), 2)
    assert valid3.tolist() == [[True, False]] and new3.tolist() == [[3, 4]]


def test_adaptive_points_are_full_curve_points_and_batched_equals_one_at_a_time():
    torch.manual_seed(4)
    net = TinyCNN(num_classes=3).eval()
    x, maps, t = torch.randn(3, 3, S, S), torch.rand(3, 1, S, S), torch.tensor([0, 1, 2])
    kw = dict(per_step=2, blur_sigma=3.0, min_prob=None, chunk=37)
    full = InsertionDeletion(**kw)(net, x, t, maps)  # T = 128 steps, k = 1..128
    metric = InsertionDeletion(points=24, rounds=3, **kw)
    res = metric(net, x, t, maps)
    cap = torch.full((3,), S * S)
    for mode in ("insertion", "deletion"):
        # the points the rule picks on the full curve (the same rule, fed the full curve's values)
        k, y, k0, y0 = metric._sample(cap, lambda i, kk, f=full.curves[mode]: f[i, kk - 1].double())
        assert k.shape == (3, 24) and bool((k[:, 1:] > k[:, :-1]).all())  # 24 distinct steps per image
        assert bool((k[:, 0] == 1).all() and (k[:, -1] == 128).all())
        assert torch.allclose(res.curves[mode], full.curves[mode][:, k0[0] - 1], atol=1e-6)  # the even set
        auc = torch.trapezoid(full.curves[mode].double().gather(1, k - 1), (k - 1).double() / 128)
        assert torch.allclose(res.scores[mode].double(), auc, atol=1e-6)
        for i in range(3):
            one = metric(net, x[i : i + 1], t[i : i + 1], maps[i : i + 1])
            assert torch.allclose(one.scores[mode], res.scores[mode][i : i + 1], atol=1e-6)
            assert torch.allclose(one.curves[mode], res.curves[mode][i : i + 1], atol=1e-6)


def test_adaptive_on_texts_of_different_lengths_uses_every_step_of_a_short_one():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(2, 50, (2, 40), generator=g)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 9:] = False  # 9 tokens: fewer steps than points
    maps, t = torch.rand(2, 40, generator=g), torch.ones(2, dtype=torch.long)
    kw = dict(per_step=1, unk_index=1, min_prob=None)
    res = InsertionDeletion(points=12, **kw)(Bag(), x, t, maps, mask=mask)
    full = InsertionDeletion(**kw)(Bag(), x, t, maps, mask=mask)
    for mode in ("insertion", "deletion"):
        assert torch.allclose(res.scores[mode][1], full.scores[mode][1], atol=1e-6)  # all 9 steps evaluated
        one = InsertionDeletion(points=12, **kw)(Bag(), x[:1], t[:1], maps[:1], mask=mask[:1])
        assert torch.allclose(one.scores[mode], res.scores[mode][:1], atol=1e-6)


@pytest.mark.parametrize("bad", [1, 0, "some", 2.5, True])
def test_bad_points_name_the_value_and_the_choices(bad):
    with pytest.raises(XattrConfigError, match=r"bad points .*valid choices: all, or an integer >= 2"):
        InsertionDeletion(points=bad)


@pytest.mark.parametrize("key,bad,msg", [("spacing", "log", r"unknown spacing 'log'; valid choices: adaptive, even"),
                                          ("rounds", 0, r"bad rounds 0; valid choices: ")])
def test_bad_spacing_and_rounds_name_the_value_and_the_choices(key, bad, msg):
    with pytest.raises(XattrConfigError, match=msg):
        InsertionDeletion(points=10, **{key: bad})


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
    # CPU: 2**21 input values per call: 2 097 152 // (3 x 224 x 224) = 13 rows; 16 x 16 images: the cap of 64
    assert CPU_CHUNK == 64 and resolve_chunk("auto", net, torch.zeros(1, 3, 224, 224)) == 13
    assert resolve_chunk("auto", net, torch.zeros(1, 3, 1024, 1024)) == 4  # at least 4
    with pytest.raises(XattrConfigError, match="bad chunk 0; valid choices: an integer >= 1, null .all at once., auto"):
        InsertionDeletion(chunk=0)


def bn_cnn() -> torch.nn.Module:
    """conv-BN-ReLU x 2, pool, linear; eval mode with non-trivial running statistics and affine parameters."""
    torch.manual_seed(6)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    for m in net:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def test_folded_batch_norm_gives_the_same_curves_and_leaves_the_model_alone():
    from xattr.metrics._perturb import folded

    net = bn_cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, maps, t = torch.randn(2, 3, S, S), torch.rand(2, 1, S, S), torch.tensor([0, 2])
    copy = folded(net, x[:1])
    assert copy is not net and not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    assert torch.allclose(copy(x), net(x), atol=1e-5)
    kw = dict(per_step=8, blur_sigma=3.0, min_prob=None)
    plain = InsertionDeletion(fold_bn=False, channels_last=False, **kw)(net, x, t, maps)
    fast = InsertionDeletion(fold_bn=True, channels_last=True, **kw)(net, x, t, maps)
    for mode in ("insertion", "deletion"):
        assert torch.allclose(plain.curves[mode], fast.curves[mode], atol=1e-5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    # where folding does not apply, the model itself: no BatchNorm, training mode, a forward hook
    tiny = TinyCNN(num_classes=3).eval()
    assert folded(tiny, x[:1]) is tiny
    assert folded(net.train(), x[:1]) is net
    net.eval()
    handle = net[2].register_forward_hook(lambda m, i, o: o * 2)
    assert folded(net, x[:1]) is net
    handle.remove()


def test_sensitivity_n_on_the_folded_channels_last_copy_equals_a_plain_loop_with_its_fill():
    """Sensitivity-N runs a folded, channels-last copy (issue 31): each (image, n) correlation equals the
    plain loop on the unfolded contiguous net, with masked pixels set to a non-zero ``fill``."""
    from xattr.metrics.sensitivity_n import SensitivityN

    net = bn_cnn()
    x, maps, t = torch.randn(2, 3, S, S), torch.rand(2, 1, S, S), torch.tensor([0, 2])
    metric = SensitivityN(n=[1, 4, 16], n_masks=6, fill=0.5, chunk=5)
    res = metric(net, x, t, maps)
    units, tid, n = metric.masks(S, S, x.device)
    for i in range(2):
        for k in range(len(n)):
            m = units[k][:, tid].view(-1, 1, S, S)
            with torch.no_grad():
                out = net(torch.cat([torch.where(m, 0.5, x[i : i + 1]), x[i : i + 1]]))[:, t[i]]
            drop, attr = out[-1] - out[:-1], (maps[i] * m).flatten(1).sum(1)
            expected = torch.corrcoef(torch.stack([attr, drop]))[0, 1]
            assert torch.isclose(res.curves["sensitivity_n"][i, k], expected, atol=1e-4)
    plain = SensitivityN(n=[1, 4, 16], n_masks=6, fill=0.5, chunk=5, fold_bn=False, channels_last=False)(net, x, t, maps)
    assert torch.allclose(plain.curves["sensitivity_n"], res.curves["sensitivity_n"], atol=1e-4)
    assert all(p.is_contiguous() for p in net.parameters())  # the format is restored


def test_folded_copy_is_kept_while_the_weights_stay_and_refolded_when_they_change():
    from xattr.metrics._perturb import folded

    net = bn_cnn()
    x = torch.randn(2, 3, S, S)
    first = folded(net, x[:1])
    assert folded(net, x[:1]) is first  # same weights: the kept copy
    with torch.no_grad():
        net[1].running_mean.add_(1.0)  # an in-place change of a buffer
    second = folded(net, x[:1])
    assert second is not first and torch.allclose(second(x), net(x), atol=1e-5)


def test_defaults_are_the_papers_protocol_and_the_cost_rule_by_hand():
    """The defaults are the paper's protocol (Petsiuk et al.; InputIBA D.3: 10 px a step, blur sigma 15 with the
    reference code's kernel 2 sigma - 1 = 29, deletion to 0, softmax, min_prob 0.6, every step); the cost is one
    forward per evaluated step and game plus the clean forward of the min_prob filter, counted by hand."""
    m = InsertionDeletion()
    assert (m.per_step, m.modes, m.blur_sigma, m.blur_kernel, m.deletion_value) == (10, ("insertion", "deletion"), 15.0, 29, 0.0)
    assert (m.output, m.min_prob, m.ties, m.seed, m.max_fraction, m.x_axis, m.points) == (
        "softmax", 0.6, "stable", 0, 1.0, "reference", None)
    assert (m.spacing, m.rounds, m.fold_bn, m.chunk, m.precision, m.unk_index, m.pass_mask, m.channels_last) == (
        "adaptive", 4, True, 256, "fp32", None, False, None)
    assert InsertionDeletion(blur_sigma=4).blur_kernel == 7 and InsertionDeletion(blur_sigma=4, blur_kernel=5).blur_kernel == 5
    assert (InsertionDeletion.name, InsertionDeletion.needs, InsertionDeletion.memory_knob) == (
        "insertion_deletion", ("mask",), "chunk")
    assert InsertionDeletion.cost_bounds == (0.5, 1.0)
    # 4 x 8 = 32 px at 10 a step: ceil(3.2) = 4 steps per game, 2 games, + 1 clean forward
    assert m.forwards_per_image((3, 4, 8), 5.0) == 9.0
    assert InsertionDeletion(x_axis="xattr").forwards_per_image((3, 4, 8), 5.0) == 11.0  # step 0 too
    assert InsertionDeletion(points=3).forwards_per_image((3, 4, 8), 5.0) == 7.0
    assert InsertionDeletion(points=50).forwards_per_image((3, 4, 8), 5.0) == 9.0  # at most every step
    assert InsertionDeletion(max_fraction=0.5, modes=["deletion"]).forwards_per_image((3, 4, 8), 5.0) == 3.0  # 16 px
    assert InsertionDeletion(per_step=1).forwards_per_image((37,), 5.0) == 75.0  # tokens: (L,), 37 steps
    assert InsertionDeletion(per_step=100).forwards_per_image((3, 4, 8), 5.0) == 3.0  # at least one step
    assert InsertionDeletion(per_step=1, max_fraction=0.01).forwards_per_image((37,), 5.0) == 3.0  # at least 1 token
    assert InsertionDeletion(channels_last=False, fold_bn=False).channels_last is False
    assert InsertionDeletion(fold_bn=0).fold_bn is False


@pytest.mark.parametrize("kwargs, msg", [
    ({"x_axis": "log"}, "unknown x_axis 'log'; valid choices: reference, xattr"),
    ({"spacing": "log"}, "unknown spacing 'log'; valid choices: adaptive, even"),
    ({"rounds": 0}, "bad rounds 0; valid choices: an integer >= 1"),
    ({"per_step": 0}, "bad per_step 0; valid choices: an integer >= 1"),
    ({"modes": ["insertion", "swap"]}, "unknown mode 'swap'; valid choices: insertion, deletion"),
    ({"output": "prob"}, "unknown output 'prob'; valid choices: softmax, logit, sigmoid"),
    ({"ties": "first"}, "unknown ties 'first'; valid choices: stable, random, numpy"),
    ({"precision": "fp8"}, "unknown precision 'fp8'; valid choices: fp32, bf16, fp16"),
    ({"blur_kernel": 4}, "bad blur_kernel 4; valid choices: an odd integer >= 1"),
    ({"blur_kernel": -1}, "bad blur_kernel -1; valid choices: an odd integer >= 1"),
    ({"max_fraction": 0}, "bad max_fraction 0; valid choices: a number in (0, 1]"),
    ({"max_fraction": 1.5}, "bad max_fraction 1.5; valid choices: a number in (0, 1]"),
])
def test_every_bad_setting_is_one_whole_line(kwargs, msg):
    import re

    with pytest.raises(XattrConfigError, match=f"^{re.escape(msg)}$"):
        InsertionDeletion(**kwargs)
    assert InsertionDeletion(blur_kernel=1, max_fraction=1.0).blur_kernel == 1  # the bounds themselves are valid


def test_a_blur_kernel_wider_than_the_image_is_one_whole_line():
    import re

    net = PixelLinear(torch.zeros(2, 3, 8, 8)).eval()
    x, t = torch.rand(1, 3, 8, 8), torch.zeros(1, dtype=torch.long)
    msg = "bad blur_kernel 17 for (8, 8) images; valid choices: an odd size below 15 (set blur_sigma / blur_kernel)"
    with pytest.raises(XattrConfigError, match=f"^{re.escape(msg)}$"):
        InsertionDeletion(blur_kernel=17, min_prob=None)(net, x, t, torch.rand(1, 1, 8, 8))
    InsertionDeletion(blur_kernel=15, min_prob=None, modes=["insertion"])(net, x, t, torch.rand(1, 1, 8, 8))  # 7 < 8


# ------------------------------------------- per-sample loops of the protocol (issue 26: the module's survivors)
class MaskedBag(torch.nn.Module):
    """A text model: logit_1 = sum of the (unmasked) tokens' weights - 3, logit_0 = 0."""

    w = torch.linspace(-1, 2, 50)

    def forward(self, tok, mask=None):
        keep = torch.ones_like(tok, dtype=torch.bool) if mask is None else mask
        s = (self.w[tok] * keep).sum(1) - 3
        return torch.stack([torch.zeros_like(s), s], 1)


def _trapezoid_dx(ys: torch.Tensor, dx: float) -> float:
    return float((ys[:-1] + ys[1:]).sum() / 2 * dx) if len(ys) > 1 else 0.0


def test_tokens_equal_a_per_text_loop_of_the_reference_protocol():
    """InputIBA's text protocol, written here text by text: the real tokens ranked by the map (highest first,
    equal values lower position first, padding never), ``cap = round(max_fraction * n)`` of them perturbed in
    steps of ``per_step`` (deletion: to ``<unk>``; insertion: from all-``<unk>`` real tokens back to the text),
    the target's softmax after each step, AUC = trapezoid with ``dx = 1 / T``; a shorter text's curve repeats its
    last point; the x axis counts the tokens perturbed (longest text)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(2, 50, (3, 14), generator=g)
    mask = torch.zeros(3, 14, dtype=torch.bool)
    mask[0, :12], mask[1, 3:11], mask[2, 5:7] = True, True, True  # 12, 8 and 2 real tokens
    maps = torch.randint(0, 4, (3, 14), generator=g).float()  # many ties
    maps[~mask] = 100.0  # padding must never be ranked
    t = torch.tensor([1, 0, 1])
    unk, per_step = 1, 2
    for pass_mask in (True, False):
        for chunk in (256, "auto"):
            res = InsertionDeletion(per_step=per_step, unk_index=unk, max_fraction=0.5, min_prob=None,
                                    pass_mask=pass_mask, chunk=chunk)(MaskedBag(), x, t, maps, mask=mask)
            assert res.x_axis["deletion"].tolist() == [2.0, 4.0, 6.0]  # caps 6, 4, 1: T = 3, 2, 1
            for i in range(3):
                idx = mask[i].nonzero()[:, 0]
                cap = max(1, round(0.5 * len(idx)))
                steps = -(-cap // per_step)
                order = idx[torch.argsort(maps[i, idx], descending=True, stable=True)]
                for mode in ("insertion", "deletion"):
                    ys = []
                    for k in range(1, steps + 1):
                        top = order[: min(k * per_step, cap)]
                        cur = x[i].clone()
                        if mode == "deletion":
                            cur[top] = unk
                        else:
                            cur[idx] = unk
                            cur[top] = x[i, top]
                        out = MaskedBag()(cur[None], mask=mask[i : i + 1] if pass_mask else None)
                        ys.append(out.softmax(-1)[0, t[i]])
                    ys = torch.stack(ys).double()
                    curve = torch.cat([ys, ys[-1:].expand(3 - steps)])  # padded with its last point
                    assert torch.allclose(res.curves[mode][i].double(), curve, atol=1e-6), (mode, i)
                    assert float(res.scores[mode][i]) == pytest.approx(_trapezoid_dx(ys, 1 / steps), abs=1e-6)
    import re

    msg = "bad maps shape (3, 13); valid choices: (3, 14) for tokens"
    with pytest.raises(XattrConfigError, match=f"^{re.escape(msg)}$"):
        InsertionDeletion(unk_index=1)(MaskedBag(), x, t, maps[:, :13], mask=mask)


@pytest.mark.parametrize("output", ["softmax", "logit", "sigmoid"])
def test_images_equal_a_per_image_loop_with_a_fraction_a_fill_and_each_readout(output):
    """Deletion fills the top pixels (every channel) with ``deletion_value``; insertion starts from the image
    blurred by torchvision's Gaussian (kernel 2 sigma - 1) and puts the top pixels back; ``max_fraction``
    caps the perturbed pixels; each step's read-out is the target's softmax, logit or sigmoid; AUC over
    ``x = (k - 1) / T``. Written image by image here."""
    from torchvision.transforms.functional import gaussian_blur

    torch.manual_seed(0)
    net = TinyCNN(num_classes=3).eval()
    x, t = torch.randn(2, 3, 6, 6), torch.tensor([2, 0])
    maps = torch.randint(0, 5, (2, 1, 6, 6)).float()  # ties: lower raster index first
    per_step, frac, fill = 5, 0.75, 0.3
    res = InsertionDeletion(per_step=per_step, max_fraction=frac, deletion_value=fill, blur_sigma=2.0, output=output,
                            min_prob=None)(net, x, t, maps)
    cap = round(frac * 36)  # 27
    steps = -(-cap // per_step)  # 6
    assert torch.allclose(res.x_axis["deletion"].double(), torch.arange(steps).double() / steps)
    read = {"softmax": lambda o: o.softmax(-1), "logit": lambda o: o, "sigmoid": lambda o: o.sigmoid()}[output]
    with torch.no_grad():
        for i in range(2):
            order = torch.argsort(maps[i, 0].flatten(), descending=True, stable=True)
            blurred = gaussian_blur(x[i : i + 1], [3, 3], [2.0, 2.0])[0]
            for mode in ("insertion", "deletion"):
                ys = []
                for k in range(1, steps + 1):
                    top = order[: min(k * per_step, cap)]
                    if mode == "deletion":
                        cur = x[i].clone().view(3, -1)
                        cur[:, top] = fill
                    else:
                        cur = blurred.clone().view(3, -1)
                        cur[:, top] = x[i].view(3, -1)[:, top]
                    ys.append(read(net(cur.view(1, 3, 6, 6)))[0, t[i]])
                ys = torch.stack(ys).double()
                assert torch.allclose(res.curves[mode][i].double(), ys, atol=1e-5), (mode, i)
                assert float(res.scores[mode][i]) == pytest.approx(_trapezoid_dx(ys, 1 / steps), abs=1e-5)


def test_min_prob_keeps_images_at_or_above_it_by_the_clean_softmax_or_sigmoid():
    """Images whose clean target probability is below ``min_prob`` get NaN scores (curves kept); the probability
    is the softmax for ``softmax`` and ``logit`` read-outs, the sigmoid for ``sigmoid``; equal to it: kept."""
    x, maps = torch.rand(2, 3, 4, 4), torch.rand(2, 1, 4, 4)
    even = PixelLinear(torch.zeros(2, 3, 4, 4)).eval()  # logits 0, 0: softmax exactly 0.5
    for output in ("softmax", "logit"):
        res = InsertionDeletion(per_step=4, blur_sigma=1.0, min_prob=0.5, output=output)(even, x, torch.tensor([0, 1]), maps)
        assert res.scores["prob"].tolist() == [0.5, 0.5]
        assert torch.isfinite(res.scores["insertion"]).all() and torch.isfinite(res.scores["deletion"]).all()
    w = torch.zeros(2, 3, 4, 4)
    w[1] = 0.1
    net = PixelLinear(w).eval()  # logit_1 = 0.1 sum x
    t = torch.tensor([1, 1])
    x2 = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), 0.1)])  # logit_1 = 2.4 and 0.48
    p = torch.tensor([2.4, 0.48]).sigmoid()  # two classes, logit_0 = 0: softmax = sigmoid of the difference
    for output in ("softmax", "logit", "sigmoid"):
        res = InsertionDeletion(per_step=4, blur_sigma=1.0, min_prob=float(p.mean()), output=output)(net, x2, t, maps)
        torch.testing.assert_close(res.scores["prob"], p)
        for mode in ("insertion", "deletion"):
            assert torch.isfinite(res.scores[mode][0]) and torch.isnan(res.scores[mode][1])
            assert torch.isfinite(res.curves[mode]).all()
    w3 = torch.zeros(3, 3, 4, 4)
    w3[0] = 0.1  # three classes: the sigmoid of logit_0 is not its softmax
    res = InsertionDeletion(per_step=4, blur_sigma=1.0, min_prob=None, output="sigmoid")(
        PixelLinear(w3).eval(), x2, torch.tensor([0, 0]), maps)
    torch.testing.assert_close(res.scores["prob"], torch.tensor([2.4, 0.48]).sigmoid())
    res = InsertionDeletion(per_step=4, blur_sigma=1.0, min_prob=None, output="logit")(
        PixelLinear(w3).eval(), x2, torch.tensor([0, 0]), maps)
    torch.testing.assert_close(res.scores["prob"], torch.tensor([[2.4, 0, 0], [0.48, 0, 0]]).softmax(1)[:, 0])


@pytest.mark.parametrize("x_axis, points, returned", [("reference", 5, 3), ("reference", 6, 6), ("xattr", 6, 3),
                                                      ("xattr", 7, 7)])
def test_points_below_the_full_curve_go_adaptive_and_return_half_of_them(x_axis, points, returned):
    """16 px at 3 a step: T = ceil(16 / 3) = 6 steps (7 points on the ``xattr`` axis, with step 0). Fewer
    points than that: the adaptive scheme, whose returned curve is its even half (ceil(P / 2) points);
    as many or more: the full curve."""
    net = PixelLinear(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))).eval()
    x, maps = torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4)
    res = InsertionDeletion(per_step=3, blur_sigma=1.0, min_prob=None, points=points, x_axis=x_axis,
                            modes=["deletion"])(net, x, torch.tensor([0]), maps)
    assert res.curves["deletion"].shape == (1, returned)


def test_adaptive_rounds_with_no_point_to_place_are_skipped_not_the_end():
    """points 4 with 4 rounds: 2 even points, then 2 // 4 = 0 and 2 // 3 = 0 in the first two rounds, 1 and 1
    in the last two: 4 perturbed forwards in all (plus the clean one)."""
    net = PixelLinear(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))).eval()
    rows = []
    net.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    x, maps = torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4)
    InsertionDeletion(per_step=1, blur_sigma=1.0, min_prob=None, points=4, rounds=4, modes=["deletion"],
                      fold_bn=False)(net, x, torch.tensor([0]), maps)
    assert sum(rows) == 4 + 1


def test_refine_weights_intervals_by_their_width_takes_flat_ones_and_breaks_ties_in_order():
    """refine's weight of an interval is (|dy| + half its larger neighbour's) x width: a wide interval with a
    small change outweighs a narrow one with a larger change; a flat curve (weight 0) still gets its seats;
    equal weights go to the first interval."""
    k = torch.tensor([[0, 2, 12]])
    y = torch.tensor([[1.0, 0.0, -0.5]])  # weights (1 + 0.25) x 2/12 = 0.21 and (0.5 + 0.5) x 10/12 = 0.83
    new, valid = refine(k, y, k / 12.0, 1)
    assert new.tolist() == [[7]] and valid.tolist() == [[True]]  # the middle of 2..12
    flat = torch.tensor([[0, 4]])
    new, valid = refine(flat, torch.tensor([[0.3, 0.3]]), flat / 4.0, 1)
    assert new.tolist() == [[2]] and valid.tolist() == [[True]]
    even = torch.tensor([[0, 4, 8]])
    new, valid = refine(even, torch.tensor([[0.0, 1.0, 2.0]]), even / 8.0, 1)  # both weigh 1.5 x 0.5
    assert new.tolist() == [[2]]


def test_xattr_axis_is_the_fraction_perturbed_and_a_tiny_fraction_perturbs_one_pixel():
    """``x_axis: xattr``: x = min(k per_step, cap) / cap from 0 to 1 exactly; ``max_fraction`` 0.03 of 36 px
    rounds to 1 pixel: one step (reference) or two points at x = 0 and 1 (xattr)."""
    net = PixelLinear(torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))).eval()
    x, maps, t = torch.rand(1, 3, 6, 6), torch.rand(1, 1, 6, 6), torch.tensor([0])
    res = InsertionDeletion(per_step=9, blur_sigma=1.0, min_prob=None, x_axis="xattr")(net, x, t, maps)
    assert res.x_axis["deletion"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    one = InsertionDeletion(per_step=1, blur_sigma=1.0, min_prob=None, max_fraction=0.03)(net, x, t, maps)
    assert one.curves["deletion"].shape == (1, 1) and one.scores["deletion"].item() == 0.0
    two = InsertionDeletion(per_step=1, blur_sigma=1.0, min_prob=None, max_fraction=0.03, x_axis="xattr")(net, x, t, maps)
    assert two.x_axis["deletion"].tolist() == [0.0, 1.0]
