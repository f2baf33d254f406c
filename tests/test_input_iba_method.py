"""InputIBA end to end on tiny models: batched == single, the relevant region wins, stages kept, hooks gone."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from xattr.core.hooks import hook_count
from xattr.errors import XattrConfigError
from xattr.methods.input_iba import InputIBA
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
