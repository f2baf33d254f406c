"""Insertion / deletion: xattr (``x_axis: reference``) against the reference protocol of
tests/reference/protocols.py (InputIBA @5f03549e, evaluation/vision/insertion_deletion.py), on the same maps,
to 1e-6; the released code's in-place-append defect reproduced only there, to quantify it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference import protocols as ref
from xattr.metrics.insertion_deletion import InsertionDeletion
from xattr.models.tiny import PixelLinear, TinyCNN

S = 16  # 256 pixels


def linear_model(b: int = 3):
    """logit_0 = sum W x with W > 0, x > 0: every pixel supports class 0, so deletion curves fall monotonically
    and insertion curves (from a blurred canvas below x) rise."""
    g = torch.Generator().manual_seed(4)
    w = torch.zeros(2, 3, S, S)
    w[0] = torch.rand(3, S, S, generator=g) + 0.05
    x = torch.rand(b, 3, S, S, generator=g) + 0.1
    w[0] *= 5.0 / (w[0] * x.mean(0)).sum()
    return PixelLinear(w).eval(), x


def both(model, x, maps, per_step, sigma, defect=False):
    out = [ref.insertion_deletion(model, m[0], xi, 0, per_step, sigma, inplace_defect=defect) for m, xi in zip(maps, x)]
    return {k: torch.tensor(np.stack([o[k] for o in out]), dtype=torch.float64) for k in out[0]}


@pytest.mark.parametrize("per_step", [3, 10, 7])
def test_reference_x_axis_equals_the_reference_protocol(per_step):
    torch.manual_seed(1)
    net = TinyCNN(num_classes=3).eval()
    x = torch.randn(3, 3, S, S)
    maps = torch.rand(3, 1, S, S)  # no ties: the reference's topk order is then defined
    t = torch.zeros(3, dtype=torch.long)
    res = InsertionDeletion(per_step=per_step, blur_sigma=3.0, min_prob=None, chunk=50)(net, x, t, maps)
    expected = both(net, x, maps, per_step, 3.0)
    for mode in ("insertion", "deletion"):
        assert res.curves[mode].shape == expected[mode].shape  # ceil(256 / per_step) points, no step 0
        assert torch.allclose(res.curves[mode].double(), expected[mode], atol=1e-6)
        assert torch.allclose(res.scores[mode].double(), expected[f"{mode}_auc"], atol=1e-6)
        assert torch.allclose(torch.trapezoid(res.curves[mode].double(), res.x_axis[mode].double()),
                              res.scores[mode].double(), atol=1e-6)


def test_xattr_x_axis_differs_by_the_step_zero_point():
    model, x = linear_model()
    maps = (model.weight[0] * x).sum(1, keepdim=True)
    t = torch.zeros(3, dtype=torch.long)
    ref_axis = InsertionDeletion(per_step=4, blur_sigma=3.0, min_prob=None)(model, x, t, maps)
    ours = InsertionDeletion(per_step=4, blur_sigma=3.0, min_prob=None, x_axis="xattr")(model, x, t, maps)
    assert torch.allclose(ours.curves["deletion"][:, 1:], ref_axis.curves["deletion"], atol=1e-6)
    gap = (ours.scores["deletion"] - ref_axis.scores["deletion"]).abs()
    assert (gap > 0).all() and (gap < 0.02).all()  # 64 steps here; about 1e-4 at 10 px on 224 x 224


def test_in_place_defect_of_the_released_code_quantified():
    """With 256 / 2 = 128 steps the reference's chunks are 80 + 48 steps; appending the same in-place tensor
    makes each chunk flat at its last state. xattr equals the corrected protocol; the defect moves the AUCs."""
    model, x = linear_model()
    maps = (model.weight[0] * x).sum(1, keepdim=True)  # exact contributions: the best order
    t = torch.zeros(3, dtype=torch.long)
    res = InsertionDeletion(per_step=2, blur_sigma=3.0, min_prob=None)(model, x, t, maps)
    good = both(model, x, maps, 2, 3.0)
    bad = both(model, x, maps, 2, 3.0, defect=True)
    assert torch.allclose(res.curves["deletion"].double(), good["deletion"], atol=1e-6)
    assert torch.allclose(res.scores["insertion"].double(), good["insertion_auc"], atol=1e-6)
    d = res.curves["deletion"]
    assert (d[:, 1:] - d[:, :-1] < 0).all()  # strictly monotone, as it must be for this model
    flat = bad["deletion"]
    assert torch.equal(flat[:, :80], flat[:, 79:80].expand(-1, 80)) and torch.equal(flat[:, 80:], flat[:, -1:].expand(-1, 48))
    # deletion falls, so a chunk held at its last (lowest) value lowers the AUC by about 0.14 here; the
    # insertion curve of this model saturates early, so its AUC moves little
    del_gap = good["deletion_auc"] - bad["deletion_auc"]
    assert (del_gap > 0.1).all(), del_gap
    assert (bad["insertion_auc"] != good["insertion_auc"]).all()
