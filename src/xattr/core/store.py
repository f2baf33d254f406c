"""The run folder: per-batch files, so a long run never loses finished work and a re-run skips it.

Layout (documented in the README):

- ``heatmaps/<key>.npz``: ``maps`` float16 ``(B, H, W)`` (tokens: ``(B, L)``), ``id`` (str), ``index``,
  ``label``, ``target`` (int64). float16 keeps 3 significant digits, enough for figures and for
  re-evaluation; metrics of the run itself are computed on the float32 maps before saving.
- ``per_image/<key>.parquet``: one row per image: ``id``, ``index``, ``label``, ``target``, ``prob``
  (softmax of the target), ``top1``, ``top1_prob`` (softmax of the top-1 class), and a column
  ``<metric>/<score>`` per metric score.
- ``curves/<key>.npz``: ``<metric>/<curve>`` arrays ``(B, T)`` and ``<metric>/<curve>/x`` ``(T,)``.
- ``aux/<key>.npz``: the method's auxiliary results (:class:`xattr.methods.base.Explanation`), each with
  a leading batch axis, under its own name (InputIBA: ``stages/feature``, ``stages/generator``,
  ``stages/input``; IBA: ``bottleneck/info_per_k``, ...), and ``id``. Maps (3 or more axes) are float16.
- ``analyses/<name>.pt``: the state of each dataset-level analysis after the last finished batch
  (with the keys of the batches it holds), ``analyses/<name>.csv``: its result.

``<key>`` is ``b<first index>-<count>``, unique across DDP ranks. A batch is finished when its heatmap file
exists: it is written last, atomically (temporary file + rename). A re-run skips images, not keys: the
images of every finished heatmap file (:meth:`RunStore.done_indices`) are left out of each new batch
(:func:`take`), so a run resumed with another ``batch_size`` (which does not name the folder) or over a
dataset that has grown (more generated samples) computes each image once and the folder holds it once.

Opening a store writes nothing: folders are made by the first :meth:`RunStore.write`, so reading an old
run (``method=saved``, ``python -m xattr.table``) leaves it byte-identical.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

AUX_DIR = "aux"


def batch_key(index: torch.Tensor) -> str:
    return f"b{int(index[0]):07d}-{index.numel()}"


def take(batch: Mapping, keep: torch.Tensor) -> dict:
    """The images ``keep`` (bool ``(B,)``) of a collated batch: tensors and lists of length ``B`` are cut,
    anything else (batch-level values) is kept as it is."""
    b = keep.numel()
    idx = keep.nonzero().flatten()
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == b:
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, (list, tuple)) and len(v) == b:
            out[k] = [v[int(i)] for i in idx]
        else:
            out[k] = v
    return out


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")


def atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to a temporary file, then rename (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def atomic_torch(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class RunStore:
    """Reads and writes one run folder (see the module docstring). Constructing it writes nothing."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)

    def _files(self, sub: str, pattern: str) -> list[Path]:
        d = self.dir / sub
        return sorted(d.glob(pattern)) if d.is_dir() else []

    def done(self, key: str) -> bool:
        return (self.dir / "heatmaps" / f"{key}.npz").is_file()

    def done_keys(self) -> list[str]:
        return [p.stem for p in self._files("heatmaps", "*.npz")]

    def done_indices(self) -> set[int]:
        """Dataset indices of every image in a finished batch (read from the heatmap files' ``index``)."""
        out: set[int] = set()
        for f in self._files("heatmaps", "*.npz"):
            with np.load(f) as z:
                out.update(int(i) for i in z["index"])
        return out

    # ------------------------------------------------------------------ writing
    def write(self, key: str, batch: Mapping, target: torch.Tensor, maps: torch.Tensor, probs: torch.Tensor,
              scores: Mapping[str, torch.Tensor] | None = None, curves: Mapping[str, torch.Tensor] | None = None,
              x_axis: Mapping[str, torch.Tensor] | None = None,
              aux: Mapping[str, torch.Tensor] | None = None) -> pd.DataFrame:
        """Write one finished batch: per-image rows, curves, auxiliaries, then the heatmaps (done marker).

        ``scores``: ``<metric>/<score>`` -> ``(B,)``; ``curves``: ``<metric>/<curve>`` -> ``(B, T)`` with
        ``x_axis`` under the same name; ``aux``: name -> ``(B, ...)`` tensors of the method."""
        n = target.numel()
        rows = {
            "id": [str(i) for i in batch["id"]],
            "index": batch["index"].cpu().numpy(),
            "label": batch["label"].cpu().numpy(),
            "target": target.cpu().numpy(),
            "prob": probs.gather(1, target.view(-1, 1)).squeeze(1).float().cpu().numpy(),
            "top1": probs.argmax(1).cpu().numpy(),
            "top1_prob": probs.max(1).values.float().cpu().numpy(),
        }
        for name, v in (scores or {}).items():
            rows[name] = _np(v).reshape(n)
        df = pd.DataFrame(rows)
        pq = self.dir / "per_image" / f"{key}.parquet"
        pq.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(_tmp(pq), index=False)
        os.replace(_tmp(pq), pq)
        arrays: dict[str, np.ndarray] = {}
        for name, v in (curves or {}).items():
            arrays[name] = _np(v).reshape(n, -1)
            if x_axis and name in x_axis:
                arrays[f"{name}/x"] = _np(x_axis[name])
        if arrays:
            atomic_npz(self.dir / "curves" / f"{key}.npz", **arrays)
        if aux:
            packed = {}
            for name, v in aux.items():
                a = v.detach().cpu()
                if a.is_floating_point():
                    a = a.float()
                    packed[name] = a.numpy().astype(np.float16) if a.dim() >= 3 else a.numpy()
                else:
                    packed[name] = a.numpy()
            atomic_npz(self.dir / AUX_DIR / f"{key}.npz", id=np.array(rows["id"]), **packed)
        m = maps.detach().float().cpu()
        if m.dim() == 4:
            m = m[:, 0]
        atomic_npz(self.dir / "heatmaps" / f"{key}.npz", maps=m.numpy().astype(np.float16),
                   id=np.array(rows["id"]), index=rows["index"], label=rows["label"], target=rows["target"])
        return df

    def save_state(self, name: str, state: object) -> None:
        """Atomically save a dataset-level analysis' state (``analyses/<name>.pt``)."""
        atomic_torch(self.dir / "analyses" / f"{name}.pt", state)

    def load_state(self, name: str) -> object | None:
        path = self.dir / "analyses" / f"{name}.pt"
        return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None

    # ------------------------------------------------------------------ reading back
    def per_image(self) -> pd.DataFrame:
        files = self._files("per_image", "*.parquet")
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("index")

    def curves(self) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        for f in self._files("curves", "*.npz"):
            with np.load(f) as z:
                for k in z.files:
                    if k.endswith("/x"):
                        out.setdefault(k, [z[k]])
                    else:
                        out.setdefault(k, []).append(z[k])
        return {k: (v[0] if k.endswith("/x") else np.concatenate(v)) for k, v in out.items()}

    def aux(self, prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
        """``id -> {name: array}`` of the method's auxiliary results whose names start with ``prefix``
        (the prefix is stripped); empty when the method returned none."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for f in self._files(AUX_DIR, "*.npz"):
            with np.load(f) as z:
                names = [k for k in z.files if k != "id" and k.startswith(prefix)]
                for j, i in enumerate(z["id"]):
                    if names:
                        out[str(i)] = {k[len(prefix):]: z[k][j] for k in names}
        return out

    def stages(self) -> dict[str, dict[str, np.ndarray]]:
        """``id -> {stage: map}`` for runs of multi-stage methods (aux ``stages/*``; empty otherwise), each
        map shaped as its heatmap (a channel axis of 1 dropped)."""
        return {i: {k: m[0] if m.ndim == 3 and m.shape[0] == 1 else m for k, m in st.items()}
                for i, st in self.aux("stages/").items()}

    def heatmaps(self) -> dict[str, np.ndarray]:
        """``id -> map`` for every finished image."""
        out = {}
        for f in self._files("heatmaps", "*.npz"):
            with np.load(f) as z:
                for i, m in zip(z["id"], z["maps"]):
                    out[str(i)] = m
        return out

    # ------------------------------------------------------------------ the folder as a whole
    def is_run(self) -> bool:
        """A run folder with finished work: it holds ``heatmaps/`` (finished batches) or a run's report."""
        return (self.dir / "heatmaps").is_dir() or (self.dir / "per_image.parquet").is_file()

    def config(self):
        """The run's resolved config (``config.yaml``) as a ``DictConfig``; an empty one when absent."""
        from omegaconf import OmegaConf

        path = self.dir / "config.yaml"
        return OmegaConf.load(path) if path.is_file() else OmegaConf.create({})

    def summary(self) -> pd.DataFrame:
        """The run's ``summary.csv`` (each score's mean, s.e., count); empty before the run's report."""
        path = self.dir / "summary.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def analyses(self) -> dict[str, pd.DataFrame]:
        """``name -> result`` of the run's dataset-level analyses (``analyses/<name>.csv``)."""
        return {p.stem: pd.read_csv(p) for p in self._files("analyses", "*.csv")}
