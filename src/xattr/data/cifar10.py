"""CIFAR-10 from the shared JPEG zip (read in place with ``zipfile``) or torchvision's layout.

``root`` may be the zip (``train/<class>/NNNN.jpg`` inside) or a folder holding torchvision's
``cifar-10-batches-py``.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from xattr.core.labels import CIFAR10_CLASSES
from xattr.core.preprocess import Preprocess
from xattr.errors import missing_file, unknown


class Cifar10(Dataset):
    SPLITS = ("train", "test")

    def __init__(self, root: str | Path, split: str = "test", preprocess: Preprocess | None = None,
                 limit: int | None = None) -> None:
        if split not in self.SPLITS:
            raise unknown("split", split, self.SPLITS)
        self.root = Path(root)
        self.p = preprocess or Preprocess(size=32, resize=32)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        if self.root.is_file() and self.root.suffix == ".zip":
            with zipfile.ZipFile(self.root) as z:
                names = sorted(n for n in z.namelist() if n.startswith(split + "/") and n.endswith(".jpg"))
            self.names = names
            self.labels = [CIFAR10_CLASSES.index(n.split("/")[1]) for n in names]
            self.arrays = None
        elif (self.root / "cifar-10-batches-py").is_dir():
            import torchvision

            ds = torchvision.datasets.CIFAR10(str(self.root), train=split == "train", download=False)
            self.arrays, self.labels = ds.data, list(ds.targets)
            self.names = [f"{split}_{i:05d}" for i in range(len(self.labels))]
        else:
            raise missing_file("CIFAR-10", self.root, "cifar10-jpeg.zip or a folder with cifar-10-batches-py")
        if limit is not None:
            self.names, self.labels = self.names[: int(limit)], self.labels[: int(limit)]

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
