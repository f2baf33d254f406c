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


def stable_descending(v: torch.Tensor) -> torch.Tensor:
    """Per row of float32 ``v`` ``(B, N)`` (no NaN), the indices of a stable descending sort (equal values lower
    index first), int64 on ``v``'s device: ``torch.sort(v, descending=True, stable=True).indices``.

    Why hand-written on a CPU: torch's stable sort took 67 ms for 16 rows of 224 x 224 here (one thread), numpy's
    stable argsort as long; numpy's SIMD sort of plain integers takes a third of that. Each value becomes an
    unsigned key whose order is the values' descending order (IEEE bits, sign folded; -0.0 counted as 0.0),
    joined with its index below it, so the sort of the 64-bit keys is the stable order and the index is read
    back from the low bits."""
    if v.device.type != "cpu" or v.dtype != torch.float32 or v.shape[1] >= 2**32:
        return torch.sort(v, dim=1, descending=True, stable=True).indices
    bits = (v.detach() + 0.0).numpy().view(np.uint32)  # + 0.0: -0.0 becomes 0.0, equal as torch compares
    up = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))  # ascending order of the values
    keys = (~up).astype(np.uint64) << np.uint64(32)  # descending
    keys |= np.arange(v.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    return torch.from_numpy((keys & np.uint64(0xFFFFFFFF)).astype(np.int64))


def sorted_rows(v: torch.Tensor) -> torch.Tensor:
    """``torch.sort(v, dim=1).values`` (ascending); on a CPU by numpy's SIMD sort (256 rows of 1 024 floats:
    1 ms against torch's 14 ms here, one thread). NaN last in both."""
    if v.device.type != "cpu":
        return torch.sort(v, dim=1).values
    return torch.from_numpy(np.sort(v.detach().numpy(), axis=1))


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """``mask.sum(1)`` of a bool ``(B, N)``, int64; on a CPU by :func:`row_counts` (4 x 190 000 on one thread here:
    0.03 ms, against 0.8 for torch's bool sum)."""
    if mask.device.type != "cpu":
        return mask.sum(1)
    return torch.from_numpy(row_counts(mask.numpy()))


#: rows at least this long are counted one by one in :func:`row_counts`
ROW_COUNT_MIN = 4096


def row_counts(a: np.ndarray) -> np.ndarray:
    """``np.count_nonzero(a, axis=1)`` of a 2-D array, int64. Why row by row: numpy counts without an axis by its
    SIMD count, with one by converting to bool and summing (4 rows of 188 416 bools here: 0.03 against 0.23 ms;
    a GreedyPruning round counts twice, issue 31). Short rows are counted with the axis: a Python call per row
    would cost more than it saves."""
    if a.ndim != 2 or a.shape[1] < ROW_COUNT_MIN:
        return np.count_nonzero(a, axis=1).astype(np.int64)
    return np.fromiter((np.count_nonzero(row) for row in a), dtype=np.int64, count=a.shape[0])


#: a row whose minimum repeats on more than this share of its entries is selected above the minimum
HEAVY_MIN_TIES = 1 / 2


def rank_values(a: np.ndarray, r: int, next_too: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row of ``a`` ``(B, N)`` its value at the 0-based rank ``r`` (``0 <= r < N``; NaN ranks last, as in
    ``np.partition``) and, with ``next_too`` (``r + 1 < N``), the value at rank ``r + 1``: the least value right of
    ``r`` after the partition.

    One ``np.partition`` of the block with the single ``kth`` ``r`` (numpy's SIMD selection). Why the rows with a
    repeated minimum are treated apart: that selection degrades when the row's minimum fills a large share of it
    and ``r`` lies in or just past that block (numpy 2.4 here: 0.9 s instead of ~30 ms for VGG-16's 13.5 M neuron
    scores at 224 px, most of them 0 from dead ReLUs; 37 ms instead of 1.9 ms for 8 rows of 188 416 with 90% zeros;
    at about half zeros it depends on the data: 25 ms or 1.4 s). A row whose minimum ``m`` repeats ``c > N / 2``
    times (and has no NaN) takes ``m`` for the ranks below ``c`` (no selection at all) and selects among its fewer
    than ``N / 2`` values above ``m`` for the others: the same values. Below half the copy of the values above ``m``
    costs more than numpy's selection saves (CIFAR ResNet-20's scores, 44% zeros: 7.8 against 2.2 ms)."""
    b, n = a.shape
    lo = a.min(axis=1) if n else np.empty(0, a.dtype)
    ties = row_counts(a == lo[:, None])  # 0 on a row with NaN (its min is NaN)
    heavy = np.flatnonzero(ties > n * HEAVY_MIN_TIES)
    out = np.empty(b, dtype=a.dtype)
    nxt = np.empty(b, dtype=a.dtype) if next_too else None
    plain = np.setdiff1d(np.arange(b), heavy, assume_unique=True)
    if plain.size:
        part = np.partition(a if plain.size == b else a[plain], r, axis=1)
        out[plain] = part[:, r]
        if nxt is not None:
            nxt[plain] = part[:, r + 1:].min(axis=1)
    for i in heavy.tolist():
        c, m = int(ties[i]), lo[i]
        rest = a[i][a[i] > m]  # the values above the minimum (no NaN in a heavy row)
        if r >= c:
            rest = np.partition(rest, r - c)
        out[i] = m if r < c else rest[r - c]
        if nxt is not None:
            nxt[i] = m if r + 1 < c else rest[r + 1 - c:].min() if r >= c else rest.min()
    return out, nxt


def _nth_numpy(a: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Per row of ``a`` ``(B, N)`` its value at the 0-based rank ``ranks[b]`` (in ``[0, N)``): rows of equal rank
    share one selection (:func:`rank_values`)."""
    out = np.empty(a.shape[0], dtype=a.dtype)
    by_rank: dict[int, list[int]] = {}
    for i, r in enumerate(ranks.tolist()):
        by_rank.setdefault(r, []).append(i)
    for r, rows in by_rank.items():
        block = a if len(rows) == a.shape[0] else a[rows]
        out[rows] = rank_values(block, r)[0]
    return out


def _lowest_numpy(a: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lowest` of a numpy ``a`` (no NaN), and each row's cut value ``v`` ``(B,)``: one comparison and one
    count per row, ties at ``v`` fixed row by row where they are only partly taken (or a count is 0)."""
    v = _nth_numpy(a, np.clip(counts, 1, a.shape[1]) - 1)
    t = a <= v[:, None]
    for i in np.flatnonzero(row_counts(t) > counts):
        less, eq = a[i] < v[i], a[i] == v[i]
        t[i] = less | (eq & (np.cumsum(eq) <= counts[i] - np.count_nonzero(less)))
    return t, v


def nth_smallest(key: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(B,)``: per row of ``key`` ``(B, N)`` its ``counts[b]``-th smallest value (``counts`` clamped to
    ``[1, N]``), exactly; no NaN in ``key``.

    On a CPU by numpy's selection: rows of equal count share one ``np.partition`` call with a single ``kth``
    (numpy's SIMD selection; 256 rows of 1 024 values took 0.6 ms here against 7 ms for ``torch.topk``, issue
    28's relevance rank); elsewhere ``torch.topk`` on the device."""
    b, n = key.shape
    c = counts.clamp(1, n)
    if key.device.type != "cpu" or key.dtype not in (torch.float32, torch.float64):
        m = int(c.max()) if b else 1
        vals = torch.topk(key, m, dim=1, largest=False, sorted=True).values
        return vals.gather(1, (c - 1)[:, None])[:, 0]
    return torch.from_numpy(_nth_numpy(key.detach().numpy(), (c - 1).numpy()))


def lowest(key: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` bool: per row the ``counts[b]`` smallest values of ``key`` ``(B, N)``, equal values taken
    lower index first (the order of a stable ascending sort; ``counts`` ``(B,)``, 0 takes none).

    Why not a sort: GreedyPruning asks this once per pruning round for 1% of the neurons; a stable sort of
    8 rows of 190 000 took 125 ms on one CPU thread, ``torch.topk`` of the largest count 12 ms (issue 31).
    :func:`nth_smallest` gives each row's cut value ``v``; values below it are taken, and values equal to it
    lower index first until the count is met. No NaN in ``key``."""
    if not counts.numel() or int(counts.max()) == 0:
        return torch.zeros_like(key, dtype=torch.bool)
    if key.device.type == "cpu" and key.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(_lowest_numpy(key.detach().numpy(), counts.numpy())[0])
    v = nth_smallest(key, counts)[:, None]  # (B, 1): the counts-th smallest
    less, eq = key < v, key == v
    need = counts - less.sum(1)  # how many of the values equal to v are taken
    n_eq = eq.sum(1)
    take = less | (eq & (need >= n_eq)[:, None])
    part = (need < n_eq).nonzero()[:, 0]  # ties at v only partly taken: lower index first (a count of 0: none)
    if len(part):
        take[part] |= eq[part] & (eq[part].cumsum(1) <= need[part, None])
    return take


#: the largest key of a positive float32 (+inf's) in :func:`lowest_positive`'s order
_POSITIVE_KEYS = 0x7F7FFFFF


def lowest_positive(s: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` bool: per row the ``counts[b]`` smallest *positive* values of float32 ``s`` ``(B, N)`` (fewer
    where a row has fewer), equal values lower index first: ``lowest`` of ``s`` with every value that is not
    positive (0, -0.0, negatives, NaN) moved behind all positive ones, +inf included.

    Why not ``lowest(torch.where(s > 0, s, inf), counts)``: that copy took 3 ms for 4 rows of 190 000 here (the
    random pattern of zeros), 10% of a GreedyPruning round (issue 31), and ties +inf scores with the zeros. The
    key is the float's bit pattern minus one as an unsigned 32-bit integer: 0.0 wraps to the largest key,
    positive floats keep their order below the NaN and negative patterns; no copy but the key itself."""
    if s.dtype != torch.float32:
        raise TypeError(f"lowest_positive takes float32 scores, not {s.dtype}")
    if s.device.type != "cpu":
        return _lowest_positive_torch(s, counts)
    if not counts.numel() or int(counts.max()) == 0:
        return torch.zeros_like(s, dtype=torch.bool)
    u = s.detach().numpy().view(np.uint32) - np.uint32(1)
    take, v = _lowest_numpy(u, counts.numpy())
    for i in np.flatnonzero(v > _POSITIVE_KEYS):  # the count runs past the row's positive values
        take[i] &= u[i] <= _POSITIVE_KEYS
    return torch.from_numpy(take)


def _lowest_positive_torch(s: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """:func:`lowest_positive` on the tensor's device: the same keys, as int64, through :func:`lowest`."""
    key = (s.view(torch.int32).to(torch.int64) - 1) & 0xFFFFFFFF
    return lowest(key, counts) & (key <= _POSITIVE_KEYS)


def highest(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` bool: per row the first ``counts[b]`` entries of the stable descending order, i.e.
    ``ranks(values, True) < counts[:, None]`` (equal values lower index first, NaN last) without ranking every
    entry: :func:`lowest` of ``-values``."""
    return lowest((-values).nan_to_num(nan=math.inf), counts)


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
            order = perm.gather(1, stable_descending(v.gather(1, perm)))
        else:
            order = stable_descending(v)
    rank = torch.empty_like(order, dtype=torch.int32)
    rank.scatter_(1, order, torch.arange(n, device=values.device, dtype=torch.int32).expand(b, n).contiguous())
    return rank
