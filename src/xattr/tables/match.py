"""What every table kind shares: the run paths it reads (each an existing folder, something found under
them), which runs a published row or column takes (``match:`` on the run's config) and how a number is
written (mean ± s.e.)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from xattr.errors import XattrConfigError


def check_run_paths(paths: list[str | Path]) -> None:
    """Every path the table reads is an existing folder: else one error naming it (nothing is written)."""
    for p in map(Path, paths):
        why = "does not exist" if not p.exists() else "is a file" if not p.is_dir() else None
        if why:
            raise XattrConfigError(f"bad runs path {str(p)!r}: it {why}; valid choices: folders holding run folders "
                                   "of python -m xattr.run (e.g. outputs/runs)")


def no_runs(paths: list[str | Path], what: str = "finished runs of python -m xattr.run") -> XattrConfigError:
    """The error for paths under which nothing to tabulate was found (a table is never replaced by an
    empty one)."""
    listed = ", ".join(repr(str(p)) for p in paths)
    return XattrConfigError(f"no {what} under {listed}; valid choices: folders holding them (e.g. outputs/runs); "
                            "nothing was written")


def lookup(cfg: Any, key: str) -> Any:
    """A run config's value at ``key``; ``method.*`` of a ``method=saved`` run is the source run's."""
    if key == "method_name":
        return cfg.get("method_name")
    if key.startswith("method.") and cfg.get("source_method") is not None:  # method=saved runs
        return OmegaConf.select(cfg.source_method, key[len("method."):], default=None)
    return OmegaConf.select(cfg, key, default=None)


def matches(cfg: Any, match: dict | None) -> bool:
    """True when the run config has every ``key: value`` of ``match`` (numbers compared with ``isclose``)."""
    for k, v in (match or {}).items():
        got = lookup(cfg, k)
        if got is None:
            return False
        if isinstance(v, float | int) and not isinstance(v, bool):
            try:
                if not np.isclose(float(got), float(v)):
                    return False
            except (TypeError, ValueError):
                return False
        elif str(got) != str(v):
            return False
    return True


def fmt(mean: float, sem: float) -> str:
    """``mean ± sem`` to 3 decimals (``–`` for no number, no ``±`` for a missing s.e.)."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f}" + (f" ± {sem:.3f}" if np.isfinite(sem) else "")
