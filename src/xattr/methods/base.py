"""Common interface of every attribution method (Captum style: one class, one verb).

Every method is constructed with the model and its hyper-parameters (what Hydra sets) and called as
``attribute(x, target) -> maps``:

- ``x``: ``(B, C, H, W)`` float (images, in the model's normalised space) or ``(B, L)`` long (tokens),
  on the model's device;
- ``target``: ``(B,)`` long class indices;
- ``maps``: ``(B, 1, H, W)`` float for images (``(B, L)`` for tokens), same device, detached.

Per-sample optimisations (IBA, InputIBA) need autograd, so ``requires_grad`` is stated as a class
attribute; the engine never runs such methods under ``torch.inference_mode``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from xattr.errors import unknown

REDUCTIONS = ("abs", "positive", "sum", "abs_sum", "none", "max_abs")


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


class Attribution(ABC):
    """Base of all methods. Subclasses implement :meth:`_attribute`."""

    #: short name used in configs and tables
    name: ClassVar[str] = "attribution"
    #: the method needs autograd (gradients or per-sample optimisation)
    requires_grad: ClassVar[bool] = True
    #: paper reference shown in tables
    paper: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

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
        if not torch.is_tensor(target):
            target = torch.full((x.shape[0],), int(target), dtype=torch.long, device=x.device)
        target = target.to(x.device).long().reshape(-1)
        if target.numel() != x.shape[0]:
            raise ValueError(f"target has {target.numel()} entries for a batch of {x.shape[0]}")
        check_target(self.model, target)
        with torch.enable_grad() if self.requires_grad else torch.no_grad():
            maps = self._attribute(x, target)
        return maps.detach()

    def attribute_batch(self, batch: dict, target: torch.Tensor) -> torch.Tensor:
        """Attribute a dataset batch (dict with ``x``, ``id``, ...). Methods that need more than ``x``
        (e.g. maps saved by an earlier run, looked up by ``id``) override this; others need not."""
        return self.attribute(batch["x"], target)

    @abstractmethod
    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

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
