"""Chest X-ray data (dissertation ch. 8-9): the synthetic stand-in (deterministic, exact masks, imbalanced
rates, the batch interface) and the NIH ChestX-ray8 / BrixIA loaders on tiny fixture files written here in
the official formats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from xattr.core.preprocess import Preprocess
from xattr.data.cxr import BrixIA, NIHChestXray8, detector_labels, zone_masks
from xattr.data.synthetic_cxr import FINDINGS, SyntheticCXR, draw_findings, mask_box, render
from xattr.data.transforms import collate
from xattr.errors import XattrConfigError


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_seeded() -> None:
    a = SyntheticCXR("test", n=40, size=48, seed=3)
    b = SyntheticCXR("test", n=40, size=48, seed=3)
    assert len(a) == len(b) > 0
    for i in (0, len(a) - 1):
        ia, ib = a[i], b[i]
        assert torch.equal(ia["x"], ib["x"]) and torch.equal(ia["concept_masks"], ib["concept_masks"])
        assert ia["id"] == ib["id"]
    # reading in another order gives the same image; another seed / split another one
    late = SyntheticCXR("test", n=40, size=48, seed=3)
    assert torch.equal(late[len(late) - 1]["x"], a[len(a) - 1]["x"])
    other = render(4, "test", 0, 48, torch.ones(4))[0]
    train = render(3, "train", 0, 48, torch.ones(4))[0]
    same = render(3, "test", 0, 48, torch.ones(4))[0]
    assert not torch.equal(other, same) and not torch.equal(train, same)


def test_synthetic_masks_are_exact() -> None:
    """The image minus the same image without lesions is non-zero exactly on the finding's mask."""
    s = 48
    for i in range(3):
        base, none = render(0, "train", i, s, torch.zeros(4))
        assert not none.any()
        for k in range(4):
            only = torch.zeros(4)
            only[k] = 1
            img, masks = render(0, "train", i, s, only)
            diff = (img - base).abs() > 1e-7
            assert masks[k].any() and masks[k].float().mean() < 0.1  # a lesion, not the whole image
            assert torch.equal(diff, masks[k]), (i, FINDINGS[k])
            assert not masks[[j for j in range(4) if j != k]].any()
        img, masks = render(0, "train", i, s, torch.ones(4))
        assert torch.equal((img - base).abs() > 1e-7, masks.any(0))


def test_synthetic_rates_are_imbalanced_as_configured() -> None:
    n, rates = 6000, (0.3, 0.1, 0.03, 0.01)
    f = draw_findings(0, "train", n, rates)
    for k, r in enumerate(rates):
        se = math.sqrt(r * (1 - r) / n)
        assert abs(float(f[:, k].mean()) - r) < 4 * se, (k, float(f[:, k].mean()))
    # independent findings: co-occurrence of the two commonest close to the product
    assert abs(float((f[:, 0] * f[:, 1]).mean()) - 0.03) < 0.01


def test_synthetic_rows_labels_and_boxes() -> None:
    ds = SyntheticCXR("test", n=16, size=40, rows="finding")
    expected = [(i, k) for i in range(16) for k in range(4) if ds.findings[i, k] > 0]
    assert len(ds) == len(expected)
    for row in range(len(ds)):
        item = ds[row]
        i, k = expected[row]
        assert item["label"] == k and item["id"] == f"test_{i:05d}_{FINDINGS[k]}"
        m = item["concept_masks"][k]
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert item["boxes"].tolist() == [[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]]
        assert torch.equal(item["findings"], ds.findings[i])
    img_rows = SyntheticCXR("test", n=16, size=40, rows="image")
    assert len(img_rows) == 16
    for i in range(16):
        shown = torch.nonzero(img_rows.findings[i]).flatten().tolist()
        assert img_rows[i]["label"] == (shown[0] if shown else -1)
        assert len(img_rows[i]["boxes"]) == len(shown)
    assert mask_box(torch.zeros(5, 5, dtype=torch.bool)).shape == (0, 4)


def test_synthetic_batch_interface() -> None:
    pre = Preprocess((0.5,) * 3, (0.25,) * 3, size=48, resize=48)
    ds = SyntheticCXR("test", n=20, size=48, rows="finding", preprocess=pre)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["x"].shape == (4, 3, 48, 48) and batch["x"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["label"].shape == (4,)
    assert batch["concept_masks"].shape == (4, 4, 48, 48) and batch["concept_masks"].dtype == torch.bool
    assert batch["findings"].shape == (4, 4) and isinstance(batch["boxes"], list) and len(batch["id"]) == 4
    # normalisation: the grey value g becomes (g - 0.5) / 0.25 on every channel
    g = render(0, "test", int(batch["id"][0][5:10]), 48, ds.findings[int(batch["id"][0][5:10])])[0]
    assert torch.allclose(batch["x"][0, 1], (g - 0.5) / 0.25)
    train = SyntheticCXR("train", n=20, size=48, rows="image", label="multi_hot", preprocess=pre)
    tb = next(iter(DataLoader(train, batch_size=5, collate_fn=collate)))
    assert tb["label"].shape == (5, 4) and tb["label"].dtype == torch.float32
    assert torch.equal(tb["label"], train.findings[:5])
    # strata: the rarest shown finding + 1
    for i, s in enumerate(train.strata):
        shown = torch.nonzero(train.findings[i]).flatten().tolist()
        assert s == (max(shown) + 1 if shown else 0)  # rates fall with the index: the rarest is the largest


@pytest.mark.parametrize("kw", [dict(split="val"), dict(rows="pixel"), dict(label="soft"),
                                dict(rates=[0.1, 0.2]), dict(rates=[0.1, 0.2, 0.3, 1.5]), dict(size=8),
                                dict(rows="finding", label="multi_hot")])
def test_synthetic_bad_input_is_one_error(kw: dict) -> None:
    with pytest.raises(XattrConfigError) as e:
        SyntheticCXR(**kw)
    assert "\n" not in str(e.value) and "valid choices" in str(e.value)


# ---------------------------------------------------------------- NIH ChestX-ray8 fixture
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")


def write_nih(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("00000001_000.png", "00000002_000.png", "00000003_001.png"):
        Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8), mode="L").save(root / "images" / name)
    (root / "Data_Entry_2017.csv").write_text(
        NIH_HEADER
        + "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,64,48,0.143,0.143\n"
        + "00000002_000.png,No Finding,0,2,81,M,PA,64,48,0.143,0.143\n"
        + "00000003_001.png,Hernia|Mass|Nodule,1,3,74,F,PA,64,48,0.168,0.168\n")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,,,\n"
        "00000001_000.png,Cardiomegaly,10,8,20,12,,,\n"
        "00000003_001.png,Mass,40,20,10,10,,,\n"
        "00000003_001.png,Nodule,20,20,4,4,,,\n"
        "00000003_001.png,Mass,0,30,6,6,,,\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_001.png\n")


def test_nih_loader_reads_the_official_layout(tmp_path: Path) -> None:
    write_nih(tmp_path)
    pre = Preprocess((0.5,) * 3, (0.5,) * 3, size=32, resize=32)
    train = NIHChestXray8(tmp_path, "train", preprocess=pre)
    assert len(train) == 2
    y = train.labels
    assert y.shape == (2, 14) and y[0].nonzero().flatten().tolist() == [1, 2] and y[1].sum() == 0
    item = train[0]
    assert item["x"].shape == (3, 32, 32) and torch.equal(item["label"], y[0])
    test = NIHChestXray8(tmp_path, "test", preprocess=pre)
    assert test.labels[0].nonzero().flatten().tolist() == [4, 5, 13]  # Mass, Nodule, Hernia

    att = NIHChestXray8(tmp_path, "attribution", preprocess=pre)
    # one row per (image, boxed finding): Cardiomegaly of image 1, Mass and Nodule of image 3
    assert [(it["id"], it["label"]) for it in (att[i] for i in range(len(att)))] == [
        ("00000001_000_Cardiomegaly", 1), ("00000003_001_Mass", 4), ("00000003_001_Nodule", 5)]
    # box x,y,w,h = 10,8,20,12 on 64x48: shorter side 48 -> 32 (rows x 32/48), width int(64*32/48) = 42
    # (columns x 42/64), centre crop 32: left offset round(10/2) = 5, top 0
    sx, sy, left = 42 / 64, 32 / 48, 5
    expect = [10 * sx - left, 8 * sy, 30 * sx - left, 20 * sy]
    assert torch.allclose(att[0]["boxes"], torch.tensor([expect]), atol=1e-4)
    mass = att[1]
    assert mass["boxes"].shape == (2, 4)  # both Mass boxes of image 3
    cm = mass["concept_masks"]
    assert cm.shape == (8, 32, 32) and cm[4].any() and cm[5].any() and not cm[1].any()
    est = NIHChestXray8(tmp_path, "estimation", preprocess=pre)
    assert est.labels == [1, -1]


def test_nih_loader_errors_name_the_missing_file(tmp_path: Path) -> None:
    write_nih(tmp_path)
    (tmp_path / "BBox_List_2017.csv").unlink()
    with pytest.raises(XattrConfigError, match="BBox_List_2017.csv") as e:
        NIHChestXray8(tmp_path, "attribution")
    assert "layout" in str(e.value) and "\n" not in str(e.value)
    NIHChestXray8(tmp_path, "train")  # the training split does not need the boxes
    with pytest.raises(XattrConfigError, match="Data_Entry_2017.csv"):
        (tmp_path / "empty" / "images").mkdir(parents=True)
        NIHChestXray8(tmp_path / "empty", "train")
    with pytest.raises(XattrConfigError, match="valid choices"):
        NIHChestXray8(tmp_path, "val")
    (tmp_path / "Data_Entry_2017.csv").write_text(NIH_HEADER + "00000001_000.png,Covid,0,1,58,M,PA,64,48,1,1\n")
    with pytest.raises(XattrConfigError, match="Covid"):
        NIHChestXray8(tmp_path, "train")


# ---------------------------------------------------------------- BrixIA fixture
def write_brixia(root: Path) -> None:
    (root / "png").mkdir(parents=True)
    (root / "lung_masks").mkdir()
    rng = np.random.default_rng(1)
    lungs = np.zeros((60, 40), dtype=np.uint8)
    lungs[6:54, 4:16] = 255   # image-left lung: rows 6..53 -> thirds 6-21, 22-37, 38-53
    lungs[12:48, 24:36] = 255  # image-right lung: rows 12..47 -> thirds 12-23, 24-35, 36-47
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (60, 40), dtype=np.uint8), mode="L").save(root / "png" / f"{name}.png")
        Image.fromarray(lungs).save(root / "lung_masks" / f"{name}.png")
    (root / "metadata_global_v2.csv").write_text(
        "Filename;Subject;Date;Study;AgeAtStudyDateFiveYearSlot;Sex;BrixiaScore;BrixiaScoreGlobal;ConsensusTestset\n"
        "a.dcm;1;20200301;1;50;M;012300;6;0\n"
        "b.dcm;2;20200302;1;60;F;33;6;1\n")  # leading zeros dropped: 000033


def test_brixia_loader_zones_scores_and_severity_map(tmp_path: Path) -> None:
    write_brixia(tmp_path)
    pre = Preprocess((0.5,) * 3, (0.5,) * 3, size=40, resize=40)  # 40x60 -> 40x60 (shorter side 40), crop 40x40
    kw = dict(images="png", image_ext=".png", preprocess=pre)
    train = BrixIA(tmp_path, "train", **kw)
    test = BrixIA(tmp_path, "test", **kw)
    assert len(train) == 1 and len(test) == 1 and len(BrixIA(tmp_path, "all", **kw)) == 2
    a = train[0]
    assert a["label"] == 6.0 and a["zones"].tolist() == [0, 1, 2, 3, 0, 0]
    assert test[0]["zones"].tolist() == [0, 0, 0, 0, 3, 3]
    # zones before the crop, by hand: thirds of each lung's rows
    lungs = torch.zeros(60, 40, dtype=torch.bool)
    lungs[6:54, 4:16] = True
    lungs[12:48, 24:36] = True
    z = zone_masks(lungs)
    assert z[0].nonzero()[:, 0].unique().tolist() == list(range(6, 22))
    assert z[2].nonzero()[:, 0].unique().tolist() == list(range(38, 54))
    assert z[3].nonzero()[:, 0].unique().tolist() == list(range(12, 24))
    assert not (z[:3].any(0) & z[3:].any(0)).any() and torch.equal(z.any(0), lungs)
    # the crop keeps rows 10..49 (centre 40 of 60): the severity map is each pixel's zone score
    sev = a["severity"][0]
    assert sev.shape == (40, 40)
    expect = torch.zeros(60, 40)
    for k, s in enumerate([0, 1, 2, 3, 0, 0]):
        expect[z[k]] = s
    assert torch.equal(sev, expect[10:50])
    det = BrixIA(tmp_path, "all", task="detector", **kw)
    assert det.labels.tolist() == [[1, 1, 1], [1, 0, 1]]
    assert detector_labels([0, 0, 0, 0, 3, 3]).tolist() == [1.0, 0.0, 1.0]
    assert [it[1] for it in BrixIA(tmp_path, "all", task="detector", rows="detector", detector=2, **kw).items] == [2, 2]
    rows = BrixIA(tmp_path, "train", task="detector", rows="detector", **kw)
    assert [it["label"] for it in (rows[i] for i in range(len(rows)))] == [0, 1, 2]
    three = rows[0]["boxes"]  # zone D (score 3): rows 12..23 of the right lung -> 2..13 after the crop, cols 24..35
    assert three.tolist() == [[24.0, 2.0, 36.0, 14.0]]


def test_brixia_errors(tmp_path: Path) -> None:
    with pytest.raises(XattrConfigError, match="metadata_global_v2.csv"):
        BrixIA(tmp_path)
    write_brixia(tmp_path)
    with pytest.raises(XattrConfigError, match="dicom_clean"):
        BrixIA(tmp_path)
    ds = BrixIA(tmp_path, "train", images="png")  # listed as a.dcm: not converted
    with pytest.raises(XattrConfigError, match="a.dcm"):
        ds[0]
    with pytest.raises(XattrConfigError, match="valid choices"):
        BrixIA(tmp_path, "train", task="segment", images="png")
    (tmp_path / "metadata_global_v2.csv").write_text("Filename;BrixiaScore;BrixiaScoreGlobal\na.dcm;014300;7\n")
    with pytest.raises(XattrConfigError, match="014300"):
        BrixIA(tmp_path, images="png")
