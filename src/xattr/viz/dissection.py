"""Network dissection figure (dissertation ch. 9, Fig. 3): each concept's top units, their thresholded masks
on example images beside the concept's own mask."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xattr.viz.figure import save_figure  # noqa: E402

UNIT_COLOUR = (1.0, 0.15, 0.1)


def overlay(grey: np.ndarray, unit_mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``(H, W)`` grey (uint8 or [0, 1]) with ``unit_mask`` ``(H, W)`` bool tinted red -> ``(H, W, 3)`` in [0, 1]."""
    g = grey.astype(np.float32)
    g = g / 255.0 if grey.dtype == np.uint8 else np.clip(g, 0, 1)
    rgb = np.repeat(g[..., None], 3, -1)
    tint = np.asarray(UNIT_COLOUR, dtype=np.float32)
    m = unit_mask.astype(bool)[..., None]
    return np.where(m, (1 - alpha) * rgb + alpha * tint, rgb)


def concept_units_figure(panels: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """One row per (concept, unit): the examples of the concept with the unit's mask (red) and the
    concept's mask outlined (green).

    Each panel: ``concept`` (str), ``images`` (E arrays ``(H, W)``), ``concept_masks`` ``(E, H, W)`` bool,
    ``units``, ``ious``, ``detector`` (U each), ``unit_masks`` ``(U, E, H, W)`` bool.
    """
    rows = [(p, j) for p in panels for j in range(len(p["units"]))]
    cols = max((len(p["images"]) for p in panels), default=1)
    fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(1.9 * cols + 1.2, 1.9 * max(1, len(rows))),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (p, j) in enumerate(rows):
        for e, img in enumerate(p["images"]):
            ax = axes[r, e]
            ax.imshow(overlay(img, p["unit_masks"][j][e]))
            cm = np.asarray(p["concept_masks"][e], dtype=float)
            if cm.any():
                ax.contour(cm, levels=[0.5], colors="lime", linewidths=0.8)
        det = "\n(detector)" if p["detector"][j] else ""
        a0 = axes[r, 0]
        a0.axis("on")
        a0.set_xticks([])
        a0.set_yticks([])
        for spine in a0.spines.values():
            spine.set_visible(False)
        a0.set_ylabel(f"{p['concept']}\nunit {p['units'][j]}\nIoU {p['ious'][j]:.3f}{det}", rotation=0,
                      ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98 if title else 1))
    return save_figure(fig, path, dpi=100)
