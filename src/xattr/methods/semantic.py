"""Semantic attribution (dissertation ch. 9, sec. 2.3, eq. 6 L1749): which unit of the dissected layer the
prediction rests on, what concept that unit detects, and where it contributes.

Per neuron ``i`` of unit (channel) ``k`` of layer ``L``, integrated gradients with baseline 0 on the layer's
activations (the network above ``L`` sees ``alpha * a``):

    ``s_k^i = a_k^i * integral_0^1 d f(alpha a) / d(alpha a_k^i) d alpha``              (eq. 6)

approximated by the right Riemann sum ``alpha = j / n``, ``j = 1..n`` (:func:`xattr.methods.pathways.
contributions.alpha_schedule`; ``alpha_schedule: reference`` is the pathway code's defect, kept for
parity only). Completeness: ``sum_{k,i} s_k^i ~ f(x) - f(x; a^L <- 0)``. The unit's contribution is
``sum_i |s_k^i|`` (L1751: the magnitude counts positive and negative contributions); the top unit's map
``s_k / max_i s_k^i`` (by ``max_i |s_k^i|`` when no neuron contributes positively), upsampled bilinearly to
the input, is the method's map.

The unit's concept comes from a network-dissection result of the same model and layer
(``analysis=dissection``'s ``analyses/dissection.csv``, given as ``dissection``: the file or its run
folder): the unit's best concept when it is a detector (IoU > the dissection's threshold), else none.

Auxiliaries (each with the batch axis): ``semantic/unit`` ``(B,)`` the top unit; ``semantic/concept``
``(B,)`` its concept's index in the dissection's concept list (``-1``: not a detector, or no dissection
given; names in :attr:`SemanticAttribution.concepts`); ``semantic/iou`` ``(B,)`` that unit's best IoU
(NaN without a dissection); ``semantic/contribution`` ``(B, K)`` every unit's ``sum_i |s_k^i|``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.hooks import capture, hooked
from xattr.core.layers import resolve
from xattr.core.store import RunStore
from xattr.errors import XattrConfigError, missing_file
from xattr.methods.base import Attribution, Explanation, upsample
from xattr.methods.pathways.contributions import SCHEDULES, alpha_schedule
from xattr.methods.pathways.neurons import target_logit

CSV = "dissection.csv"


def layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor, replace: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """The logits of ``model(x)`` with ``layer``'s output replaced by ``replace`` (``None``: unchanged)."""
    if replace is None:
        return model(x)
    with hooked(layer, lambda _out: replace.clone()):  # a clone: in-place ops above never touch the leaf
        return model(x)


def neuron_intgrad(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor, n_steps: int = 50,
                   schedule: str = "linear", chunk: int | str | None = None) -> torch.Tensor:
    """Signed ``s`` of eq. 6 for every neuron of ``layer``: ``(B, *layer shape)``, rows (image, step)
    batched, ``chunk`` rows per forward/backward."""
    with torch.no_grad():
        a = capture(model, layer, x)
    alphas, weights = alpha_schedule(n_steps, schedule)
    b, s, dev = x.shape[0], len(alphas), x.device
    rows_b = torch.arange(b, device=dev).repeat_interleave(s)
    rows_s = torch.arange(s, device=dev).repeat(b)
    alphas, weights = alphas.to(dev, a.dtype), weights.to(dev, a.dtype)
    view = (-1, *([1] * (a.dim() - 1)))
    acc = torch.zeros_like(a)
    step = items_per_call(b * s, 1, resolve_chunk(chunk, model, x[:1], backward=True))
    for start in range(0, b * s, step):
        rb, rs = rows_b[start : start + step], rows_s[start : start + step]
        z = (a[rb] * alphas[rs].view(view)).requires_grad_(True)
        logits = layer_output(model, layer, x[rb], z)
        (g,) = torch.autograd.grad(target_logit(logits, target[rb]).sum(), z)
        acc.index_add_(0, rb, g * weights[rs].view(view))
    return (a * acc).detach()


def read_dissection(path: str | Path) -> tuple[dict[int, tuple[int, float, bool]], dict[int, str]]:
    """A dissection result (``analyses/dissection.csv`` or its run folder): ``unit -> (concept index,
    IoU, detector)`` and ``concept index -> name``."""
    p = Path(path)
    df = RunStore(p).analysis_result(Path(CSV).stem) if p.is_dir() else None  # a run folder
    if df is None:  # the CSV itself, or a folder holding it
        p = p / CSV if p.is_dir() else p
        if not p.is_file():
            raise missing_file("network dissection result", p, "run analysis=[dissection] on this model and layer "
                               "first, e.g. python -m xattr.run experiment=dissection_f2")
        df = pd.read_csv(p)
    need = {"unit", "concept", "concept_index", "iou", "detector"}
    if not need <= set(df.columns):
        raise XattrConfigError(f"bad dissection file {p}: columns {sorted(df.columns)}; valid choices: a file "
                               f"with {sorted(need)} (analyses/dissection.csv)")
    units = {int(r.unit): (int(r.concept_index), float(r.iou), bool(r.detector)) for r in df.itertuples()}
    names = {int(r.concept_index): str(r.concept) for r in df.itertuples()}
    return units, names


class SemanticAttribution(Attribution):
    """Top contributing unit of ``layer`` by eq. 6, its concept, and its contribution map (module docstring).

    Args:
        layer: the dissected layer (paper name or module path), output ``(B, K, h, w)``.
        dissection: ``analyses/dissection.csv`` of this model and layer, or its run folder; ``None``: no
            concept labels (``semantic/concept`` is -1).
        n_steps: integration steps of eq. 6.
        alpha_schedule: ``linear`` (``j / n``) | ``reference`` (the pathway code's cumulative schedule).
        chunk: forward rows (image x step) per device call; ``None``: all at once; ``auto``: sized for the device.

    >>> m = SemanticAttribution(net, layer="denseblock4", dissection="outputs/runs/.../dissection-run")
    >>> e = m.explain(x, target)   # e.maps (B, 1, H, W); e.aux["semantic/unit"], ["semantic/concept"]
    """

    name = "semantic_attribution"
    paper = "Khakzar et al. (dissertation ch. 9), eq. 6 L1749 (semantic attribution)"
    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: eq. 6's integrated gradients at ``layer``, ``n_steps`` points (``reference``: one more),
        each a forward from the layer and a backward to it, counted as full ones (``3 n_steps``)."""
        return 3.0 * (self.n_steps + (self.alpha_schedule == "reference"))


    def __init__(self, model: nn.Module, layer: str, dissection: str | Path | None = None, n_steps: int = 50,
                 alpha_schedule: str = "linear", chunk: int | str | None = 64) -> None:
        super().__init__(model)
        self.layer = resolve(model, layer)
        self.n_steps = check_positive_int("n_steps", n_steps)
        check_choice("alpha_schedule", alpha_schedule, SCHEDULES)
        self.alpha_schedule = alpha_schedule
        self.chunk = check_chunk(chunk)
        self.units, self.concepts = read_dissection(dissection) if dissection else ({}, {})

    def scores(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``s`` of eq. 6, ``(B, K, h, w)``."""
        s = neuron_intgrad(self.model, self.layer.module, x, target, self.n_steps, self.alpha_schedule, self.chunk)
        if s.dim() != 4:
            raise XattrConfigError(f"layer {self.layer.name!r} gives {tuple(s.shape)}; valid choices: a layer with "
                                   "spatial feature maps (B, K, h, w)")
        return s

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        s = self.scores(x, target)
        if self.units and max(self.units) >= s.shape[1]:
            raise XattrConfigError(f"the dissection has unit {max(self.units)} but layer {self.layer.name!r} has "
                                   f"{s.shape[1]} units; valid choices: a dissection of this model and layer")
        contribution = s.abs().flatten(2).sum(-1)                 # (B, K): sum_i |s_k^i|
        unit = contribution.argmax(1)                             # (B,)
        top = s[torch.arange(s.shape[0], device=s.device), unit]  # (B, h, w)
        peak = top.flatten(1).amax(1)
        scale = torch.where(peak > 0, peak, top.flatten(1).abs().amax(1)).clamp_min(1e-30)
        maps = upsample((top / scale.view(-1, 1, 1))[:, None], tuple(x.shape[-2:]))
        concept, iou = [], []
        for u in unit.tolist():
            c, v, det = self.units.get(u, (-1, float("nan"), False))
            concept.append(c if det else -1)
            iou.append(v)
        return Explanation(maps, {
            "semantic/unit": unit,
            "semantic/concept": torch.tensor(concept, dtype=torch.long, device=x.device),
            "semantic/iou": torch.tensor(iou, dtype=torch.float32, device=x.device),
            "semantic/contribution": contribution})

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._explain(x, target, frozenset()).maps

    def concept_name(self, index: int) -> str:
        """The name of ``semantic/concept``'s value (``none`` for -1)."""
        return self.concepts.get(int(index), "none")
