"""W&B dashboards, offline: the runs of one multirun share a group named after the sweep, the swept keys are
config columns, each run logs a per-image table (heatmap thumbnails, scores) and its figures. Read back from
the ``.wandb`` files W&B writes (LevelDB-style log records of its protobuf ``Record``s)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

import xattr.run as xrun
from tests.helpers import compose_cfg

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
FAST = ["model=custom", "model.preprocess.size=32", "dataset=samples", "target=top1", "batch_size=2", "trainer=cpu",
        "metric=[complexity]", "logger=wandb", "trainer.enable_progress_bar=false", "dataset.limit=2"]


def records(path: Path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of records, each
    ``crc (4), length (2), type (1: full, 2: first, 3: middle, 4: last)`` and its bytes."""
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def read_run(run_dir: Path, wait: float = 20.0) -> tuple[str, dict, set]:
    """Group, config and logged keys of the run's ``.wandb`` file (W&B's service process writes it: polled
    until the run record is there, at most ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        got = _read(run_dir)
        if got[0] or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def _read(run_dir: Path) -> tuple[str, dict, set]:
    (path,) = run_dir.glob("wandb/offline-run-*/*.wandb")
    group, config, logged = "", {}, set()
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            group = rec.run.run_group or group  # later run records (the finish) leave it empty
            config.update({i.key: i.value_json for i in rec.run.config.update})
        elif kind == "history":
            logged |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
    return group, config, logged


def hydra(task: list[str]):
    return OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": "multirun/2026-12-05/06-00-00"},
                             "runtime": {"choices": {"experiment": "meta_eval"}}, "overrides": {"task": task}})


def test_the_runs_of_one_multirun_share_a_group_and_log_their_swept_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seen = []
    for k, method in enumerate(["random", "gradient"]):
        monkeypatch.setattr(xrun, "hydra_runtime", lambda m=method: hydra([f"method={m}", "+method.seed=3"]))
        seen.append(xrun.run(compose_cfg([*FAST, f"method={method}"], output_dir=tmp_path / str(k))))
    seen = [read_run(d) for d in seen]
    (g1, c1, h1), (g2, c2, h2) = seen
    assert g1 == g2 == "meta_eval:multirun/2026-12-05/06-00-00"
    assert '"method":"random"' in c1["swept"].replace(" ", "") and '"method.seed":"3"' in c1["swept"].replace(" ", "")
    assert '"method":"gradient"' in c2["swept"].replace(" ", "")
    for logged in (h1, h2):
        assert {"images/_type", "images/ncols", "summary/_type", "heatmaps/_type"} <= logged  # no curves: complexity has none
    (table,) = (tmp_path / "0").rglob("images_*.table.json")  # written when the run finishes
    rows = OmegaConf.to_container(OmegaConf.load(table))
    assert rows["columns"][:2] == ["heatmap", "id"] and "complexity/complexity" in rows["columns"]
    # two images, each row a heatmap (W&B keeps table images in the run's table artifact) and the scores
    assert len(rows["data"]) == 2 and rows["data"][0][0] == "Image" and "images/artifact_path" in h1
    col = rows["columns"].index("complexity/complexity")
    assert all(isinstance(r[col], float) and r[col] > 0 for r in rows["data"])


def test_a_single_run_has_no_group(monkeypatch):
    monkeypatch.setattr(xrun, "hydra_runtime", lambda: None)
    assert xrun.sweep_info(compose_cfg([*FAST])) == (None, {})
    monkeypatch.setattr(xrun, "hydra_runtime", lambda: hydra(["method.beta=10"]))
    assert xrun.sweep_info(compose_cfg([*FAST, "logger.group=mine"])) == ("mine", {"method.beta": "10"})
