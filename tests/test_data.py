"""VOC parsing, boxes through resize/crop, the ImageNet/CIFAR/sample datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from xattr.core.labels import imagenet_wnids
from xattr.core.preprocess import Preprocess
from xattr.data.folder import ImageFolderFlat
from xattr.data.imagenet import ImageNetBoxes
from xattr.data.transforms import ImageTransform, collate, resize_crop_boxes
from xattr.data.voc import parse_voc
from xattr.errors import XattrConfigError

VOC = """<annotation><filename>a.JPEG</filename><size><width>400</width><height>200</height><depth>3</depth>
</size><object><name>n01440764</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>109</xmax><ymax>59</ymax>
</bndbox></object><object><name>n01440764</name><bndbox><xmin>300</xmin><ymin>0</ymin><xmax>399</xmax>
<ymax>199</ymax></bndbox></object></annotation>"""


def test_parse_voc(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(VOC)
    ann = parse_voc(p)
    assert ann.size == (400, 200)
    assert ann.names == ["n01440764"] * 2
    # inclusive max edge -> exclusive: a box 10..109 covers 100 pixels
    assert ann.boxes.tolist() == [[10, 20, 110, 60], [300, 0, 400, 200]]


def test_boxes_through_resize_and_centre_crop():
    # 400x200 -> shorter side 100 -> 200x100 -> centre crop 100: left offset 50
    boxes = torch.tensor([[10.0, 20, 110, 60], [300, 0, 400, 200]])
    out = resize_crop_boxes(boxes, (400, 200), resize=100, crop=100)
    assert out.tolist() == [[0.0, 10.0, 5.0, 30.0], [100.0, 0.0, 100.0, 100.0]]


def test_boxes_agree_with_transformed_pixels():
    """A white box painted on a photo lands where the transformed box says."""
    img = Image.new("RGB", (300, 240))
    img.paste((255, 255, 255), (120, 60, 220, 180))
    t = ImageTransform(Preprocess((0.0,) * 3, (1.0,) * 3, size=96, resize=120))
    x, b = t(img, torch.tensor([[120.0, 60, 220, 180]]))
    x0, y0, x1, y1 = b[0].round().int().tolist()
    white = x[0] > 0.5
    assert white[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].all()
    assert white.sum() == pytest.approx((x1 - x0) * (y1 - y0), rel=0.08)


def test_collate_keeps_boxes_as_list():
    items = [{"x": torch.zeros(3, 2, 2), "label": k, "boxes": torch.zeros(k, 4), "id": str(k), "index": k}
             for k in (1, 3)]
    b = collate(items)
    assert b["x"].shape == (2, 3, 2, 2) and b["label"].tolist() == [1, 3]
    assert [t.shape[0] for t in b["boxes"]] == [1, 3] and b["id"] == ["1", "3"]


def test_imagenet_layout_on_a_tiny_fake_root(tmp_path):
    wnid = imagenet_wnids()[7]
    (tmp_path / "images" / "attribution" / wnid).mkdir(parents=True)
    (tmp_path / "annotations" / "attribution" / wnid).mkdir(parents=True)
    Image.new("RGB", (400, 200)).save(tmp_path / "images" / "attribution" / wnid / "a.JPEG")
    (tmp_path / "annotations" / "attribution" / wnid / "a.xml").write_text(VOC)
    ds = ImageNetBoxes(tmp_path, "attribution", Preprocess(size=100, resize=100))
    item = ds[0]
    assert item["label"] == 7 and item["x"].shape == (3, 100, 100)
    assert item["boxes"].tolist() == [[0.0, 10.0, 5.0, 30.0], [100.0, 0.0, 100.0, 100.0]]


def test_imagenet_bad_split_and_root(tmp_path):
    with pytest.raises(XattrConfigError, match="unknown split 'val'; valid choices: attribution, estimation"):
        ImageNetBoxes(tmp_path, "val")
    with pytest.raises(XattrConfigError, match="missing ImageNet 'attribution' images: put it at"):
        ImageNetBoxes(tmp_path / "nowhere", "attribution")


@pytest.mark.shared
def test_shared_imagenet(shared_data):
    ds = ImageNetBoxes(shared_data / "imagenet", "attribution", Preprocess(), limit=20)
    assert len(ds) == 20
    assert ds.files[0].name == "ILSVRC2012_val_00000001.JPEG"
    item = ds[0]
    assert item["label"] == 65  # val image 1 is a sea snake (n01751748), torchvision index 65
    assert item["boxes"].shape[1] == 4 and (item["boxes"][:, 2:] > item["boxes"][:, :2]).all()
    assert (item["boxes"] >= 0).all() and (item["boxes"] <= 224).all()
    est = ImageNetBoxes(shared_data / "imagenet", "estimation", Preprocess(), limit=5)
    assert est[0]["x"].shape == (3, 224, 224)


@pytest.mark.shared
def test_shared_cifar10_zip(shared_data):
    from xattr.data.cifar10 import Cifar10

    ds = Cifar10(shared_data / "cifar10" / "cifar10-jpeg.zip", "test", limit=3)
    assert len(ds) == 3 and ds[0]["x"].shape == (3, 32, 32) and ds[0]["label"] == 0


def test_sample_folder_labels_from_file_names(tmp_path):
    Image.new("RGB", (50, 40)).save(tmp_path / "imagenet_07_609.jpg")
    Image.new("RGB", (50, 40)).save(tmp_path / "cat.png")
    ds = ImageFolderFlat(tmp_path, Preprocess(size=32, resize=32))
    assert {ds[i]["id"]: ds[i]["label"] for i in range(2)} == {"cat": -1, "imagenet_07_609": 609}


def test_shipped_samples_exist():
    root = Path(__file__).resolve().parents[1] / "assets" / "samples"
    assert len(ImageFolderFlat(root)) == 7


def _boxed_root(tmp_path: Path, boxes: dict[str, list[tuple[int, int, int, int]] | None]) -> Path:
    """A fake ImageNet root of 200 x 100 images (one class), each with the given VOC boxes (None: no file)."""
    wnid = imagenet_wnids()[3]
    img_dir, ann_dir = tmp_path / "images" / "attribution" / wnid, tmp_path / "annotations" / "attribution" / wnid
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for name, bxs in boxes.items():
        Image.new("RGB", (200, 100)).save(img_dir / f"{name}.JPEG")
        if bxs is None:
            continue
        objs = "".join(f"<object><name>{wnid}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                       f"<ymax>{d}</ymax></bndbox></object>" for a, b, c, d in bxs)
        (ann_dir / f"{name}.xml").write_text(f"<annotation><size><width>200</width><height>100</height>"
                                             f"<depth>3</depth></size>{objs}</annotation>")
    return tmp_path


def test_max_box_coverage_keeps_the_images_whose_boxes_cover_at_most_that_share(tmp_path, caplog):
    """200 x 100 photos -> resize 100 (200 x 100) -> centre crop 100: x offset 50. VOC max edges are inclusive
    (xmax 79 ends at 80). Coverage by hand, in the 100 x 100 crop:
    a: x 50..80, y 0..30 -> 30 x 30 = 0.09            kept
    b: x 50..110 clipped to 0..60, y 0..60 -> 0.36     dropped (> 0.33)
    c: x 50..83, y 0..100 -> 33 x 100 = 0.33 exactly   kept (the metrics keep <= 0.33)
    d: two overlapping boxes, union 20 x 10 + 10 x 10 = 0.03 (their sum would be 0.04)   kept
    e: a box wholly outside the crop (x 0..40) -> 0    dropped (no box pixel: the metrics give NaN)
    f: no annotation                                   dropped
    """
    root = _boxed_root(tmp_path, {
        "a": [(50, 0, 79, 29)], "b": [(50, 0, 109, 59)], "c": [(50, 0, 82, 99)],
        "d": [(50, 0, 69, 9), (60, 0, 69, 19)], "e": [(0, 0, 39, 99)], "f": None})
    p = Preprocess(size=100, resize=100)
    full = ImageNetBoxes(root, "attribution", p)
    assert [round(full.coverage(i), 6) for i in range(6)] == [0.09, 0.36, 0.33, 0.03, 0.0, 0.0]
    with caplog.at_level("INFO", logger="xattr"):
        ds = ImageNetBoxes(root, "attribution", p, max_box_coverage=0.33)
    assert [f.stem for f in ds.files] == ["a", "c", "d"]
    assert "3 of 6 images" in caplog.text
    # the items: indices are positions in the kept list, labels and boxes follow their files
    items = [ds[i] for i in range(len(ds))]
    assert [it["id"] for it in items] == ["a", "c", "d"] and [it["index"] for it in items] == [0, 1, 2]
    assert [it["label"] for it in items] == [3, 3, 3]
    assert items[1]["boxes"].tolist() == [[0.0, 0.0, 33.0, 100.0]]
    # limit first, then the filter (the kept images of the first `limit`)
    assert [f.stem for f in ImageNetBoxes(root, "attribution", p, limit=2, max_box_coverage=0.33).files] == ["a"]
    assert len(ImageNetBoxes(root, "attribution", p, max_box_coverage=1.0)) == 4  # every boxed image
    for bad in (0, -0.1, 1.5, "abc", float("nan")):
        with pytest.raises(XattrConfigError, match=rf"bad dataset.max_box_coverage {bad!r}; valid choices: a share"):
            ImageNetBoxes(root, "attribution", p, max_box_coverage=bad)


def test_max_box_coverage_names_or_skips_an_unreadable_image(tmp_path):
    root = _boxed_root(tmp_path, {"a": [(50, 0, 79, 29)], "b": [(50, 0, 79, 29)]})
    bad = next((root / "images" / "attribution").glob("*/b.JPEG"))
    bad.write_bytes(b"not a jpeg")
    p = Preprocess(size=100, resize=100)
    with pytest.raises(XattrConfigError, match="cannot read image .*b.JPEG"):
        ImageNetBoxes(root, "attribution", p, max_box_coverage=0.33)
    ds = ImageNetBoxes(root, "attribution", p, max_box_coverage=0.33, on_error="skip")
    assert [f.stem for f in ds.files] == ["a"]


def test_box_coverage_is_the_metrics_union_share():
    from xattr.core.boxes import box_coverage

    assert box_coverage(torch.zeros(0, 4), 10, 10) == 0.0
    assert box_coverage(torch.tensor([[0.0, 0, 5, 4]]), 10, 10) == pytest.approx(0.2)
    # union, not sum; pixel centres: a box 0.4..0.6 covers no centre, 0.4..1.6 covers one column (centre 0.5... 1.5)
    assert box_coverage(torch.tensor([[0.0, 0, 5, 4], [2.0, 0, 5, 2]]), 10, 10) == pytest.approx(0.2)
    assert box_coverage(torch.tensor([[0.6, 0, 1.4, 10]]), 10, 10) == 0.0
    assert box_coverage(torch.tensor([[0.4, 0, 1.6, 10]]), 10, 10) == pytest.approx(0.2)
