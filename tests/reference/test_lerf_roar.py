"""LeRF and ROAR's pixel removal against RoarTorch's protocol (tests/reference/protocols.py), to 1e-6: LeRF's
counting (``int``) and ranking (signed channel max, ascending), ROAR's tie order on a uint8 map with many
zeros, its training-image fill (mean, then uint8) and its fixed validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.reference import protocols as ref
from xattr.metrics.lerf import LeRF

H = W = 12  # 144 pixels: 1% -> 1.44, 2% -> 2.88, 3% -> 4.32, 4% -> 5.76 ...: int() and round() differ at 2, 4, 6, 8, 9%


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 5)).eval()


def test_lerf_reference_mode_equals_the_authors_protocol():
    model = net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, H, W, generator=g)
    maps = torch.randn(4, 3, H, W, generator=g)             # signed, three channels: the channel max matters
    with torch.no_grad():
        target = model(x).argmax(1)
    res = LeRF(ties="numpy", chunk=7)(model, x, target, maps)
    q = np.arange(1, 11) / 100
    for i in range(4):
        theirs = ref.lerf_curve(model, x[i], maps[i].numpy(), list(range(1, 11)))
        np.testing.assert_allclose(res.curves["change"][i].numpy(), theirs, atol=1e-6)
        auc = np.trapezoid(theirs, q)
        assert res.scores["auc"][i].item() == pytest.approx(auc, abs=1e-6)
        assert res.scores["auc_normalised"][i].item() == pytest.approx(auc / 0.09, abs=1e-6)


def test_lerf_round_and_abs_modes_remove_other_pixels_than_the_reference():
    """The non-reference switches really change the removal (else the test above could not tell them apart)."""
    model = net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, H, W, generator=g)
    maps = torch.randn(3, 3, H, W, generator=g)
    target = torch.zeros(3, dtype=torch.long)
    base = LeRF(ties="numpy")(model, x, target, maps).curves["change"]
    rounded = LeRF(ties="numpy", count="round")(model, x, target, maps).curves["change"]
    same, other = [0, 2, 4, 6, 9], [1, 3, 5, 7, 8]                         # 1.44, 4.32, 7.2, 10.08, 14.4 px: one count
    assert torch.equal(base[:, same], rounded[:, same])
    assert (base[:, other] != rounded[:, other]).any(0).all()                # 2.88 -> 2 vs 3 pixels, ...
    assert not torch.allclose(base, LeRF(ties="numpy", rank="abs")(model, x, target, maps).curves["change"])
    assert not torch.allclose(base, LeRF(ties="numpy", channels="mean")(model, x, target, maps).curves["change"])


# ---------------------------------------------------------------------------------------------------- ROAR
def sparse_uint8_maps(n: int = 3, hw: int = 16) -> np.ndarray:
    """uint8 maps with many zeros (a sparse method after RoarTorch's 8-bit min-max PNG): 20% nonzero."""
    rng = np.random.default_rng(3)
    maps = rng.integers(1, 256, size=(n, hw, hw)).astype(np.uint8)
    maps[rng.random((n, hw, hw)) < 0.8] = 0
    return maps


@pytest.mark.parametrize("percent", [10, 30, 50, 70, 90])
def test_roar_numpy_ties_remove_the_pixels_roartorch_removes(percent):
    from xattr.data.roar import removal_mask

    maps = sparse_uint8_maps()
    ours = removal_mask(torch.from_numpy(maps), percent, ties="numpy").numpy()
    for i in range(len(maps)):
        np.testing.assert_array_equal(ours[i], ref.roar_removed(maps[i], percent))
    if percent >= 30:  # more pixels than nonzero values: the tie order decides, and stable order is another set
        stable = removal_mask(torch.from_numpy(maps), percent, ties="stable").numpy()
        assert (stable != ours).any()


def test_roar_training_images_are_filled_then_truncated_to_uint8_as_roartorch():
    from xattr.core.preprocess import Preprocess
    from xattr.data.roar import DeviceRoarBatches, RoarDataset, removal_mask

    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(4, 3, 16, 16)).astype(np.uint8)
    maps = sparse_uint8_maps(4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    removed = removal_mask(torch.from_numpy(maps), 50, ties="numpy").numpy()
    theirs = [ref.roar_train_image(images[i], removed[i], mean) for i in range(4)]
    expect = [(torch.from_numpy(t).float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
              for t in theirs]
    assert all((t[:, removed[i]] == np.array([125, 122, 113])[:, None]).all() for i, t in enumerate(theirs))

    batches = DeviceRoarBatches(torch.from_numpy(images), torch.zeros(4, dtype=torch.long), mean, std, mean,
                                maps=torch.from_numpy(maps), percent=50, batch_size=4, augment=False, shuffle=False,
                                ties="numpy", quantise_train=True)
    got = next(iter(batches))["x"]
    for i in range(4):
        assert torch.allclose(got[i], expect[i], atol=1e-6)

    class Base(torch.utils.data.Dataset):  # normalised images, as the CIFAR-10 dataset gives them
        parts = ["train"] * 4

        def __len__(self):
            return 4

        def __getitem__(self, i):
            x = (torch.from_numpy(images[i]).float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
            return {"x": x, "label": 0, "id": str(i), "index": i}

    pre = Preprocess(mean, std, size=16, resize=16)
    ds = RoarDataset(Base(), torch.from_numpy(maps), percent=50, part="train", fill=mean, quantise="none",
                     preprocess=pre, ties="numpy", train_fill="uint8")
    train = ds.training_view()
    for i in range(4):
        assert torch.allclose(train[i]["x"], expect[i], atol=1e-6)
        filled = ds[i]["x"][:, torch.from_numpy(removed[i])]  # validation / test items: the mean, in float
        assert torch.allclose(filled, torch.zeros_like(filled), atol=1e-6)


def test_first_validation_split_is_roartorchs():
    from xattr.training.data import split_indices

    labels = [i % 3 for i in range(50)] + [1] * 7  # unequal classes: 17, 24, 16 rows
    tr, va = split_indices(labels, 0.125, stratified=True, seed=5, order="first")
    theirs_tr, theirs_va = ref.first_split(labels)
    assert tr == sorted(theirs_tr) and va == sorted(theirs_va)
    assert split_indices(labels, 0.125, seed=9, order="first") == (tr, va)  # one split for every repeat
