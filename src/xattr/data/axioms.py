"""``dataset=axioms``: the generated axiom samples (dissertation ch. 7) read back for ``python -m xattr.run``.

Each item is one generated sample: ``x`` the reference with its patches pasted (normalised for the model,
no resize or crop: the samples are generated at the model's input size), ``label`` = ``target`` the class
``a`` to explain (``target=label``), ``other`` the second class ``b`` (-1 for saturation), ``boxes``
``(P, 4)`` xyxy of the patches, ``feature_boxes`` ``(2, 4)`` the feature patch first (f_a, f_a1) and the
second patch (f_null, f_b, f_a2; NaN for the single scenario), ``scenario`` the index in
:data:`SCENARIOS`, ``id`` ``<scenario>_<index>``, ``index``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from xattr.core.preprocess import Preprocess
from xattr.data.axioms_generation import SCENARIOS, paste
from xattr.data.axioms_store import AxiomsStore
from xattr.errors import XattrConfigError, unknown


def patch_boxes(positions: torch.Tensor, patch: int) -> torch.Tensor:
    """``(P, 2)`` (top, left) -> ``(P, 4)`` xyxy boxes (exclusive right/bottom edges)."""
    top, left = positions[:, 0].float(), positions[:, 1].float()
    return torch.stack([left, top, left + patch, top + patch], dim=1)


def sample_image(record: dict) -> torch.Tensor:
    """The saved sample ``(3, S, S)`` in [0, 1]: its reference with every patch pasted."""
    pos = [tuple(int(v) for v in p) for p in record["positions"]]
    return paste(record["background"], list(record["patches"]), pos)


class AxiomsDataset(Dataset):
    def __init__(self, root: str | Path, scenario: str | None = "null", preprocess: Preprocess | None = None,
                 limit: int | None = None, split: str = "attribution") -> None:
        scenario = "null" if scenario is None else str(scenario)  # the command line's null is YAML's None
        if scenario not in SCENARIOS:
            raise unknown("dataset.scenario", scenario, SCENARIOS)
        self.store = AxiomsStore(Path(root) / scenario)
        self.meta = self.store.require()
        p = preprocess or Preprocess()  # Hydra's instantiate hands a dataclass over as a config node
        self.preprocess = Preprocess(tuple(p.mean), tuple(p.std), int(p.size), int(p.resize))
        if self.preprocess.size != self.meta["image_size"]:
            raise XattrConfigError(f"bad model input size {self.preprocess.size} for {root}; valid choices: "
                                   f"{self.meta['image_size']} (the size the samples were generated at)")
        self.indices = self.store.indices()
        if limit is not None:
            self.indices = self.indices[: int(limit)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        r = self.store.read(self.indices[i])
        x = self.preprocess.normalise(sample_image(r)[None])[0]
        boxes = patch_boxes(r["positions"], r["patches"].shape[-1])
        feature = torch.full((2, 4), float("nan"))
        feature[: boxes.shape[0]] = boxes[:2]
        return {"x": x, "label": int(r["target"]), "other": int(r["other"]), "boxes": boxes,
                "feature_boxes": feature, "scenario": SCENARIOS.index(r["scenario"]),
                "id": f"{r['scenario']}_{int(r['index']):06d}", "index": i}
