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
