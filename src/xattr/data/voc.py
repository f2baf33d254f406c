"""Pascal-VOC XML annotations (the layout of the InputIBA README and ../shared/data/imagenet)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class VocAnnotation:
    filename: str
    size: tuple[int, int]  # (W, H) as written in <size>
    names: list[str]
    boxes: torch.Tensor  # (N, 4) xyxy, exclusive max edge, pixels of the annotated image


def parse_voc(path: str | Path) -> VocAnnotation:
    """Parse one VOC XML file. VOC coordinates are 1-based inclusive in the original VOC convention but
    ImageNet's boxes (and the shared ones) are written as pixel indices from 0 with an inclusive max; we
    return ``[xmin, ymin, xmax + 1, ymax + 1]`` clipped to the image, i.e. exclusive pixel edges, so that a
    box's area is its pixel count."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    w = int(size.findtext("width"))
    h = int(size.findtext("height"))
    names, boxes = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        names.append(obj.findtext("name"))
        boxes.append([x0, y0, min(x1 + 1, w), min(y1 + 1, h)])
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return VocAnnotation(root.findtext("filename") or "", (w, h), names, t)
