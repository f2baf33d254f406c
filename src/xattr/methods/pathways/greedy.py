"""Pathological greedy pruning (dissertation ch. 5, sec. 3.2, Alg. 1 L450-458, eq. 2 L476).

A pathway selected by the pruning objective (eq. 1, L444) need not encode the input: this algorithm
solves it while *by design* letting originally dead neurons into the pathway. It alternates between
scoring every neuron of the *currently pruned* network by ``s = |a * dPhi/da|`` (eq. 2) and pruning the
lowest-scoring neurons whose score is not zero ("without this crucial step, dead neurons will be pruned
before others as their relevance score is zero", L476). Pruning an active neuron changes the next layer's
inputs and can switch an originally dead neuron on; it then scores above zero and may stay.

``variant: paper`` (default, Alg. 1): start from the full network; each iteration prunes the
``ceil(prune_step * N)`` lowest non-zero-score kept neurons (network-wide), stopping once the kept neurons
with a non-zero score number ``K = N - ceil(kappa (N - 1))`` (the count the network-wide selection keeps) or
fewer. Alg. 1's ``||m||_0`` counts these: dead neurons are never pruned (``s != 0``), so counting them would
make the loop prune every live neuron. The pathway is the kept neurons with a non-zero score in the final
pruned network; its output ``pathway/logit`` is the pruned network's (``pruned: zero``).

``variant: reference`` (PathwayGrad ``Pruner.prune_greedy`` @d59b16d6, called as ``prune_greedy(1, 99)``
by ``path_analysis.py``): ``iterations`` rounds; round ``i`` replaces zero scores by the maximum, takes the
``i * percentile_step`` percentile ``t`` of the result, prunes ``0 < s <= t`` and *restores* every neuron
whose score is 0 (``mask[s <= 0] = 1``) -- including the ones pruned in earlier rounds, whose masked output
(and so score) is 0. It ignores ``sparsity``; the pathway is the final mask, which therefore contains
every neuron of zero score, dead ones included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive, check_positive_int
from xattr.core.masks import as_float, greater
from xattr.core.ranking import count_true, lowest_positive
from xattr.methods.pathways.contributions import flat_mct_scores
from xattr.methods.pathways.neurons import DEFAULT_ACTIVATIONS, Layout
from xattr.methods.pathways.pathway import PathwayMethod
from xattr.methods.pathways.selection import percentile

VARIANTS = ("paper", "reference")


def kept_count(n: int, sparsity: float) -> int:
    """``K``: neurons the network-wide selection keeps at ``sparsity`` among ``n`` distinct scores."""
    return n - math.ceil(sparsity * (n - 1) - 1e-9)


class GreedyPruning(PathwayMethod):
    """Alg. 1 (see module docstring), batched: per-image masks on the batch axis.

    Args (besides :class:`PathwayMethod`'s):
        variant: ``paper`` | ``reference``.
        prune_step: (paper) share of all neurons pruned per iteration (0.01).
        max_iterations: (paper) safety cap on iterations.
        iterations, percentile_step: (reference) rounds (99) and the percentile increment per round (0.01).
    """

    name = "greedy_pruning"
    #: ``paper``: the stated cost is the most pruning rounds ``ceil(sparsity / prune_step)``; the loop stops
    #: early once only ``k`` neurons with a positive score are left (neurons scoring 0 drop out at once)
    cost_bounds = (0.25, 1.0)

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: scoring rounds (a forward and a backward each) plus :attr:`BASE_FORWARDS`; ``paper``:
        ``1 + min(max_iterations, ceil(sparsity / prune_step))`` rounds; ``reference``: ``1 + iterations``."""
        if self.variant == "reference":
            rounds = 1 + self.iterations
        else:
            rounds = 1 + min(self.max_iterations, math.ceil(self.sparsity / self.prune_step - 1e-9))
        return 3.0 * rounds + self.BASE_FORWARDS


    def __init__(self, model: nn.Module, sparsity: float = 0.7, variant: str = "paper", prune_step: float = 0.01,
                 max_iterations: int = 1000, iterations: int = 99, percentile_step: float = 0.01,
                 pruned: str = "zero", reduce: str = "signed_max_abs", opening_size: int = 0,
                 activations: Sequence[str] = DEFAULT_ACTIVATIONS, chunk: int | str | None = None) -> None:
        super().__init__(model, sparsity, pruned, reduce, opening_size, activations, chunk)
        check_choice("variant", variant, VARIANTS)
        check_positive("prune_step", prune_step)
        check_positive("percentile_step", percentile_step)
        self.variant, self.prune_step, self.percentile_step = variant, float(prune_step), float(percentile_step)
        self.max_iterations = check_positive_int("max_iterations", max_iterations)
        self.iterations = check_positive_int("iterations", iterations)

    def scores(self, x: torch.Tensor, target: torch.Tensor, layout: Layout, mask: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """``|a * dPhi/da|`` ``(B, N)`` in the network pruned by ``mask`` (pruned neurons score exactly 0),
        written into ``out`` when given (the rounds reuse one buffer)."""
        gates = as_float(mask)  # once per round, split into per-layer views
        return flat_mct_scores(self.neurons, x, target, layout, self.rows(x), gates, out).abs_()

    def pathway(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict]:
        if self.variant == "reference":
            return self._reference(x, target, layout)
        return self._paper(x, target, layout)

    def _paper(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict]:
        b, n = x.shape[0], layout.total
        k = kept_count(n, self.sparsity)
        n_step = max(1, math.ceil(self.prune_step * n))
        mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        done = torch.zeros(b, dtype=torch.bool, device=x.device)
        iters = torch.zeros(b, dtype=torch.int64, device=x.device)
        s = self._live_scores(x, target, layout, mask)
        for _ in range(self.max_iterations):
            live = greater(s, 0)  # kept with a non-zero score: pruned neurons score exactly 0 (scores)
            n_live = count_true(live)
            done |= n_live <= k
            if bool(done.all()):
                break
            n_prune = torch.where(done, 0, (n_live - k).clamp(max=n_step))
            mask &= ~lowest_positive(s, n_prune)  # the n_prune lowest live scores, ties lower index first
            iters += (~done).long()
            s = self._live_scores(x, target, layout, mask, s)
        return mask & greater(s, 0), {"iterations": iters}

    def _live_scores(self, x: torch.Tensor, target: torch.Tensor, layout: Layout, mask: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """Alg. 1's scores with a NaN score as 0: never live, as ``mask & (s > 0)`` had it (the reference variant
        keeps NaN, as the code's numpy comparisons do). ``out``: the previous round's scores, overwritten."""
        return self.scores(x, target, layout, mask, out).nan_to_num_(nan=0.0, posinf=math.inf)

    def _reference(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict]:
        b, n = x.shape[0], layout.total
        mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        s = self.scores(x, target, layout, mask)
        for i in range(self.iterations):
            s_max = s.amax(1, keepdim=True)
            t = percentile(torch.where(s <= 0, s_max, s), min(1.0, i * self.percentile_step))
            mask = torch.where(s <= t[:, None], False, mask)
            mask = torch.where(s <= 0, True, mask)
            s = self.scores(x, target, layout, mask, s)
        return mask, {"iterations": torch.full((b,), self.iterations, dtype=torch.int64, device=x.device)}
