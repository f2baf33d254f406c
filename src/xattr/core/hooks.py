"""Hooks on modules, in one place: freeze parameters, a hooked forward, capture a layer's output, count
hooks left behind. Every hook is registered in a context manager and removed on exit, also on error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from xattr.errors import XattrConfigError


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters' ``requires_grad`` off inside the block; each flag and each ``.grad`` restored on exit.

    Gradients w.r.t. inputs and activations are unaffected. Libraries that call ``loss.backward()``
    (pytorch-grad-cam, TorchRay) would otherwise accumulate ``.grad`` into the caller's parameters."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, f, g in zip(params, flags, grads):
            p.requires_grad_(f)
            p.grad = g


@contextmanager
def hooked(layer: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[object]:
    """Forward hook on ``layer`` calling ``fn(output)`` (a returned tensor replaces the output)."""
    handle = layer.register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield handle
    finally:
        handle.remove()


@contextmanager
def hooked_many(layers: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Forward hooks on several layers calling ``fn(name, output)``; all removed on exit."""
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: fn(n, out)) for n, m in layers.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a capturing hook to skip the rest of the network."""


def capture(model: nn.Module | Callable, layer: nn.Module, *inputs: torch.Tensor, stop: bool = True) -> torch.Tensor:
    """The output of ``layer`` when ``model(*inputs)`` runs (the rest of the network is skipped when
    ``stop``). ``model`` may be any callable that runs ``layer`` (e.g. ``net.forward_embedded``)."""
    box: list[torch.Tensor] = []

    def grab(out: torch.Tensor) -> None:
        box.append(out)
        if stop:
            raise StopForward

    with hooked(layer, grab):
        try:
            model(*inputs)
        except StopForward:
            pass
    if not box:
        raise XattrConfigError(f"layer {type(layer).__name__} was not called by the model's forward")
    return box[0]


def capture_many(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of several layers in one forward pass (the first call of each; tuples give their first item)."""
    got: dict[str, torch.Tensor] = {}

    def keep(name: str, out) -> None:
        if name not in got:
            got[name] = out[0] if isinstance(out, (tuple, list)) else out

    with hooked_many(layers, keep):
        model(x)
    return got


def hook_count(model: nn.Module) -> int:
    """Number of hooks registered on ``model``, its submodules and parameters (none may be left behind)."""
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    for p in model.parameters():
        n += len(p._backward_hooks or {}) if getattr(p, "_backward_hooks", None) else 0
    return n
