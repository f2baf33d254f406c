"""The run folder: per-batch files, so a long run never loses finished work and a re-run skips it.

Layout (documented in docs/cli.md, "The demo and the run folder"):

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
- ``config.yaml``: the composed config (``method_name``, ``model``, ...); ``per_image.parquet``: every row
  of ``per_image/`` in one file, written when the run finishes. A folder holding both is a finished run
  (:meth:`RunStore.is_run`, :meth:`RunStore.find_runs`).

This module is the only one that knows these names: every other reads and writes a run folder through
:class:`RunStore` (``tests/test_store.py`` checks it).

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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from omegaconf import DictConfig

HEATMAPS, PER_IMAGE, CURVES, AUX_DIR, ANALYSES = "heatmaps", "per_image", "curves", "aux", "analyses"
CONFIG, ROWS = "config.yaml", "per_image.parquet"


def batch_key(index: torch.Tensor | np.ndarray | list[int]) -> str:
    """``b<first index>-<count>`` (``b0000000-0`` for no images)."""
    n = len(index)
    return f"b{int(index[0]) if n else 0:07d}-{n}"


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


def _load_data(path: Path) -> object:
    """``torch.load(weights_only=True)`` of a file in a run folder; anything but data is one error."""
    from xattr.errors import XattrConfigError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, or pickled objects that could run code: refused alike
        raise XattrConfigError(f"cannot load {path} as data ({type(e).__name__}); valid choices: a file written by "
                               "xattr (delete it to recompute)") from None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class RunStore:
    """Reads and writes one run folder (see the module docstring). Constructing it writes nothing."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)

    # ------------------------------------------------------------------ finding runs
    @staticmethod
    def is_run(run_dir: str | Path) -> bool:
        """A finished run folder: ``config.yaml`` and ``per_image.parquet``."""
        d = Path(run_dir)
        return (d / CONFIG).is_file() and (d / ROWS).is_file()

    @classmethod
    def find_runs(cls, paths: list[str | Path]) -> list[Path]:
        """Every finished run folder (:meth:`is_run`) among ``paths`` and below them, sorted."""
        runs = []
        for p in map(Path, paths):
            cands = [p] + sorted(q.parent for q in p.rglob(ROWS)) if p.is_dir() else []
            runs += [c for c in cands if cls.is_run(c)]
        return sorted(set(runs))

    @staticmethod
    def find_configured(paths: list[str | Path]) -> list[Path]:
        """Every folder holding a ``config.yaml`` (Hydra's ``.hydra`` left out) among ``paths`` and below them,
        in the order met (each path, then its sub-folders sorted), once each: run folders and training units."""
        out, seen = [], set()
        for p in map(Path, paths):
            cands = [p] + sorted(q.parent for q in p.rglob(CONFIG)) if p.is_dir() else []
            for d in cands:
                if d in seen or d.name == ".hydra" or not (d / CONFIG).is_file():
                    continue
                seen.add(d)
                out.append(d)
        return out

    def config(self) -> DictConfig | None:
        """The run's ``config.yaml``, or None when it has none."""
        from omegaconf import OmegaConf

        path = self.dir / CONFIG
        return OmegaConf.load(path) if path.is_file() else None

    def write_config(self, cfg: Mapping | DictConfig) -> Path:
        """Write ``config.yaml`` (a mapping or an OmegaConf node, interpolations resolved)."""
        from omegaconf import OmegaConf

        path = self.dir / CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        node = cfg if OmegaConf.is_config(cfg) else OmegaConf.create(dict(cfg))
        path.write_text(OmegaConf.to_yaml(node, resolve=True))
        return path

    # ------------------------------------------------------------------ finished work
    @property
    def heatmaps_dir(self) -> Path:
        """Where the heatmap files (the done markers) go: for messages naming the missing maps."""
        return self.dir / HEATMAPS

    def _files(self, sub: str, pattern: str) -> list[Path]:
        d = self.dir / sub
        return sorted(d.glob(pattern)) if d.is_dir() else []

    def batch_files(self, kind: str = HEATMAPS) -> list[Path]:
        """The per-batch files of ``kind`` (``heatmaps``, ``per_image``, ``curves``, ``aux``), sorted by key."""
        if kind not in (HEATMAPS, PER_IMAGE, CURVES, AUX_DIR):
            raise ValueError(f"bad batch file kind {kind!r}; valid choices: {HEATMAPS}, {PER_IMAGE}, {CURVES}, {AUX_DIR}")
        return self._files(kind, "*.parquet" if kind == PER_IMAGE else "*.npz")

    def done(self, key: str) -> bool:
        return (self.dir / HEATMAPS / f"{key}.npz").is_file()

    def done_keys(self) -> list[str]:
        return [p.stem for p in self.batch_files(HEATMAPS)]

    def has_finished_work(self) -> bool:
        """True when at least one batch is finished (a heatmap file exists)."""
        return bool(self.batch_files(HEATMAPS))

    def done_indices(self) -> set[int]:
        """Dataset indices of every image in a finished batch (read from the heatmap files' ``index``)."""
        return set(self.done_ids())

    def done_ids(self) -> dict[int, str]:
        """Dataset index -> image id of every image in a finished batch (the heatmap files' ``index``, ``id``)."""
        out: dict[int, str] = {}
        for f in self.batch_files(HEATMAPS):
            with np.load(f) as z:
                out.update((int(i), str(n)) for i, n in zip(z["index"], z["id"]))
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
        pq = self.dir / PER_IMAGE / f"{key}.parquet"
        pq.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(_tmp(pq), index=False)
        os.replace(_tmp(pq), pq)
        arrays: dict[str, np.ndarray] = {}
        for name, v in (curves or {}).items():
            arrays[name] = _np(v).reshape(n, -1)
            if x_axis and name in x_axis:
                arrays[f"{name}/x"] = _np(x_axis[name])
        if arrays:
            atomic_npz(self.dir / CURVES / f"{key}.npz", **arrays)
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
        self._write_maps(key, m, rows["id"], rows["index"], rows["label"], rows["target"])
        return df

    def _write_maps(self, key: str, maps: torch.Tensor, ids: list[str], index: np.ndarray, label: np.ndarray,
                    target: np.ndarray) -> Path:
        path = self.dir / HEATMAPS / f"{key}.npz"
        atomic_npz(path, maps=maps.numpy().astype(np.float16), id=np.array([str(i) for i in ids]),
                   index=np.asarray(index, dtype=np.int64), label=np.asarray(label, dtype=np.int64),
                   target=np.asarray(target, dtype=np.int64))
        return path

    def write_maps(self, maps: torch.Tensor, ids: list[str], index: list[int] | np.ndarray | None = None,
                   labels: list[int] | np.ndarray | None = None, targets: list[int] | np.ndarray | None = None) -> Path:
        """Write maps made outside ``python -m xattr.run`` (a RoarTorch PNG folder, tests) as one finished batch:
        ``maps`` ``(N, H, W)`` (``(N, C, H, W)``: the channel max), ``index`` default ``0..N-1``, ``labels``
        default 0, ``targets`` default the labels. Only the heatmap file: no rows, curves or auxiliaries."""
        n = len(ids)
        idx = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
        lab = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        tgt = lab if targets is None else np.asarray(targets, dtype=np.int64)
        m = maps.detach().float().cpu()
        m = m.amax(1) if m.dim() == 4 else m
        return self._write_maps(batch_key(idx), m, list(ids), idx, lab, tgt)

    def save_state(self, name: str, state: object) -> None:
        """Atomically save a dataset-level analysis' state (``analyses/<name>.pt``)."""
        atomic_torch(self.dir / ANALYSES / f"{name}.pt", state)

    def load_state(self, name: str) -> object | None:
        """An analysis' saved state (``analyses/<name>.pt``), None when there is none. Read with
        ``weights_only=True`` (tensors, numbers, strings, lists, dicts): a file holding anything else (code) is
        one error naming it."""
        path = self.dir / ANALYSES / f"{name}.pt"
        return _load_data(path) if path.is_file() else None

    def shard_states(self, name: str) -> list[object]:
        """The states other DDP ranks saved for analysis ``name`` (``analyses/<name>.rank<r>.pt``)."""
        return [_load_data(f) for f in self._files(ANALYSES, f"{name}.rank*.pt")]

    def write_analysis(self, name: str, result: pd.DataFrame) -> Path:
        """Write an analysis' result (``analyses/<name>.csv`` and ``.md``); returns the folder, where the
        analysis may write files of its own (``write_extras``)."""
        folder = self.dir / ANALYSES
        folder.mkdir(parents=True, exist_ok=True)
        result.to_csv(folder / f"{name}.csv", index=False)
        (folder / f"{name}.md").write_text(result.to_markdown(index=False, floatfmt=".4f") + "\n")
        return folder

    def write_report_tables(self, per_image: pd.DataFrame, summary: pd.DataFrame) -> None:
        """The finished run's tables: ``per_image.{parquet,csv}`` (every image) and ``summary.{csv,md}``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        per_image.to_parquet(self.dir / ROWS, index=False)
        per_image.to_csv(self.dir / ROWS.replace(".parquet", ".csv"), index=False)
        summary.to_csv(self.dir / "summary.csv", index=False)
        (self.dir / "summary.md").write_text(summary.to_markdown(index=False, floatfmt=".4f") + "\n")

    def analysis_result(self, name: str) -> pd.DataFrame | None:
        """A dataset-level analysis' result ``analyses/<name>.csv``, or None when the run has none."""
        path = self.dir / ANALYSES / f"{name}.csv"
        return pd.read_csv(path) if path.is_file() else None

    # ------------------------------------------------------------------ reading back
    def per_image(self) -> pd.DataFrame:
        """Every finished image's row, from the per-batch files, sorted by dataset index."""
        files = self.batch_files(PER_IMAGE)
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).sort_values("index")

    def rows(self) -> pd.DataFrame:
        """The finished run's ``per_image.parquet`` (what ``python -m xattr.table`` reads); when it is not
        written yet, :meth:`per_image`."""
        path = self.dir / ROWS
        return pd.read_parquet(path) if path.is_file() else self.per_image()

    def curves(self) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {}
        for f in self.batch_files(CURVES):
            with np.load(f) as z:
                for k in z.files:
                    if k.endswith("/x"):
                        out.setdefault(k, [z[k]])
                    else:
                        out.setdefault(k, []).append(z[k])
        return {k: (v[0] if k.endswith("/x") else np.concatenate(v)) for k, v in out.items()}

    def padded_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``name -> (curves (N, T) float64, x (T,))`` where batches may have curves of different lengths
        (token curves end at each batch's longest review): shorter ones NaN-padded, ``x`` the longest."""
        parts: dict[str, list[np.ndarray]] = {}
        xs: dict[str, np.ndarray] = {}
        for f in self.batch_files(CURVES):
            with np.load(f) as z:
                for k in z.files:
                    if k.endswith("/x"):
                        if len(z[k]) > len(xs.get(k[:-2], [])):
                            xs[k[:-2]] = z[k]
                    else:
                        parts.setdefault(k, []).append(z[k].astype(np.float64))
        out = {}
        for k, ps in parts.items():
            t = max(p.shape[1] for p in ps)
            c = np.concatenate([np.pad(p, ((0, 0), (0, t - p.shape[1])), constant_values=np.nan) for p in ps])
            out[k] = (c, xs.get(k, np.arange(t))[:t])
        return out

    def aux(self, prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
        """``id -> {name: array}`` of the method's auxiliary results whose names start with ``prefix``
        (the prefix is stripped); empty when the method returned none."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for f in self.batch_files(AUX_DIR):
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
        for f in self.batch_files(HEATMAPS):
            with np.load(f) as z:
                for i, m in zip(z["id"], z["maps"]):
                    out[str(i)] = m
        return out

    def summary(self) -> pd.DataFrame:
        """The run's ``summary.csv`` (each score's mean, s.e., count); empty before the run's report."""
        path = self.dir / "summary.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def analyses(self) -> dict[str, pd.DataFrame]:
        """``name -> result`` of every dataset-level analysis of the run (``analyses/<name>.csv``)."""
        return {p.stem: pd.read_csv(p) for p in self._files(ANALYSES, "*.csv")}

    def heatmaps_by_index(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(maps (N, ...) float16, index (N,) int64, ids)`` of every finished image, in batch-file order
        (``maps[k]`` is the image at dataset index ``index[k]``); empty arrays when nothing is finished."""
        maps, index, ids = [], [], []
        for f in self.batch_files(HEATMAPS):
            with np.load(f) as z:
                maps.append(z["maps"])
                index.append(z["index"].astype(np.int64))
                ids += [str(i) for i in z["id"]]
        if not maps:
            return np.zeros((0,), np.float16), np.zeros((0,), np.int64), []
        return np.concatenate(maps), np.concatenate(index), ids

    def map_shape(self) -> tuple[int, ...] | None:
        """The shape of one stored map (``(H, W)`` for images, ``(L,)`` for tokens), None when none is stored."""
        files = self.batch_files(HEATMAPS)
        if not files:
            return None
        with np.load(files[0]) as z:
            return tuple(z["maps"].shape[1:])
