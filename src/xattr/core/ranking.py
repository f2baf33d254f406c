"""Orders of map values and exact pixel counts, shared by the perturbation metrics (LeRF, insertion /
deletion, localisation) and ROAR's dataset, so both sides rank a map the same way.

Tie orders (``ties``): ``stable`` keeps raster order among equal values (lower flat index first), ``random``
breaks them by a seeded permutation per row, ``numpy`` is the order of the authors' codes (RoarTorch's
``roar_core.remove`` and LeRF's ``pixel_perturbation_analysis.remove``: ``np.argsort`` with its default
``quicksort`` kind on the float32 map, the top ``k`` read from its end, the bottom ``k`` from its start). Why
hand-written for ``numpy``: its tie order is whatever numpy's introsort (or SIMD sort) leaves, not a rule that
torch can reproduce, so the map goes through numpy itself; it scatters equal values over the image where
``stable`` removes a contiguous block.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from xattr.core.checks import check_choice

TIES = ("stable", "random", "numpy")
ROUNDINGS = ("floor", "round")


def share_count(share: float | Fraction, n: int, rounding: str = "floor") -> int:
    """The number of items a ``share`` in [0, 1] of ``n`` is, computed exactly (a ``Fraction`` as given, else
    the decimal the share is written as, so 0.29 of 100 is 29, never 28 from a float round-off): ``floor`` is
    Python's ``int(share * n)`` of the reference codes, ``round`` rounds half to even."""
    check_choice("rounding", rounding, ROUNDINGS)
    exact = (share if isinstance(share, Fraction) else Fraction(str(float(share)))) * int(n)
    return int(exact) if rounding == "floor" else round(exact)


def numpy_order(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """Per row of ``values`` ``(B, N)``, the flat indices in the order the reference codes take them:
    ``np.argsort(row)`` (default kind) on the float32 values, reversed when ``descending`` (the codes' top
    ``k`` is ``argsort()[-k:][::-1]``). Returns int64 ``(B, N)`` on ``values``' device."""
    v = values.detach().float().cpu().numpy()
    order = np.stack([np.argsort(row) for row in v]) if len(v) else np.zeros(v.shape, dtype=np.int64)
    if descending:
        order = order[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(order)).long().to(values.device)


def ranks(values: torch.Tensor, descending: bool = True, ties: str = "stable", seed: int = 0) -> torch.Tensor:
    """Rank of every entry of ``values`` ``(B, N)`` (0 = first to perturb), int32 ``(B, N)``.

    Ties: see the module docstring. NaN entries come last (``stable`` / ``random``).
    """
    check_choice("ties", ties, TIES)
    b, n = values.shape
    if ties == "numpy":
        order = numpy_order(values, descending)
    else:
        v = values.float() if descending else -values.float()
        v = v.nan_to_num(nan=-math.inf)  # NaN last in either direction
        if ties == "random":
            g = torch.Generator(device="cpu").manual_seed(seed)
            perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)]).to(v.device)
            order = perm.gather(1, torch.sort(v.gather(1, perm), dim=1, descending=True, stable=True).indices)
        else:
            order = torch.sort(v, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order, dtype=torch.int32)
    rank.scatter_(1, order, torch.arange(n, device=values.device, dtype=torch.int32).expand(b, n).contiguous())
    return rank
