"""InputIBA end to end on tiny models: batched == single, the relevant region wins, stages kept, hooks gone."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from xattr.core.hooks import hook_count
from xattr.errors import XattrConfigError
from xattr.methods.input_iba import InputIBA, WGANConfig
from xattr.models.tiny import TinyCNN

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread, no contention on a shared CPU

TINY = dict(epochs=1, n_targets=16, n_groups=2, gan_batch=8, critic=2, feat_steps=3, feat_copies=2, steps=4, copies=2)


def _method(net, **kw):
    m = InputIBA(net, **{**TINY, **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few estimation samples
        m.fit([{"x": torch.randn(32, 3, 16, 16)}])
    return m


def test_batched_equals_single_and_stages_kept() -> None:
    net = TinyCNN(4).eval()
    m = _method(net, layer="conv2")
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    ex = m.explain(x, t)
    maps = ex.maps
    stages = ex.group("stages")
    assert maps.shape == (3, 1, 16, 16) and ((maps >= 0) & (maps <= 1)).all()
    assert set(stages) == {"feature", "generator", "input"}
    assert all(v.shape == (3, 1, 16, 16) for v in stages.values())
    for i in range(3):
        ex1 = m.explain(x[i : i + 1], t[i : i + 1])
        one = ex1.maps
        assert torch.allclose(one, maps[i : i + 1], atol=1e-5)
        assert torch.allclose(ex1.group("stages")["generator"], stages["generator"][i : i + 1], atol=1e-5)
    chunked = _method(net, layer="conv2", chunk=4).attribute(x, t)  # 2 copies: 2 images per device call
    assert torch.allclose(chunked, maps, atol=1e-5)
    assert hook_count(net) == 0


class LeftOnly(nn.Module):
    """conv(3->8) ReLU, then a linear read-out of the LEFT half of the feature map only: the right half of
    the image is irrelevant (it reaches the bottleneck layer but never the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16 * 8, 3)
        with torch.no_grad():
            self.fc.weight.mul_(8.0)
        self.num_classes = 3
        self.xattr_layers = {"conv": "conv"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x))[..., :8].flatten(1))


def test_final_mask_scores_the_relevant_half_higher() -> None:
    torch.manual_seed(0)
    net = LeftOnly().eval()
    m = _method(net, layer="conv", steps=10, epochs=3, feat_steps=10, beta=1.0)
    x = torch.randn(2, 3, 16, 16)
    ex = m.explain(x, net(x).argmax(1))
    maps = ex.maps
    left, right = maps[..., :8].mean((1, 2, 3)), maps[..., 8:].mean((1, 2, 3))
    assert (left > right + 0.1).all(), (left, right)
    gen = ex.group("stages")["generator"]
    assert (gen[..., :8].mean((1, 2, 3)) > gen[..., 8:].mean((1, 2, 3))).all()


def test_bad_config_is_one_clear_error() -> None:
    net = TinyCNN(4)
    with pytest.raises(XattrConfigError, match="target mask"):
        InputIBA(net, layer="conv2", target_mask="nope")
    with pytest.raises(XattrConfigError, match="layer"):
        InputIBA(net, layer="conv9")
    with pytest.raises(XattrConfigError, match="steps"):
        InputIBA(net, layer="conv2", steps=0)


def test_stage_figure_shows_the_three_stages() -> None:
    from xattr.viz.input_iba_figure import stage_figure

    stages = {k: torch.rand(2, 1, 8, 8) for k in ("feature", "generator", "input")}
    fig = stage_figure(torch.rand(2, 3, 8, 8), stages)
    assert len(fig.axes) == 8 and [a.get_title() for a in fig.axes[:4]] == ["image", "feature IBA", "generator mask", "InputIBA"]
    with pytest.raises(ValueError, match="generator"):
        stage_figure(torch.rand(2, 3, 8, 8), {"feature": stages["feature"], "input": stages["input"]})


# ------------------------------------------------------------------ issue 26: InputIBA's options pinned by hand


def test_defaults_are_the_references_and_the_options_reach_their_stages() -> None:
    """The reference code's defaults (module docstring, REFERENCE.md): layer VGG-16 conv4_1 ``features.17``, feature
    beta 20, 10 steps, lr 1, 10 copies, no feature smoothing; the WGAN's (20 epochs, 200 targets in 10 groups,
    batch 32, critic 5, RMSprop 5e-5 / 0.003 / 0.1 / 0.05, clip 0.01, raw capacity as target mask); input beta
    20, 60 steps, lr 1, 10 copies, sigma 1, prior N(0, 1); alpha 5. Every option given reaches its stage."""
    import inspect

    params = inspect.signature(InputIBA.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {
        "layer": "features.17", "feat_beta": 20.0, "feat_steps": 10, "feat_lr": 1.0, "feat_copies": 10,
        "feat_sigma": None, "epochs": 20, "n_targets": 200, "n_groups": 10, "gan_batch": 32, "critic": 5,
        "lr_disc": 5e-5, "lr_mask": 0.003, "lr_mean": 0.1, "lr_std": 0.05, "clip": 0.01, "target_mask": "capacity",
        "beta": 20.0, "steps": 60, "lr": 1.0, "copies": 10, "sigma": 1.0, "input_mean": 0.0, "input_std": 1.0,
        "init_alpha": 5.0, "seed": 0, "chunk": None, "n_samples": 1000, "model_name": None, "weights": None,
        "dataset": None, "tail": "auto", "statistics": None}
    assert InputIBA.name == "input_iba" and InputIBA.memory_knob == "chunk" and "chunk" in params
    assert InputIBA.cpu_pieces is True and InputIBA.head_free_stages == ("wgan",)
    net = TinyCNN(4).eval()
    m = InputIBA(net, layer="conv2", target_mask="lambda", feat_beta=3, feat_steps=2, feat_lr=0.5, feat_copies=3,
                 feat_sigma=0.5, init_alpha=2, seed=4, n_samples=7, statistics="s.pt", tail="hook", epochs=2,
                 n_targets=30, n_groups=3, gan_batch=8, critic=3, lr_disc=0.1, lr_mask=0.2, lr_mean=0.3, lr_std=0.4,
                 clip=0.5, beta=6, steps=7, lr=0.8, copies=9, sigma=0.7, input_mean=0.1, input_std=2.0, chunk=5)
    f = m.feature_iba
    assert (type(f).__name__, f.layer, f.beta, f.steps, f.lr, f.copies, f.sigma, f.init_alpha, f.seed, f.n_samples,
            f.statistics, f.tail_mode) == ("PerSampleIBA", "conv2", 3.0, 2, 0.5, 3, 0.5, 2.0, 4, 7, "s.pt", "hook")
    assert m.gan == WGANConfig(epochs=2, n_targets=30, n_groups=3, batch=8, critic=3, lr_disc=0.1, lr_mask=0.2,
                               lr_mean=0.3, lr_std=0.4, clip=0.5)
    assert (m.target_mask, m.beta, m.steps, m.lr, m.copies, m.sigma, m.input_mean, m.input_std, m.init_alpha, m.seed,
            m.chunk) == ("lambda", 6.0, 7, 0.8, 9, 0.7, 0.1, 2.0, 2.0, 4, 5)
    assert repr(m) == "InputIBA(layer='conv2', beta=6.0, epochs=2)"
    m.statistics = "other.pt"
    assert f.statistics == "other.pt" and m.statistics == "other.pt"


def test_cost_rule_by_hand() -> None:
    """Per image: the feature IBA's ``3 steps copies + 4``; the WGAN's ``epochs (n_targets + 3 g)`` with ``g`` the
    generator rows (20 targets in minibatches 8, 8, 4; generator steps at minibatches 0 and 2, critic 2: g = 12);
    the input stage's ``3 steps copies``."""
    m = InputIBA(TinyCNN(4).eval(), layer="conv2", feat_steps=2, feat_copies=3, epochs=3, n_targets=20, n_groups=2,
                 gan_batch=8, critic=2, steps=5, copies=4)
    assert m.forwards_by_stage((3, 16, 16)) == {"feature": 22.0, "wgan": 3 * (20 + 3 * 12.0), "input": 60.0}
    assert m.forwards_per_image((3, 16, 16)) == 22.0 + 168.0 + 60.0


def test_bad_options_are_whole_lines() -> None:
    net = TinyCNN(4)
    cases = [({"target_mask": "nope"}, "unknown target mask 'nope'; valid choices: capacity, lambda"),
             ({"n_targets": 5, "n_groups": 6}, "bad n_targets 5; valid choices: an integer >= n_groups (6)")]
    for kind in ("feat_steps", "feat_copies", "epochs", "n_targets", "n_groups", "gan_batch", "critic", "steps",
                 "copies", "n_samples"):
        cases.append(({kind: 0}, f"bad {kind} 0; valid choices: an integer >= 1"))
    for kind in ("feat_beta", "feat_lr", "lr_disc", "lr_mask", "lr_mean", "lr_std", "clip", "beta", "lr"):
        cases.append(({kind: 0}, f"bad {kind} 0; valid choices: a number > 0"))
    for kw, line in cases:
        with pytest.raises(XattrConfigError) as err:
            InputIBA(net, layer="conv2", **kw)
        assert str(err.value) == line, kw


def test_pieces_groups_and_the_discriminators_feature_check() -> None:
    """On a CPU the network runs in pieces of ``cpu_pieces`` rows (an int), of ``chunk: auto``'s CPU rows (True), or
    in one call (False); images per group are ``max(1, chunk // max(copies, feat_copies))`` (None: the batch); as
    many targets as groups is allowed; the image discriminator needs a 4-d feature (one whole line)."""
    from xattr.core.chunk import resolve_chunk

    net = TinyCNN(4).eval()
    m = InputIBA(net, layer="conv2", copies=9, feat_copies=3, n_targets=2, n_groups=2)
    z = torch.randn(40, 3, 16, 16)
    rows = []

    def fn(t):
        rows.append(t.shape[0])
        return t * 2

    for pieces, want in ((3, [3] * 13 + [1]), (False, [40])):
        m.cpu_pieces = pieces
        rows.clear()
        torch.testing.assert_close(m._pieces(fn, z), z * 2)
        assert rows == want, pieces
    m.cpu_pieces = True
    rows.clear()
    z = torch.randn(150, 3, 16, 16)
    m._pieces(fn, z)
    auto = resolve_chunk("auto", net, z[:1])  # 64 rows at 16 px
    assert auto < 75 and rows == [auto] * (150 // auto) + ([150 % auto] if 150 % auto else [])
    x = torch.randn(5, 3, 16, 16)
    assert m.images_per_group(x) == 5 and m.images_per_group(x[:3]) == 3
    assert InputIBA(net, layer="conv2", copies=9, feat_copies=3, chunk=20).images_per_group(x) == 2
    assert InputIBA(net, layer="conv2", copies=2, feat_copies=3, chunk=5).images_per_group(x) == 1
    with pytest.raises(XattrConfigError) as err:
        m._discriminator(torch.zeros(2, 5, 4), x, None)
    assert str(err.value) == "the image discriminator needs a (B, C, h, w) feature; layer 'conv2' gives (2, 5, 4)"


@pytest.mark.parametrize("target_mask", ["capacity", "lambda"])
def test_the_wgans_target_mask_is_the_capacity_or_lambda(target_mask, monkeypatch) -> None:
    """``capacity`` (the reference code): the targets' mask ``M`` is the feature bottleneck's raw KL, the same map the
    generator starts from; ``lambda`` (the paper's text): ``lambda* = sigmoid(alpha)`` of the feature bottleneck."""
    net = TinyCNN(4).eval()
    m = _method(net, layer="conv2", target_mask=target_mask, epochs=1, steps=1, feat_steps=2)
    seen = {}
    stage = m.wgan_stage
    monkeypatch.setattr(m, "wgan_stage", lambda x, r, kl, mask, clock=None: seen.update(kl=kl, mask=mask)
                        or stage(x, r, kl, mask, clock))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    m.explain(x, t)
    feat = m.feature_iba.optimize(x, t)  # seeded per image: the same optimisation again
    torch.testing.assert_close(seen["kl"], feat.kl)
    want = feat.kl if target_mask == "capacity" else torch.sigmoid(feat.alpha)
    torch.testing.assert_close(seen["mask"], want)
