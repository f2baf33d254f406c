"""Per-batch storage of a run, so a long run never loses finished work and a re-run skips it.

Layout of a run directory (documented in the README):

- ``heatmaps/<key>.npz``: ``maps`` float16 ``(B, H, W)`` (tokens: ``(B, L)``), ``id`` (str), ``index``,
  ``label``, ``target`` (int64). float16 keeps 3 significant digits, enough for figures and for
  re-evaluation; metrics of the run itself are computed on the float32 maps before saving.
- ``per_image/<key>.parquet``: one row per image: ``id``, ``index``, ``label``, ``target``, ``prob``
  (softmax of the target), ``top1``, and a column ``<metric>/<score>`` per metric score.
- ``curves/<key>.npz``: ``<metric>/<curve>`` arrays ``(B, T)`` and ``<metric>/<curve>/x`` ``(T,)``.
- ``stages/<key>.npz``: intermediate maps of multi-stage methods (InputIBA: ``feature``, ``generator``,
  ``input``), float16 ``(B, H, W)``, and ``id``.

``<key>`` is ``b<first index>-<count>``, unique across DDP ranks. A batch is finished when its heatmap file
exists: it is written last, atomically (temporary file + rename).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xattr.metrics.base import MetricResult


def batch_key(index: torch.Tensor) -> str:
    return f"b{int(index[0]):07d}-{index.numel()}"


class RunStore:
    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        for sub in ("heatmaps", "per_image", "curves"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    def done(self, key: str) -> bool:
        return (self.dir / "heatmaps" / f"{key}.npz").is_file()

    def done_keys(self) -> list[str]:
        return sorted(p.stem for p in (self.dir / "heatmaps").glob("*.npz"))

    @staticmethod
    def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)

    def write(self, key: str, batch: dict, target: torch.Tensor, maps: torch.Tensor, probs: torch.Tensor,
              results: dict[str, MetricResult], stages: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:
        """Write one finished batch (metrics and curves first, the heatmaps last as the done marker)."""
        n = target.numel()
        rows = {
            "id": [str(i) for i in batch["id"]],
            "index": batch["index"].cpu().numpy(),
            "label": batch["label"].cpu().numpy(),
            "target": target.cpu().numpy(),
            "prob": probs.gather(1, target.view(-1, 1)).squeeze(1).float().cpu().numpy(),
            "top1": probs.argmax(1).cpu().numpy(),
        }
        curves: dict[str, np.ndarray] = {}
        for mname, res in results.items():
            res = res.cpu()
            for s, v in res.scores.items():
                rows[f"{mname}/{s}"] = v.reshape(n).numpy()
            for c, v in res.curves.items():
                curves[f"{mname}/{c}"] = v.reshape(n, -1).numpy()
                if c in res.x_axis:
                    curves[f"{mname}/{c}/x"] = res.x_axis[c].numpy()
        df = pd.DataFrame(rows)
        pq = self.dir / "per_image" / f"{key}.parquet"
        df.to_parquet(pq.with_suffix(f".tmp{os.getpid()}"), index=False)
        os.replace(pq.with_suffix(f".tmp{os.getpid()}"), pq)
        if curves:
            self._atomic_npz(self.dir / "curves" / f"{key}.npz", **curves)
        if stages:
            (self.dir / "stages").mkdir(exist_ok=True)
            arrays = {k: _hw(v).astype(np.float16) for k, v in stages.items()}
            self._atomic_npz(self.dir / "stages" / f"{key}.npz", id=np.array(rows["id"]), **arrays)
        m = maps.detach().float().cpu()
        if m.dim() == 4:
            m = m[:, 0]
        self._atomic_npz(
            self.dir / "heatmaps" / f"{key}.npz",
            maps=m.numpy().astype(np.float16),
            id=np.array(rows["id"]),
            index=rows["index"],
            label=rows["label"],
            target=rows["target"],
        )
        return df

    # ------------------------------------------------------------------ reading back
    def per_image(self) -> pd.DataFrame:
        files = sorted((self.dir / "per_image").glob("*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("index")

    def curves(self) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        for f in sorted((self.dir / "curves").glob("*.npz")):
            with np.load(f) as z:
                for k in z.files:
                    if k.endswith("/x"):
                        out.setdefault(k, [z[k]])
                    else:
                        out.setdefault(k, []).append(z[k])
        return {k: (v[0] if k.endswith("/x") else np.concatenate(v)) for k, v in out.items()}

    def stages(self) -> dict[str, dict[str, np.ndarray]]:
        """``id -> {stage: map}`` for runs of multi-stage methods (empty otherwise)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for f in sorted((self.dir / "stages").glob("*.npz")) if (self.dir / "stages").is_dir() else []:
            with np.load(f) as z:
                for j, i in enumerate(z["id"]):
                    out[str(i)] = {k: z[k][j] for k in z.files if k != "id"}
        return out

    def heatmaps(self) -> dict[str, np.ndarray]:
        """``id -> map`` for every finished image."""
        out = {}
        for f in sorted((self.dir / "heatmaps").glob("*.npz")):
            with np.load(f) as z:
                for i, m in zip(z["id"], z["maps"]):
                    out[str(i)] = m
        return out


def _hw(t: torch.Tensor) -> np.ndarray:
    t = t.detach().float().cpu()
    return (t[:, 0] if t.dim() == 4 else t).numpy()
