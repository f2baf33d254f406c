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

# chest X-ray findings (dissertation ch. 8-9): NIH ChestX-ray8's 14 labels in Data_Entry_2017.csv's spelling,
# the 8 of them with boxes in BBox_List_2017.csv, BrixIA's detector outputs, the synthetic stand-in's lesions
NIH_FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
NIH_BOX_FINDINGS = NIH_FINDINGS[:8]
BRIXIA_DETECTORS = ["score 3", "score 2", "score 0/1"]
BRIXIA_SCORE = ["global severity 0-18"]
SYNTHETIC_CXR_FINDINGS = ["blob", "ring", "streak", "texture"]
