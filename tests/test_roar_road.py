"""ROAD beside ROAR (issue 28, ``python -m xattr.table roar_vs_road``): Kendall's tau between ROAR's and ROAD's
orderings of the methods, on unit and run folders built by hand whose taus are counted by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from xattr.core.store import RunStore
from xattr.errors import XattrConfigError
from xattr.tables.build import build_table
from xattr.tables.roar import find_units, summarise_units
from xattr.tables.roar_road import compare, road_curves

# ROAR test accuracy at 30 / 70 %: AUC = their mean = 0.3, 0.4, 0.5, 0.6, so ROAR ranks a, b, c, d (low is best)
ROAR = {"a": (0.5, 0.1), "b": (0.6, 0.2), "c": (0.7, 0.3), "d": (0.8, 0.4)}
# ROAD MoRF accuracy (the same at 30 and 70 %): ranks a, c, b, d: one discordant pair (b, c) of 6, tau = 4/6.
# At 50 % (a percent ROAR did not run, so left out) the values would reverse the ranking if they were used.
MORF = {"a": 0.2, "b": 0.4, "c": 0.3, "d": 0.5}
MORF50 = {"a": 0.9, "b": 0.6, "c": 0.7, "d": 0.0}
# ROAD LeRF (high is best): ranks d, c, b, a, the reverse of ROAR: tau = -1
LERF = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}


def _unit(root: Path, method: str, percent: float, acc: float) -> None:
    d = root / f"{method}-p{percent:g}"
    d.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"roar": {"method": method, "percent": percent, "repeat": 0}}), d / "config.yaml")
    (d / "results.json").write_text(json.dumps({"test_acc": acc}))


def _road_run(root: Path, method: str) -> None:
    """A finished ROAD run of 2 images whose curves average to MORF / LERF (image 1 - 0.1, image 2 + 0.1)."""
    store = RunStore(root / method)
    store.write_config({"method_name": method, "metric": {}})
    morf = torch.tensor([MORF[method], MORF50[method], MORF[method]])
    lerf = torch.full((3,), LERF[method])
    spread = torch.tensor([[-0.1], [0.1]])
    batch = {"id": ["i0", "i1"], "index": torch.arange(2), "label": torch.zeros(2, dtype=torch.long)}
    x = torch.tensor([30.0, 50.0, 70.0])
    rows = store.write("b0", batch, torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 4, 4), torch.rand(2, 10),
                       curves={"road/road_morf": morf + spread, "road/road_lerf": lerf + spread},
                       x_axis={"road/road_morf": x, "road/road_lerf": x})
    store.write_report_tables(rows, pd.DataFrame({"score": ["top1_accuracy"], "mean": [0.0], "sem": [0.0], "n": [2]}))


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    _unit(tmp_path / "roar", "base", 0, 0.9)
    for m, (a30, a70) in ROAR.items():
        _unit(tmp_path / "roar", m, 30, a30)
        _unit(tmp_path / "roar", m, 70, a70)
    _unit(tmp_path / "roar", "only_roar", 30, 0.1)  # no ROAD run: left out of the comparison
    for m in ROAR:
        _road_run(tmp_path / "road", m)
    return tmp_path


def test_taus_are_the_hand_counted_ones_at_the_percents_both_ran(folders: Path) -> None:
    units, _ = find_units([folders / "roar"])
    df, taus = compare(summarise_units(units, []), road_curves([folders / "road"]))
    assert taus["methods"] == ["a", "b", "c", "d"] and taus["percents"] == [30.0, 70.0]
    assert taus["morf"] == pytest.approx(4 / 6) and taus["lerf"] == pytest.approx(-1.0)
    assert taus["per_percent"] == {30.0: pytest.approx(4 / 6), 70.0: pytest.approx(4 / 6)}
    assert df["ROAR AUC"].tolist() == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert df["ROAD MoRF AUC"].tolist() == pytest.approx([0.2, 0.4, 0.3, 0.5])  # 50 % left out
    # the images' AUCs are the mean -/+ 0.1: s.e. = std([-0.1, 0.1], ddof=1) / sqrt(2) = 0.1
    assert df["ROAD MoRF AUC s.e."].tolist() == pytest.approx([0.1] * 4)
    assert df["ROAD MoRF rank"].tolist() == [1, 3, 2, 4] and df["ROAD LeRF rank"].tolist() == [4, 3, 2, 1]


def test_table_cli_path_writes_the_taus(folders: Path, tmp_path: Path) -> None:
    df = build_table("roar_vs_road", [folders / "roar", folders / "road"], tmp_path / "out")
    assert len(df) == 4
    md = (tmp_path / "out" / "roar_vs_road.md").read_text()
    assert "ROAR vs ROAD MoRF **0.667**" in md and "ROAR vs ROAD LeRF **-1.000**" in md
    assert "mean over 2 images" in md and "30%, 70%" in md


def test_one_shared_method_is_one_error(folders: Path) -> None:
    units, _ = find_units([folders / "roar"])
    road = {"a": road_curves([folders / "road"])["a"]}
    with pytest.raises(XattrConfigError, match="share 1 method"):
        compare(summarise_units(units, []), road)
