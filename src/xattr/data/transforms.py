"""Image + box transforms: resize the shorter side, centre crop, to tensor, normalise — boxes carried along.

Boxes are ``(N, 4)`` float ``xyxy`` in pixel coordinates of the image they belong to (VOC's 1-based
inclusive ``xmax``/``ymax`` are converted to exclusive pixel edges on parsing, see ``voc.py``).
"""

from __future__ import annotations

import logging

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from xattr.core.preprocess import Preprocess
from xattr.errors import XattrConfigError, unknown

ON_ERROR = ("stop", "skip")
log = logging.getLogger("xattr")


def read_image(path, on_error: str = "stop") -> Image.Image | None:
    """The image at ``path``, fully decoded (a truncated or corrupt file fails here, naming the file).

    ``on_error``: ``stop`` raises one clear error; ``skip`` logs one line naming the file and returns
    ``None`` (the batch goes on without it, :func:`collate` drops it)."""
    if on_error not in ON_ERROR:
        raise unknown("dataset.on_error", on_error, ON_ERROR)
    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if on_error == "skip":
            log.warning("skipped unreadable image %s (%s)", path, e)
            return None
        raise XattrConfigError(f"cannot read image {path} ({e}); valid choices: a readable image, or "
                               "dataset.on_error=skip to skip and list such files") from None


def resize_crop_boxes(boxes: torch.Tensor, src_size: tuple[int, int], resize: int, crop: int) -> torch.Tensor:
    """Map boxes of an image of ``src_size`` (W, H) through shorter-side ``resize`` then centre ``crop``.

    Boxes are clipped to the crop; a box fully outside gets zero area (kept, so indices stay aligned).
    Follows torchvision's ``resize`` (rounding of the long side) and ``center_crop`` (offset rounding).
    """
    w, h = src_size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    sx, sy = new_w / w, new_h / h
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    b = boxes.clone().float()
    b[:, [0, 2]] = b[:, [0, 2]] * sx - left
    b[:, [1, 3]] = b[:, [1, 3]] * sy - top
    return b.clamp(0, crop)


class ImageTransform:
    """PIL image (+ boxes) -> normalised ``(3, S, S)`` tensor (+ boxes in its pixels), per :class:`Preprocess`."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.p = preprocess

    def __call__(self, img: Image.Image, boxes: torch.Tensor | None = None):
        img = img.convert("RGB")
        size = img.size
        img = TF.center_crop(TF.resize(img, self.p.resize, antialias=True), self.p.size)
        x = TF.normalize(TF.to_tensor(img), self.p.mean, self.p.std)
        if boxes is None:
            return x, torch.zeros(0, 4)
        return x, resize_crop_boxes(boxes, size, self.p.resize, self.p.size)


def collate(items: list[dict | None]) -> dict | None:
    """Stack tensors; keep ``boxes`` and ``id`` as lists (boxes differ in number per image). Skipped
    (unreadable) items are ``None`` and left out; a batch of only skipped items is ``None``."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    out: dict = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if k in ("boxes", "id", "text"):
            out[k] = vals
        elif torch.is_tensor(vals[0]):
            out[k] = torch.stack(vals)
        else:
            out[k] = torch.tensor(vals)
    return out
