"""Maps of an earlier run, looked up by image id: evaluate new metrics without recomputing attributions.

``python -m xattr.run method=saved method.run_dir=outputs/runs/<run> metric=[ehr,degradation]`` reads
``<run>/heatmaps/*.npz`` (float16, see :mod:`xattr.core.store`) and hands the maps of each batch to the
metrics, with the auxiliary results the original method stored (``aux/``). The earlier run is only read:
its folder stays byte-identical. The new run records the original method's name and settings (``method_name``,
``source_method``), so tables place it in the original method's row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from xattr.core.store import RunStore
from xattr.errors import XattrConfigError, missing_file
from xattr.methods.base import Attribution, Explanation


class SavedMaps(Attribution):
    name = "saved"
    requires_grad = False
    source_run_key = "run_dir"  # the argument naming the earlier run (run.py records that run's method)

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: free (maps read from the earlier run's folder)."""
        return 0.0

    def __init__(self, model: nn.Module, run_dir: str | Path, check_source: bool = True) -> None:
        """``check_source``: ``python -m xattr.run`` refuses an earlier run of another model, weights,
        preprocessing, dataset or target unless it is false (the maps are then scored knowingly)."""
        super().__init__(model)
        self.check_source = bool(check_source)
        self.run_dir = Path(run_dir)
        store = RunStore(self.run_dir)
        if not store.heatmaps_dir.is_dir():
            raise missing_file("heatmaps of an earlier run", store.heatmaps_dir,
                               "method.run_dir must be a run folder written by python -m xattr.run")
        self._maps: dict[str, np.ndarray] | None = None
        self._aux: dict[str, dict[str, np.ndarray]] | None = None

    def maps_by_id(self) -> dict[str, np.ndarray]:
        if self._maps is None:
            self._maps = RunStore(self.run_dir).heatmaps()
        return self._maps

    def aux_by_id(self) -> dict[str, dict[str, np.ndarray]]:
        if self._aux is None:
            self._aux = RunStore(self.run_dir).aux()
        return self._aux

    def explain_batch(self, batch: dict, target: torch.Tensor, aux=()) -> Explanation:
        maps = self.maps_by_id()
        missing = [i for i in batch["id"] if str(i) not in maps]
        if missing:
            raise XattrConfigError(f"image {missing[0]!r} has no saved map in {self.run_dir}; "
                                   f"valid choices: the {len(maps)} images of that run")
        m = torch.from_numpy(np.stack([maps[str(i)].astype(np.float32) for i in batch["id"]]))
        x = batch["x"]
        if x.dim() == 4:
            m = m[:, None]
        stored = self.aux_by_id()
        names = set.intersection(*(set(stored.get(str(i), {})) for i in batch["id"])) if stored else set()
        extra = {k: torch.from_numpy(np.stack([stored[str(i)][k] for i in batch["id"]])).to(x.device)
                 for k in sorted(names)}
        extra = {k: v.float() if v.is_floating_point() else v for k, v in extra.items()}
        return Explanation(m.to(x.device), extra)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise XattrConfigError("saved maps are looked up by image id: use explain_batch(batch, target)")
