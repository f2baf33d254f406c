"""A folder of photos (the demo samples shipped in ``assets/samples``, or any folder of a user's).

Labels: an ImageNet class index at the end of the file name (``imagenet_07_609.jpg``, as foolbox names
them) is read as the label; otherwise the label is -1 (unknown) and the target must be ``top1`` or a
class index.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch.utils.data import Dataset

from xattr.core.preprocess import Preprocess
from xattr.data.imagenet import IMG_EXT
from xattr.data.transforms import ImageTransform, read_image
from xattr.errors import XattrConfigError, missing_file


class ImageFolderFlat(Dataset):
    def __init__(self, root: str | Path, preprocess: Preprocess | None = None, limit: int | None = None,
                 split: str = "attribution", on_error: str = "stop") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise missing_file("image folder", self.root, "a folder of .jpg/.png photos; set dataset.root")
        self.files = sorted(p for p in self.root.iterdir() if p.suffix.lower() in IMG_EXT)
        if not self.files:
            raise XattrConfigError(f"bad dataset.root {str(self.root)!r}: it holds no photos; valid choices: a "
                                   f"folder holding {', '.join(sorted(IMG_EXT))} files")
        if limit is not None:
            self.files = self.files[: int(limit)]
        self.transform = ImageTransform(preprocess or Preprocess())
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        p = self.files[i]
        m = re.search(r"_(\d+)$", p.stem)
        label = int(m.group(1)) if m else -1
        img = read_image(p, self.on_error)
        if img is None:
            return None
        x, b = self.transform(img)
        return {"x": x, "label": label, "boxes": b, "id": p.stem, "index": i}
