"""scripts/input_iba_agreement.py's ``--reference`` comparison (issue 31, the demo's InputIBA): its settings are
the demo's and the reference's (its blur and correlation are IBA's ``Smoothing`` and the metrics' ``pearson``,
tested in tests/test_iba_bottleneck.py and tests/test_analyses.py)."""

from __future__ import annotations

import sys
from pathlib import Path

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

