"""Pathways selected by neuron contributions (dissertation ch. 5, sec. 3.3, L492-509): NeuronMCT and
NeuronIntGrad, and their scores.

- NeuronMCT (L493, eq. 12 L1924): the marginal contribution by first-order Taylor,
  ``c = |a * dPhi/da|``: one forward and one backward for all neurons.
- NeuronIntGrad (eq. 4 L501, eq. 13 L1928): integrated gradients of each layer with baseline 0,
  ``c = a * integral_0^1 dPhi(alpha a)/d(alpha a) d alpha``, one layer scaled at a time, the others at their
  full value. Completeness holds per layer: ``sum_j c_j = Phi(x) - Phi(x; a^i <- 0)`` (L507), which is what
  makes scores of different layers comparable for the network-wide ranking.

Paper vs code (PathwayGrad ``src/Pruner.py`` @d59b16d6): the paper uses 50 steps and signed scores; the
code 10 steps and ``|c|`` (defaults here: ``n_steps: 10``, ``score: abs``; ``n_steps: 50 score: signed``
for the paper). The code's step schedule is a defect: its scaling mask is *incremented* by ``j * step``
(``mask[i] += j*step``), so ``alpha = 0, .1, .3, .6, 1.0, ..., 5.5`` for 10 steps, averaged over 11
points, which integrates far outside [0, 1] and breaks completeness. ``alpha_schedule: linear`` (default,
``alpha = k / n``, ``k = 1..n``, the right Riemann sum of Sundararajan et al.'s eq. 3) fixes it;
``alpha_schedule: reference`` reproduces the code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive_int
from xattr.core.chunk import items_per_call, resolve_chunk
from xattr.methods.pathways.neurons import DEFAULT_ACTIVATIONS, Layout, Neurons, target_logit
from xattr.methods.pathways.pathway import PathwayMethod
from xattr.methods.pathways.selection import select

SCHEDULES = ("linear", "reference")
SCORES = ("abs", "signed")


def mct_scores(neurons: Neurons, x: torch.Tensor, target: torch.Tensor,
               masks: Sequence[torch.Tensor] | None = None,
               out: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Signed ``a * dPhi/da`` per layer ``(B, *shape)`` in one forward/backward. With ``masks`` (0/1 per
    layer, bool or already in the activations' dtype) the network is the pruned one, ``a -> z = a * m``, and the
    score is ``z * dPhi/dz`` (GreedyPruning's Alg. 1 score on the current pathway; pruned neurons score 0).

    The gradient is taken at each layer's output ``z`` itself (the input enters the graph), not through a gate
    of ones: per layer that saves the gate's product and its gradient, two elementwise passes over every neuron
    (issue 31). A model that changes a recorded output in place after the hook is an error, not a wrong score.
    ``out``: per-layer destinations (e.g. the views :meth:`Layout.split` makes of one ``(B, N)`` buffer), written
    in place and returned, so a caller needing the flat scores does not concatenate them (issue 31)."""
    outs: list[tuple[torch.Tensor, int]] = []

    def gate(k: int, a: torch.Tensor) -> torch.Tensor:
        z = a if masks is None else a * masks[k].to(a.dtype)
        outs.append((z, z._version))
        return z

    xg = x.detach().requires_grad_(True)
    logits, _ = neurons.forward(xg, gate)
    zs = [z for z, _ in outs]
    grads = torch.autograd.grad(target_logit(logits, target).sum(), zs)
    for z, version in outs:
        if z._version != version:
            raise RuntimeError("the model changed a ReLU output in place after its hook; the neuron scores would be "
                               "read from the changed values (set inplace=False on the modules after it)")
    if out is None:
        return [(z.detach() * g).detach() for z, g in zip(zs, grads, strict=True)]
    return [torch.mul(z.detach(), g, out=o) for z, g, o in zip(zs, grads, out, strict=True)]


def flat_mct_scores(neurons: Neurons, x: torch.Tensor, target: torch.Tensor, layout: Layout, chunk: int | None,
                    masks: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`mct_scores` of every image as one network-wide ``(B, N)`` tensor, ``chunk`` images per
    forward/backward, written into ``out`` (allocated when ``None``; a pruning loop passes the same buffer every
    round) through its per-layer views: no concatenation (issue 31). ``masks``: flat ``(B, N)`` gates."""
    b = x.shape[0]
    if out is None:
        out = torch.empty(b, layout.total, device=x.device, dtype=x.dtype)
    step = items_per_call(b, 1, chunk)
    views = layout.split(out)
    gates = None if masks is None else layout.split(masks)
    for i in range(0, b, step):
        rows = slice(i, i + step)
        mct_scores(neurons, x[rows], target[rows], None if gates is None else [g[rows] for g in gates],
                   [v[rows] for v in views])
    return out


def alpha_schedule(n_steps: int, schedule: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """The scaling factors and their weights: ``linear``: ``k / n``, ``k = 1..n``, weight ``1 / n``;
    ``reference``: the code's cumulative ``step * j (j + 1) / 2``, ``j = 0..n``, weight ``1 / (n + 1)``."""
    check_choice("alpha_schedule", schedule, SCHEDULES)
    n = check_positive_int("n_steps", n_steps)
    if schedule == "linear":
        alphas = torch.arange(1, n + 1, dtype=torch.float64) / n
        return alphas, torch.full((n,), 1.0 / n, dtype=torch.float64)
    j = torch.arange(0, n + 1, dtype=torch.float64)
    return j * (j + 1) / 2 / n, torch.full((n + 1,), 1.0 / (n + 1), dtype=torch.float64)


def intgrad_scores(neurons: Neurons, x: torch.Tensor, target: torch.Tensor, layout: Layout, n_steps: int = 50,
                   schedule: str = "linear", chunk: int | str | None = None) -> list[torch.Tensor]:
    """Signed NeuronIntGrad scores per layer ``(B, *shape)`` (eq. 13): layer by layer, rows (image, step)
    batched, ``chunk`` rows per forward/backward."""
    alphas, weights = alpha_schedule(n_steps, schedule)
    b, s = x.shape[0], len(alphas)
    dev = x.device
    rows_b = torch.arange(b, device=dev).repeat_interleave(s)
    rows_s = torch.arange(s, device=dev).repeat(b)
    alphas, weights = alphas.to(dev), weights.to(dev)
    step = items_per_call(b * s, 1, resolve_chunk(chunk, neurons.model, x[:1], backward=True))
    out = []
    for i, shape in enumerate(layout.shapes):
        acc = torch.zeros(b, *shape, device=dev, dtype=x.dtype)
        for start in range(0, b * s, step):
            rb, rs = rows_b[start : start + step], rows_s[start : start + step]
            box: list[torch.Tensor] = []

            def gate(k: int, a: torch.Tensor, i=i, rs=rs, box=box) -> torch.Tensor:
                if k != i:
                    return a
                g = alphas[rs].to(a.dtype).view(-1, *([1] * (a.dim() - 1))).expand_as(a).clone().requires_grad_(True)
                box.append(g)
                return a * g

            logits, _ = neurons.forward(x[rb], gate)
            (g,) = torch.autograd.grad(target_logit(logits, target[rb]).sum(), box)
            w = weights[rs].view(-1, *([1] * len(shape)))
            acc.index_add_(0, rb, g.detach() * w.to(g.dtype))
        out.append(acc)
    return out


class NeuronMCT(PathwayMethod):
    """Pathway of the neurons with the largest marginal contribution ``|a * dPhi/da|`` (L493), network-wide
    above the ``sparsity`` percentile; the map is the pathway gradient (see :class:`PathwayMethod`).

    >>> maps = NeuronMCT(net, sparsity=0.7).attribute(x, target)
    """

    name = "neuron_mct"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: the marginal contributions (a forward and a backward) plus :attr:`BASE_FORWARDS`."""
        return 3.0 + self.BASE_FORWARDS

    def pathway(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict]:
        return select(flat_mct_scores(self.neurons, x, target, layout, self.rows(x)).abs_(), self.sparsity), {}


class NeuronIntGrad(PathwayMethod):
    """Pathway of the neurons with the largest integrated-gradients contribution (eq. 4/13), network-wide.

    Args (besides :class:`PathwayMethod`'s):
        n_steps: integration steps (code 10, paper 50).
        alpha_schedule: ``linear`` (default) | ``reference`` (the code's cumulative schedule, a defect).
        score: ``abs`` (code: ``|c|``) | ``signed`` (paper eq. 13).
    """

    name = "neuron_intgrad"
    #: the layers are counted as modules; a module called several times (a ResNet block's ReLU) is one
    #: layer per call at run time, so the run may cost up to 3x more (no more than three calls per module)
    cost_bounds = (1.0, 3.0)

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: layer by layer, ``n_steps`` scaled points (``reference``: ``n_steps + 1``), each a forward
        and a backward, plus :attr:`BASE_FORWARDS`: ``3 steps layers + 4``."""
        steps = self.n_steps + (self.alpha_schedule == "reference")
        return 3.0 * steps * len(self.neurons.modules) + self.BASE_FORWARDS


    def __init__(self, model: nn.Module, sparsity: float = 0.7, n_steps: int = 10, alpha_schedule: str = "linear",
                 score: str = "abs", pruned: str = "zero", reduce: str = "signed_max_abs", opening_size: int = 0,
                 activations: Sequence[str] = DEFAULT_ACTIVATIONS, chunk: int | str | None = None) -> None:
        super().__init__(model, sparsity, pruned, reduce, opening_size, activations, chunk)
        self.n_steps = check_positive_int("n_steps", n_steps)
        check_choice("alpha_schedule", alpha_schedule, SCHEDULES)
        check_choice("score", score, SCORES)
        self.alpha_schedule, self.score = alpha_schedule, score

    def scores(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Flat ``(B, N)`` scores (``|c|`` or signed ``c``)."""
        c = layout.flatten(intgrad_scores(self.neurons, x, target, layout, self.n_steps, self.alpha_schedule,
                                          self.chunk))
        return c.abs() if self.score == "abs" else c

    def pathway(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict]:
        return select(self.scores(x, target, layout), self.sparsity), {}
