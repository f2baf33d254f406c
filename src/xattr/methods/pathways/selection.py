"""Network-wide pathway selection (dissertation ch. 5, sec. 3.3, L505-509).

Given a score per neuron, the pathway ``e`` keeps a neuron when its score is at or above ``c_kappa``, the
kappa-th percentile of *all* the image's scores ranked network-wide (not layer by layer; zeros are part of
the ranking), and is positive: a neuron with score 0 is never kept, so dead neurons (Remark 2, L503: MCT and
IntGrad give them 0) never enter a pathway. The percentile interpolates linearly between ranks, as
``np.percentile`` in the reference code (PathwayGrad ``src/Pruner.py`` @d59b16d6); the code prunes
``score <= c_kappa``, i.e. keeps ``score > c_kappa``, which differs from "at or above" only on exact ties
with ``c_kappa`` (``ties``: ``keep`` | ``drop``, the code's; DGR's gates tie, its default is ``drop``). With distinct scores it keeps exactly ``N - ceil(kappa (N - 1))`` neurons, i.e.
``(1 - kappa) N`` whenever ``kappa N`` is an integer.

Sparsity ``kappa``: 70% for ResNet-50, 90% for VGG-16 in the paper (appendix C, L1974); the code's
default is 85%.
"""

from __future__ import annotations

import math

import torch

from xattr.core.masks import greater, greater_equal
from xattr.core.ranking import rank_values
from xattr.errors import XattrConfigError


def check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise XattrConfigError(f"bad sparsity {sparsity!r}; valid choices: a fraction in [0, 1) (0.7 = keep 30%)")
    return float(sparsity)


def percentile(scores: torch.Tensor, q: float) -> torch.Tensor:
    """Per row of ``scores`` ``(B, N)``: the ``q``-quantile (``q`` in [0, 1]) with linear interpolation
    between ranks (``np.percentile(row, 100 q)``), ``(B,)``. ``N`` may exceed ``torch.quantile``'s limit.

    Why not one library call: ``torch.quantile`` caps ``N`` at 2**24 and sorts, and two ``torch.kthvalue``
    calls on a CPU took 44 ms for 8 rows of 190 000 neurons here, 70% of NeuronMCT's time (issue 31). On a CPU
    the ranks come from :func:`_ranked_numpy` (2 ms); elsewhere from ``torch.kthvalue`` on the device."""
    n = scores.shape[1]
    pos = q * (n - 1)
    lo, frac = math.floor(pos), pos - math.floor(pos)
    s = scores.detach().float()
    ranks = [lo, lo + 1] if frac != 0 else [lo]  # frac != 0 only below q = 1, so lo + 1 < n
    v = _ranked_numpy(s, ranks) if s.device.type == "cpu" else _ranked_torch(s, ranks)
    return v[0] + (v[1] - v[0]) * frac if len(ranks) == 2 else v[0]


def _ranked_numpy(s: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
    """The values at the 0-based ``ranks`` (one, or two neighbours ``[r, r + 1]``) of each row of ``s``
    ``(B, N)`` on the CPU, exactly: :func:`xattr.core.ranking.rank_values`, one ``np.partition`` of the block with
    the single ``kth`` ``r`` (numpy's SIMD selection; a ``kth`` list of two took 7x longer here), then rank ``r + 1``
    is the least value right of ``r``; rows mostly at their minimum (dead neurons' zeros) are selected above it.
    8 rows of 190 000 scores: about 3 ms here, 1 of them finding such rows (a sampled selection: 6 ms;
    ``torch.kthvalue``: 44 ms)."""
    v, nxt = rank_values(s.numpy(), ranks[0], next_too=len(ranks) == 2)
    return [torch.from_numpy(v)] + ([torch.from_numpy(nxt)] if nxt is not None else [])


def _ranked_torch(s: torch.Tensor, ranks: list[int]) -> list[torch.Tensor]:
    """The same by ``torch.kthvalue`` on the tensor's device."""
    return [torch.kthvalue(s, r + 1, dim=1).values for r in ranks]


TIES = ("keep", "drop")


def select(scores: torch.Tensor, sparsity: float, ties: str = "keep") -> torch.Tensor:
    """The pathway ``(B, N)`` bool: ``score >= c_kappa`` (``ties="keep"``: the text's "at or above") or
    ``score > c_kappa`` (``"drop"``: the code's pruning of ``score <= c_kappa``), network-wide percentile
    ``kappa = sparsity``, and ``score > 0``."""
    check_sparsity(sparsity)
    if ties not in TIES:
        raise XattrConfigError(f"bad ties {ties!r}; valid choices: {', '.join(TIES)}")
    t = percentile(scores, sparsity)[:, None]
    t = t.to(torch.promote_types(scores.dtype, t.dtype))  # exact: the comparison's own promotion
    # one comparison: "score >= t and score > 0" is "score >= max(t, the least positive value)"; with ties
    # "drop", "score > t and score > 0" is "score > max(t, 0)"
    if ties == "keep":
        return greater_equal(scores, torch.maximum(t, torch.nextafter(torch.zeros_like(t), torch.ones_like(t))))
    return greater(scores, t.clamp_min(0))
