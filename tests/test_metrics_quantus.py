"""Parity with Quantus 0.6 where it implements the same protocol: PixelFlipping = our deletion curve
(one feature per step, fill 0, softmax). Quantus flattens maps over C x H x W, so single-channel images;
its curve has no step-0 point; its argsort is not stable, so maps without ties. Skipped without Quantus.
Quantus' SensitivityN perturbs in attribution order (not Ancona's random index sets) and has no insertion
game, so those are checked against independent loops in test_metrics_perturbation.py instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattr.metrics.insertion_deletion import InsertionDeletion
from xattr.models.tiny import TinyCNN

quantus = pytest.importorskip("quantus")


def test_deletion_matches_quantus_pixel_flipping():
    torch.manual_seed(0)
    net = TinyCNN(num_classes=3, in_channels=1).eval()
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 1, 2])
    maps = torch.rand(3, 1, 8, 8)
    ours = InsertionDeletion(per_step=2, modes=["deletion"], min_prob=None, x_axis="xattr")(net, x, t, maps).curves["deletion"]
    metric = quantus.PixelFlipping(features_in_step=2, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
    theirs = metric(model=net, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=maps.numpy(), device="cpu",
                    softmax=True)
    np.testing.assert_allclose(ours[:, 1:].numpy(), np.asarray(theirs), atol=1e-5)


def test_the_public_api_and_quantus_score_the_same_maps_alike():
    """The comparison above through ``import xattr``: an xattr method as Quantus' ``explain_func`` (numpy in,
    numpy out), Quantus' PixelFlipping on those maps, and ``xattr.evaluate`` with ``xattr.metric`` on the
    same numpy arrays (maps made by ``xattr.explain``) give the same deletion curve."""
    import xattr

    torch.manual_seed(0)
    model = xattr.load_model(TinyCNN(num_classes=3, in_channels=1), preprocess={"mean": [0.0], "std": [1.0], "size": 8})
    x = torch.randn(3, 1, 8, 8).numpy()
    y = np.array([0, 1, 2])
    explain_func = xattr.quantus_explain("gradient", reduce="sum")  # signed: no ties between pixels
    a = explain_func(model=model.net, inputs=x, targets=y)
    assert isinstance(a, np.ndarray) and a.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(a, xattr.explain(model, x, y, "gradient", reduce="sum").maps.numpy())
    metric = quantus.PixelFlipping(features_in_step=2, perturb_baseline=0.0, normalise=False, abs=False,
                                   disable_warnings=True, display_progressbar=False)
    theirs = metric(model=model.net, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func, device="cpu",
                    softmax=True)
    ours = xattr.evaluate(model, x, a, target=y, metrics=[xattr.metric(
        "insertion_deletion", per_step=2, modes=["deletion"], min_prob=None, x_axis="xattr", points="all")])
    np.testing.assert_allclose(ours.attrs["curves"]["insertion_deletion/deletion"][:, 1:], np.asarray(theirs), atol=1e-5)
