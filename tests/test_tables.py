"""Paper tables: published numbers beside ours, cells matched by config, metric summaries applied."""

from __future__ import annotations

import pandas as pd
import pytest
from omegaconf import OmegaConf

from xattr.errors import XattrConfigError
from xattr.table import main as table_main
from xattr.tables import build_table, load_published


def _fake_run(root, name, method, model, metric_cols, metric_cfg, extra=None):
    d = root / name
    d.mkdir(parents=True)
    cfg = {"method_name": method, "model": {"name": model}, "method": extra or {}, "metric": metric_cfg}
    OmegaConf.save(OmegaConf.create(cfg), d / "config.yaml")
    n = len(next(iter(metric_cols.values())))
    df = pd.DataFrame({"id": [str(i) for i in range(n)], "index": range(n), "label": [1] * n, "target": [1] * n,
                       "prob": [0.9] * n, "top1": [1] * (n - 1) + [0], **metric_cols})
    df.to_parquet(d / "per_image.parquet", index=False)
    return d


def test_every_published_table_is_well_formed():
    for tid, spec in load_published().items():
        assert spec["source"] and spec["title"], tid
        if spec.get("kind") == "figure":
            assert spec["curve"]
            continue
        if spec.get("paper"):
            assert len(spec["paper"]) == len(spec["rows"]), tid
            assert all(len(r) == len(spec["columns"]) for r in spec["paper"]), tid


def test_insdel_table_places_ours_beside_paper(tmp_path):
    id_cfg = {"insertion_deletion": {"_target_": "xattr.metrics.insertion_deletion.InsertionDeletion"}}
    _fake_run(tmp_path, "a", "grad_cam", "mobilenet_v2",
              {"insertion_deletion/insertion": [0.5, 0.7], "insertion_deletion/deletion": [0.1, float("nan")]}, id_cfg)
    _fake_run(tmp_path, "b", "integrated_gradients", "mobilenet_v2",
              {"insertion_deletion/insertion": [0.2, 0.4], "insertion_deletion/deletion": [0.3, 0.3]}, id_cfg)
    df = build_table("inputiba_t3_insdel", [tmp_path], tmp_path / "tables").set_index("")
    assert df.loc["GradCAM", "Insertion AUC (paper)"] == "0.703"
    assert df.loc["GradCAM", "Insertion AUC (ours)"] == "0.600 ± 0.100 (mobilenet_v2)"
    assert df.loc["GradCAM", "Deletion AUC (ours)"].startswith("0.100 (")  # NaN (filtered) left out, n = 1
    assert df.loc["Integrated Gradients", "Deletion AUC (ours)"].startswith("0.300 ± 0.000")
    assert df.loc["InputIBA", "Insertion AUC (ours)"] == "–"
    assert (tmp_path / "tables" / "inputiba_t3_insdel.md").read_text().count("0.710") == 1


def test_degradation_table_uses_eq8_scaling(tmp_path):
    cfg = {"degradation": {"_target_": "xattr.metrics.degradation.Degradation", "tile": 8}}
    # area 0.2 per image; t1 = 0.8, b = 0.3 -> scaled 0.2 / 0.5 = 0.4
    _fake_run(tmp_path, "g", "grad_cam", "vgg16",
              {"degradation/degradation": [0.2, 0.2], "degradation/top1_prob": [0.8, 0.8],
               "degradation/degraded_prob": [0.3, 0.3]}, cfg)
    df = build_table("iba_t2_degradation", [tmp_path], tmp_path / "t").set_index("")
    assert df.loc["Grad-CAM", "VGG-16 deg. 8x8 (ours)"].startswith("0.400")
    assert df.loc["Grad-CAM", "VGG-16 deg. 14x14 (ours)"] == "–"  # tile 14 not run
    assert df.loc["Grad-CAM", "ResNet-50 deg. 8x8 (ours)"] == "–"  # a paper model, not ours
    assert df.loc["Grad-CAM", "VGG-16 deg. 8x8 (paper)"] == "0.510"


def test_unknown_table_is_one_line(capsys):
    with pytest.raises(XattrConfigError, match="unknown table 'iba_t9'; valid choices: .*iba_t1_beta"):
        build_table("iba_t9", [])
    assert table_main(["iba_t9"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown table 'iba_t9'")
