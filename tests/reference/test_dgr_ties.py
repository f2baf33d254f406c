"""DGR's pathway selection against PathwayGrad ``src/Pruner.py`` (@d59b16d, L304-305): the code prunes every
neuron whose gate is ``<= np.percentile(all gates, 100 kappa)`` network-wide, i.e. keeps gates strictly above
it; written here per image with numpy, on gates with many ties (DGR(init=1)'s never-active neurons)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattr.methods.pathways.selection import select


def code_pathway(gates: np.ndarray, kappa: float) -> np.ndarray:
    keep = np.zeros(gates.shape, dtype=bool)
    for i, g in enumerate(gates):
        keep[i] = (g > np.percentile(g, 100 * kappa)) & (g > 0)
    return keep


@pytest.mark.parametrize("kappa", [0.5, 0.7, 0.9])
def test_dgr_strict_ties_equal_the_codes_pruning(kappa):
    rng = np.random.default_rng(0)
    gates = rng.integers(0, 6, size=(4, 200)).astype(np.float32) / 5   # values in {0, .2, ..., 1}: many ties
    gates[:, :60] = 1.0                                                  # never-active neurons: gate stays 1
    ours = select(torch.from_numpy(gates), kappa, ties="drop").numpy()
    np.testing.assert_array_equal(ours, code_pathway(gates, kappa))
    assert (select(torch.from_numpy(gates), kappa, ties="keep").numpy() != ours).any()  # the tie rule matters
