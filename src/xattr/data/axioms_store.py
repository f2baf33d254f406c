"""The folder of generated axiom samples (dissertation ch. 7): one file per sample, written atomically when
the sample is finished, so a killed generation resumes without redoing finished samples.

Layout: ``<root>/meta.json`` (scenario, image and patch size, model, seed: a resumed or read dataset must
match it) and ``<root>/samples/<index:06d>.pt``, a dict of the reference ``background`` (3, S, S) in [0, 1],
``patches`` (P, 3, p, p), ``positions`` (P, 2) (top, left), ``target`` (class a), ``other`` (class b;
-1 for saturation), ``classes`` (P,) the class each patch was generated for, and the checks of the saved
iteration: ``softmax`` (target softmax per patch), ``k_rem`` and ``ratio`` (per removal term, eq. 12),
``iterations``, ``restarts``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xattr.core.store import atomic_torch
from xattr.errors import XattrConfigError, missing_file


class AxiomsStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.samples = self.root / "samples"

    def path(self, index: int) -> Path:
        return self.samples / f"{int(index):06d}.pt"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def indices(self) -> list[int]:
        return sorted(int(p.stem) for p in self.samples.glob("*.pt") if p.stem.isdigit()) if self.samples.is_dir() else []

    def write(self, index: int, record: dict) -> None:
        self.samples.mkdir(parents=True, exist_ok=True)
        atomic_torch(self.path(index), record)

    def read(self, index: int) -> dict:
        return torch.load(self.path(index), map_location="cpu", weights_only=True)

    def meta(self) -> dict | None:
        p = self.root / "meta.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def check_meta(self, meta: dict) -> None:
        """Write ``meta`` on first use; later it must match (a resumed generation adds to the same dataset)."""
        old = self.meta()
        if old is None:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "meta.json").write_text(json.dumps(meta, indent=1))
            return
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            k, (was, now) = next(iter(diff.items()))
            raise XattrConfigError(f"bad axioms.{k} {now!r} for the existing dataset {self.root}; valid choices: "
                                   f"{was!r} (its meta.json), or another axioms.out folder")

    def require(self) -> dict:
        meta = self.meta()
        if meta is None or not self.indices():
            raise missing_file("generated axiom samples", self.samples,
                               "run python -m xattr.generate axioms.scenario=<s> axioms.n=<N> first; set dataset.root")
        return meta
