"""Ch. 7's sample figures (Figs. 1-4): each generated sample with its feature boxes, then a few methods'
maps of it (feature patch box in green, the second patch, null / f_b / f_a2, in red)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from xattr.viz.figure import save_figure  # noqa: E402
from xattr.viz.heatmaps import normalise_map  # noqa: E402

BOX_COLOURS = ("lime", "red")


def _boxes(ax, boxes: np.ndarray) -> None:
    for box, colour in zip(boxes, BOX_COLOURS):
        if np.isfinite(box).all():
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=1.5))


def axioms_figure(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], maps: dict[str, Sequence[np.ndarray]],
                  row_titles: Sequence[str], path: str | Path, suptitle: str = "") -> Path:
    """One row per sample: the sample (``(H, W, 3)`` in [0, 1]) with its ``(P, 4)`` xyxy boxes, then each
    method's ``(H, W)`` map (percentile-normalised |map|) with the same boxes. Returns ``path``."""
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.3 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(np.clip(images[r], 0, 1))
        axes[r, 0].set_title(row_titles[r], fontsize=7)
        _boxes(axes[r, 0], boxes[r])
        for c, (method, ms) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(normalise_map(np.abs(ms[r])), cmap="jet", vmin=0, vmax=1)
            _boxes(axes[r, c], boxes[r])
            if r == 0:
                axes[r, c].set_title(method, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
