"""Class names of the datasets (ImageNet's shipped in ``assets/``), shared by ``data`` and ``models``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
ASSETS = REPO_ROOT / "assets"

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMDB_CLASSES = ["negative", "positive"]


@cache
def _imagenet_index() -> dict:
    with open(ASSETS / "imagenet_class_index.json") as f:
        return json.load(f)


def imagenet_labels() -> list[str]:
    """Human-readable ImageNet class names in torchvision's order (shipped in assets/)."""
    idx = _imagenet_index()
    return [idx[str(i)][1] for i in range(len(idx))]


def imagenet_wnids() -> list[str]:
    """WordNet ids (``n01440764``, ...) of the ImageNet classes in torchvision's order."""
    idx = _imagenet_index()
    return [idx[str(i)][0] for i in range(len(idx))]
