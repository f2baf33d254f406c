"""Insertion/deletion, Sensitivity-n and MoRF/LeRF degradation on models we can reason about.

Expected values come from closed forms (linear models), greedy-optimality arguments and independent
straightforward per-image loops written here, never from the metric's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from xattr.analyses.sensitivity_n import pooled_curve
from xattr.errors import XattrConfigError
from xattr.metrics.degradation import Degradation
from xattr.metrics.insertion_deletion import InsertionDeletion
from xattr.metrics.lerf import LeRF
from xattr.metrics.sensitivity_n import SensitivityN, default_fractions, default_n
from xattr.models.tiny import PixelLinear, TinyCNN

S = 8  # image side


def linear_setup(c: int = 1, b: int = 4, scale: float = 6.0):
    """Two classes: logit_0 = sum W0 x with W0 > 0, logit_1 = 0; x > 0 so every pixel supports class 0."""
    g = torch.Generator().manual_seed(1)
    w = torch.zeros(2, c, S, S)
    w[0] = torch.rand(c, S, S, generator=g) + 0.05
    x = torch.rand(b, c, S, S, generator=g) + 0.1
    w[0] *= scale / (w[0] * x.mean(0)).sum()  # logit_0 about `scale`: probabilities not saturated
    model = PixelLinear(w).eval()
    truth = (w[0] * x).sum(1, keepdim=True)  # exact contribution of each pixel
    return model, x, torch.zeros(b, dtype=torch.long), truth, w


def rand_map(b: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(b, 1, S, S, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- insertion / deletion
def test_deletion_curve_is_monotone_and_not_piecewise_constant():
    model, x, t, truth, _ = linear_setup()
    res = InsertionDeletion(per_step=3, min_prob=None, chunk=7, blur_sigma=2.0, x_axis="xattr")(model, x, t, truth)
    d = res.curves["deletion"]
    assert d.shape == (4, 1 + -(-S * S // 3))
    assert (d[:, 1:] - d[:, :-1] <= 1e-6).all()  # removing positive evidence never raises p
    assert (d[:, 1:] - d[:, :-1] < -1e-7).all()  # every step changes it (reference defect: flat chunks)
    assert torch.allclose(d[:, -1], torch.full((4,), 0.5))  # all pixels 0: logits equal
    assert torch.allclose(res.x_axis["deletion"][[0, -1]], torch.tensor([0.0, 1.0]))


def test_true_weight_map_is_best_and_random_worse():
    model, x, t, truth, w = linear_setup()
    metric = InsertionDeletion(per_step=4, min_prob=None, blur_sigma=2.0)
    ours = metric(model, x, t, truth).scores
    rnd = metric(model, x, t, rand_map(4)).scores
    worst = metric(model, x, t, -truth).scores
    # deletion: removing the largest contributions first minimises every point of the curve
    assert (ours["deletion"] < rnd["deletion"]).all() and (rnd["deletion"] < worst["deletion"]).all()
    # insertion: the greedy-optimal order is by W0 * (x - canvas); the truth map is close to it
    canvas = gaussian_blur(x, [metric.blur_kernel] * 2, [2.0] * 2)
    oracle = metric(model, x, t, (w[0] * (x - canvas)).sum(1, keepdim=True)).scores
    assert (oracle["insertion"] >= ours["insertion"] - 1e-6).all()
    assert (ours["insertion"] > rnd["insertion"]).all()
    assert (rnd["insertion"] > worst["insertion"]).all()


def straightforward_insdel(model, x, target, maps, k, sigma):
    """Per-image loop as the paper describes it: rank pixels, perturb k more per step, one forward each."""
    ins, dele = [], []
    kernel = int(2 * sigma - 1)
    for xi, ti, mi in zip(x, target, maps):
        order = torch.argsort(mi.flatten(), descending=True, stable=True)
        canvas = gaussian_blur(xi[None], [kernel] * 2, [sigma] * 2)[0]
        cur_d, cur_i = xi.clone(), canvas.clone()
        cd, ci = [], []
        for s in range(0, order.numel() + k, k):
            idx = order[: min(s, order.numel())]
            cur_d = xi.clone().flatten(1)
            cur_d[:, idx] = 0
            cur_i = canvas.clone().flatten(1)
            cur_i[:, idx] = xi.flatten(1)[:, idx]
            with torch.no_grad():
                cd.append(model(cur_d.view_as(xi)[None]).softmax(-1)[0, ti])
                ci.append(model(cur_i.view_as(xi)[None]).softmax(-1)[0, ti])
            if s >= order.numel():
                break
        dele.append(torch.stack(cd))
        ins.append(torch.stack(ci))
    return torch.stack(ins), torch.stack(dele)


def test_batched_equals_straightforward_loop_on_a_cnn():
    net = TinyCNN(num_classes=3).eval()
    x = torch.randn(3, 3, S, S)
    t = torch.tensor([0, 1, 2])
    maps = rand_map(3)
    res = InsertionDeletion(per_step=5, min_prob=None, blur_sigma=3.0, chunk=4, x_axis="xattr")(net, x, t, maps)
    ins, dele = straightforward_insdel(net, x, t, maps, 5, 3.0)
    assert torch.allclose(res.curves["deletion"], dele, atol=1e-5)
    assert torch.allclose(res.curves["insertion"], ins, atol=1e-5)
    frac = res.x_axis["deletion"]
    assert torch.allclose(res.scores["deletion"], torch.trapezoid(dele, frac, dim=1), atol=1e-5)
    # one image at a time, other chunk sizes: same numbers
    for i in range(3):
        one = InsertionDeletion(per_step=5, min_prob=None, blur_sigma=3.0, chunk=1000, x_axis="xattr")(net, x[i : i + 1], t[i : i + 1], maps[i : i + 1])
        assert torch.allclose(one.curves["insertion"][0], res.curves["insertion"][i], atol=1e-5)


def test_probability_filter_and_ties():
    model, x, t, truth, _ = linear_setup(scale=0.2)  # p(target) about 0.55 < 0.6
    res = InsertionDeletion(per_step=8, blur_sigma=2.0)(model, x, t, truth)
    assert torch.isnan(res.scores["insertion"]).all() and torch.isfinite(res.curves["insertion"]).all()
    flat = torch.zeros(1, 1, S, S)  # all ties: stable order deletes in raster order
    res = InsertionDeletion(per_step=S, min_prob=None, modes=["deletion"], x_axis="xattr")(model, x[:1], t[:1], flat)
    row = torch.arange(S)
    expected = [model(torch.where((row[:, None] < r).expand(S, S), 0.0, x[0, 0])[None, None]).softmax(-1)[0, 0] for r in range(S + 1)]
    assert torch.allclose(res.curves["deletion"][0], torch.stack(expected).detach(), atol=1e-6)
    rnd = InsertionDeletion(per_step=S, min_prob=None, modes=["deletion"], ties="random", x_axis="xattr")(model, x[:1], t[:1], flat)
    assert not torch.allclose(rnd.curves["deletion"], res.curves["deletion"])


def test_tokens_replace_by_unk_and_respect_mask():
    class Bag(torch.nn.Module):  # logit_1 = sum of token weights, logit_0 = 0
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0]))  # index 1 = <unk>

        def forward(self, tok):
            s = self.w[tok].sum(1)
            return torch.stack([torch.zeros_like(s), s], 1)

    x = torch.tensor([[4, 3, 2, 0], [2, 3, 4, 4]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    maps = Bag().w[x].detach()
    res = InsertionDeletion(per_step=1, unk_index=1, min_prob=None, x_axis="xattr")(Bag(), x, torch.ones(2, dtype=torch.long), maps, mask=mask)
    d = res.curves["deletion"]
    assert torch.allclose(d[0], torch.sigmoid(torch.tensor([6.0, 3, 1, 0, 0])))  # padding never touched
    assert torch.allclose(d[1], torch.sigmoid(torch.tensor([9.0, 6, 3, 1, 0])))
    with pytest.raises(XattrConfigError, match="unk_index"):
        InsertionDeletion()(Bag(), x, torch.ones(2, dtype=torch.long), maps)


def test_bad_config_names_choices():
    with pytest.raises(XattrConfigError, match="valid choices: insertion, deletion"):
        InsertionDeletion(modes=["erase"])
    with pytest.raises(XattrConfigError, match="softmax"):
        InsertionDeletion(output="prob")


# ----------------------------------------------------------------------------- sensitivity-n
@pytest.mark.parametrize("protocol,tile", [("inputiba", 1), ("iba", 2)])
def test_sensitivity_n_is_one_for_a_linear_model_with_its_true_map(protocol, tile):
    model, x, t, truth, _ = linear_setup(c=3)
    res = SensitivityN(protocol=protocol, tile=tile, n=[1, 3, 9] if protocol == "inputiba" else None, n_masks=12)(model, x, t, truth)
    assert torch.allclose(res.curves["sensitivity_n"], torch.ones_like(res.curves["sensitivity_n"]), atol=1e-5)
    rnd = SensitivityN(protocol=protocol, tile=tile, n=[1, 3, 9] if protocol == "inputiba" else None, n_masks=12)(model, x, t, rand_map(4))
    assert (rnd.scores["sensitivity_n"] < 0.9).all()
    if protocol == "iba":
        values, corr = pooled_curve(res.curves["attr_sum"], res.curves["output_drop"], res.x_axis["attr_sum"])
        assert torch.equal(values, res.x_axis["sensitivity_n"]) and torch.allclose(corr, torch.ones_like(corr), atol=1e-5)


def test_sensitivity_n_matches_reference_style_loop_and_pools_across_batches():
    net = TinyCNN(num_classes=3).eval()
    x, t, maps = torch.randn(4, 3, S, S), torch.tensor([0, 1, 2, 0]), rand_map(4)
    metric = SensitivityN(protocol="iba", tile=2, n_masks=10, chunk=9)
    res = metric(net, x, t, maps)
    units, tid, n = metric.masks(S, S, x.device)
    assert (units.sum(-1) == n[:, None]).all()  # exactly n tiles per mask
    for i in range(4):  # the IBA paper code's loop: x * (1 - mask), logits, corrcoef over masks
        for k in range(len(n)):
            masks = units[k][:, tid].float().view(-1, 1, S, S)
            with torch.no_grad():
                out = net(torch.cat([x[i : i + 1] * (1 - masks), x[i : i + 1]]))[:, t[i]]
            drop = out[-1] - out[:-1]
            attr = (maps[i] * masks).flatten(1).sum(1)
            expected = torch.corrcoef(torch.stack([attr, drop]))[0, 1]
            assert torch.isclose(res.curves["sensitivity_n"][i, k], expected, atol=1e-4)
    halves = [metric(net, x[s], t[s], maps[s]) for s in (slice(0, 2), slice(2, 4))]
    pooled = pooled_curve(torch.cat([h.curves["attr_sum"] for h in halves]), torch.cat([h.curves["output_drop"] for h in halves]), res.x_axis["attr_sum"])[1]
    assert torch.allclose(pooled, pooled_curve(res.curves["attr_sum"], res.curves["output_drop"], res.x_axis["attr_sum"])[1], atol=1e-5)


def test_sensitivity_n_defaults():
    n = default_n("inputiba", 224 * 224)
    assert n[0] == 1 and n[-1] == int(10**4.5) and len(n) == len(set(n))
    n = default_n("iba", 28 * 28)
    assert n[0] == 1 and n[-1] == round(0.8 * 784) and len(n) <= 16
    with pytest.raises(XattrConfigError, match="valid choices: inputiba, iba"):
        SensitivityN(protocol="ancona")


@pytest.mark.parametrize("make", [
    lambda c: SensitivityN(protocol="iba", tile=2, n_masks=10, chunk=c),
    lambda c: Degradation(tile=2, n_points=9, chunk=c),
    lambda c: LeRF(fractions=(0.1, 0.3, 0.5), chunk=c),
], ids=["sensitivity_n", "degradation", "lerf"])
def test_default_chunk_is_auto_sized_for_the_cpu_and_never_changes_scores(make, monkeypatch):
    """Sensitivity-N, Degradation and LeRF default to ``chunk: auto`` (issue 31: 256 fixed forwards per call
    ran 1.3-2.4x slower per image on a CPU, docs/speed.md). Off CUDA ``auto`` is ``CPU_CHUNK_VALUES // values
    per row`` (at least 4), patched here to 5 rows of 3 x 8 x 8: no call holds more, and every score and curve
    equals ``chunk=None``'s."""
    import inspect

    import xattr.core.chunk as chunk_mod

    seen: list[int] = []
    net = TinyCNN(num_classes=3).eval()
    net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    x, t, maps = torch.randn(4, 3, S, S), torch.tensor([0, 1, 2, 0]), rand_map(4)
    ref = make(None)(net, x, t, maps)
    assert inspect.signature(type(make(None)).__init__).parameters["chunk"].default == "auto"
    monkeypatch.setattr(chunk_mod, "CPU_CHUNK_VALUES", 5 * 3 * S * S)
    seen.clear()
    res = make("auto")(net, x, t, maps)
    assert max(seen) <= 5 and len(seen) > 2, seen
    for key, v in ref.scores.items():
        torch.testing.assert_close(res.scores[key], v, rtol=1e-5, atol=1e-6)
    for key, v in ref.curves.items():
        torch.testing.assert_close(res.curves[key], v, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- degradation
def test_degradation_true_map_beats_random_and_scaling():
    model, x, t, truth, _ = linear_setup(c=3, scale=2.0)
    metric = Degradation(tile=2, n_points=9, fill=0.0)  # fill 0: W0 * x is the exact removal effect
    ours = metric(model, x, t, truth)
    rnd = metric(model, x, t, rand_map(4))
    assert (ours.scores["degradation"] > rnd.scores["degradation"]).all()
    assert (ours.scores["morf_auc"] < rnd.scores["morf_auc"]).all()
    assert (ours.scores["lerf_auc"] > rnd.scores["lerf_auc"]).all()
    assert (ours.scores["lerf_change_auc"] < rnd.scores["lerf_change_auc"]).all()
    assert ((ours.curves["morf"] <= rnd.curves["morf"] + 1e-6) & (ours.curves["lerf"] >= rnd.curves["lerf"] - 1e-6)).all()
    ours = Degradation(tile=2, n_points=9)(model, x, t, truth)  # the paper's fill: per-channel image mean
    mo, le = ours.curves["morf"], ours.curves["lerf"]
    assert torch.allclose(mo[:, 0], le[:, 0]) and torch.allclose(mo[:, -1], le[:, -1])  # same start / end image
    # fully degraded = per-channel mean everywhere; linear model: closed form
    full = x.mean((2, 3), keepdim=True).expand_as(x)
    assert torch.allclose(le[:, -1], model(full).softmax(-1)[:, 0], atol=1e-6)
    summ = Degradation(tile=2, n_points=9).summarise(ours.scores)
    t1, b = float(ours.scores["top1_prob"].mean()), float(le[:, -1].mean())
    assert summ["degradation_scaled"][0] == pytest.approx(float(ours.scores["degradation"].mean()) / (t1 - b), rel=1e-5)
    scaled = Degradation(tile=2, n_points=9, t1=t1, b=b)(model, x, t, truth).scores["degradation"]
    assert torch.allclose(scaled, ours.scores["degradation"] / (t1 - b), atol=1e-6)


def test_degradation_matches_per_image_tile_loop():
    net = TinyCNN(num_classes=3).eval()
    x, t, maps = torch.randn(2, 3, S, S), torch.tensor([2, 1]), rand_map(2)
    res = Degradation(tile=4, n_points=5, chunk=3)(net, x, t, maps)  # 4 tiles -> 0, 1, 2, 3, 4 removed
    for i in range(2):
        sums = maps[i, 0].view(2, 4, 2, 4).sum((1, 3)).flatten()  # tile sums, raster order of tiles
        curve = {}
        for name, desc in (("morf", True), ("lerf", False)):
            order = torch.argsort(sums, descending=desc, stable=True)
            cur, pts = x[i].clone(), []
            for k in range(5):
                if k:
                    r, c = divmod(int(order[k - 1]), 2)
                    cur[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = x[i].mean((1, 2))[:, None, None]
                pts.append(net(cur[None]).softmax(-1)[0, t[i]])
            assert torch.allclose(res.curves[name][i], torch.stack(pts).detach(), atol=1e-5)
            curve[name] = torch.stack(pts).detach().double().numpy()
        # the scores: trapezoids over the share of tiles removed (0, 1/4, ..., 1), by numpy
        frac, lerf, morf = np.linspace(0, 1, 5), curve["lerf"], curve["morf"]
        for key, ys in (("morf_auc", morf), ("lerf_auc", lerf), ("degradation", lerf - morf),
                        ("lerf_change_auc", np.abs(lerf - lerf[0]) / lerf[0])):  # relative change from the original
            assert float(res.scores[key][i]) == pytest.approx(np.trapezoid(ys, frac), abs=1e-5), key
        assert float(res.scores["degraded_prob"][i]) == pytest.approx(lerf[-1], abs=1e-6)


def test_sensitivity_n_protocols_pinned_to_reference_md():
    """REFERENCE.md "Sensitivity-N": InputIBA: 100 masks per n, pixels set to 0, logits, per image, n =
    unique(int(logspace(0, 4.5, 45))); IBA paper: tiles of 8, 16 log-spaced n from 1 to 0.8 #tiles, pooled pairs."""
    import numpy as np

    m = SensitivityN()
    assert (m.protocol, m.n_masks, m.fill, m.output, m.tile, m.return_pairs, m.seed) == ("inputiba", 100, 0.0, "logit", 1, False, 0)
    assert (m.precision, m.chunk, m.fold_bn, m.channels_last) == ("fp32", "auto", True, None)
    iba = SensitivityN(protocol="iba")
    assert (iba.tile, iba.return_pairs) == (8, True)
    expected = [int(v) for v in np.unique(np.logspace(0, 4.5, 45).astype(int))]  # the reference's expression
    assert default_n("inputiba", 10**6) == expected and expected[:6] == [1, 2, 3, 4, 5, 6] and expected[-1] == 31622
    assert default_n("inputiba", 30) == [v for v in expected if v < 30]  # clipped to n_units - 1
    n = default_n("iba", 784)  # 224 px / 8: 28 x 28 tiles
    spaced = np.round(np.exp(np.linspace(0, np.log(0.8 * 784), 16))).astype(int)  # 16 values, 15 distinct
    assert n == sorted({int(v) for v in spaced}) and n[-1] == 627
    assert default_fractions() == [round(float(v), 4) for v in np.geomspace(0.01, 0.8, 12)]
    # the cost rule: n_masks forwards per n, plus the clean one
    assert m.forwards_per_image((3, 224, 224), 0.0) == 100 * len(default_n("inputiba", 224 * 224)) + 1
    assert iba.forwards_per_image((3, 224, 224), 0.0) == 100 * len(n) + 1  # 15 distinct n
    assert SensitivityN(n=[1, 2], n_masks=7).forwards_per_image((3, 8, 8), 0.0) == 15
    assert m.forwards_per_image((40,), 0.0) == 100 * 12 + 1  # tokens: per fraction
    assert SensitivityN(fractions=[0.5]).forwards_per_image((40,), 0.0) == 101
    assert (m.name, m.needs, m.memory_knob) == ("sensitivity_n", ("mask",), "chunk")


def test_sensitivity_n_masks_seed_tiles_x_axis_and_output_by_hand():
    model, x, t, truth, _ = linear_setup(c=3)
    a = SensitivityN(tile=2, n=[1, 3], n_masks=6, seed=4)
    units, tid, n = a.masks(S, S, x.device)
    assert units.shape == (2, 6, (S // 2) ** 2) and torch.equal(units.sum(-1), torch.tensor([[1] * 6, [3] * 6]))
    assert tid.tolist()[: S + 2] == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0]  # S = 8: 4 tiles per row, 2 pixel rows each
    assert torch.equal(SensitivityN(tile=2, n=[1, 3], n_masks=6, seed=4).masks(S, S, x.device)[0], units)
    assert not torch.equal(SensitivityN(tile=2, n=[1, 3], n_masks=6, seed=5).masks(S, S, x.device)[0], units)
    res = a(model, x, t, truth)
    assert res.x_axis["sensitivity_n"].tolist() == [4.0, 12.0]  # n tiles x tile**2 pixels
    # softmax: the drop of the target's probability, per mask, by hand for image 0 and n = 3
    soft = SensitivityN(tile=2, n=[1, 3], n_masks=6, seed=4, output="softmax", return_pairs=True)(model, x, t, truth)
    pix = units[1][:, tid].view(-1, 1, S, S)
    with torch.no_grad():
        p = model(torch.cat([torch.where(pix, 0.0, x[:1]), x[:1]])).softmax(1)[:, 0]
    drop = (p[-1] - p[:-1]).double()
    assert torch.allclose(soft.curves["output_drop"][0, 6:].double(), drop, atol=1e-6)
    attr = (truth[0] * pix).flatten(1).sum(1).double()
    assert torch.allclose(soft.curves["attr_sum"][0, 6:].double(), attr, atol=1e-5)
    assert soft.x_axis["attr_sum"].tolist() == soft.x_axis["output_drop"].tolist() == [4.0] * 6 + [12.0] * 6
    r = torch.corrcoef(torch.stack([attr, drop]))[0, 1]
    assert torch.isclose(soft.curves["sensitivity_n"][0, 1].double(), r, atol=1e-5)
    assert torch.isclose(soft.scores["sensitivity_n"][0], soft.curves["sensitivity_n"][0].mean())


def test_sensitivity_n_bad_values_are_one_line():
    with pytest.raises(XattrConfigError, match=r"^unknown output 'prob'; valid choices: logit, softmax$"):
        SensitivityN(output="prob")
    with pytest.raises(XattrConfigError, match=r"^unknown precision 'fp64'; valid choices: fp32, bf16, fp16$"):
        SensitivityN(precision="fp64")
    with pytest.raises(XattrConfigError, match=r"^bad fractions \[0.0, 1.5\]; valid choices: shares in \(0, 1\]$"):
        SensitivityN(fractions=[0.0, 0.5, 1.5])
    with pytest.raises(XattrConfigError, match=r"^bad fractions \[\]; valid choices: shares in \(0, 1\]$"):
        SensitivityN(fractions=[])
    with pytest.raises(XattrConfigError, match=r"^bad n \[16, 20\]; valid choices: integers in 1\.\.15 for this image$"):
        SensitivityN(tile=2, n=[1, 16, 20]).masks(S, S, torch.device("cpu"))  # 16 tiles of 2 x 2


def test_sensitivity_n_units_of_non_square_images_names_and_channels_last(monkeypatch):
    expected = [int(v) for v in __import__("numpy").unique(__import__("numpy").logspace(0, 4.5, 45).astype(int))]
    assert expected[15] not in default_n("inputiba", expected[15])  # n < n_units
    # 8 x 32 pixels in tiles of 8: 1 x 4 = 4 units (a square read of either side gives 1 or 16)
    assert SensitivityN(protocol="iba").forwards_per_image((3, 8, 32), 0.0) == 100 * len(default_n("iba", 4)) + 1
    assert SensitivityN(protocol="iba").forwards_per_image((3, 32, 8), 0.0) == 100 * len(default_n("iba", 4)) + 1
    assert default_n("iba", 4) != default_n("iba", 16)
    for kw, line in ((dict(protocol="ancona"), "unknown protocol 'ancona'"), (dict(tile=0), "bad tile 0"),
                     (dict(n=[0]), "bad n 0"), (dict(n_masks=0), "bad n_masks 0")):
        with pytest.raises(XattrConfigError, match="^" + line):
            SensitivityN(**kw)
    assert SensitivityN(fractions=[1.0]).fractions == [1.0]  # all of a review's tokens is a valid share
    # channels-last forwards on a CPU by default, off when asked (a pre-hook keeps the model unfolded)
    model, x, t, truth, _ = linear_setup(c=3)
    seen = []
    model.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    SensitivityN(n=[1], n_masks=2)(model, x, t, truth)
    assert seen and all(seen)
    seen.clear()
    SensitivityN(n=[1], n_masks=2, channels_last=False)(model, x, t, truth)
    assert seen and not any(seen)


def test_degradation_defaults_cost_axis_top1_and_the_eq8_summary_by_hand():
    """REFERENCE.md (IBA paper): tiles of 8, the image's per-channel mean, 100 points, softmax; the class equals
    conf/metric/degradation.yaml. The cost rule (n_points per curve, twice, plus the clean forward) equals the rows
    a call runs; the x axis is the share of tiles removed; ``top1_prob`` is the clean softmax (or sigmoid) maximum.
    The eq.-8 summary by hand: t1 = mean top-1 0.8, b = mean degraded 0.2, areas 0.2 and 0.4 -> 0.5 +- 0.1 / 0.6."""
    import math
    import re

    from omegaconf import OmegaConf

    from xattr.config import CONF_DIR

    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "metric" / "degradation.yaml"))
    conf.pop("_target_")
    d = Degradation()
    for key, value in conf.items():
        assert getattr(d, key) == value, key
    assert (d.tile, d.n_points, d.fill, d.output) == (8, 100, "mean", "softmax") and Degradation.memory_knob == "chunk"
    torch.manual_seed(0)
    net = PixelLinear(torch.randn(3, 1, 4, 4)).eval()
    rows = []
    net.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    x = torch.randn(2, 1, 4, 4)
    m = Degradation(tile=1, n_points=5, chunk=None)
    res = m(net, x, torch.tensor([0, 1]), torch.rand(2, 1, 4, 4))
    assert sum(rows) == 2 * m.forwards_per_image((1, 4, 4), 0.0) == 2 * 11
    assert res.x_axis["morf"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]  # 0, 4, 8, 12, 16 of the 16 tiles
    logits = net(x)
    torch.testing.assert_close(res.scores["top1_prob"], logits.softmax(-1).amax(-1))
    sig = Degradation(tile=1, n_points=5, output="sigmoid")(net, x, torch.tensor([0, 1]), torch.rand(2, 1, 4, 4))
    torch.testing.assert_close(sig.scores["top1_prob"], logits.sigmoid().amax(-1))
    scores = {"degradation": torch.tensor([0.2, 0.4]), "top1_prob": torch.tensor([0.9, 0.7]),
              "degraded_prob": torch.tensor([0.1, 0.3])}
    out = Degradation().summarise(scores)
    sem = float(torch.tensor([0.2, 0.4]).std()) / math.sqrt(2)  # 0.1
    assert out["degradation_scaled"][0] == pytest.approx(0.3 / 0.6)
    assert out["degradation_scaled"][1] == pytest.approx(sem / 0.6) and out["degradation_scaled"][2] == 2
    assert out["t1"][0] == pytest.approx(0.8) and out["b"][0] == pytest.approx(0.2)
    assert "degradation_scaled" not in Degradation(t1=0.8, b=0.2).summarise(scores)  # already scaled
    assert Degradation(n_points=2).n_points == 2  # the two ends of the curves: the least valid
    for kw, line in (({"tile": 0}, "bad tile 0; valid choices: an integer >= 1"),
                     ({"n_points": 1}, "bad n_points 1; valid choices: an integer >= 2"),
                     ({"n_points": 0}, "bad n_points 0; valid choices: an integer >= 1"),
                     ({"fill": "median"}, "unknown fill 'median'; valid choices: mean"),
                     ({"ties": "x"}, "unknown ties 'x'; valid choices: stable, random, numpy"),
                     ({"t1": 0.5}, "bad t1/b 0.5/None; valid choices: both numbers or both null")):
        with pytest.raises(XattrConfigError, match="^" + re.escape(line) + "$"):
            Degradation(**kw)
    for kw in ({"output": "x"}, {"precision": "x"}):
        with pytest.raises(XattrConfigError, match=f"^unknown {next(iter(kw))} 'x'; valid choices: "):
            Degradation(**kw)
