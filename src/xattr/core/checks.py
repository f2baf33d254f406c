"""One-line validation of hyper-parameters (the bad value and the valid choices) and a module's device.

Every method and metric validates its own arguments in its constructor with these helpers, so building it
refuses a bad value before any work. :func:`naming` prefixes the names they report (``config.check_values``
builds a metric under ``metric.<name>.``: ``bad metric.insertion_deletion.chunk 0; valid choices: ...``).
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers

import torch
from torch import nn

from xattr.errors import XattrConfigError, unknown

_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("xattr_check_prefix", default="")


@contextlib.contextmanager
def naming(prefix: str):
    """Within the block, the helpers name a value ``<prefix><kind>`` (e.g. ``metric.sensitivity_n.``)."""
    token = _PREFIX.set(_PREFIX.get() + prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def named(kind: str) -> str:
    """``kind`` with the current :func:`naming` prefix."""
    return _PREFIX.get() + kind


def bad(kind: str, value: object, choices: str) -> XattrConfigError:
    """The one-line error ``bad <kind> <value>; valid choices: <choices>`` (``kind`` with the prefix)."""
    return XattrConfigError(f"bad {named(kind)} {value!r}; valid choices: {choices}")


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_choice(kind: str, value: object, choices) -> None:
    """Raise the one-line config error when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise unknown(named(kind), value, choices)


def check_positive(kind: str, value: float | int | None, allow_none: bool = False) -> None:
    """Raise a one-line config error when ``value`` is not a number > 0 (``None`` allowed when ``allow_none``)."""
    if value is None and allow_none:
        return
    if not _number(value) or not value > 0:
        raise bad(kind, value, "a number > 0" + (", or null" if allow_none else ""))


def check_positive_int(kind: str, value: object, allow_none: bool = False) -> int | None:
    """``value`` if it is an int >= 1 (or ``None`` when allowed), else the one-line config error."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad(kind, value, "an integer >= 1" + (" or null" if allow_none else ""))
    return value


def module_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of the module's first parameter (``fallback`` for parameter-free modules)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device(fallback)
