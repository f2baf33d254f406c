"""The one error type for bad input: one line naming the bad value and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class XattrConfigError(ValueError):
    """Raised for bad user input (unknown name, bad shape, missing file). Message is one line."""


def unknown(kind: str, value: object, choices: Iterable[object]) -> XattrConfigError:
    """Build the error for an unknown ``kind`` (e.g. ``"layer"``) ``value`` with the valid ``choices``."""
    listed = ", ".join(str(c) for c in choices)
    return XattrConfigError(f"unknown {kind} {value!r}; valid choices: {listed}")


def missing_file(what: str, path: object, hint: str) -> XattrConfigError:
    """Build the error for a missing weight/data file: what it is, where to put it, how to get it."""
    return XattrConfigError(f"missing {what}: put it at {path} ({hint})")
