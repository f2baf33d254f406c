"""Metric curves: mean +- standard error per method over images (like Fig. 6 / Fig. 7 of the IBA paper)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from xattr.viz.figure import save_figure  # noqa: E402


def mean_sem(curves: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over images (axis 0) of ``(N, T)`` curves, ignoring NaN."""
    c = np.asarray(curves, dtype=np.float64)
    n = np.isfinite(c).sum(0)
    m = np.nanmean(c, 0) if c.size else np.zeros(c.shape[1:])
    sd = np.nanstd(c, 0, ddof=1) if c.shape[0] > 1 else np.zeros_like(m)
    return m, np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), 0.0)


def plot_curves(
    curves: Mapping[str, torch.Tensor | np.ndarray],
    x_axis: torch.Tensor | np.ndarray | Mapping[str, torch.Tensor | np.ndarray],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
) -> Path:
    """Save a PNG with one line (mean) and band (+- s.e.) per method.

    ``curves``: method name -> ``(N_images, T)``; ``x_axis``: ``(T,)`` shared, or one per method.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, c in curves.items():
        x = np.asarray(x_axis[name] if isinstance(x_axis, Mapping) else x_axis, dtype=np.float64)
        m, s = mean_sem(c)
        (line,) = ax.plot(x, m, label=f"{name} (n={len(np.asarray(c))})")
        ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2)
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
