"""Distillation Guided Routing (Wang et al., CVPR 2018) as analysed in the dissertation, ch. 5, sec. 3.2,
eq. 3 (L487-489), with the reference code's details (PathwayGrad ``cdrp/main.py``, ``cdrp/main2.py`` @d59b16d6).

Gates ``lambda >= 0`` multiply every ReLU-family output (one gate per neuron); they minimise, per image,

    ``- sum_k p_orig[k] log(softmax(Phi(x; lambda * a))[k] + 1e-20) + gamma * sum |lambda|``

(``p_orig``: the original network's softmax, a distillation loss; ``gamma`` 0.01) by SGD (lr 0.01,
momentum 0.9, ``iterations`` 1000), clamping the gates to ``[0, 100]`` after every step. The solution kept
is the lowest-loss gate vector among the iterates whose prediction equals the original one. When no
iterate qualifies, ``gamma`` is divided by 10 and the optimisation continues from where it stopped (gates
and momentum kept), up to ``max_retries`` rounds in all (``main2.py``; ``main.py`` has no retry and fails).
The pathway is the gates at or above the network-wide ``sparsity`` percentile (and > 0; the code keeps
``lambda > c_kappa``).

``init: one`` (Wang et al.; ``main.py``) or ``uniform`` (U[0, 1], ``main2.py``; the paper's
"DGR(init=r)", L525), drawn per image from a generator seeded by ``seed`` and the image's bytes
(:mod:`xattr.core.seeding`), so an image gets the same gates wherever it sits in a batch.

Batched: the gates of all images are one graph (losses summed; each image's gradient only reaches its
gates), momentum buffers per image, and images that found a solution stop while the others retry, so
batched == one at a time. The code kept one gate tensor per ``nn.ReLU`` *module*; here a module reused in
the forward gets gates per call, like every pathway method.

Auxiliaries: ``pathway/found`` (a valid solution exists), ``pathway/rounds`` (optimisation rounds used),
``pathway/gamma`` (the final gamma), ``pathway/dgr_loss`` (the kept solution's loss). Without a valid
solution the last gates are used and ``found`` is false.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive, check_positive_int
from xattr.core.chunk import items_per_call
from xattr.core.seeding import image_generators
from xattr.errors import XattrConfigError
from xattr.methods.pathways.neurons import DEFAULT_ACTIVATIONS, Layout
from xattr.methods.pathways.pathway import PathwayMethod
from xattr.methods.pathways.selection import TIES, select

INITS = ("one", "uniform")


class DGR(PathwayMethod):
    """DGR pathways (see module docstring).

    Args (besides :class:`PathwayMethod`'s): init, gamma, lr, momentum, iterations, clamp (upper bound of
    the gates), max_retries (rounds in all), seed (of ``init: uniform``), ties: ``drop`` (default: the
    code keeps gates strictly above the percentile, PathwayGrad ``src/Pruner.py:304-305``, where the
    published dead-neuron shares come from) | ``keep`` (``>=``, the text's "at or above"). With ``init: one``
    never-active neurons keep identical gates, so the tie rule decides whether they enter the pathway.
    """

    name = "dgr"
    @property
    def cost_bounds(self) -> tuple[float, float]:
        """One round of ``iterations`` is the cost; an image without a valid pathway retries, up to
        ``max_retries`` rounds."""
        return (1.0, float(self.max_retries))

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: the clean forward, one round of ``iterations`` gated forwards and backwards, plus
        :attr:`BASE_FORWARDS`: ``3 iterations + 5`` (retries: see :attr:`cost_bounds`)."""
        return 1.0 + 3.0 * self.iterations + self.BASE_FORWARDS


    def __init__(self, model: nn.Module, sparsity: float = 0.7, init: str = "one", gamma: float = 0.01,
                 lr: float = 0.01, momentum: float = 0.9, iterations: int = 1000, clamp: float = 100.0,
                 max_retries: int = 100, seed: int = 0, pruned: str = "zero", reduce: str = "signed_max_abs",
                 opening_size: int = 0, activations: Sequence[str] = DEFAULT_ACTIVATIONS,
                 chunk: int | str | None = None, ties: str = "drop") -> None:
        super().__init__(model, sparsity, pruned, reduce, opening_size, activations, chunk)
        check_choice("init", init, INITS)
        check_choice("ties", ties, TIES)
        self.ties = ties
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or gamma < 0:
            raise XattrConfigError(f"bad gamma {gamma!r}; valid choices: a number >= 0")
        check_positive("lr", lr)
        check_positive("clamp", clamp)
        if not 0 <= momentum < 1:
            raise XattrConfigError(f"bad momentum {momentum!r}; valid choices: a number in [0, 1)")
        self.init, self.gamma, self.lr, self.momentum = init, float(gamma), float(lr), float(momentum)
        self.iterations = check_positive_int("iterations", iterations)
        self.max_retries = check_positive_int("max_retries", max_retries)
        self.clamp, self.seed = float(clamp), int(seed)

    def _init_gates(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        b, n = x.shape[0], layout.total
        if self.init == "one":
            return torch.ones(b, n, device=x.device, dtype=x.dtype)
        gens = image_generators(x, self.seed)
        return torch.stack([torch.rand(n, generator=g, device=x.device, dtype=x.dtype) for g in gens])

    def _distill(self, x: torch.Tensor, gates: list[torch.Tensor], p_orig: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3's distillation term ``(B,)`` of the network gated by ``gates`` (per layer), and its logits."""
        logits, _ = self.neurons.forward(x, lambda k, a: a * gates[k])
        prob = logits.float().softmax(1)
        return -(p_orig * torch.log(prob + 1e-20)).sum(1), logits

    def _loss(self, x: torch.Tensor, lam: torch.Tensor, layout: Layout, p_orig: torch.Tensor,
              gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3's loss ``(B,)`` at the gates ``lam`` ``(B, N)`` (autograd through ``lam``), and the prediction."""
        distill, logits = self._distill(x, layout.split(lam), p_orig)
        return distill + gamma * lam.abs().sum(1), logits.argmax(1)

    def _step(self, x: torch.Tensor, lam: torch.Tensor, layout: Layout, p_orig: torch.Tensor,
              gamma: torch.Tensor, sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One step at the gates ``lam`` ``(B, N)`` of every image of the batch: the loss ``(B,)``, the prediction
        and the loss's gradient per layer (views' shapes). The same numbers as :meth:`_loss` and autograd, with
        no ``(B, N)`` tensor allocated per step (issue 31):

        - the gradient is taken at each layer's view of ``lam`` (a leaf each, sharing its memory: ``lam`` is
          only updated after the graph is gone), so autograd does not concatenate the per-layer gradients
          into ``(B, N)`` (``split``'s backward) and the iterate is not copied;
        - the penalty ``gamma * sum |lambda|`` is added by hand: its value is the sum of ``lam`` (the gates are
          clamped at 0, so ``|lambda| = lambda`` and the same reduction gives the same sum), its gradient
          ``gamma * sgn(lambda)`` (``abs``'s backward; ``sign`` is the buffer it is written to) is added to the
          distillation gradient once: the one rounding of autograd's accumulation (in either order; the
          product ``gamma * sgn`` is exact)."""
        gates = [v.detach().requires_grad_(True) for v in layout.split(lam)]
        distill, logits = self._distill(x, gates, p_orig)
        grads = list(torch.autograd.grad(distill.sum(), gates))
        with torch.no_grad():
            penalty = gamma * lam.sum(1)
            torch.sgn(lam, out=sign)
            torch._foreach_addcmul_(grads, [gamma.view(-1, *([1] * len(sh))) for sh in layout.shapes],
                                    layout.split(sign))
        return distill.detach() + penalty, logits.argmax(1), grads

    def optimise(self, x: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The kept gates ``(B, N)`` and the auxiliaries (see module docstring)."""
        b, dev = x.shape[0], x.device
        with torch.no_grad():
            logits = self.neurons.forward(x)[0].float()
        p_orig, pred0 = logits.softmax(1), logits.argmax(1)
        lam = self._init_gates(x, layout)
        buf = torch.zeros_like(lam)
        best = lam.clone()
        best_loss = torch.full((b,), float("inf"), device=dev)
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        gamma = torch.full((b,), self.gamma, device=dev)
        rounds = torch.zeros(b, dtype=torch.int64, device=dev)
        sign, delta = torch.empty_like(lam), torch.empty_like(lam)  # buffers of the full-batch steps
        for r in range(self.max_retries):
            idx = torch.nonzero(~found).flatten()
            if idx.numel() == 0:
                break
            if r:
                gamma[idx] /= 10
            rounds[idx] += 1
            full = idx.numel() == b
            xs, ps, gs = (x, p_orig, gamma) if full else (x[idx], p_orig[idx], gamma[idx])
            for _ in range(self.iterations):
                if full:
                    loss, pred, grads = self._step(xs, lam, layout, ps, gs, sign)
                    current = lam
                else:
                    current = lam[idx].detach().clone().requires_grad_(True)
                    loss, pred = self._loss(xs, current, layout, ps, gs)
                    (grad,) = torch.autograd.grad(loss.sum(), [current])
                    loss, current = loss.detach(), current.detach()
                better = (pred == pred0[idx]) & (loss < best_loss[idx])
                if full and bool(better.all()):
                    best.copy_(current)
                    best_loss.copy_(loss)
                    found.fill_(True)
                elif bool(better.any()):
                    sel = idx[better]
                    best[sel] = current[better]
                    best_loss[sel] = loss[better]
                    found[sel] = True
                with torch.no_grad():
                    if full:
                        buf.mul_(self.momentum)
                        torch._foreach_add_(layout.split(buf), grads)
                        lam.sub_(torch.mul(buf, self.lr, out=delta)).clamp_(0, self.clamp)
                    else:
                        buf[idx] = buf[idx] * self.momentum + grad
                        lam[idx] = (lam[idx] - self.lr * buf[idx]).clamp(0, self.clamp)
        best = torch.where(found[:, None], best, lam)
        return best, {"found": found, "rounds": rounds, "gamma": gamma, "dgr_loss": best_loss}

    def pathway(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict]:
        step = items_per_call(x.shape[0], 1, self.rows(x))  # images per optimisation graph (memory only)
        parts = [self.optimise(x[i : i + step], layout) for i in range(0, x.shape[0], step)]
        lam = torch.cat([p[0] for p in parts])
        info = {k: torch.cat([p[1][k] for p in parts]) for k in parts[0][1]}
        return select(lam, self.sparsity, self.ties), info
