"""Copies derived from a model (a BatchNorm-folded copy, a randomised copy), kept while the model is unchanged.

A metric called batch by batch derives the same copy on every call; :class:`DerivedCache` builds it once per
model, per ``key`` (the settings the copy depends on), and builds it again when the model's parameters or
buffers are other tensors, or were changed in place (their version counters), or moved. The model is held
weakly: the copy goes when the model goes (a build that returns the model itself is not kept, so it cannot
keep its own key alive).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable

from torch import nn


def model_state(model: nn.Module) -> tuple:
    """What identifies ``model``'s weights now: each parameter's and buffer's object, storage, in-place version
    and device."""
    return tuple((id(t), t.data_ptr(), t._version, t.device) for t in (*model.parameters(), *model.buffers()))


class DerivedCache:
    """``get(model, key, build)``: ``build()``'s copy, kept per model and key while :func:`model_state` holds."""

    def __init__(self) -> None:
        self._kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, key: Hashable, build: Callable[[], nn.Module]) -> nn.Module:
        state = model_state(model)
        per_model = self._kept.setdefault(model, {})
        hit = per_model.get(key)
        if hit is None or hit[0] != state:
            derived = build()
            hit = (state, None if derived is model else derived)  # the model itself: not kept (it would keep
            per_model[key] = hit                                   # its own weak key alive)
        return model if hit[1] is None else hit[1]
