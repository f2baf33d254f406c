"""The optimised fx tail (issue 18): conv + BatchNorm folded, channels-last. Same outputs and input
gradients as the model itself, the model untouched, and Per-Sample IBA maps unchanged by it."""

from __future__ import annotations

import torch
from torch import nn

from xattr.core.hooks import frozen, hooked
from xattr.methods.iba import PerSampleIBA
from xattr.methods.iba import statistics as st
from xattr.methods.iba.tail import NetworkTail


class ConvBN(nn.Module):
    """conv-BN-ReLU x 3 with non-trivial running statistics and a skip connection around the bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        for bn in (self.b1, self.b2, self.b3):
            bn.running_mean.copy_(torch.randn(8, generator=g))
            bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            bn.weight.data.copy_(torch.randn(8, generator=g))
            bn.bias.data.copy_(torch.randn(8, generator=g))
        self.fc = nn.Linear(8, 4)
        self.num_classes = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h2 = torch.relu(self.b2(self.c2(h)))  # the bottleneck: b2's output
        h3 = torch.relu(self.b3(self.c3(h2))) + h
        return self.fc(h3.mean((2, 3)))


def test_optimised_tail_matches_the_model_and_leaves_it_untouched():
    model = ConvBN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    with frozen(model):
        fast = NetworkTail(model, "b2", x, "fx", optimise=True)
        plain = NetworkTail(model, "b2", x, "fx", optimise=False)
    assert fast.channels_last and not plain.channels_last
    # c3 + b3 folded into one conv in the tail; the model still has both, with its own weights
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.tail.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.tail.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.is_contiguous() for p in model.parameters()) and isinstance(model.b3, nn.BatchNorm2d)
    z = torch.randn(6, 8, 8, 8)  # 3 copies of 2 images

    for tail in (fast, plain):
        zz = z.clone().requires_grad_(True)
        out = tail(zz)
        out.logsumexp(-1).sum().backward()
        zr = z.clone().requires_grad_(True)
        ref = _hooked(model, zr, x)  # the model with b2's output replaced (the reference's hook)
        ref.logsumexp(-1).sum().backward()
        assert torch.allclose(out, ref, atol=1e-5)
        assert torch.allclose(zz.grad, zr.grad, atol=1e-5)


def _hooked(model: nn.Module, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    with hooked(model.b2, lambda _out: z):
        return model(x.repeat_interleave(z.shape[0] // x.shape[0], 0))


def test_iba_maps_do_not_depend_on_the_tail_optimisation_and_batched_equals_single():
    model = ConvBN().eval()
    torch.manual_seed(1)
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 3])
    stats = st.estimate(model, ["b2"], [{"x": torch.randn(32, 3, 8, 8)}], n_samples=32, warn=False)
    maps = {}
    for opt in (True, False):
        iba = PerSampleIBA(model, "b2", optimise_tail=opt, tail="fx", steps=4, copies=3)
        iba.set_statistics(stats)
        maps[opt] = iba.attribute(x, t)
        if opt:
            one = torch.cat([iba.attribute(x[i : i + 1], t[i : i + 1]) for i in range(3)])
            assert torch.allclose(one, maps[opt], rtol=1e-4, atol=1e-6)
    assert torch.allclose(maps[True], maps[False], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ issue 26: which tail is built, pinned


class ViewNet(nn.Module):
    """Bottleneck ``c1``; then ReLU, a BatchNorm after the ReLU (no conv before it: not foldable), conv + BN
    (foldable) and a ``.view`` of the map (impossible on channels-last memory)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        for bn in (self.bn_a, self.bn_b):
            bn.running_mean.copy_(torch.randn(4, generator=g))
            bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn_a(torch.relu(self.c1(x)))
        h = torch.relu(self.bn_b(self.c2(h)))
        return self.fc(h.view(h.shape[0], -1))


def _bns(tail) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in tail.tail.modules())


def test_the_tail_folds_what_it_can_and_drops_channels_last_only_where_it_fails():
    """ViewNet: channels-last fails at the ``.view``, so the tail is the folded one without channels-last: ``bn_b``
    folded into ``c2``, ``bn_a`` (after a ReLU) kept; the outputs are the model's with ``c1``'s output replaced."""
    model = ViewNet().eval()
    x = torch.randn(2, 3, 4, 4)
    with frozen(model):
        tail = NetworkTail(model, "c1", x, "fx")
    assert (tail.mode, tail.channels_last, _bns(tail)) == ("fx", False, 1)
    z = torch.randn(4, 4, 4, 4)
    with hooked(model.c1, lambda _out: z):
        ref = model(x.repeat_interleave(2, 0))
    torch.testing.assert_close(tail(z), ref, rtol=1e-5, atol=1e-5)


def test_the_optimised_tails_copies_are_frozen_channels_last_and_the_default():
    """``optimise`` is the default; the tail's conv weights are channels-last copies that need no gradient (the
    model's own stay contiguous); the hook tail runs the model as it is (no channels-last); a bad mode is one
    whole line."""
    import pytest

    from xattr.errors import XattrConfigError

    model = ConvBN().eval()
    x = torch.randn(2, 3, 8, 8)
    with frozen(model):
        tail = NetworkTail(model, "b2", x, "fx")
        hook = NetworkTail(model, "b2", x, "hook")
    assert tail.channels_last is True and hook.channels_last is False and hook.mode == "hook"
    convs = [m for m in tail.tail.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert all(not p.requires_grad for m in convs for p in m.parameters())
    assert all(p.is_contiguous() for p in model.parameters())
    with pytest.raises(XattrConfigError) as err:
        NetworkTail(model, "b2", x, "bogus")
    assert str(err.value) == "unknown tail mode 'bogus'; valid choices: auto, fx, hook"


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.c(self.c(x)).mean((2, 3))


def test_a_container_layer_with_a_buffer_after_it_splits_and_a_layer_called_twice_does_not():
    """A ``Sequential`` bottleneck layer (not a leaf of fx by default) is kept whole, and a buffer read after it
    (HalfIgnoring's mask) is carried into the tail: the fx tail equals the hooked model. A layer called twice
    cannot be split: with ``fx`` asked for, that is one whole line."""
    import pytest

    from tests.test_iba_bottleneck import HalfIgnoring

    model = HalfIgnoring().eval()
    x = torch.randn(2, 3, 16, 16)
    with frozen(model):
        tail = NetworkTail(model, "feat", x, "fx")
    z = torch.randn(6, 8, 16, 16)
    with hooked(model.feat, lambda _out: z):
        ref = model(x.repeat_interleave(3, 0))
    torch.testing.assert_close(tail(z), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError) as err:
        NetworkTail(Twice().eval(), "c", x, "fx")
    assert str(err.value) == "layer c is called 2 times in the traced graph"


class Branchy(nn.Module):
    """Data-dependent control flow after the layer: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        h = self.c(x)
        if h.sum() > 0:
            h = h * 2
        return h.mean((2, 3))


def test_auto_falls_back_to_the_hook_in_one_warning_and_fx_raises():
    """``auto``: a model fx cannot trace gets the hook tail, with one whole warning line pointing at the caller; a
    model saying ``fx_traceable = False`` gets the hook at once (no warning), other models the fx tail. ``fx``
    asked for is an fx tail or the split's error, whatever ``fx_traceable`` says and with or without ``optimise``."""
    import warnings

    import pytest

    x = torch.randn(2, 3, 4, 4)
    model = Branchy().eval()
    with pytest.warns(UserWarning) as rec:
        tail = NetworkTail(model, "c", x)
    assert tail.mode == "hook" and len(rec) == 1 and rec[0].filename == __file__
    assert str(rec[0].message).startswith("IBA: fx split at c failed (symbolically traced variables cannot be used as "
                                          "inputs to control flow")
    assert str(rec[0].message).endswith("); running the head per step")
    torch.testing.assert_close(tail.r, model.c(x))
    for optimise in (True, False):
        with pytest.raises(Exception, match="symbolically traced variables"):
            NetworkTail(model, "c", x, "fx", optimise=optimise)
        with pytest.raises(RuntimeError, match="^layer c is called 2 times in the traced graph$"):
            NetworkTail(Twice().eval(), "c", x, "fx", optimise=optimise)
    plain = ConvBN().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert NetworkTail(plain, "b2", x).mode == "fx"
        plain.fx_traceable = True
        assert NetworkTail(plain, "b2", x).mode == "fx"
        plain.fx_traceable = False
        assert NetworkTail(plain, "b2", x).mode == "hook"
        assert NetworkTail(plain, "b2", x, "fx").mode == "fx"


class ReadsChannels(nn.Module):
    """Reads the input's batch size and channel count before the layer and uses both after it: only the batch
    size scales with the copies."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3 * 16, 2)

    def forward(self, x):
        b, c = x.size(0), x.size(1)
        h = self.inner(x)
        return self.fc(h.reshape(b, c * 16))


class Noisy(nn.Module):
    """Fresh noise after the layer: no split tail can reproduce the model's output (here within 1e-3)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        h = self.c(x)
        return (h + 0.2 * torch.randn_like(h)).mean((2, 3)) + 5.0  # |outputs| ~ 5, noise ~ 0.05 (> 1e-3 rel)


def test_only_the_batch_size_scales_and_a_tail_that_misses_the_output_is_refused():
    import pytest

    x = torch.randn(2, 3, 4, 4)
    model = ReadsChannels().eval()
    tail = NetworkTail(model, "inner", x, "fx")
    z = torch.randn(6, 3, 4, 4)
    with hooked(model.inner, lambda _out: z):
        ref = model(x.repeat_interleave(3, 0))
    torch.testing.assert_close(tail(z), ref, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="^the split tail does not reproduce the model's output$"):
        NetworkTail(Noisy().eval(), "c", x, "fx", optimise=False)


def test_the_fx_tail_runs_no_head_and_the_hook_tail_repeats_the_input_per_copy():
    """Per step the fx tail runs only the layers after the bottleneck (``c1`` never runs), on channels-last
    inputs (4-d values only); the hook tail runs the whole model on the input repeated per copy (two copies of a
    skip connection's value: the hooked model equals the model fed each image twice)."""
    from tests.test_iba_bottleneck import Residual

    model = ConvBN().eval()
    x = torch.randn(2, 3, 8, 8)
    calls = []
    model.c1.register_forward_hook(lambda *a: calls.append(1))
    with frozen(model):
        tail = NetworkTail(model, "b2", x, "fx")
    calls.clear()
    tail(torch.randn(4, 8, 8, 8))
    assert calls == []
    assert tail._fmt(torch.randn(2, 3, 4, 5)).is_contiguous(memory_format=torch.channels_last)
    v = torch.randn(2, 3, 4)
    assert tail._fmt(v) is v
    res = Residual().eval()
    hook = NetworkTail(res, "inner", x, "hook")
    z = torch.randn(4, 8, 8, 8)
    s = torch.relu(res.stem(x.repeat_interleave(2, 0)))
    want = res.out(torch.relu(z) + s)
    torch.testing.assert_close(hook(z), want, rtol=1e-5, atol=1e-5)


class NestedBuffer(nn.Module):
    """A buffer of a submodule read after the layer (an fx ``get_attr`` with a dotted name)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 3, 1)
        self.sub = nn.Module()
        self.sub.register_buffer("scale", torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1))

    def forward(self, x):
        return (self.c(x) * self.sub.scale).mean((2, 3))


def test_a_submodules_buffer_after_the_layer_is_carried_into_the_fx_tail():
    model = NestedBuffer().eval()
    x = torch.randn(2, 3, 4, 4)
    tail = NetworkTail(model, "c", x, "fx")
    z = torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(tail(z), (z * model.sub.scale).mean((2, 3)))
