"""ImageNet in the ImageFolder + VOC-annotation layout (InputIBA README; ../shared/data/imagenet):

``<root>/images/<split>/<wnid>/<name>.JPEG`` and ``<root>/annotations/<split>/<wnid>/<name>.xml``.
Point ``dataset.root`` at a full ImageNet laid out the same way to run on it. Labels follow torchvision's
class order (``imagenet_class_index.json``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from xattr.core.boxes import box_coverage, counted
from xattr.core.checks import bad
from xattr.core.labels import imagenet_wnids
from xattr.core.preprocess import Preprocess
from xattr.data.transforms import ImageTransform, read_image, resize_crop_boxes
from xattr.data.voc import parse_voc
from xattr.errors import XattrConfigError, missing_file, unknown

IMG_EXT = (".jpeg", ".jpg", ".png")
log = logging.getLogger("xattr")


class ImageNetBoxes(Dataset):
    """ImageNet images with their boxes; items are dicts (``x``, ``label``, ``boxes``, ``id``, ``index``).

    Args:
        root: folder holding ``images/`` and ``annotations/``.
        split: ``attribution`` (evaluation images, with boxes) or ``estimation`` (statistics / read-out
            training; boxes may be absent).
        preprocess: the model's :class:`~xattr.models.zoo.Preprocess`.
        limit: keep the first ``limit`` items (sorted by file name), for quick runs.
        max_box_coverage: keep only the images (of those ``limit`` leaves) that have a box and whose boxes,
            after resizing and cropping, cover at most this share of the image: the images that the bbox
            ratio and EHR count (``max_coverage`` 0.33; the others would be scored NaN after their maps were
            made). Coverage is the metrics' own (:func:`xattr.core.boxes.box_coverage`); only the image
            headers are read. ``None``: every image.
    """

    SPLITS = ("attribution", "estimation")

    def __init__(self, root: str | Path, split: str = "attribution", preprocess: Preprocess | None = None,
                 limit: int | None = None, on_error: str = "stop", max_box_coverage: float | None = None) -> None:
        self.root = Path(root)
        if split not in self.SPLITS:
            raise unknown("split", split, self.SPLITS)
        img_dir = self.root / "images" / split
        if not img_dir.is_dir():
            raise missing_file(f"ImageNet '{split}' images", img_dir,
                               "ImageFolder layout images/<split>/<wnid>/*.JPEG; set dataset.root")
        self.split = split
        self.transform = ImageTransform(preprocess or Preprocess())
        wnid_to_idx = {w: i for i, w in enumerate(imagenet_wnids())}
        files = sorted(
            (p for p in img_dir.glob("*/*") if p.suffix.lower() in IMG_EXT), key=lambda p: (p.name, p.parent.name)
        )
        foreign = sorted({p.parent.name for p in files} - set(wnid_to_idx))
        if foreign:
            raise unknown("ImageNet class folder", foreign[0], ["a WordNet id of imagenet_class_index.json"])
        if limit is not None:
            files = files[: int(limit)]
        self.files = files
        self.ann_dir = self.root / "annotations" / split
        self.on_error = on_error
        if max_box_coverage is not None:
            try:
                cover = float(max_box_coverage)
            except (TypeError, ValueError):
                cover = math.nan
            if not 0.0 < cover <= 1.0:
                raise bad("dataset.max_box_coverage", max_box_coverage, "a share in (0, 1], or null for every image")
            self.files = [p for i, p in enumerate(files) if self.counted(i, cover)]
            log.info("dataset.max_box_coverage=%g: %d of %d images have boxes covering at most that share "
                     "(the images the localisation metrics count)", cover, len(self.files), len(files))
        self.labels = [wnid_to_idx[p.parent.name] for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def annotation_path(self, i: int) -> Path:
        p = self.files[i]
        return self.ann_dir / p.parent.name / (p.stem + ".xml")

    def boxes(self, i: int, size: tuple[int, int]) -> torch.Tensor | None:
        """Item ``i``'s boxes in the pixels of its image of ``size`` (W, H); ``None`` without an annotation."""
        ann = self.annotation_path(i)
        if not ann.is_file():
            return None
        voc = parse_voc(ann)
        boxes = voc.boxes
        if voc.size != size:  # annotation written for another resolution: rescale
            sx, sy = size[0] / voc.size[0], size[1] / voc.size[1]
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        return boxes

    def _crop_boxes(self, i: int) -> torch.Tensor | None:
        """Item ``i``'s boxes in the transformed image's pixels, from the file's header (not decoded); ``None``
        without an annotation or (``on_error: skip``) for an unreadable file."""
        p = self.files[i]
        try:
            with Image.open(p) as img:
                size = img.size
        except (OSError, SyntaxError, ValueError) as e:
            if self.on_error == "skip":
                log.warning("skipped unreadable image %s (%s)", p, e)
                return None
            raise XattrConfigError(f"cannot read image {p} ({e}); valid choices: a readable image, or "
                                   "dataset.on_error=skip to skip and list such files") from None
        boxes = self.boxes(i, size)
        if boxes is None:
            return None
        s = self.transform.p
        return resize_crop_boxes(boxes, size, s.resize, s.size)

    def coverage(self, i: int) -> float:
        """Share of item ``i``'s transformed image covered by its boxes (0.0 without boxes)."""
        boxes = self._crop_boxes(i)
        s = self.transform.p.size
        return 0.0 if boxes is None else box_coverage(boxes, s, s)

    def counted(self, i: int, max_coverage: float) -> bool:
        """Whether the bbox ratio / EHR with ``max_coverage`` score item ``i`` (a box pixel, coverage at most
        ``max_coverage``: :func:`xattr.core.boxes.counted`, the metrics' own rule)."""
        boxes = self._crop_boxes(i)
        s = self.transform.p.size
        return boxes is not None and counted(boxes, s, s, max_coverage)

    def __getitem__(self, i: int) -> dict:
        p = self.files[i]
        img = read_image(p, self.on_error)
        if img is None:
            return None
        x, b = self.transform(img, self.boxes(i, img.size))
        return {"x": x, "label": self.labels[i], "boxes": b, "id": p.stem, "index": i}
