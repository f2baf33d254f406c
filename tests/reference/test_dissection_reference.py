"""Network dissection with the CheXplain-Dissection code's settings (netdissect_results.py @63cfbd66): one
label per pixel (the highest concept index where they overlap), the IoU's union over every image, masks resized
nearest; a hand case worked out below, and the text's settings on the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xattr.analyses.dissection import Dissection

# three 2x2 images, one unit, two concepts A (index 0) and B (index 1)
ACTS = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
A = [[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]
B = [[[0, 1], [0, 0]], [[0, 1], [0, 1]], [[0, 0], [0, 0]]]
MASKS = torch.tensor([[a, b] for a, b in zip(A, B)], dtype=torch.bool)  # (3, 2, 2, 2)


def dissect(**kw) -> torch.Tensor:
    # quantile 2/3 of 12 values with 4 ones: m = 4 above, T = the 8th smallest = 0: unit mask = act > 0,
    # i.e. image 1 {(0,0)}, image 2 {(0,0), (0,1)}, image 3 {(1,1)}
    d = Dissection("0", concepts=["A", "B"], quantile=2 / 3, **kw)
    d.update(nn.Sequential(nn.Identity()), ACTS, torch.zeros(3, dtype=torch.long), None, concept_masks=MASKS)
    return d.iou()[0][0]


def test_the_codes_settings_by_hand():
    # single labels: image 1's (0,1) holds A and B -> B; A is {(0,0)} in image 1 only.
    # A: inter 1; union over all images = 1 (image 1) + 2 (image 2's unit pixels) + 1 (image 3's) = 4 -> 0.25
    # B (images 1, 2): inter 0 + 1, union 2 + 3, plus image 3's unit pixel = 6 -> 1/6
    iou = dissect(quantile_on="upsampled", union="all_images", labels="single", mask_size=None)
    assert iou.tolist() == pytest.approx([0.25, 1 / 6])


def test_the_texts_settings_by_hand():
    # multi labels, eq. 5 over the images holding the concept: A (image 1): inter 1, union 2 -> 0.5;
    # B (images 1, 2): inter 1, union 2 + 3 -> 0.2
    iou = dissect(quantile_on="features", union="concept_images", labels="multi", mask_size=None)
    assert iou.tolist() == pytest.approx([0.5, 0.2])
    # each switch alone moves the number: single labels only (A 1/1), all images only (A 1/5)
    assert dissect(union="concept_images", labels="single", mask_size=None).tolist() == pytest.approx([1.0, 0.2])
    assert dissect(union="all_images", labels="multi", mask_size=None).tolist() == pytest.approx([0.2, 1 / 6])


def test_masks_resized_nearest_as_a_label_map():
    """mask_size: a label map resized nearest (PyTorch's nearest: source pixel floor(i * in / out)), then one
    channel per concept: a numpy pick of the same pixels from the single-label map."""
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((2, 3, 12, 12)) < 0.3)
    acts = torch.rand(2, 4, 3, 3)
    d = Dissection("0", concepts=["a", "b", "c"], labels="single", mask_size=8)
    d.update(nn.Sequential(nn.Identity()), acts, torch.zeros(2, dtype=torch.long), None, concept_masks=masks)
    stored = d._unpack(torch.cat(d.masks))
    label = np.zeros((2, 12, 12), dtype=int)  # 0: none; c + 1: concept c, the highest index wins
    for c in range(3):
        label[masks[:, c].numpy()] = c + 1
    pick = (np.arange(8) * 12) // 8
    small = label[:, pick][:, :, pick]
    want = np.stack([small == c + 1 for c in range(3)], 1)
    np.testing.assert_array_equal(stored.numpy(), want)
