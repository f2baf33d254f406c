"""Heatmap overlay grids with labels (the figure every run writes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xattr.viz.figure import save_figure  # noqa: E402


def normalise_map(m: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Clamp to the [lo, hi] percentiles and rescale to [0, 1] (IBA paper's figure normalisation)."""
    m = np.nan_to_num(m.astype(np.float32))
    lo, hi = np.percentile(m, [lo_pct, hi_pct])
    if hi <= lo:
        return np.zeros_like(m)
    return np.clip((m - lo) / (hi - lo), 0, 1)


def heatmap_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], titles: Sequence[str],
                 path: str | Path, suptitle: str = "", cols: int = 4, cmap: str = "jet", alpha: float = 0.5) -> Path:
    """Save a grid: for each image, the photo and the photo with its normalised map overlaid.

    ``images``: ``(H, W, 3)`` floats in [0, 1]; ``maps``: ``(H, W)``; ``titles``: one line per image.
    """
    n = len(images)
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.6 * 2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (img, m, t) in enumerate(zip(images, maps, titles)):
        r, c = divmod(i, cols)
        a0, a1 = axes[r, 2 * c], axes[r, 2 * c + 1]
        a0.imshow(np.clip(img, 0, 1))
        a0.set_title(t, fontsize=8)
        a1.imshow(np.clip(img, 0, 1))
        a1.imshow(normalise_map(m), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        a1.set_title("attribution", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def comparison_grid(images: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]], row_titles: Sequence[str],
                    path: str | Path, suptitle: str = "", cmap: str = "jet", alpha: float = 0.5) -> Path:
    """One row per image, the photo first and then one column per method with its normalised map overlaid.

    ``images``: ``(H, W, 3)`` in [0, 1]; ``maps``: column title -> one ``(H, W)`` map per image;
    ``row_titles``: one line per image (shown over the photo).
    """
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.45 * n + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, img in enumerate(images):
        axes[i, 0].imshow(np.clip(img, 0, 1))
        axes[i, 0].set_title(row_titles[i], fontsize=8)
        for j, (name, ms) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(np.clip(img, 0, 1))
            axes[i, j].imshow(normalise_map(ms[i]), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if suptitle else None)
    return save_figure(fig, path, dpi=90)
