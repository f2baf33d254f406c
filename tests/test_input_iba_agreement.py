"""scripts/input_iba_agreement.py's ``--reference`` comparison (issue 31, the demo's InputIBA): its settings are
the demo's and the reference's, its blur is a unit Gaussian, its correlation Pearson's."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import input_iba_agreement as agreement  # noqa: E402


def test_preset_is_the_demos_and_reference_the_methods_defaults() -> None:
    demo = yaml.safe_load((ROOT / "conf" / "experiment" / "demo.yaml").read_text())
    overrides = dict(o.split("=", 1) for o in demo["demo"]["methods"]["input_iba"]["overrides"])
    assert {k: int(overrides[f"method.{k}"]) for k in agreement.PRESET} == agreement.PRESET
    defaults = yaml.safe_load((ROOT / "conf" / "method" / "input_iba.yaml").read_text())
    assert {k: defaults[k] for k in agreement.REFERENCE} == agreement.REFERENCE


def test_blur_of_a_point_is_the_normalised_gaussian() -> None:
    sigma, n = 2.0, 41
    delta = torch.zeros(1, 1, n, n)
    delta[0, 0, n // 2, n // 2] = 1.0
    b = agreement.blurred(delta, sigma)[0, 0].double()
    r = torch.arange(n, dtype=torch.float64) - n // 2
    g1 = torch.exp(-(r**2) / (2 * sigma**2))
    g1 = torch.where(r.abs() <= 3 * sigma, g1, 0.0)  # the kernel reaches +-3 sigma
    expected = torch.outer(g1, g1) / g1.sum() ** 2
    assert torch.allclose(b, expected, atol=1e-6)
    assert math.isclose(float(b.sum()), 1.0, abs_tol=1e-5)


def test_pearson_is_one_for_an_affine_copy_and_minus_one_for_a_negated_one() -> None:
    u = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert math.isclose(agreement.pearson(u, 3 * u + 1), 1.0, abs_tol=1e-6)
    assert math.isclose(agreement.pearson(u, -u), -1.0, abs_tol=1e-6)
    v = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    centred = (u - u.mean()).flatten(), (v - v.mean()).flatten()
    expected = float(centred[0] @ centred[1] / (centred[0].norm() * centred[1].norm()))
    assert math.isclose(agreement.pearson(u, v), expected, abs_tol=1e-6)
