"""Common interface of every attribution method (Captum style: one class, one verb).

Every method is constructed with the model and its hyper-parameters (what Hydra sets) and called as
``attribute(x, target) -> maps``:

- ``x``: ``(B, C, H, W)`` float (images, in the model's normalised space) or ``(B, L)`` long (tokens),
  on the model's device;
- ``target``: ``(B,)`` long class indices;
- ``maps``: ``(B, 1, H, W)`` float for images (``(B, L)`` for tokens), same device, detached.

``explain(x, target, aux=()) -> Explanation`` returns the same maps plus the method's *auxiliary results*
as named tensors with a leading batch axis (InputIBA's three stages, IBA's Table-1 scores, a pathway's
per-neuron masks). Results are returned, never left on the method for someone to read later: the
engine stores every auxiliary per batch and hands a metric the ones it declares (``Metric.needs``).
``aux`` names auxiliaries that cost extra work and are computed only when asked (e.g. Readout IBA's
noisy-copy accuracies); cheap ones are always returned.

Per-sample optimisations (IBA, InputIBA) need autograd, so ``requires_grad`` is stated as a class
attribute; the engine never runs such methods under ``torch.inference_mode``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from xattr.core.checks import module_device
from xattr.core.params import record_arguments
from xattr.errors import unknown

REDUCTIONS = ("abs", "positive", "sum", "abs_sum", "none", "max_abs")

#: image method name (a ``conf/method`` option) -> the class that is its text form, filled by each text class
#: itself (``text_form_of``) when its module is imported; :mod:`xattr.methods.text` imports them all
TEXT_FORMS: dict[str, type] = {}


def reduce_channels(attr: torch.Tensor, how: str = "abs_sum") -> torch.Tensor:
    """Reduce a ``(B, C, H, W)`` signed multi-channel attribution to ``(B, 1, H, W)``.

    ``abs_sum``: sum over channels of ``|a|``; ``sum``: signed channel sum; ``abs``: ``|sum_c a|``;
    ``positive``: positive part of the channel sum; ``max_abs``: max over channels of ``|a|``
    (Simonyan et al.'s saliency); ``none``: keep as is (must already have one channel).
    """
    if how not in REDUCTIONS:
        raise unknown("reduction", how, REDUCTIONS)
    if attr.dim() != 4:
        return attr
    if how == "abs_sum":
        return attr.abs().sum(1, keepdim=True)
    if how == "max_abs":
        return attr.abs().amax(1, keepdim=True)
    s = attr.sum(1, keepdim=True)
    if how == "sum" or how == "none":
        return s
    if how == "abs":
        return s.abs()
    return s.clamp_min(0)


@dataclass
class Explanation:
    """What a method returns for a batch: ``maps`` and named auxiliary tensors ``aux``, each ``(B, ...)``.

    Names are ``<group>/<name>`` (``stages/feature``, ``bottleneck/top1``); :meth:`group` gives one
    group without its prefix. Construction checks that every auxiliary has the maps' batch size."""

    maps: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.maps.shape[0]
        for name, t in self.aux.items():
            if not torch.is_tensor(t) or t.dim() == 0 or t.shape[0] != b:
                shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
                raise ValueError(f"auxiliary {name!r} has shape {shape}; it needs a leading batch axis of {b}")

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The auxiliaries ``<prefix>/<name>`` as ``{name: tensor}``."""
        p = prefix.rstrip("/") + "/"
        return {k[len(p):]: v for k, v in self.aux.items() if k.startswith(p)}

    def detach(self) -> Explanation:
        return Explanation(self.maps.detach(), {k: v.detach() for k, v in self.aux.items()})

    @staticmethod
    def cat(parts: list[Explanation]) -> Explanation:
        """Concatenate the explanations of consecutive chunks of a batch."""
        keys = parts[0].aux.keys()
        return Explanation(torch.cat([p.maps for p in parts]), {k: torch.cat([p.aux[k] for p in parts]) for k in keys})


def with_prefix(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{name: t}`` -> ``{"<prefix>/<name>": t}``."""
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


class Attribution(ABC):
    """Base of all methods (see the module docstring): built with the model and hyper-parameters, called as
    ``attribute(x, target) -> maps`` or ``explain(x, target) -> Explanation``; ``fit(loader)`` when it needs
    estimation first. Build one by name with ``xattr.method(name, model, **overrides)``; subclasses implement
    :meth:`_attribute` (or :meth:`_explain` when they have auxiliary results)."""

    #: short name used in configs and tables
    name: ClassVar[str] = "attribution"
    #: the method needs autograd (gradients or per-sample optimisation)
    requires_grad: ClassVar[bool] = True
    #: the paper (and equation) this method follows: a citation for readers of the code; no code reads it
    paper: ClassVar[str] = ""
    #: the hyper-parameter that bounds the rows per device call (``"chunk"``, :mod:`xattr.core.chunk`), or None
    memory_knob: ClassVar[str | None] = None
    #: (low, high): the forwards a run really makes, as factors of :meth:`forwards_per_image` (``(1, 1)``:
    #: exact; a class with early stops or skipped forwards says why in its docstring)
    cost_bounds: ClassVar[tuple[float, float]] = (1.0, 1.0)
    #: a text class: the image methods (``conf/method`` names) it is the text form of (registered in
    #: :data:`TEXT_FORMS`); ``()``: not a text form
    text_form_of: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for image_name in cls.__dict__.get("text_form_of", ()):
            TEXT_FORMS[image_name] = cls

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        record_arguments(obj, args, kwargs)
        return obj

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def hparams(self) -> dict:
        """The hyper-parameters this method was built with, defaults filled in (``model`` left out)."""
        return dict(getattr(self, "_hparams", {}))

    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Forward-pass equivalents per image for an input of ``shape`` ``(C, H, W)`` or ``(L,)``, from this
        object's own hyper-parameters; a backward counts 2 (forward + backward = 3). ``engine.cost`` asks it
        for the duration estimate. Default: one forward and one backward (3); every method states its own
        (``tests/test_plugin_cost.py`` counts the forwards of each ``conf/method`` option)."""
        return 3.0

    def fit_forwards(self, n_images: int, cache_dir: Path | None = None) -> float:
        """Forward-pass equivalents :meth:`fit` will spend on an estimation split of ``n_images`` images with
        this ``cache_dir``, counted as :meth:`forwards_per_image` counts (0: nothing to fit, or all of it
        cached). ``engine.cost`` adds it to the duration said before a run. Default: 0."""
        return 0.0

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:  # noqa: B027 (optional hook)
        """Estimate what the method needs from data before attributing (feature statistics, a read-out
        network, ...). ``loader`` yields batches (dicts with ``x``) of the *estimation* split, on any
        device; ``cache_dir`` is where results may be cached under a visible key. Default: nothing.
        The engine calls it once before the first ``attribute`` when a subclass overrides it."""

    @property
    def needs_fit(self) -> bool:
        return type(self).fit is not Attribution.fit

    def attribute(self, x: torch.Tensor, target: torch.Tensor | int) -> torch.Tensor:
        """Attribute ``target`` for the batch ``x``; returns detached maps (see module docstring)."""
        return self.explain(x, target).maps

    def explain(self, x: torch.Tensor, target: torch.Tensor | int, aux: Collection[str] = ()) -> Explanation:
        """Maps and auxiliary results for ``x`` (see module docstring); ``aux``: costly auxiliaries wanted."""
        if not torch.is_tensor(target):
            target = torch.full((x.shape[0],), int(target), dtype=torch.long, device=x.device)
        target = target.to(x.device).long().reshape(-1)
        if target.numel() != x.shape[0]:
            raise ValueError(f"target has {target.numel()} entries for a batch of {x.shape[0]}")
        check_target(self.model, target)
        with torch.enable_grad() if self.requires_grad else torch.no_grad():
            out = self._explain(x, target, frozenset(aux))
        return out.detach()

    def explain_batch(self, batch: dict, target: torch.Tensor, aux: Collection[str] = ()) -> Explanation:
        """Explain a dataset batch (dict with ``x``, ``id``, ...). Methods that need more than ``x``
        (e.g. maps saved by an earlier run, looked up by ``id``) override this; others need not."""
        return self.explain(batch["x"], target, aux)

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        """Methods with auxiliary results override this; the others implement :meth:`_attribute` only."""
        return Explanation(self._attribute(x, target))

    @abstractmethod
    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, 1, H, W)`` (tokens ``(B, L)``) for a validated ``target``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_target(model: nn.Module, target: torch.Tensor) -> None:
    """Raise one clear error when a class index is outside the model's classes."""
    n = getattr(model, "num_classes", None)
    if n is None or target.numel() == 0:
        return
    bad = target[(target < 0) | (target >= n)]
    if bad.numel():
        raise ValueError(f"class index {int(bad[0])} out of range; valid choices: 0..{n - 1}")


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(B, 1, h, w)`` maps to the input's ``(H, W)`` (LayerAttribution.interpolate)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return nn.functional.interpolate(maps, size=size, mode=mode, **kw)
