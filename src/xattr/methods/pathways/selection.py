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

from xattr.errors import XattrConfigError


def check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise XattrConfigError(f"bad sparsity {sparsity!r}; valid choices: a fraction in [0, 1) (0.7 = keep 30%)")
    return float(sparsity)


def percentile(scores: torch.Tensor, q: float) -> torch.Tensor:
    """Per row of ``scores`` ``(B, N)``: the ``q``-quantile (``q`` in [0, 1]) with linear interpolation
    between ranks (``np.percentile(row, 100 q)``), ``(B,)``. Uses ``kthvalue``, so ``N`` may exceed
    ``torch.quantile``'s limit."""
    n = scores.shape[1]
    pos = q * (n - 1)
    lo, frac = math.floor(pos), pos - math.floor(pos)
    s = scores.float()
    v_lo = torch.kthvalue(s, lo + 1, dim=1).values
    if frac == 0 or lo + 1 >= n:
        return v_lo
    v_hi = torch.kthvalue(s, lo + 2, dim=1).values
    return v_lo + (v_hi - v_lo) * frac


TIES = ("keep", "drop")


def select(scores: torch.Tensor, sparsity: float, ties: str = "keep") -> torch.Tensor:
    """The pathway ``(B, N)`` bool: ``score >= c_kappa`` (``ties="keep"``: the text's "at or above") or
    ``score > c_kappa`` (``"drop"``: the code's pruning of ``score <= c_kappa``), network-wide percentile
    ``kappa = sparsity``, and ``score > 0``."""
    check_sparsity(sparsity)
    if ties not in TIES:
        raise XattrConfigError(f"bad ties {ties!r}; valid choices: {', '.join(TIES)}")
    t = percentile(scores, sparsity)[:, None]
    return (scores >= t if ties == "keep" else scores > t) & (scores > 0)
