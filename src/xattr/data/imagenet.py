"""ImageNet in the ImageFolder + VOC-annotation layout (InputIBA README; ../shared/data/imagenet):

``<root>/images/<split>/<wnid>/<name>.JPEG`` and ``<root>/annotations/<split>/<wnid>/<name>.xml``.
Point ``dataset.root`` at a full ImageNet laid out the same way to run on it. Labels follow torchvision's
class order (``imagenet_class_index.json``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from xattr.core.labels import imagenet_wnids
from xattr.core.preprocess import Preprocess
from xattr.data.transforms import ImageTransform, read_image
from xattr.data.voc import parse_voc
from xattr.errors import missing_file, unknown

IMG_EXT = (".jpeg", ".jpg", ".png")


class ImageNetBoxes(Dataset):
    """ImageNet images with their boxes; items are dicts (``x``, ``label``, ``boxes``, ``id``, ``index``).

    Args:
        root: folder holding ``images/`` and ``annotations/``.
        split: ``attribution`` (evaluation images, with boxes) or ``estimation`` (statistics / read-out
            training; boxes may be absent).
        preprocess: the model's :class:`~xattr.models.zoo.Preprocess`.
        limit: keep the first ``limit`` items (sorted by file name), for quick runs.
    """

    SPLITS = ("attribution", "estimation")

    def __init__(self, root: str | Path, split: str = "attribution", preprocess: Preprocess | None = None,
                 limit: int | None = None, on_error: str = "stop") -> None:
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
        bad = sorted({p.parent.name for p in files} - set(wnid_to_idx))
        if bad:
            raise unknown("ImageNet class folder", bad[0], ["a WordNet id of imagenet_class_index.json"])
        if limit is not None:
            files = files[: int(limit)]
        self.files = files
        self.labels = [wnid_to_idx[p.parent.name] for p in files]
        self.ann_dir = self.root / "annotations" / split
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.files)

    def annotation_path(self, i: int) -> Path:
        p = self.files[i]
        return self.ann_dir / p.parent.name / (p.stem + ".xml")

    def __getitem__(self, i: int) -> dict:
        p = self.files[i]
        img = read_image(p, self.on_error)
        if img is None:
            return None
        ann = self.annotation_path(i)
        boxes = None
        if ann.is_file():
            voc = parse_voc(ann)
            boxes = voc.boxes
            if voc.size != img.size:  # annotation written for another resolution: rescale
                sx, sy = img.size[0] / voc.size[0], img.size[1] / voc.size[1]
                boxes = boxes * torch.tensor([sx, sy, sx, sy])
        x, b = self.transform(img, boxes)
        return {"x": x, "label": self.labels[i], "boxes": b, "id": p.stem, "index": i}
