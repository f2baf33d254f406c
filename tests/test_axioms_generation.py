"""Ch. 7 sample generation: the stacked deep-image-prior, batched == one at a time, a toy model whose two
logits read disjoint halves of the image, resuming, reading back with dataset=axioms, Gradient's null score."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from tests.helpers import compose_cfg
from xattr.config import CONF_DIR
from xattr.core.preprocess import Preprocess
from xattr.data.axioms import AxiomsDataset, sample_image
from xattr.data.axioms_generation import AxiomGenerator, GenConfig, draw_positions, paste
from xattr.data.axioms_prior import PriorSpec, StackedSkipPrior
from xattr.data.axioms_store import AxiomsStore
from xattr.data.transforms import collate
from xattr.errors import XattrConfigError
from xattr.methods.baselines.gradient import Gradient
from xattr.metrics.axioms import AxiomScores
from xattr.run import run

TINY = PriorSpec(input_channels=4, input_size=32, down=(8, 8), up=(8, 8), skip=(0, 4), kernel_down=(3, 3),
                 kernel_up=(3, 3))
# f_a in the left half (read by logit 0), the second patch in the right half (read by logit 1)
POS = [(10, 2), (10, 19)]
IDENTITY = Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3, size=32, resize=32)


class Halves(nn.Module):
    """Two logits, each 40 x the mean of one half of the image (left: class 0, right: class 1)."""

    num_classes = 2

    def forward(self, x):
        return 40 * torch.stack([x[..., :16].mean((1, 2, 3)), x[..., 16:].mean((1, 2, 3))], 1)


def _gen(scenario="null", batch=1, **kw):
    cfg = GenConfig(scenario, image_size=32, warmup=100, max_iters=400, min_main=5, positions=POS, **kw)
    return AxiomGenerator(Halves(), IDENTITY.normalise, cfg, TINY, batch=batch, seed=0)


def test_paper_prior_gives_86_pixel_patches_and_bad_prior_is_one_line():
    assert PriorSpec().patch_size == 86
    assert PriorSpec().convs["d0a"] == (16, 32, 5) and PriorSpec().convs["u1a"] == (32, 4 + 64, 3)
    with pytest.raises(XattrConfigError, match="five lists of one equal length"):
        PriorSpec(down=(8, 8), up=(8,))
    with pytest.raises(XattrConfigError, match="multiple of"):
        PriorSpec(input_size=100)


def test_stacked_prior_equals_one_network_at_a_time():
    stacked = StackedSkipPrior(TINY, 3)
    for s in range(3):
        stacked.reset(s, torch.Generator().manual_seed(10 + s))
    out = stacked()
    assert out.shape == (3, 3, 11, 11) and 0 < out.min() and out.max() < 1
    for s in range(3):
        one = StackedSkipPrior(TINY, 1)
        one.reset(0, torch.Generator().manual_seed(10 + s))
        torch.testing.assert_close(one()[0], out[s], rtol=1e-5, atol=1e-6)
    # gradients of slot s depend only on slot s's output
    out[1].sum().backward()
    assert stacked.weight["d0a"].grad[[0, 2]].abs().sum() == 0 and stacked.weight["d0a"].grad[1].abs().sum() > 0


def test_positions_never_overlap_and_paste_puts_patches_in_place():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        (t0, l0), (t1, l1) = draw_positions(g, 2, 32, 11)
        assert abs(t0 - t1) >= 11 or abs(l0 - l1) >= 11
        assert 0 <= min(t0, l0, t1, l1) and max(t0, l0, t1, l1) <= 21
    bg, p = torch.zeros(3, 8, 8), torch.ones(3, 2, 2)
    out = paste(bg, [p], [(1, 5)])
    assert out.sum() == 12 and out[:, 1:3, 5:7].min() == 1


def test_toy_null_generation_meets_its_checks_and_gradient_scores_null_zero(tmp_path):
    store = AxiomsStore(tmp_path / "null")
    store.check_meta({"scenario": "null", "image_size": 32})
    gen = _gen("null", batch=2)
    assert gen.run(range(2), store) == 2
    for i in (0, 1):
        r = store.read(i)
        assert r["iterations"] < 300  # a few hundred at most (here: warm-up ends early, then min_main) and r["restarts"] == 0
        assert (r["softmax"] > 0.94).all() and (r["k_rem"] < 0.14).all()
        assert r["classes"].tolist() == [0, 1] and r["target"] == 0 and r["other"] == 1
        # the null patch (right half) changes logit 0 neither alone nor beside f_a: the removal check holds
        img, bg = sample_image(r), r["background"]
        only_fa = paste(bg, [r["patches"][0]], [tuple(r["positions"][0].tolist())])
        only_null = paste(bg, [r["patches"][1]], [tuple(r["positions"][1].tolist())])
        net = Halves()
        assert torch.isclose(net(img[None])[0, 0], net(only_fa[None])[0, 0])
        assert torch.isclose(net(only_null[None])[0, 0], net(bg[None])[0, 0])
    ds = AxiomsDataset(tmp_path, scenario=None, preprocess=IDENTITY)  # `dataset.scenario=null` parses as None
    batch = collate([ds[0], ds[1]])
    assert batch["id"] == ["null_000000", "null_000001"] and batch["feature_boxes"].shape == (2, 2, 4)
    maps = Gradient(Halves()).attribute(batch["x"], batch["label"])
    res = AxiomScores()(Halves(), batch["x"], batch["label"], maps, feature_boxes=batch["feature_boxes"],
                        other=batch["other"], scenario=batch["scenario"])
    assert torch.equal(res.scores["null"], torch.zeros(2))
    # the ordinary run reads them back and scores them (dataset=axioms metric=axioms)
    cfg = compose_cfg(["model=custom", "model.factory=tests.test_axioms_generation:Halves",
                       "model.preprocess.mean=[0,0,0]", "model.preprocess.std=[1,1,1]", "model.preprocess.size=32",
                       "model.preprocess.resize=32", "dataset=axioms", f"dataset.root={tmp_path}",
                       "dataset.scenario=null", "metric=[axioms]", "method=gradient", "trainer=cpu", "logger=none",
                       "batch_size=2", "trainer.enable_progress_bar=false"], tmp_path / "run")
    run_dir = run(cfg)
    per_image = pd.read_parquet(run_dir / "per_image.parquet")
    assert per_image["axioms/null"].tolist() == [0.0, 0.0] and per_image["id"].tolist() == ["null_000000", "null_000001"]


def test_batched_generation_equals_one_at_a_time(tmp_path):
    one, three = AxiomsStore(tmp_path / "one"), AxiomsStore(tmp_path / "three")
    assert _gen("double", batch=1).run(range(2), one) == 2
    assert _gen("double", batch=2).run(range(2), three) == 2
    for i in range(2):
        a, b = one.read(i), three.read(i)
        assert a["iterations"] == b["iterations"] and torch.equal(a["background"], b["background"])
        assert torch.equal(a["positions"], b["positions"]) and torch.equal(a["classes"], b["classes"])
        torch.testing.assert_close(a["patches"], b["patches"], rtol=1e-4, atol=1e-5)


def test_killed_generation_resumes_without_redoing_finished_samples(tmp_path):
    store = AxiomsStore(tmp_path)
    gen = _gen("single", batch=1)
    gen.run(range(3), store, limit_steps=1)          # killed after one step: nothing finished
    assert store.indices() == []
    assert gen.run(range(2), store) == 2              # samples 0 and 1 finished, then "killed"
    stamps = {i: store.path(i).stat().st_mtime_ns for i in (0, 1)}
    first = store.read(1)
    assert _gen("single", batch=2).run(range(4), store) == 2   # only 2 and 3 are generated
    assert store.indices() == [0, 1, 2, 3]
    assert {i: store.path(i).stat().st_mtime_ns for i in (0, 1)} == stamps
    # resuming gives the same samples as an uninterrupted run
    fresh = AxiomsStore(tmp_path / "fresh")
    _gen("single", batch=4).run(range(4), fresh)
    assert fresh.read(1)["iterations"] == first["iterations"]
    torch.testing.assert_close(fresh.read(3)["patches"], store.read(3)["patches"], rtol=1e-4, atol=1e-5)


def test_meta_mismatch_and_missing_samples_are_one_line(tmp_path):
    store = AxiomsStore(tmp_path / "null")
    store.check_meta({"scenario": "null", "image_size": 32})
    with pytest.raises(XattrConfigError, match="bad axioms.image_size 64 .*valid choices: 32"):
        store.check_meta({"scenario": "null", "image_size": 64})
    with pytest.raises(XattrConfigError, match="missing generated axiom samples"):
        AxiomsDataset(tmp_path, scenario="null", preprocess=IDENTITY)
    with pytest.raises(XattrConfigError, match="unknown dataset.scenario 'nul'; valid choices: null, single"):
        AxiomsDataset(tmp_path, scenario="nul", preprocess=IDENTITY)


def test_generate_entry_point_rejects_a_bad_scenario(tmp_path):
    from xattr.generate import generate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("generate", overrides=["axioms.scenario=nul", f"axioms.out={tmp_path}"])
    with pytest.raises(XattrConfigError, match="unknown axioms.scenario 'nul'; valid choices: null, single, double"):
        generate(cfg)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("generate", overrides=["axioms=cpu", "axioms.scenario=null"])
    assert cfg.axioms.scenario is None and PriorSpec(**cfg.axioms.prior).patch_size == 64


def test_a_long_generation_says_its_duration_up_front(capsys):
    """Measured s/step x rounds of samples x typical steps per sample; silent when it is short."""
    from xattr.data.axioms_generation import TYPICAL_STEPS, GenConfig, _say_duration

    cfg = GenConfig(scenario="single", image_size=224)
    _say_duration(1.5, 2, 4, cfg)  # 1.5 s x 2 rounds x 700 steps = 35 min
    err = capsys.readouterr().err
    assert TYPICAL_STEPS == 700 and "1.50 s per step for 4 samples at once" in err and "roughly 35 min" in err
    _say_duration(0.01, 2, 4, cfg)  # 14 s: nothing to say
    assert capsys.readouterr().err == ""


def test_loss_pieces_of_one_generation_step_by_hand():
    """The pieces of a main-phase step (ch. 7 appendix 6.3, eqs. 12-13) at hand values: FL(v, 1) =
    -(1 - v)^0.8 log v and FL(v, 0) = -v^0.8 log(1 - v); k_rem = tanh(|w - wo| / min(|w|, |wo|)); the smoothed
    key 0.1 k + 0.9 k_hat."""
    import math

    from xattr.data.axioms_generation import focal_neg, focal_pos, removal_ratio, smooth

    v = torch.tensor([0.2, 0.5, 0.9])
    pos = [-((1 - a) ** 0.8) * math.log(a) for a in (0.2, 0.5, 0.9)]
    neg = [-(a**0.8) * math.log(1 - a) for a in (0.2, 0.5, 0.9)]
    torch.testing.assert_close(focal_pos(v), torch.tensor(pos))
    torch.testing.assert_close(focal_neg(v), torch.tensor(neg))
    # with 3, without 1: |2| / 1 = 2; with -4, without 2: 6 / 2 = 3; with 0.5, without -0.5: 1 / 0.5 = 2
    r = removal_ratio(torch.tensor([3.0, -4.0, 0.5]), torch.tensor([1.0, 2.0, -0.5]))
    torch.testing.assert_close(r, torch.tensor([2.0, 3.0, 2.0]))
    torch.testing.assert_close(smooth(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])), torch.tensor([0.55, 0.45]))


def test_the_duration_uses_max_iters_and_max_restarts(capsys):
    """A sample never takes more than ``max_iters`` steps before a restart: with max_iters=300 the typical 700 is
    300 (1.5 s x 2 rounds x 300 = 15 min), and max_restarts=1 bounds it at 2 x 300 steps (30 min)."""
    from xattr.data.axioms_generation import GenConfig, _say_duration

    _say_duration(1.5, 2, 4, GenConfig(scenario="single", image_size=224, max_iters=300, max_restarts=1))
    err = capsys.readouterr().err
    assert "at about 300 steps per sample this takes roughly 15 min (at most 30 min with axioms.max_restarts=1)" in err


def test_the_bar_moves_per_step_even_for_one_sample(tmp_path, monkeypatch):
    """One sample takes hundreds of steps: the bar counts steps (total: the typical count, capped by max_iters),
    so it moves from the first step on."""
    import xattr.data.axioms_generation as ag

    bars = []
    real = ag.progress

    def spy(*a, **kw):
        bars.append(real(*a, **kw))
        bars[-1].kw = kw
        return bars[-1]

    monkeypatch.setattr(ag, "progress", spy)
    monkeypatch.setenv("XATTR_PROGRESS", "1")  # shown (a hidden tqdm counts nothing)
    _gen("single", batch=1).run([0], AxiomsStore(tmp_path), limit_steps=3)
    assert len(bars) == 1 and bars[0].kw["unit"] == "step" and bars[0].kw["total"] == 400  # max_iters < 700
    assert bars[0].n == 3


class _SixClasses(nn.Module):
    """A tiny conv net with six logits (classes a in 0-2, b in 3-5): both patches move every logit, so every
    removal term of eqs. 2-7 is non-zero."""

    num_classes = 6

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(16, 6)
        with torch.no_grad():
            for p in (*self.conv.parameters(), *self.fc.parameters()):
                p.copy_(torch.randn(p.shape, generator=g))
            self.fc.weight.mul_(0.2)  # logits of a few units: no softmax saturates

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _loss_by_hand(scenario, net, bg, pa, pb, a, b, keys, warm):
    """One step's loss for one sample, written from ch. 7's eqs. 1-7 (one patch optimised per equation: the
    other patch and the "without" logit are constants), the focal weights of appendix 6.3 (eq. 12 keys smoothed
    by eq. 13 from 0.5 with alpha 0.1, this step's key included) and the module's stated weights (warm-up
    ``-5 Phi_t``; then ``-10 FL(k_L, 1) Phi_t`` + ``5 FL(k_rem, 0) (with - without)^2``; null: ``5 (softmax_a
    - 0.95)^2`` on X_{f_a}). Images pasted by slicing, one image per forward. Updates ``keys`` in place."""
    (ta, la), (tb, lb) = POS
    n = pa.shape[-1]

    def x_of(**patches):
        img = bg.clone()
        if "A" in patches:
            img[:, ta:ta + n, la:la + n] = patches["A"]
        if "B" in patches:
            img[:, tb:tb + n, lb:lb + n] = patches["B"]
        return net(img[None])[0]

    fl1 = lambda v: -((1 - v) ** 0.8) * torch.log(v)  # noqa: E731
    fl0 = lambda v: -(v ** 0.8) * torch.log(1 - v)  # noqa: E731
    pa_, pb_ = pa.detach(), pb.detach()
    # generation terms (patch, target logit vector) and removal terms (target, with, without) per equation
    if scenario == "null":      # eq. 1 for f_a (class a); eq. 2 for f_null (class b, null for a)
        gen = [(a, x_of(A=pa)), (b, x_of(B=pb))]
        rem = [(a, x_of(A=pa_, B=pb), x_of(A=pa_)), (a, x_of(B=pb), x_of())]
    elif scenario == "single":  # eq. 3
        gen = [(a, x_of(A=pa))]
        rem = [(b, x_of(A=pa), x_of())]
    elif scenario == "double":  # eqs. 4 (over f_a) and 5 (over f_b)
        gen = [(a, x_of(A=pa)), (b, x_of(B=pb))]
        rem = [(b, x_of(A=pa, B=pb_), x_of(B=pb_)), (a, x_of(A=pa_, B=pb), x_of(A=pa_))]
    else:                       # saturation, eqs. 6 (over f_a1) and 7 (over f_a2), both for class a
        gen = [(a, x_of(A=pa)), (a, x_of(B=pb))]
        rem = [(a, x_of(A=pa, B=pb_), x_of(B=pb_)), (a, x_of(A=pa_, B=pb), x_of(A=pa_))]
    for j, (t, phi) in enumerate(gen):
        keys["gen"][j] = 0.1 * phi.detach().softmax(0)[t].item() + 0.9 * keys["gen"][j]
    for j, (t, w, wo) in enumerate(rem):
        k = math.tanh(abs(w[t].item() - wo[t].item()) / min(abs(w[t].item()), abs(wo[t].item())))
        keys["rem"][j] = 0.1 * k + 0.9 * keys["rem"][j]
    if warm:
        return sum(-5 * phi[t] for t, phi in gen)
    loss = sum(-10 * fl1(torch.tensor(keys["gen"][j])) * phi[t] for j, (t, phi) in enumerate(gen))
    loss = loss + sum(5 * fl0(torch.tensor(keys["rem"][j])) * (w[t] - wo[t].detach()) ** 2
                      for j, (t, w, wo) in enumerate(rem))
    if scenario == "null":
        loss = loss + 5 * (gen[0][1].softmax(0)[a] - 0.95) ** 2
    return loss


@pytest.mark.parametrize("scenario", ["null", "single", "double", "saturation"])
def test_three_generation_steps_equal_a_loop_written_from_the_equations(scenario, monkeypatch, tmp_path):
    """Issue 26: a whole generation step (warm-up step 1, main-phase steps 2 and 3) against
    :func:`_loss_by_hand`: the gradient each step hands to the patches (and so to the prior networks) equals
    the gradient of the loss written from the equations at the same patches, reference and classes. The random
    draws (the references, the classes, the prior's patches of each step) are recorded from the code; the
    arithmetic is the loop's."""
    import xattr.data.axioms_generation as ag

    outs, backgrounds, classes = [], [], []

    class Recording(nn.Module):
        """Stands in for the deep-image prior (its own tests are above): the patches' pixels are the
        parameters, through a sigmoid; each step's patches are kept, with their gradient."""

        def __init__(self, spec, n):
            super().__init__()
            self.pixels = nn.Parameter(torch.zeros(n, 3, spec.patch_size, spec.patch_size))

        @torch.no_grad()
        def reset(self, slot, generator):
            self.pixels[slot].copy_(torch.randn(self.pixels.shape[1:], generator=generator))

        def forward(self):
            out = torch.sigmoid(self.pixels)
            out.retain_grad()
            outs.append(out)
            return out

    real_bg, real_start = ag.draw_background, ag.AxiomGenerator._start

    def record_bg(g, size):
        backgrounds.append(real_bg(g, size))
        return backgrounds[-1]

    def record_start(self, slot, *a):
        real_start(self, slot, *a)
        classes.append(slot.classes)

    monkeypatch.setattr(ag, "StackedSkipPrior", Recording)
    monkeypatch.setattr(ag, "draw_background", record_bg)
    monkeypatch.setattr(ag.AxiomGenerator, "_start", record_start)
    net = _SixClasses()
    cfg = GenConfig(scenario, image_size=32, warmup=1, max_iters=400, min_main=5, positions=POS)
    AxiomGenerator(net, lambda x: x, cfg, TINY, batch=1, seed=0).run([0], AxiomsStore(tmp_path),
                                                                     limit_steps=3)
    assert len(outs) == len(backgrounds) == 3 and len(classes) == 1
    a, b = classes[0]
    assert 0 <= a < 3 <= b < 6
    keys = {"gen": [0.5, 0.5], "rem": [0.5, 0.5]}
    for step, (out, bg) in enumerate(zip(outs, backgrounds)):
        pa = out[0].detach().clone().requires_grad_(True)
        pb = out[1].detach().clone().requires_grad_(True) if out.shape[0] > 1 else torch.zeros_like(pa)
        _loss_by_hand(scenario, net, bg, pa, pb, a, b, keys, warm=step == 0).backward()
        assert pa.grad.abs().sum() > 0
        torch.testing.assert_close(out.grad[0], pa.grad, rtol=1e-4, atol=1e-6)
        if out.shape[0] > 1:
            torch.testing.assert_close(out.grad[1], pb.grad, rtol=1e-4, atol=1e-6)
