"""ROAD: RemOve And Debias (Rong, Leemann et al., "A consistent and efficient evaluation strategy for
attribution methods", ICML 2022). Pixels are removed in the map's order (MoRF: most relevant first; LeRF:
least relevant first) and *imputed* by noisy linear imputation instead of a fixed colour, so the removal
leaks no information about where it happened; the model is not retrained (ROAR's cost, without it).

Noisy linear imputation (Rong et al., sec. 4, eq. 5; the authors' code ``tleemann/road_evaluation``,
``road/imputations.py`` ``NoisyLinearImputer``, the reference): every removed pixel takes the weighted mean of
its 8 neighbours (weight 1/6 for the 4 direct and 1/12 for the 4 diagonal ones; neighbours outside the image
drop out of the sum and of the weights), known neighbours fixed, removed ones unknowns: one sparse linear system
per image and removal, solved for all channels at once (``scipy.sparse.linalg.spsolve``, as the reference), then
``noise * N(0, 1)`` is added to each imputed value (``noise`` 0.01, the reference's default). A constant image
imputes to the constant.

Why partly hand-written: no library batches it; Quantus 0.6 has the same imputation
(``quantus.functions.perturb_func.noisy_linear_imputation``, one image per call; the test compares both), but
its ``ROAD`` scores MoRF only, counts pixels over channels (``a[0, :, :].size``) and draws the noise from numpy's
global generator. Here the sparse solves run on the CPU image by image (as the reference: a solve is not a
batched tensor operation), the forwards of all (image, order, percentage) jobs in ``chunk``-sized batches on the
model's device; noise comes from a generator seeded per image (:mod:`xattr.core.seeding`), so batched equals one
image at a time.

At each percentage ``p`` (``percentages``, default 10, 20, ..., 90 as the paper's figures), ``floor(p/100 * H W)``
pixels (all channels) are imputed; the read-out is ``accuracy`` (argmax == target, the paper's measure) or the
target's ``softmax`` probability. Scores: ``road_morf`` and ``road_lerf`` (mean of the curve over the percentages;
MoRF low and LeRF high is good) and ``road`` = LeRF - MoRF; curves over the percentages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from xattr.core.checks import check_choice, module_device
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.seeding import image_seeds
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import flat_map, ranks, readout
from xattr.metrics.base import Metric, MetricResult

ORDERS = ("morf", "lerf")
READOUTS = ("accuracy", "softmax")
#: (dy, dx) -> weight of the reference's 8-neighbourhood
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def linear_imputation(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Linear imputation of the pixels ``removed`` (bool ``(H*W,)``) of ``img`` ``(C, H, W)``: the solution of
    the reference's system (module docstring), without noise; returns a float64 copy."""
    c, h, w = img.shape
    flat = img.reshape(c, -1).astype(np.float64)
    out = flat.copy()
    idx = np.flatnonzero(removed)
    m = len(idx)
    if m == 0:
        return out.reshape(c, h, w)
    var = np.full(h * w, -1, dtype=np.int64)
    var[idx] = np.arange(m)
    r, q = idx // w, idx % w
    rows, cols, vals = [], [], []
    rhs = np.zeros((m, c))
    diag = np.zeros(m)
    for (dy, dx), wt in NEIGHBOURS:
        nr, nq = r + dy, q + dx
        ok = (nr >= 0) & (nr < h) & (nq >= 0) & (nq < w)
        nidx = np.where(ok, nr * w + nq, 0)
        known = ok & ~removed[nidx]
        unknown = ok & removed[nidx]
        rhs[known] -= wt * flat[:, nidx[known]].T
        rows.append(np.flatnonzero(unknown))
        cols.append(var[nidx[unknown]])
        vals.append(np.full(int(unknown.sum()), wt))
        diag += np.where(ok, wt, 0.0)
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    vals.append(-diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m, m)).tocsc()
    sol = spsolve(a, rhs)
    out[:, idx] = np.asarray(sol).reshape(m, c).T
    return out.reshape(c, h, w)


class ROAD(Metric):
    """ROAD with noisy linear imputation, MoRF and LeRF, no retraining (see the module docstring).

    Args:
        percentages: the removal levels in percent (default 10..90 in steps of 10, the paper's figures).
        noise: std of the noise added to imputed values (0.01, the reference's default).
        orders: ``morf`` and / or ``lerf``.
        output: ``accuracy`` (the paper) or ``softmax`` (the target's probability).
        seed: seed of the per-image noise generators.
        chunk: forwards per call (memory knob; results do not depend on it).
    """

    name = "road"
    paper = "Rong, Leemann et al., ICML 2022 (ROAD), sec. 4; tleemann/road_evaluation"
    memory_knob = "chunk"

    def __init__(self, percentages: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90), noise: float = 0.01,
                 orders: Sequence[str] = ORDERS, output: str = "accuracy", seed: int = 0,
                 chunk: int | str | None = "auto") -> None:
        self.percentages = [float(p) for p in percentages]
        if not self.percentages or any(not 0 <= p <= 100 for p in self.percentages):
            raise XattrConfigError(f"bad percentages {list(percentages)!r}; valid choices: numbers in [0, 100]")
        if noise < 0:
            raise XattrConfigError(f"bad noise {noise!r}; valid choices: a number >= 0")
        self.orders = tuple(orders)
        for o in self.orders:
            check_choice("order", o, ORDERS)
        check_choice("output", output, READOUTS)
        self.noise, self.output, self.seed = float(noise), output, int(seed)
        self.chunk = check_chunk(chunk)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: one forward per order and percentage: ``len(orders) x len(percentages)``."""
        return float(len(self.orders) * len(self.percentages))

    def impute(self, x: torch.Tensor, removed: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Noisy linear imputation of one image ``x`` ``(C, H, W)`` at the bool pixels ``removed`` ``(H*W,)``."""
        mask = removed.cpu().numpy()
        out = torch.from_numpy(linear_imputation(x.detach().cpu().numpy(), mask)).to(x.dtype)
        if self.noise and mask.any():
            noise = torch.randn((x.shape[0], int(mask.sum())), generator=generator, dtype=torch.float64)
            flat = out.reshape(x.shape[0], -1)
            flat[:, torch.from_numpy(mask)] += (self.noise * noise).to(x.dtype)
        return out.to(x.device)

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, _, h, w = x.shape
        flat = flat_map(maps.to(device), x)
        order_rank = {"morf": ranks(flat, True), "lerf": ranks(flat, False)}
        counts = [int(h * w * p / 100) for p in self.percentages]
        gens = [torch.Generator().manual_seed(s) for s in image_seeds(x, self.seed)]
        jobs = [(i, o, k) for i in range(b) for o in self.orders for k in range(len(counts))]
        chunk = items_per_call(len(jobs), 1, resolve_chunk(self.chunk, model, x[:1]))
        values = torch.empty(len(jobs), device=device)
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            inputs = torch.stack([self.impute(x[i], order_rank[o][i] < counts[k], gens[i]) for i, o, k in part])
            out = model(inputs)
            tgt = target[[i for i, _, _ in part]]
            values[start:start + len(part)] = ((out.argmax(1) == tgt).float() if self.output == "accuracy"
                                               else readout(out, tgt, "softmax"))
        curves = values.view(b, len(self.orders), len(counts))
        res = MetricResult()
        axis = torch.tensor(self.percentages)
        for j, o in enumerate(self.orders):
            res.curves[f"road_{o}"], res.x_axis[f"road_{o}"] = curves[:, j], axis
            res.scores[f"road_{o}"] = curves[:, j].mean(1)
        if set(self.orders) == set(ORDERS):
            res.scores["road"] = res.scores["road_lerf"] - res.scores["road_morf"]
        return res
