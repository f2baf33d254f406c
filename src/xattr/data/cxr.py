"""Chest X-ray datasets in their official layouts (dissertation ch. 8-9): NIH ChestX-ray8 and BrixIA.

No chest X-ray reaches the machines xattr is built on; these loaders are for users who have the data (tests
write tiny fixture files in the same formats). A missing file is one error naming it and the layout.

**NIH ChestX-ray8** (``dataset=nih_chestxray8``; Wang et al. 2017, the NIH Clinical Center release)::

    <root>/images/<Image Index>.png      the 1024 x 1024 PNGs (the release's images_*.tar.gz unpack here)
    <root>/Data_Entry_2017.csv           Image Index, Finding Labels ("A|B" or "No Finding"), ...
    <root>/BBox_List_2017.csv            Image Index, Finding Label, Bbox [x,y,w,h] (4 columns, original pixels)
    <root>/train_val_list.txt            the official split, one Image Index a line
    <root>/test_list.txt

Splits: ``train`` (train_val_list; validation is carved from it by training) and ``test`` (test_list) with
``label`` = ``(14,)`` float multi-hot over :data:`NIH_FINDINGS`; ``attribution`` (the images of
BBox_List_2017.csv: one row per (image, boxed finding), ``label`` = the finding's index, ``boxes`` = its
boxes); ``estimation`` (train_val images, ``label`` = the first finding, -1 for "No Finding").
Boxes are carried through Resize / CenterCrop as for ImageNet (:mod:`xattr.data.transforms`); attribution
rows also hold ``concept_masks`` ``(8, S, S)`` (the boxes of the 8 boxed findings, for dissection) and
every row ``findings`` ``(14,)``.

**BrixIA** (``dataset=brixia``; Signoroni et al. 2021, https://brixia.github.io)::

    <root>/metadata_global_v2.csv        ';'-separated: Filename, BrixiaScore (6 digits, zones A-F, 0-3;
                                         leading zeros may be missing), BrixiaScoreGlobal (0-18), ConsensusTestset
    <root>/dicom_clean/<Filename>        the images (DICOM needs pydicom; or images converted to PNG / JPEG:
                                         set ``images`` and ``image_ext``, e.g. images=png image_ext=.png)
    <root>/lung_masks/<stem>.png         optional binary lung masks (e.g. from BrixIA's BSNet): needed for the
                                         region boxes and the per-pixel severity map

Zones: A / B / C the upper / middle / lower third of the lung on the image's left half (the patient's
right), D / E / F of the other lung, thirds by the lung mask's rows (as ch. 8 L1552 divides each lung
into 3 regions). ``task``: ``score`` (``label`` = the global score 0-18, float: regression) or ``detector``
(``label`` = ``(3,)`` multi-hot: a zone of score 3 / 2 / 0-1 exists). Items carry ``severity`` ``(1, S, S)``
(each pixel its zone's score, 0 outside the lungs; ch. 8 L1554's severity score map) and ``region_masks``
``(6, S, S)``; ``rows=detector`` (attribution) gives one row per (image, positive detector) with ``label``
its index and ``boxes`` the tight boxes of the zones with that score. ``split``: ``train`` / ``test`` (the
ConsensusTestset column: 1 = test) or ``all``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from xattr.core.labels import BRIXIA_DETECTORS, NIH_BOX_FINDINGS, NIH_FINDINGS
from xattr.core.preprocess import Preprocess
from xattr.data.transforms import ImageTransform, read_image
from xattr.errors import XattrConfigError, missing_file, unknown

NIH_LAYOUT = ("layout <root>/images/*.png, Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, "
              "test_list.txt (the NIH release); set dataset.root")
BRIXIA_LAYOUT = ("layout <root>/metadata_global_v2.csv, <root>/dicom_clean/<Filename>, optional "
                 "<root>/lung_masks/<stem>.png (the BrixIA release); set dataset.root")


def _need(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise missing_file(what, path, layout)
    return path


def mask_transform(mask: torch.Tensor, p: Preprocess) -> torch.Tensor:
    """``(N, H, W)`` bool masks through the image's shorter-side resize and centre crop (nearest)."""
    if mask.shape[0] == 0:
        return torch.zeros(0, p.size, p.size, dtype=torch.bool)
    m = TF.resize(mask.float(), p.resize, interpolation=TF.InterpolationMode.NEAREST, antialias=False)
    return TF.center_crop(m, p.size) > 0.5


def boxes_to_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(N, 4)`` xyxy boxes -> their union as an ``(H, W)`` bool mask (pixel centres inside)."""
    ys, xs = torch.arange(h).view(-1, 1) + 0.5, torch.arange(w).view(1, -1) + 0.5
    out = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        out |= (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    return out


# ---------------------------------------------------------------- NIH ChestX-ray8
def read_nih_labels(path: Path) -> dict[str, torch.Tensor]:
    """``Data_Entry_2017.csv`` -> image name -> ``(14,)`` multi-hot; an unknown finding is one error."""
    out: dict[str, torch.Tensor] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header or header[0].strip() != "Image Index":
            raise XattrConfigError(f"bad NIH label file {path}: first column {header[:1] if header else None}; "
                                   "valid choices: the release's Data_Entry_2017.csv (Image Index, Finding Labels, ...)")
        for row in rows:
            if not row:
                continue
            y = torch.zeros(len(NIH_FINDINGS))
            for name in row[1].split("|"):
                name = name.strip()
                if name == "No Finding":
                    continue
                if name not in NIH_FINDINGS:
                    raise unknown(f"NIH finding in {path.name} (image {row[0]})", name, NIH_FINDINGS + ["No Finding"])
                y[NIH_FINDINGS.index(name)] = 1
            out[row[0].strip()] = y
    return out


def read_nih_boxes(path: Path) -> dict[str, dict[int, torch.Tensor]]:
    """``BBox_List_2017.csv`` -> image name -> finding index -> ``(N, 4)`` xyxy boxes in original pixels."""
    out: dict[str, dict[int, list[list[float]]]] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        next(rows, None)
        for row in rows:
            if not row or not row[0].strip():
                continue
            name = "Infiltration" if row[1].strip() == "Infiltrate" else row[1].strip()  # the CSV spells it so
            if name not in NIH_BOX_FINDINGS:
                raise unknown(f"NIH box finding in {path.name} (image {row[0]})", row[1], NIH_BOX_FINDINGS)
            x, y, w, h = (float(v) for v in row[2:6])
            out.setdefault(row[0].strip(), {}).setdefault(NIH_FINDINGS.index(name), []).append([x, y, x + w, y + h])
    return {im: {k: torch.tensor(b) for k, b in d.items()} for im, d in out.items()}


def _read_list(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


class NIHChestXray8(Dataset):
    """NIH ChestX-ray8 in its official layout (module docstring).

    Args:
        root: the folder holding ``images/`` and the CSV / list files.
        split: ``train`` | ``test`` | ``attribution`` | ``estimation``.
        preprocess: the model's preprocessing (Resize / CenterCrop 224, ImageNet normalisation for DenseNet-121).
        limit: keep the first ``limit`` rows.
    """

    SPLITS = ("train", "test", "attribution", "estimation")
    concepts = tuple(NIH_BOX_FINDINGS)

    def __init__(self, root: str | Path, split: str = "attribution", preprocess: Preprocess | None = None,
                 limit: int | None = None, on_error: str = "stop") -> None:
        if split not in self.SPLITS:
            raise unknown("NIH ChestX-ray8 split", split, self.SPLITS)
        self.root, self.split, self.on_error = Path(root), split, on_error
        self.p = preprocess or Preprocess(size=224, resize=224)
        self.transform = ImageTransform(self.p)
        self.image_dir = _need(self.root / "images", "NIH ChestX-ray8 images folder", NIH_LAYOUT)
        labels = read_nih_labels(_need(self.root / "Data_Entry_2017.csv", "NIH ChestX-ray8 labels", NIH_LAYOUT))
        self.all_findings = labels
        self.boxes: dict[str, dict[int, torch.Tensor]] = {}
        if split == "attribution":
            self.boxes = read_nih_boxes(_need(self.root / "BBox_List_2017.csv", "NIH ChestX-ray8 boxes", NIH_LAYOUT))
            self.items = [(im, k) for im in sorted(self.boxes) for k in sorted(self.boxes[im])]
        else:
            lst = "test_list.txt" if split == "test" else "train_val_list.txt"
            names = _read_list(_need(self.root / lst, f"NIH ChestX-ray8 {lst}", NIH_LAYOUT))
            self.items = [(im, -1) for im in names]
        missing = [im for im, _ in self.items if im not in labels]
        if missing:
            raise XattrConfigError(f"NIH image {missing[0]} has no row in Data_Entry_2017.csv "
                                   f"({len(missing)} such); valid choices: images listed there")
        if limit is not None:
            self.items = self.items[: int(limit)]

    @property
    def multi_hot(self) -> bool:
        return self.split in ("train", "test")

    @property
    def labels(self) -> torch.Tensor | list[int]:
        if self.multi_hot:
            return torch.stack([self.all_findings[im] for im, _ in self.items]) if self.items else torch.zeros(0, 14)
        return [self._index(im, k) for im, k in self.items]

    @property
    def strata(self) -> list[int]:
        """The rarest finding of each image (by its frequency in this split) + 1, 0 for none."""
        y = torch.stack([self.all_findings[im] for im, _ in self.items])
        order = torch.argsort(y.sum(0), stable=True).tolist()
        out = []
        for row in y:
            shown = [k for k in order if row[k] > 0]
            out.append(shown[0] + 1 if shown else 0)
        return out

    def _index(self, im: str, k: int) -> int:
        if k >= 0:
            return k
        shown = torch.nonzero(self.all_findings[im]).flatten()
        return int(shown[0]) if len(shown) else -1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict | None:
        im, k = self.items[i]
        path = self.image_dir / im
        if not path.is_file():
            raise missing_file("NIH ChestX-ray8 image", path, NIH_LAYOUT)
        img = read_image(path, self.on_error)
        if img is None:
            return None
        item: dict = {"findings": self.all_findings[im].clone(), "id": Path(im).stem, "index": i}
        if k >= 0:
            x, b = self.transform(img, self.boxes[im][k])
            concept = torch.zeros(len(NIH_BOX_FINDINGS), self.p.size, self.p.size, dtype=torch.bool)
            for j, bj in self.boxes[im].items():
                concept[j] = boxes_to_masks(self.transform(img, bj)[1], self.p.size, self.p.size)
            item.update(boxes=b, concept_masks=concept, id=f"{Path(im).stem}_{NIH_FINDINGS[k]}")
        else:
            x, b = self.transform(img, None)
            item["boxes"] = b
        item["x"] = x
        item["label"] = self.all_findings[im].clone() if self.multi_hot else self._index(im, k)
        return item


# ---------------------------------------------------------------- BrixIA
def read_brixia(path: Path) -> list[dict]:
    """``metadata_global_v2.csv`` -> rows with ``file``, ``zones`` (6 ints 0-3), ``score`` (0-18), ``test``."""
    out = []
    with open(path, newline="") as f:
        rows = csv.DictReader(f, delimiter=";")
        need = {"Filename", "BrixiaScore", "BrixiaScoreGlobal"}
        if not need <= set(rows.fieldnames or ()):
            raise XattrConfigError(f"bad BrixIA metadata {path}: columns {rows.fieldnames}; valid choices: the release's "
                                   "';'-separated metadata_global_v2.csv with Filename, BrixiaScore, BrixiaScoreGlobal")
        for r in rows:
            digits = r["BrixiaScore"].strip().zfill(6)
            if len(digits) != 6 or any(c not in "0123" for c in digits):
                raise XattrConfigError(f"bad BrixiaScore {r['BrixiaScore']!r} of {r['Filename']}; valid choices: "
                                       "6 digits 0-3 (zones A-F)")
            zones = [int(c) for c in digits]
            score = int(float(r["BrixiaScoreGlobal"]))
            if score != sum(zones):
                raise XattrConfigError(f"BrixIA {r['Filename']}: BrixiaScoreGlobal {score} != sum of zones {sum(zones)}")
            test = str(r.get("ConsensusTestset", "0")).strip() in ("1", "True", "true")
            out.append({"file": r["Filename"].strip(), "zones": zones, "score": score, "test": test})
    return out


def zone_masks(lungs: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` bool lung mask -> ``(6, H, W)`` zones A-F: each half of the image (left half: A-C) cut
    into thirds by the rows its lung spans (ch. 8 L1552)."""
    h, w = lungs.shape
    out = torch.zeros(6, h, w, dtype=torch.bool)
    for side in range(2):
        half = torch.zeros_like(lungs)
        if side == 0:
            half[:, : w // 2] = lungs[:, : w // 2]
        else:
            half[:, w // 2 :] = lungs[:, w // 2 :]
        rows = torch.nonzero(half.any(1)).flatten()
        if len(rows) == 0:
            continue
        top, bottom = int(rows.min()), int(rows.max()) + 1
        cuts = [top + round((bottom - top) * t / 3) for t in range(4)]
        for z in range(3):
            band = torch.zeros_like(lungs)
            band[cuts[z] : cuts[z + 1]] = True
            out[3 * side + z] = half & band
    return out


def detector_labels(zones: list[int]) -> torch.Tensor:
    """``(3,)`` multi-hot: some zone has score 3 / score 2 / score 0 or 1 (ch. 8 L1520's 3-output classifier)."""
    return torch.tensor([float(3 in zones), float(2 in zones), float(any(z <= 1 for z in zones))])


DETECTOR_SCORES = ((3,), (2,), (0, 1))


class BrixIA(Dataset):
    """BrixIA in its official layout (module docstring).

    Args:
        root: the folder with ``metadata_global_v2.csv``.
        split: ``train`` | ``test`` (ConsensusTestset) | ``all``.
        task: ``score`` (global 0-18) or ``detector`` (3 multi-hot outputs).
        rows: ``image`` (one row per image) or ``detector`` (attribution: one per positive detector; task detector).
        detector: with ``rows=detector``, keep only that detector's rows (0: score 3, 1: score 2, 2: 0-1; None: all).
        images / image_ext: the image folder under root and the extension replacing ``.dcm`` (None: as listed).
        lung_masks: the optional lung-mask folder under root.
        preprocess, limit, on_error: as for the other image sets.
    """

    SPLITS = ("train", "test", "all")
    TASKS = ("score", "detector")
    ROWS = ("image", "detector")

    def __init__(self, root: str | Path, split: str = "test", task: str = "score", rows: str = "image",
                 images: str = "dicom_clean", image_ext: str | None = None, lung_masks: str = "lung_masks",
                 preprocess: Preprocess | None = None, limit: int | None = None, on_error: str = "stop",
                 detector: int | None = None) -> None:
        for kind, v, ok in (("BrixIA split", split, self.SPLITS), ("BrixIA task", task, self.TASKS),
                            ("BrixIA rows", rows, self.ROWS)):
            if v not in ok:
                raise unknown(kind, v, ok)
        if rows == "detector" and task != "detector":
            raise XattrConfigError("BrixIA rows=detector needs task=detector; valid choices: rows=image, task=detector")
        self.root, self.split, self.task, self.rows = Path(root), split, task, rows
        self.p = preprocess or Preprocess(size=224, resize=224)
        self.transform = ImageTransform(self.p)
        self.on_error = on_error
        meta = read_brixia(_need(self.root / "metadata_global_v2.csv", "BrixIA metadata", BRIXIA_LAYOUT))
        self.image_dir = _need(self.root / images, "BrixIA images folder", BRIXIA_LAYOUT)
        self.mask_dir = self.root / lung_masks
        self.image_ext = image_ext
        meta = [r for r in meta if split == "all" or r["test"] == (split == "test")]
        if rows == "detector":
            self.items = [(r, k) for r in meta for k in range(3) if detector_labels(r["zones"])[k] > 0
                          and (detector is None or k == int(detector))]
        else:
            self.items = [(r, -1) for r in meta]
        if limit is not None:
            self.items = self.items[: int(limit)]

    @property
    def labels(self) -> torch.Tensor | list:
        if self.rows == "detector":
            return [k for _, k in self.items]
        if self.task == "detector":
            return torch.stack([detector_labels(r["zones"]) for r, _ in self.items])
        return torch.tensor([float(r["score"]) for r, _ in self.items])

    @property
    def strata(self) -> list[int]:
        return [int(r["score"]) for r, _ in self.items]

    def image_path(self, r: dict) -> Path:
        name = r["file"]
        if self.image_ext:
            name = str(Path(name).with_suffix(self.image_ext))
        return self.image_dir / name

    def _read(self, path: Path) -> Image.Image | None:
        if not path.is_file():
            raise missing_file("BrixIA image", path, BRIXIA_LAYOUT)
        if path.suffix.lower() == ".dcm":
            try:
                import pydicom
            except ImportError:
                raise XattrConfigError(f"BrixIA image {path} is DICOM and pydicom is not installed; valid choices: "
                                       "pip install pydicom, or images converted to PNG (dataset.images / "
                                       "dataset.image_ext)") from None
            a = pydicom.dcmread(path).pixel_array.astype("float32")
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6) * 255
            return Image.fromarray(a.astype("uint8"))
        return read_image(path, self.on_error)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict | None:
        r, k = self.items[i]
        img = self._read(self.image_path(r))
        if img is None:
            return None
        x, _ = self.transform(img, None)
        s = self.p.size
        mpath = self.mask_dir / (Path(r["file"]).stem + ".png")
        if mpath.is_file():
            lungs = torch.from_numpy(np.array(Image.open(mpath).convert("L").resize(img.size))) > 127
            regions = mask_transform(zone_masks(lungs), self.p)
        else:
            regions = torch.zeros(6, s, s, dtype=torch.bool)
        zones = torch.tensor(r["zones"], dtype=torch.float32)
        severity = (regions.float() * zones.view(6, 1, 1)).amax(0, keepdim=True)
        if k >= 0:
            picks = [z for z in range(6) if r["zones"][z] in DETECTOR_SCORES[k] and regions[z].any()]
            boxes = torch.stack([_box(regions[z]) for z in picks]) if picks else torch.zeros(0, 4)
            label = k
        else:
            boxes = torch.zeros(0, 4)
            label = detector_labels(r["zones"]) if self.task == "detector" else float(r["score"])
        name = Path(r["file"]).stem + (f"_{BRIXIA_DETECTORS[k].replace(' ', '').replace('/', '')}" if k >= 0 else "")
        return {"x": x, "label": label, "boxes": boxes, "severity": severity, "region_masks": regions,
                "zones": zones, "id": name, "index": i}


def _box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
