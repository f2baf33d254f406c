"""Progress bars for the waits inside a batch (feature statistics, optimisation steps, WGAN epochs, metric
perturbation loops): one tqdm line each, removed when done, so Lightning's per-batch bar stays on top.

Shown on a terminal and hidden otherwise (captured output, CI logs); ``XATTR_PROGRESS=1`` forces them on,
``XATTR_PROGRESS=0`` off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm


def enabled() -> bool:
    flag = os.environ.get("XATTR_PROGRESS", "")
    if flag in ("0", "1"):
        return flag == "1"
    return sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             min_total: int = 2) -> tqdm:
    """A transient tqdm bar over ``iterable`` (or ``total`` updates); silent for fewer than ``min_total``."""
    n = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    show = enabled() and (n is None or n >= min_total)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=not show,
                file=sys.stderr)
