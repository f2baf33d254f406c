"""The ROAR figure: test accuracy after retraining vs % of pixels removed, one line per method (dissertation
ch. 6 Fig. 6, ch. 5 Fig. 7d), error bars = standard error over repeats, the unmodified baseline at 0 %."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xattr.viz.figure import save_figure  # noqa: E402


def plot_roar(curves: Mapping[str, Mapping[float, tuple[float, float]]], path: str | Path, title: str = "ROAR",
              baseline: tuple[float, float] | None = None) -> Path:
    """``curves``: method -> {percent: (mean accuracy, s.e.)}; ``baseline``: (mean, s.e.) at 0 % (every line
    starts there). Writes ``path`` (PNG) and returns it."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        ps = sorted(pts)
        x, y = [float(p) for p in ps], [pts[p][0] for p in ps]
        e = [pts[p][1] if np.isfinite(pts[p][1]) else 0.0 for p in ps]
        if baseline is not None and 0.0 not in pts:
            x, y, e = [0.0, *x], [baseline[0], *y], [baseline[1] if np.isfinite(baseline[1]) else 0.0, *e]
        ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, label=name)
    if baseline is not None and not curves:
        ax.plot([0], [baseline[0]], "ko", label="baseline")
    ax.set_xlabel("% of pixels removed (most relevant first)")
    ax.set_ylabel("test accuracy after retraining")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    ax.grid(alpha=0.3)
    if curves or baseline is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
