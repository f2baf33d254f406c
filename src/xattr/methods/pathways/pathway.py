"""The pathway gradient (dissertation ch. 5, sec. 4.1-4.2, L557-565) and the base class of the pathway
methods.

``Phi_hat(x; e)``: the network restricted to the pathway ``e``. Neurons outside it are

- ``pruned: zero`` (default; PathwayGrad ``src/Pruner.py`` @d59b16d6: the ReLU forward hook multiplies the
  output by the 0/1 mask), or
- ``pruned: freeze`` (the paper's text, L557): replaced by their original value held constant (no gradient
  through them). The activation pattern is then unchanged and, when every pathway neuron is active
  (Prop. 4/5, L561-565, appendix A.2-A.3), ``Phi_hat`` is linear in an l2-ball around ``x``: the pathway
  gradient is constant there.

The map is ``d Phi_hat / dx`` (``Phi``: the target logit), reduced over channels per pixel to the signed
value of largest magnitude (:mod:`xattr.methods.pathways.maps`), optionally opened (``*`` columns).

Every method returns, besides the map, its pathway as auxiliary results with a leading batch axis:
``pathway/mask`` (uint8, the packed bits of the flat network-wide mask, ``ceil(N / 8)`` bytes per image; see
:func:`~xattr.methods.pathways.neurons.pack_bits`), ``pathway/layer_sizes`` (int64 ``(B, L)``: neurons per
layer, in call order), ``pathway/kept`` (neurons in the pathway) and ``pathway/logit`` (``Phi_hat(x; e)``
at ``x``, the target logit of the restricted network).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from xattr.core.checks import check_choice
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.hooks import frozen
from xattr.core.masks import as_float
from xattr.core.ranking import count_true
from xattr.methods.base import Attribution, Explanation
from xattr.methods.pathways.maps import check_opening, check_reduce, finish_map
from xattr.methods.pathways.neurons import (
    DEFAULT_ACTIVATIONS,
    Layout,
    Neurons,
    pack_bits,
    target_logit,
    unpack_bits,
)
from xattr.methods.pathways.selection import check_sparsity

PRUNED = ("zero", "freeze")


def pathway_forward(neurons: Neurons, x: torch.Tensor, masks: Sequence[torch.Tensor], pruned: str = "zero",
                    constants: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of ``Phi_hat(x; e)``: per layer ``a * e`` (``zero``) or ``a * e + c * (1 - e)`` (``freeze``;
    ``c`` = ``constants`` or, when ``None``, this forward's own activations detached, i.e. the values at
    ``x``)."""
    check_choice("pruned", pruned, PRUNED)

    def gate(k: int, a: torch.Tensor) -> torch.Tensor:
        e = masks[k].to(a.dtype)
        if pruned == "zero":
            return a * e
        c = a.detach() if constants is None else constants[k]
        return a * e + c * (1 - e)

    logits, _ = neurons.forward(x, gate)
    return logits


def pathway_gradient(neurons: Neurons, x: torch.Tensor, target: torch.Tensor, masks: Sequence[torch.Tensor],
                     pruned: str = "zero", chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``d Phi_hat(x; e) / dx`` ``(B, C, H, W)`` and ``Phi_hat(x; e)`` ``(B,)``, ``chunk`` images per call."""
    step = items_per_call(x.shape[0], 1, chunk)
    grads, phis = [], []
    for i in range(0, x.shape[0], step):
        xi = x[i : i + step].detach().clone().requires_grad_(True)
        logits = pathway_forward(neurons, xi, [m[i : i + step] for m in masks], pruned)
        phi = target_logit(logits, target[i : i + step])
        (g,) = torch.autograd.grad(phi.sum(), [xi])
        grads.append(g.detach())
        phis.append(phi.detach())
    return torch.cat(grads), torch.cat(phis)


class PathwayMethod(Attribution):
    """Base of the pathway methods: select a pathway per image, return its gradient map and the pathway.

    Args:
        sparsity: kappa, the share of neurons pruned (0.7: ResNet-50, 0.9: VGG-16 in the paper).
        pruned: ``zero`` (code) | ``freeze`` (paper text), see module docstring.
        reduce: channel reduction of the input gradient (``signed_max_abs``, the reference's).
        opening_size: ``*`` smoothing: side of the square of the opening of ``|map|`` (0: off).
        activations: the ReLU family counted as neurons (``relu``, ``relu6``, ...).
        chunk: images (forward rows) per device call; ``null``: all at once; ``auto``: sized for the device
            (:mod:`xattr.core.chunk`). Results do not depend on it.
    """

    requires_grad = True
    paper = "Khakzar et al., CVPR 2021 (dissertation ch. 5)"
    memory_knob = "chunk"
    #: forwards of every pathway method besides its selection: the layout probe (one forward per batch,
    #: counted as one per image: exact for one image, an upper bound otherwise) and the pathway gradient (3)
    BASE_FORWARDS = 4.0


    def __init__(self, model: nn.Module, sparsity: float = 0.7, pruned: str = "zero",
                 reduce: str = "signed_max_abs", opening_size: int = 0,
                 activations: Sequence[str] = DEFAULT_ACTIVATIONS, chunk: int | str | None = None) -> None:
        super().__init__(model)
        self.sparsity = check_sparsity(sparsity)
        check_choice("pruned", pruned, PRUNED)
        self.pruned = pruned
        self.reduce = check_reduce(reduce)
        self.opening_size = check_opening(opening_size)
        self.activations = list(activations)
        self.chunk = check_chunk(chunk)
        self.neurons = Neurons(model, self.activations)

    @abstractmethod
    def pathway(self, x: torch.Tensor, target: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, dict]:
        """The pathway ``(B, N)`` bool (flat, network-wide) and extra auxiliaries ``{name: (B, ...)}``."""

    def rows(self, x: torch.Tensor) -> int | None:
        """``chunk`` resolved for ``x`` (``auto`` sized for the device; :mod:`xattr.core.chunk`)."""
        return resolve_chunk(self.chunk, self.model, x[:1], backward=True)

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        with frozen(self.model):
            layout = self.neurons.layout(x)
            mask, extra = self.pathway(x, target, layout)
            grads, phi = pathway_gradient(self.neurons, x, target, layout.split(as_float(mask, x.dtype)), self.pruned,
                                          self.rows(x))  # float gates converted once, not per layer
        maps = finish_map(grads, self.reduce, self.opening_size)
        b = x.shape[0]
        out = {
            "pathway/mask": pack_bits(mask),
            "pathway/layer_sizes": torch.tensor(layout.sizes, dtype=torch.int64, device=x.device).expand(b, -1),
            "pathway/kept": count_true(mask),
            "pathway/logit": phi,
            **{f"pathway/{k}": v for k, v in extra.items()},
        }
        return Explanation(maps, out)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._explain(x, target, frozenset()).maps

    def explain_pathway(self, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Only the pathway ``(B, N)`` bool (no gradient map), e.g. for analyses and tests."""
        exp = self.explain(x, target)
        return unpack_bits(exp.aux["pathway/mask"], int(exp.aux["pathway/layer_sizes"][0].sum()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sparsity={self.sparsity}, pruned={self.pruned!r})"



