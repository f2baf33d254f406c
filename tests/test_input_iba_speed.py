"""Issue 31's CPU speed-up of InputIBA keeps the maps: the network run in channels-last pieces
(``InputIBA.cpu_pieces``) against the path before it (one call on the whole batch, ``cpu_pieces=False``),
on fixed seeds; batched == one at a time on the new path; the pieces helper against one call, values and
gradients. Tolerance: 1e-5 on maps in [0, 1] (channels-last kernels sum in another order: float rounding)."""

from __future__ import annotations

import warnings

import torch

from xattr.core.chunk import in_pieces
from xattr.methods.input_iba import InputIBA
from xattr.models.tiny import TinyCNN

TINY = dict(epochs=1, n_targets=16, n_groups=2, gan_batch=8, critic=1, feat_steps=2, feat_copies=2, steps=3,
            copies=3)


def _method(net, pieces, **kw):
    m = InputIBA(net, layer="conv2", **{**TINY, **kw})
    m.cpu_pieces = pieces
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few estimation samples
        m.fit([{"x": torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))}])
    return m


def test_pieces_equal_one_call_values_and_gradients(one_thread) -> None:
    torch.manual_seed(0)
    net = TinyCNN(4).eval()
    z = torch.randn(11, 3, 12, 12, requires_grad=True)  # 11 rows in pieces of 4: 4, 4, 3
    one = net(z)
    (g_one,) = torch.autograd.grad((one * torch.arange(44.0).view(11, 4)).sum(), z)
    got = in_pieces(net, z, 4)
    (g_got,) = torch.autograd.grad((got * torch.arange(44.0).view(11, 4)).sum(), z)
    assert got.shape == one.shape
    torch.testing.assert_close(got, one, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_got, g_one, atol=1e-6, rtol=1e-5)
    assert in_pieces(net, z, None) is not None and torch.equal(in_pieces(net, z, None), one)


def test_new_path_equals_the_old_one_and_batched_equals_single(one_thread) -> None:
    net = TinyCNN(4).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 3])
    old = _method(net, False).explain(x, t)  # before issue 31: one call on the whole batch
    new_method = _method(net, 5)  # 5 rows a piece: the WGAN's 3 x 8 rows and the input's 3 x 3 split unevenly
    new = new_method.explain(x, t)
    torch.testing.assert_close(new.maps, old.maps, atol=1e-5, rtol=0)
    for k, v in old.group("stages").items():
        torch.testing.assert_close(new.group("stages")[k], v, atol=1e-5, rtol=0)
    for i in range(3):  # one image alone (3 and 8 rows: other piece boundaries) == its row of the batch
        torch.testing.assert_close(new_method.attribute(x[i : i + 1], t[i : i + 1]), new.maps[i : i + 1],
                                   atol=1e-5, rtol=0)
