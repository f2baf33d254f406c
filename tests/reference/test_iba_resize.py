"""IBA heatmap resizing: ``resize: reference`` equals the reference's ``skimage.transform.resize(order=1,
mode='reflect')`` (BioroboticsLab/IBA @7b2fbd53, the "saliency" heatmap) itself; ``bilinear`` differs only in
the border pixels. The IBA classes pass the option through (default ``reference``)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from skimage.transform import resize as sk_resize

from xattr.errors import XattrConfigError
from xattr.methods.iba import MultiLayerIBA, PerSampleIBA, to_bits_map
from xattr.methods.iba import statistics as st
from xattr.models.tiny import TinyCNN


@pytest.mark.parametrize("hw,size", [((7, 7), (224, 224)), ((14, 14), (224, 224)), ((5, 3), (17, 40)), ((1, 4), (8, 9)),
                                     ((6, 4), (6, 11))])  # one side unchanged (issue 26: a mutant broke it)
def test_reference_resize_equals_skimage(hw, size):
    kl = torch.rand(2, 6, *hw, generator=torch.Generator().manual_seed(0)) * 3
    ours = to_bits_map(kl, size, resize="reference")
    small = (kl.sum(1) / math.log(2) * (hw[0] * hw[1]) / (size[0] * size[1])).numpy()
    for i in range(2):
        theirs = sk_resize(small[i], size, order=1, mode="reflect", anti_aliasing=False)
        np.testing.assert_allclose(ours[i, 0].numpy(), theirs, rtol=1e-6, atol=1e-9)


def test_bilinear_differs_only_at_the_border():
    h, size = 14, 224  # scale 16: output pixels whose source coordinate lies outside [0, h - 1] are the border
    kl = torch.rand(1, 4, h, h, generator=torch.Generator().manual_seed(1))
    a, b = to_bits_map(kl, (size, size), "reference"), to_bits_map(kl, (size, size), "bilinear")
    s = (torch.arange(size) + 0.5) * h / size - 0.5
    border = (s < 0) | (s > h - 1)  # 8 rows / columns on each side
    inner = ~(border[:, None] | border[None, :])
    assert torch.allclose(a[0, 0][inner], b[0, 0][inner], rtol=1e-5, atol=1e-9)
    assert not torch.allclose(a[0, 0][~inner], b[0, 0][~inner], rtol=1e-3)
    with pytest.raises(XattrConfigError, match="unknown resize 'nearest'; valid choices: bilinear, reference"):
        to_bits_map(kl, (size, size), "nearest")


def test_iba_classes_pass_resize_through():
    torch.manual_seed(0)
    net = TinyCNN(num_classes=3).eval()
    g = torch.Generator().manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = st.estimate(net, ["conv3"], [{"x": torch.randn(16, 3, 16, 16, generator=g)}], n_samples=16)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0, 2])
    maps = {}
    for how in ("reference", "bilinear"):
        iba = PerSampleIBA(net, "conv3", steps=2, resize=how)
        iba.set_statistics(stats)
        maps[how] = iba.attribute(x, t)
        assert torch.allclose(maps[how], to_bits_map(iba.optimize(x, t).kl, (16, 16), how), atol=1e-7)
    assert PerSampleIBA(net, "conv3").resize == "reference"  # the reference's resize by default
    assert not torch.allclose(maps["reference"], maps["bilinear"])
    multi = MultiLayerIBA(net, ["conv2", "conv3"], resize="bilinear")
    assert multi.resize == "bilinear" and all(m.resize == "bilinear" for m in multi.methods)
    with pytest.raises(XattrConfigError, match="unknown resize"):
        PerSampleIBA(net, "conv3", resize="area")
