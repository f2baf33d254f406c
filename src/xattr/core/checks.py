"""One-line validation of hyper-parameters (the bad value and the valid choices) and a module's device."""

from __future__ import annotations

import torch
from torch import nn

from xattr.errors import XattrConfigError, unknown


def check_choice(kind: str, value: object, choices) -> None:
    """Raise the one-line config error when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise unknown(kind, value, choices)


def check_positive(kind: str, value: float | int | None, allow_none: bool = False) -> None:
    """Raise a one-line config error when ``value`` is not > 0 (``None`` allowed when ``allow_none``)."""
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or value <= 0:
        raise XattrConfigError(f"{kind} must be > 0, got {value!r}")


def check_positive_int(kind: str, value: object, allow_none: bool = False) -> int | None:
    """``value`` if it is an int >= 1 (or ``None`` when allowed), else the one-line config error."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        choices = "an integer >= 1" + (" or null" if allow_none else "")
        raise XattrConfigError(f"bad {kind} {value!r}; valid choices: {choices}")
    return value


def module_device(model: nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of the module's first parameter (``fallback`` for parameter-free modules)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device(fallback)
