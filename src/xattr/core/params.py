"""The arguments an object was constructed with, defaults filled in: what a method or metric *is*.

``Attribution`` and ``Metric`` record them at construction (:func:`record_arguments` from ``__new__``), so
the Python API and the CLI can be compared parameter by parameter, and a run's objects can be described
(``method.hparams``) without re-reading their config.
"""

from __future__ import annotations

import inspect
from typing import Any

SKIPPED = ("self", "model")


def record_arguments(obj: object, args: tuple, kwargs: dict) -> None:
    """Store ``{name: value}`` of ``type(obj).__init__``'s parameters (defaults applied, ``self``/``model``
    left out, ``**kwargs`` flattened) on ``obj._hparams``. Arguments that do not bind are left to
    ``__init__`` to refuse with its own error."""
    try:
        bound = inspect.signature(type(obj).__init__).bind_partial(obj, *args, **kwargs)
    except TypeError:
        obj._hparams = {}
        return
    bound.apply_defaults()
    params = inspect.signature(type(obj).__init__).parameters
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if name in SKIPPED:
            continue
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif params[name].kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    obj._hparams = out
