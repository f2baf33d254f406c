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


# ------------------------------------------------------------------ each model's numbers under its own heading
BBOX_CFG = {"bbox_ratio": {"_target_": "xattr.metrics.localisation.BoundingBoxRatio"}}


def _cells_with(df: pd.DataFrame, text: str) -> list[tuple[str, str]]:
    return [(row, col) for row, rec in df.iterrows() for col, v in rec.items() if text in str(v)]


def test_stand_in_model_gets_its_own_column_once(tmp_path):
    """A MobileNet-V2 run in a ResNet-50 / VGG-16 table: its number appears once, under a heading naming it."""
    _fake_run(tmp_path, "m", "grad_cam", "mobilenet_v2", {"bbox_ratio/bbox_ratio": [0.5, 0.724]}, BBOX_CFG)
    df = build_table("iba_t2_bbox", [tmp_path], tmp_path / "t").set_index("")
    assert _cells_with(df, "0.612") == [("Grad-CAM", "bbox (ours, mobilenet_v2)")]
    assert df.loc["Grad-CAM", "bbox (ours, mobilenet_v2)"] == "0.612 ± 0.112"
    assert df.loc["Grad-CAM", "ResNet-50 bbox (ours)"] == "–" and df.loc["Grad-CAM", "VGG-16 bbox (ours)"] == "–"
    assert df.loc["Grad-CAM", "VGG-16 bbox (paper)"] == "0.399"  # one paper column per published column
    assert list(df.columns) == ["ResNet-50 bbox (paper)", "ResNet-50 bbox (ours)", "VGG-16 bbox (paper)",
                                "VGG-16 bbox (ours)", "bbox (ours, mobilenet_v2)"]
    assert (tmp_path / "t" / "iba_t2_bbox.md").read_text().count("0.612") == 1


def test_paper_model_run_lands_under_its_column_only(tmp_path):
    _fake_run(tmp_path, "v", "grad_cam", "vgg16", {"bbox_ratio/bbox_ratio": [0.6, 0.624]}, BBOX_CFG)
    df = build_table("iba_t2_bbox", [tmp_path], tmp_path / "t").set_index("")
    assert _cells_with(df, "0.612") == [("Grad-CAM", "VGG-16 bbox (ours)")]
    assert df.loc["Grad-CAM", "VGG-16 bbox (ours)"].endswith("(vgg16)")
    assert df.loc["Grad-CAM", "ResNet-50 bbox (ours)"] == "–"
    assert not [c for c in df.columns if "(ours, " in c]  # no stand-in: no extra column


def test_paper_models_and_stand_ins_side_by_side(tmp_path):
    """Degradation: columns differ by model and tile; each stand-in setting is one column, none when empty;
    a method the paper lacks is an extra row whose number also stays under its own model."""
    cfg8 = {"degradation": {"_target_": "xattr.metrics.degradation.Degradation", "tile": 8}}
    cols = {"degradation/degradation": [0.2, 0.2], "degradation/top1_prob": [0.8, 0.8],
            "degradation/degraded_prob": [0.3, 0.3]}  # eq. 8: 0.2 / (0.8 - 0.3) = 0.4
    _fake_run(tmp_path, "m", "grad_cam", "mobilenet_v2", cols, cfg8)
    _fake_run(tmp_path, "r", "grad_cam", "resnet50", {**cols, "degradation/degradation": [0.1, 0.1]}, cfg8)
    _fake_run(tmp_path, "x", "fullgrad", "efficientnet_lite0", {**cols, "degradation/degradation": [0.15, 0.15]}, cfg8)
    df = build_table("iba_t2_degradation", [tmp_path], tmp_path / "t").set_index("")
    assert df.loc["Grad-CAM", "deg. 8x8 (ours, mobilenet_v2)"] == "0.400 ± 0.000"
    assert df.loc["Grad-CAM", "ResNet-50 deg. 8x8 (ours)"] == "0.200 ± 0.000 (resnet50)"
    assert df.loc["Grad-CAM", "VGG-16 deg. 8x8 (ours)"] == "–"
    assert "deg. 14x14 (ours, mobilenet_v2)" not in df.columns  # tile 14 not run: no empty column
    assert _cells_with(df, "0.400") == [("Grad-CAM", "deg. 8x8 (ours, mobilenet_v2)")]
    assert _cells_with(df, "0.300") == [("fullgrad (not in paper)", "deg. 8x8 (ours, efficientnet_lite0)")]
    assert df.loc["Grad-CAM", "deg. 8x8 (ours, efficientnet_lite0)"] == "–"


def test_score_columns_name_each_numbers_model(tmp_path):
    """Columns that differ by score (no model): one "(ours)" cell, every number followed by its model."""
    id_cfg = {"insertion_deletion": {"_target_": "xattr.metrics.insertion_deletion.InsertionDeletion"}}
    _fake_run(tmp_path, "a", "grad_cam", "mobilenet_v2",
              {"insertion_deletion/insertion": [0.5, 0.7], "insertion_deletion/deletion": [0.1, 0.1]}, id_cfg)
    _fake_run(tmp_path, "b", "grad_cam", "vgg16",
              {"insertion_deletion/insertion": [0.2, 0.4], "insertion_deletion/deletion": [0.3, 0.3]}, id_cfg)
    df = build_table("inputiba_t3_insdel", [tmp_path], tmp_path / "t").set_index("")
    assert df.loc["GradCAM", "Insertion AUC (ours)"] == "0.600 ± 0.100 (mobilenet_v2); 0.300 ± 0.100 (vgg16)"
    assert list(df.columns) == ["Insertion AUC (paper)", "Insertion AUC (ours)", "Deletion AUC (paper)",
                                "Deletion AUC (ours)"]


def test_table_cli_names_the_stand_in_model(tmp_path, capsys):
    _fake_run(tmp_path, "m", "grad_cam", "mobilenet_v2", {"bbox_ratio/bbox_ratio": [0.5, 0.724]}, BBOX_CFG)
    assert table_main(["iba_t2_bbox", str(tmp_path), "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "bbox (ours, mobilenet_v2)" in out and out.count("0.612") == 1


@pytest.mark.parametrize("name,model,expect", [("ResNet-50 deg. 8x8", "resnet50", "deg. 8x8"),
                                               ("VGG-16 bbox", "vgg16", "bbox"), ("VGG-16", "vgg16", ""),
                                               ("top-1 (MobileNet-V2)", "mobilenet_v2", "top-1"),
                                               ("Ours A", "vgg16", "Ours A")])
def test_column_name_without_the_paper_model(name, model, expect):
    from xattr.tables.build import without_model

    assert without_model(name, model) == expect
