"""core.masks: the numpy comparisons and casts equal torch's operators, value for value (issue 31)."""

from __future__ import annotations

import pytest
import torch

from xattr.core.masks import as_float, greater, greater_equal

SPECIAL = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45, -1e-45, 3.4e38, 1.0, 0.5]


def _values(dtype: torch.dtype) -> torch.Tensor:
    v = torch.tensor(SPECIAL * 3, dtype=dtype)
    return torch.stack([v, v.flip(0), v.roll(3)])  # (3, 30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("threshold", ["zero", "scalar", "row", "row64", "dim0", "special"])
def test_greater_and_greater_equal_are_torchs(dtype, threshold):
    v = _values(dtype)
    t = {"zero": 0, "scalar": 0.5, "row": torch.tensor([[0.0], [1e-45], [float("nan")]], dtype=dtype),
         "row64": torch.tensor([[0.1], [-0.0], [1.0]], dtype=torch.float64),  # promotes the comparison
         "dim0": torch.tensor(0.1, dtype=torch.float64),  # a 0-dim tensor does not promote (torch's rule)
         "special": torch.tensor([[float("inf")], [-float("inf")], [-0.0]], dtype=dtype)}[threshold]
    assert torch.equal(greater(v, t), v > t)
    assert torch.equal(greater_equal(v, t), v >= t)
    assert greater(v, t).dtype == torch.bool


def test_dim0_threshold_compares_in_the_values_dtype():
    """0.1 is not a float32: torch compares the float32 values with float32(0.1), as must the numpy path."""
    v = torch.tensor([[0.1]], dtype=torch.float32)
    t = torch.tensor(0.1, dtype=torch.float64)
    assert greater(v, t).item() is False and (v.double() > t).item() is True


def test_non_contiguous_and_grad_inputs():
    v = torch.randn(6, 40, requires_grad=True)
    cols = v[:, ::3]  # strided view
    t = torch.randn(6, 1)
    assert torch.equal(greater(cols, t), cols.detach() > t)
    assert torch.equal(greater_equal(v.t(), 0.0), v.detach().t() >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_as_float_is_to(dtype):
    m = torch.rand(4, 33) > 0.5
    out = as_float(m, dtype)
    assert out.dtype == dtype and torch.equal(out, m.to(dtype))
    assert torch.equal(as_float(m[:, ::2]), m[:, ::2].float())


def test_cpu_float_tensors_take_numpys_loops_and_others_torchs(monkeypatch):
    """The speed design, pinned (the values are equal either way): a CPU float32/float64 comparison and cast run
    in numpy; bfloat16 (no numpy dtype) runs in torch."""
    import numpy as np

    calls: list[str] = []
    for name in ("greater", "greater_equal"):
        real = getattr(np, name)
        monkeypatch.setattr(np, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    v = torch.randn(3, 5)
    greater(v, 0.0), greater_equal(v.double(), torch.zeros(3, 1))
    assert calls == ["greater", "greater_equal"]
    greater(v.bfloat16(), 0.0)
    assert calls == ["greater", "greater_equal"]
