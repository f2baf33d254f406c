"""CIFAR-10 from the shared JPEG zip (read in place with ``zipfile``) or torchvision's layout.

``root`` may be the zip (``train/<class>/NNNN.jpg`` inside) or a folder holding torchvision's
``cifar-10-batches-py``. ``split``: ``train``, ``test`` or ``all`` (the 50 000 training images, then the
10 000 test images; ``parts[i]`` names each item's own split; ROAR computes maps for all 60 000).
``per_class``: keep the first ``per_class`` images of every class in each split (before ``limit``).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from xattr.core.labels import CIFAR10_CLASSES
from xattr.core.preprocess import Preprocess
from xattr.errors import missing_file, unknown


class Cifar10(Dataset):
    SPLITS = ("train", "test", "all")

    def __init__(self, root: str | Path, split: str = "test", preprocess: Preprocess | None = None,
                 limit: int | None = None, per_class: int | None = None) -> None:
        if split not in self.SPLITS:
            raise unknown("split", split, self.SPLITS)
        self.root = Path(root)
        self.p = preprocess or Preprocess(size=32, resize=32)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        if self.root.is_file() and self.root.suffix == ".zip":
            parts = ("train", "test") if split == "all" else (split,)
            with zipfile.ZipFile(self.root) as z:
                listed = z.namelist()
            names = [n for p in parts for n in sorted(x for x in listed if x.startswith(p + "/") and x.endswith(".jpg"))]
            self.names = names
            self.labels = [CIFAR10_CLASSES.index(n.split("/")[1]) for n in names]
            self.arrays = None
        elif (self.root / "cifar-10-batches-py").is_dir():
            import torchvision

            parts = ("train", "test") if split == "all" else (split,)
            sets = [torchvision.datasets.CIFAR10(str(self.root), train=p == "train", download=False) for p in parts]
            self.arrays = sets[0].data if len(sets) == 1 else np.concatenate([d.data for d in sets])
            self.labels = [int(y) for d in sets for y in d.targets]
            self.names = [f"{p}/{p}_{i:05d}" for p, d in zip(parts, sets) for i in range(len(d.targets))]
        else:
            raise missing_file("CIFAR-10", self.root, "cifar10-jpeg.zip or a folder with cifar-10-batches-py")
        self.parts = [n.split("/")[0] for n in self.names]
        keep = list(range(len(self.names)))
        if per_class is not None:
            seen: dict[tuple[str, int], int] = {}
            keep = []
            for i, key in enumerate(zip(self.parts, self.labels)):
                seen[key] = seen.get(key, 0) + 1
                if seen[key] <= int(per_class):
                    keep.append(i)
        if limit is not None:
            keep = keep[: int(limit)]
        if len(keep) < len(self.names):
            self.names, self.labels, self.parts = ([v[i] for i in keep] for v in (self.names, self.labels, self.parts))
            if self.arrays is not None:
                self.arrays = self.arrays[keep]

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> Image.Image:
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        if self._zip is None or self._zip_pid != os.getpid():  # one handle per process: forked workers
            self._zip, self._zip_pid = zipfile.ZipFile(self.root), os.getpid()  # must not share the parent's
        return Image.open(io.BytesIO(self._zip.read(self.names[i]))).convert("RGB")

    def __getitem__(self, i: int) -> dict:
        x = TF.normalize(TF.to_tensor(self.image(i)), self.p.mean, self.p.std)
        return {"x": x, "label": self.labels[i], "boxes": torch.zeros(0, 4), "id": Path(self.names[i]).stem + f"_{i}",
                "index": i}
