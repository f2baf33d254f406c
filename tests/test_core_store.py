"""The run folder belongs to :class:`xattr.core.store.RunStore`: each of its readers gives back what its writer
wrote, maps written through it read by the ROAR loader exactly as a folder in the old hand-written format,
and no other module names the folder's files."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from xattr.core.store import RunStore, batch_key
from xattr.data.roar import load_maps, save_maps

SRC = Path(__file__).resolve().parents[1] / "src" / "xattr"


def _batch(index: list[int]) -> dict:
    return {"id": [f"img{i}" for i in index], "index": torch.tensor(index), "label": torch.tensor([i % 3 for i in index])}


def _write(store: RunStore, index: list[int], t: int = 4, aux: bool = True) -> dict:
    g = torch.Generator().manual_seed(index[0])
    n = len(index)
    maps, probs = torch.rand(n, 1, 6, 5, generator=g), torch.softmax(torch.rand(n, 3, generator=g), 1)
    scores = {"m/s": torch.rand(n, generator=g)}
    curves = {"m/c": torch.rand(n, t, generator=g)}
    extra = {"a/v": torch.rand(n, generator=g), "stages/s": torch.rand(n, 1, 6, 5, generator=g)} if aux else None
    store.write(batch_key(torch.tensor(index)), _batch(index), torch.tensor([1] * n), maps, probs, scores=scores,
                curves=curves, x_axis={"m/c": torch.arange(float(t))}, aux=extra)
    return {"maps": maps[:, 0], "scores": scores, "curves": curves, "aux": extra}


def test_finding_runs_and_their_configs(tmp_path):
    assert RunStore.find_runs([tmp_path]) == [] and not RunStore.is_run(tmp_path)
    a, b, unfinished = tmp_path / "m" / "a", tmp_path / "m" / "b", tmp_path / "m" / "c"
    for d in (a, b, unfinished):
        RunStore(d).write_config({"method_name": d.name, "model": {"name": "tiny"}})
        _write(RunStore(d), [0, 1])
    for d in (a, b):
        RunStore(d).per_image().to_parquet(d / "per_image.parquet")
    (tmp_path / "m" / "a" / ".hydra").mkdir()
    (tmp_path / "m" / "a" / ".hydra" / "config.yaml").write_text("x: 1\n")
    assert RunStore.find_runs([tmp_path]) == [a, b] == RunStore.find_runs([b, a, tmp_path / "m"])
    assert RunStore.is_run(a) and not RunStore.is_run(unfinished)
    assert RunStore.find_configured([tmp_path]) == [a, b, unfinished]  # .hydra left out, in order met
    assert RunStore.find_configured([b, tmp_path]) == [b, a, unfinished]
    assert RunStore(a).config().method_name == "a" and RunStore(tmp_path).config() is None
    pd.testing.assert_frame_equal(RunStore(a).rows(), pd.read_parquet(a / "per_image.parquet"))
    pd.testing.assert_frame_equal(RunStore(unfinished).rows(), RunStore(unfinished).per_image())


def test_every_reader_gives_back_what_was_written(tmp_path):
    store = RunStore(tmp_path / "run")
    assert not store.has_finished_work() and store.map_shape() is None and store.batch_files() == []
    assert store.heatmaps_by_index()[0].shape == (0,) and not (tmp_path / "run").exists()
    one, two = _write(store, [4, 5]), _write(store, [0, 1, 2])
    assert store.has_finished_work() and store.done_keys() == ["b0000000-3", "b0000004-2"]
    assert [p.name for p in store.batch_files("curves")] == ["b0000000-3.npz", "b0000004-2.npz"]
    assert len(store.batch_files("per_image")) == len(store.batch_files("aux")) == 2
    with pytest.raises(ValueError, match="valid choices"):
        store.batch_files("nothing")
    assert store.map_shape() == (6, 5) and store.done_indices() == {0, 1, 2, 4, 5}
    maps, index, ids = store.heatmaps_by_index()  # batch-file order
    assert index.tolist() == [0, 1, 2, 4, 5] and ids == ["img0", "img1", "img2", "img4", "img5"]
    assert maps.dtype == np.float16
    np.testing.assert_array_equal(maps, torch.cat([two["maps"], one["maps"]]).numpy().astype(np.float16))
    by_id = store.heatmaps()
    assert all(np.array_equal(by_id[i], m) for i, m in zip(ids, maps))
    curves = store.padded_curves()
    c, x = curves["m/c"]
    np.testing.assert_allclose(c, torch.cat([two["curves"]["m/c"], one["curves"]["m/c"]]).numpy(), rtol=1e-6)
    assert x.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(store.curves()["m/c"], c.astype(np.float32))
    assert store.aux("a/")["img4"]["v"] == pytest.approx(float(one["aux"]["a/v"][0]))
    assert store.per_image()["index"].tolist() == [0, 1, 2, 4, 5]


def test_padded_curves_of_batches_with_curves_of_different_lengths(tmp_path):
    store = RunStore(tmp_path)
    short, long = _write(store, [0], t=2, aux=False), _write(store, [1], t=3, aux=False)
    c, x = store.padded_curves()["m/c"]
    assert c.shape == (2, 3) and np.isnan(c[0, 2]) and x.tolist() == [0, 1, 2]
    np.testing.assert_allclose(c[0, :2], short["curves"]["m/c"][0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(c[1], long["curves"]["m/c"][0].numpy(), rtol=1e-6)


def test_config_state_and_analysis_result_round_trip(tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.analysis_result("x") is None and store.load_state("x") is None
    store.write_config(OmegaConf.create({"a": 1, "b": "${a}"}))
    assert OmegaConf.to_container(store.config()) == {"a": 1, "b": 1}  # resolved
    store.save_state("x", {"k": [1, 2]})
    assert store.load_state("x") == {"k": [1, 2]}
    df = pd.DataFrame({"layer": ["all"], "share": [0.5]})
    (store.dir / "analyses" / "x.csv").write_text(df.to_csv(index=False))  # as engine.report writes it
    pd.testing.assert_frame_equal(store.analysis_result("x"), df)


def test_write_maps_round_trip_and_defaults(tmp_path):
    store = RunStore(tmp_path)
    maps = torch.rand(3, 2, 4, 4)
    path = store.write_maps(maps, ["a", "b", "c"], index=[7, 8, 9], labels=[1, 2, 0])
    assert path.name == "b0000007-3.npz" and store.done_keys() == ["b0000007-3"]
    got, index, ids = store.heatmaps_by_index()
    np.testing.assert_array_equal(got, maps.amax(1).numpy().astype(np.float16))  # channel max
    assert index.tolist() == [7, 8, 9] and ids == ["a", "b", "c"]
    with np.load(path) as z:
        assert z["label"].tolist() == z["target"].tolist() == [1, 2, 0]
    empty = RunStore(tmp_path / "empty").write_maps(torch.zeros(0, 4, 4), [])
    assert empty.name == "b0000000-0.npz"


def _old_save_maps(run_dir: Path, maps: torch.Tensor, ids: list[str], index: list[int], method: str | None) -> None:
    """The ROAR map folder as data/roar.py wrote it by hand before RunStore owned the format."""
    n = len(ids)
    idx = np.asarray(index, dtype=np.int64)
    lab = np.zeros(n, dtype=np.int64)
    (run_dir / "heatmaps").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run_dir / "heatmaps" / f"b{int(idx[0]):07d}-{n}.npz", maps=maps.float().numpy().astype(np.float16),
                        id=np.array(ids), index=idx, label=lab, target=lab)
    if method is not None:
        OmegaConf.save(OmegaConf.create({"method_name": method}), run_dir / "config.yaml")


def test_roar_maps_written_through_the_store_load_as_the_old_format(tmp_path):
    maps = torch.randn(5, 6, 6, generator=torch.Generator().manual_seed(0))
    ids = [f"img{i}" for i in range(5)]
    _old_save_maps(tmp_path / "old", maps[2:], ids[2:], [2, 3, 4], "gradient")
    _old_save_maps(tmp_path / "old", maps[:2], ids[:2], [0, 1], None)
    save_maps(tmp_path / "new", maps[2:], ids[2:], index=[2, 3, 4], method="gradient")
    save_maps(tmp_path / "new", maps[:2], ids[:2], index=[0, 1])
    for quantise in ("none", "uint8"):
        old, new = load_maps(tmp_path / "old", quantise), load_maps(tmp_path / "new", quantise)
        assert torch.equal(old[0], new[0]) and old[0].dtype == new[0].dtype
        assert old[1] == new[1] == ids and torch.equal(old[2], new[2])
    for name in ("b0000000-2.npz", "b0000002-3.npz"):
        with np.load(tmp_path / "old" / "heatmaps" / name) as a, np.load(tmp_path / "new" / "heatmaps" / name) as b:
            assert a.files == b.files
            for k in a.files:
                assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert RunStore(tmp_path / "new").config() == RunStore(tmp_path / "old").config()


# ----------------------------------------------------------------------------- one owner of the folder's names
NAMES = {"heatmaps", "per_image", "curves", "aux", "analyses", "config.yaml", "per_image.parquet", "per_image.csv"}
# files that still name the run folder's files themselves, each with the reason; the test fails when one no longer
# does (take it off the list) and when any other file does
ALLOWED = {
    "api.py": "not a file: evaluate()'s DataFrame attribute attrs['curves'] (the per-image curves in memory)",
}


def folder_names(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every string in ``path`` (docstrings left out) that names a run-folder file: a
    path segment in :data:`NAMES` or an ``.npz`` name or pattern."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return sorted((n.lineno, n.value) for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
                  and (set(n.value.split("/")) & NAMES or n.value.endswith(".npz")))


def test_only_the_store_names_the_run_folders_files():
    hits = {str(p.relative_to(SRC)): folder_names(p) for p in sorted(SRC.rglob("*.py"))}
    hits = {k: v for k, v in hits.items() if v and k != "core/store.py"}
    bad = [f"{k}:{line} {text!r}" for k, v in hits.items() if k not in ALLOWED for line, text in v]
    assert not bad, "run-folder files named outside xattr.core.store (use RunStore):\n" + "\n".join(bad)
    stale = sorted(set(ALLOWED) - set(hits))
    assert not stale, f"no longer name run-folder files, take them off ALLOWED: {stale}"


def test_the_name_checker_would_catch_a_module_opening_heatmaps(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text('"""Reads heatmaps/*.npz (a docstring: fine)."""\n'
                   'def f(d):\n    return sorted((d / "heatmaps").glob("*.npz")), d / f"{d}.npz", d / "x.csv"\n')
    assert sorted(t for _, t in folder_names(mod)) == ["*.npz", ".npz", "heatmaps"]
