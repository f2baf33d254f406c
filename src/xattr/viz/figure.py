"""Saving a drawn figure: the one tail every drawing function shares."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt


def save_figure(fig, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` (parent folders made), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)  # None: matplotlib's savefig.dpi
    plt.close(fig)
    return path
