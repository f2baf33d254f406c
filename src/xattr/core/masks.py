"""Bool masks of large CPU tensors through numpy: comparisons against a per-row threshold and a mask made float.

Why not the torch operators: on this build's CPU kernels a comparison with a bool result (``s > t``) and a
bool -> float copy take ~0.5 ms for 4 x 188 416 floats (CIFAR ResNet-20's neurons), numpy's SIMD loops 0.06 and
0.1 ms; the pathway methods make one of each per pruning round (issue 31). The results are the same tensors:
IEEE comparisons (NaN compares false in both), and 0/1 cast exactly. Other devices and dtypes numpy lacks
(bfloat16, half) take the torch operator.
"""

from __future__ import annotations

import numpy as np
import torch

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.bool, torch.int32, torch.int64, torch.uint8)


def _numpy_ok(*ts: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES for t in ts)


def _operand(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor in ``like``'s promoted dtype (the comparison's own promotion, so numpy compares the same
    values torch would)."""
    t = torch.as_tensor(t, device=like.device)
    return t.to(torch.result_type(like, t))


def _compare(v: torch.Tensor, t: torch.Tensor | float, numpy_op, torch_op) -> torch.Tensor:
    t = _operand(t, v)
    if _numpy_ok(v, t):
        return torch.from_numpy(numpy_op(v.detach().to(t.dtype).numpy(), t.detach().numpy()))
    return torch_op(v, t)


def greater(v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``v > t`` (``t`` a scalar or broadcastable, e.g. ``(B, 1)`` per row)."""
    return _compare(v, t, np.greater, torch.gt)


def greater_equal(v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``v >= t`` (``t`` a scalar or broadcastable)."""
    return _compare(v, t, np.greater_equal, torch.ge)


def as_float(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``mask.to(dtype)`` of a bool mask (0/1)."""
    if _numpy_ok(mask) and dtype in (torch.float32, torch.float64):
        return torch.from_numpy(mask.numpy().astype(np.float32 if dtype == torch.float32 else np.float64))
    return mask.to(dtype)
