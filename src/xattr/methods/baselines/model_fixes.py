"""Model-side fixes so that hook-based libraries (Captum's DeepLift / Guided Backprop, zennit, pytorch-grad-cam)
handle the zoo's models without re-implementing their methods.

What the libraries cannot handle, and the fix (all applied to a *copy*; the model passed in is never changed):

- **in-place activations** (``nn.ReLU(inplace=True)`` in torchvision, ``F.relu(..., inplace=True)``):
  DeepLift keeps the input of each non-linearity for its rescale rule and backward hooks refuse outputs changed
  in place -> every module with an ``inplace`` flag gets ``inplace=False``.
- **one activation module called several times** (torchvision ResNet blocks call ``self.relu`` 3 times,
  EfficientNet-lite's ``_swish`` ReLU6 is called up to 3 times per block): DeepLift and zennit store one input
  per module, so a second call overwrites the first -> each call site gets its own copy (:class:`PerCall`,
  dispatch by call order, counters reset at each forward of the root).
- **ReLU6** (MobileNet-V2, EfficientNet-lite) is not a rule-carrying non-linearity in Captum: ``relu6="split"``
  rewrites it exactly as ``relu(x) - relu(x - 6)`` (two ReLUs; DeepLift's rescale multiplier of the sum is then
  exactly ``Delta relu6 / Delta x``); ``relu6="clamp"`` as ``min(relu(x), 6)`` (a ReLU module followed by a
  plain clamp: Guided Backprop then gates by ``0 < x`` and the clamp's gradient by ``x < 6``, the natural
  guided rule for ReLU6).
- **functional ReLU at the end of torchvision DenseNet** (``F.relu(features)`` in ``forward``): no module to
  hook -> the copy's class is swapped for a subclass calling an ``nn.ReLU`` module (same function).

The copy *shares* parameters and buffers with the original (``deepcopy`` with a pre-filled memo), so in-place
weight changes (cascading randomisation of sanity checks) are seen by the copy. Copies are cached per model and
rebuilt when the model's parameter objects change (a module replaced).
"""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from xattr.errors import unknown

RELU6_MODES = ("keep", "split", "clamp")

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ReLU6Split(nn.Module):
    """``relu6(x) = relu(x) - relu(x - 6)`` with two ``nn.ReLU`` modules (exact; DeepLift-friendly)."""

    def __init__(self) -> None:
        super().__init__()
        self.low = nn.ReLU()
        self.high = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low(x) - self.high(x - 6.0)


class ReLU6Clamp(nn.Module):
    """``relu6(x) = min(relu(x), 6)``: an ``nn.ReLU`` module then a plain clamp (Guided-Backprop-friendly)."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x).clamp(max=6.0)


class PerCall(nn.Module):
    """A parameter-free module called ``k`` times per forward, split into ``k`` copies (one per call site)."""

    def __init__(self, module: nn.Module, k: int) -> None:
        super().__init__()
        self.sites = nn.ModuleList(copy.deepcopy(module) for _ in range(k))
        self.calls = 0

    def forward(self, *args, **kwargs):
        site = self.sites[self.calls % len(self.sites)]
        self.calls += 1
        return site(*args, **kwargs)


class FixedModel(nn.Module):
    """Root of a fixed copy: ``net`` is the copy, counters of :class:`PerCall` are reset at each forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net.modules():
            if isinstance(m, PerCall):
                m.calls = 0
        return self.net(x)

    def layer(self, path: str) -> nn.Module:
        """The copy's module at ``path`` (a path of the original model; a split activation gives its first
        call site's wrapper, whose output is the activation's output)."""
        return self.net.get_submodule(path)


def _densenet_fix(net: nn.Module) -> None:
    try:
        from torchvision.models import DenseNet
    except ImportError:  # pragma: no cover
        return
    for m in net.modules():
        if isinstance(m, DenseNet) and not isinstance(m, _DenseNetModuleReLU):
            m.__class__ = _DenseNetModuleReLU
            m.final_relu = nn.ReLU()


try:
    from torchvision.models import DenseNet as _TVDenseNet

    class _DenseNetModuleReLU(_TVDenseNet):
        """torchvision DenseNet whose final ``F.relu`` is an ``nn.ReLU`` module (``final_relu``)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.final_relu(self.features(x))
            out = F.adaptive_avg_pool2d(out, (1, 1))
            return self.classifier(torch.flatten(out, 1))

except ImportError:  # pragma: no cover
    _DenseNetModuleReLU = nn.Module  # type: ignore[misc,assignment]


def _replace(net: nn.Module, pred, make) -> None:
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if pred(child):
                setattr(parent, name, make(child))


def _is_leaf_stateless(m: nn.Module) -> bool:
    return (
        not list(m.children())
        and not list(m.parameters(recurse=False))
        and not list(m.buffers(recurse=False))
        and not isinstance(m, nn.Identity)
    )


def _build(model: nn.Module, example: torch.Tensor, relu6: str) -> FixedModel:
    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    net = copy.deepcopy(model, memo=shared)
    # drop any hook the original might carry (the copy must start clean)
    for m in net.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        m._backward_hooks.clear()
    for m in net.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    _densenet_fix(net)
    if relu6 != "keep":
        cls = ReLU6Split if relu6 == "split" else ReLU6Clamp
        _replace(net, lambda c: type(c) is nn.ReLU6, lambda c: cls())
    # count calls of every stateless leaf module during one forward of one example
    counts: dict[int, int] = {}
    handles = []
    for m in net.modules():
        if _is_leaf_stateless(m):
            handles.append(m.register_forward_hook(lambda mod, i, o: counts.__setitem__(id(mod), counts.get(id(mod), 0) + 1)))
    try:
        with torch.no_grad():
            net(example[:1])
    finally:
        for h in handles:
            h.remove()
    _replace(net, lambda c: counts.get(id(c), 0) > 1, lambda c: PerCall(c, counts[id(c)]))
    fixed = FixedModel(net)
    fixed.train(model.training)
    return fixed


def fixed_copy(model: nn.Module, example: torch.Tensor, relu6: str = "keep") -> FixedModel:
    """A cached copy of ``model`` (sharing its weights) that hook-based libraries can handle (module doc).

    ``example``: an input batch (its first item runs one forward to find activations used several times).
    ``relu6``: ``keep`` | ``split`` | ``clamp`` (see module doc).
    """
    if relu6 not in RELU6_MODES:
        raise unknown("relu6 mode", relu6, RELU6_MODES)
    key_params = tuple(id(p) for p in model.parameters())
    per_model = _CACHE.setdefault(model, {})
    key = (relu6, tuple(example.shape[1:]))
    hit = per_model.get(key)
    if hit is None or hit[0] != key_params:
        hit = (key_params, _build(model, example, relu6))
        per_model[key] = hit
    fixed = hit[1]
    fixed.train(model.training)
    return fixed

