"""Feature statistics of IBA: Welford == direct estimates, active neurons, on-disk cache hit/miss/stale."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from xattr.core.hooks import hook_count
from xattr.methods.iba import statistics as st
from xattr.methods.iba.per_sample import PerSampleIBA
from xattr.models.tiny import TinyCNN


def _loader(n_batches=3, b=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(b, 3, size, size, generator=g)} for _ in range(n_batches)]


def test_welford_equals_direct_mean_std_and_nonzero():
    data = torch.randn(50, 4, 3, 3) * 3 + 1
    data[:, 0] = 0.0
    data[:45, 1, 0, 0] = 0.0  # non-zero in 10% of samples
    w = st.Welford()
    for chunk in (data[:7], data[7:8], data[8:31], data[31:]):
        w.update(chunk)
    s = w.result()
    assert s.n == 50
    assert torch.allclose(s.mean, data.mean(0), atol=1e-5)
    assert torch.allclose(s.std, data.std(0, unbiased=True), atol=1e-5)
    assert s.nonzero[1, 0, 0].item() == pytest.approx(0.1)
    act = s.active(0.01)
    assert act[0].sum() == 0 and act[1, 0, 0] == 1 and act[2].min() == 1
    assert s.active(0.2)[1, 0, 0] == 0


def test_estimate_uses_first_n_samples_of_the_layer_and_warns():
    model = TinyCNN().eval()
    loader = _loader()
    with pytest.warns(UserWarning, match="only 40 samples"):
        stats = st.estimate(model, ["conv1"], loader, n_samples=40)
    x = torch.cat([b["x"] for b in loader])[:40]
    with torch.no_grad():
        feats = model.features[0](x)
    s = stats["conv1"]
    assert s.n == 40 and torch.allclose(s.mean, feats.mean(0), atol=1e-5)
    assert torch.allclose(s.std, feats.std(0), atol=1e-5)
    assert hook_count(model) == 0


def test_estimate_removes_hooks_on_error():
    model = TinyCNN().eval()

    def bad():
        yield {"x": torch.randn(2, 3, 8, 8)}
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        st.estimate(model, ["conv1", "conv3"], bad(), n_samples=10)
    assert hook_count(model) == 0


def test_cache_hit_miss_and_stale(tmp_path):
    model = TinyCNN().eval()
    warnings.simplefilter("ignore")
    kw = dict(model_name="tiny", weights="random", dataset="noise")
    first = st.load_or_estimate(model, ["conv2"], _loader(), tmp_path, n_samples=32, **kw)
    files = list((tmp_path / "iba_stats").glob("*.pt"))
    assert len(files) == 1
    name = files[0].name
    assert name.startswith("tiny-random-features.2-noise-n32-")  # the key is visible

    def never():
        raise AssertionError("the cache should have been used")
        yield

    hit = st.load_or_estimate(model, ["conv2"], never(), tmp_path, n_samples=32, **kw)
    assert torch.equal(hit["conv2"].mean, first["conv2"].mean)
    # miss: other n_samples, other weights -> other files
    st.load_or_estimate(model, ["conv2"], _loader(), tmp_path, n_samples=16, **kw)
    with torch.no_grad():
        model.features[0].weight.add_(0.1)
    st.load_or_estimate(model, ["conv2"], _loader(), tmp_path, n_samples=32, **kw)
    assert len(list((tmp_path / "iba_stats").glob("*.pt"))) == 3
    # stale: a file whose stored key does not match is reported and re-estimated
    fname, key = st.cache_key(model, ["conv2"], 32, **kw)
    blob = torch.load(tmp_path / "iba_stats" / fname, weights_only=False)
    blob["key"] = {**key, "fingerprint": "something-else"}
    blob["stats"]["conv2"]["mean"] = blob["stats"]["conv2"]["mean"] + 100
    torch.save(blob, tmp_path / "iba_stats" / fname)
    with pytest.warns(UserWarning, match="stale"):
        fresh = st.load_or_estimate(model, ["conv2"], _loader(), tmp_path, n_samples=32, **kw)
    assert fresh["conv2"].mean.abs().max() < 50


def test_method_fit_reads_dict_batches(tmp_path):
    model = TinyCNN().eval()
    iba = PerSampleIBA(model, "conv2", n_samples=32, steps=1, copies=2)
    assert iba.needs_fit
    with pytest.warns(UserWarning, match="only 32"):
        iba.fit(_loader(size=16), tmp_path)
    maps = iba.attribute(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 16, 16)


def test_method_configs_instantiate():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from xattr.methods.iba import InverseIBA, MultiLayerIBA, ReadoutIBA, RegressionIBA

    root = {"model": {"name": "tiny", "weights": "random", "layers": {"bottleneck": "conv2", "readout": ["conv1"]}},
            "dataset": {"name": "n"}}
    expect = {"iba": PerSampleIBA, "inverse_iba": InverseIBA, "regression_iba": RegressionIBA,
              "multilayer_iba": MultiLayerIBA, "readout_iba": ReadoutIBA}
    for name, cls in expect.items():
        cfg = OmegaConf.create({**root, "method": OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "method" / f"{name}.yaml")})
        method = instantiate(cfg.method)(model=TinyCNN())
        assert type(method) is cls and method.layers[0] == "conv2" and method.model_name == "tiny"


class _Planted:
    """Unpickling it would run code (``__reduce__``): it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.mark.parametrize("where", ["method.statistics", "cache"])
def test_a_planted_pickle_in_a_statistics_file_is_refused_without_running(tmp_path, where):
    """A statistics file a user names (``method.statistics=``) or finds in the cache is read as data
    (``weights_only=True``): a pickle that would run code is one error naming the file, and does not run."""
    from xattr.errors import XattrConfigError

    model = TinyCNN().eval()
    marker = tmp_path / "ran.txt"
    if where == "cache":
        fname, _ = st.cache_key(model, ["conv2"], 32)
        path = tmp_path / "iba_stats" / fname
    else:
        path = tmp_path / "stats.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": {}, "stats": _Planted(marker)}, path)
    with pytest.raises(XattrConfigError, match=f"^bad feature statistics {path}: cannot load it as data"):
        if where == "cache":
            st.load_or_estimate(model, ["conv2"], _loader(), tmp_path, n_samples=32)
        else:
            st.load_file(path, model, ["conv2"])
    assert not marker.exists()


def test_the_statistics_bar_counts_the_images_that_exist(monkeypatch):
    """10 000 samples asked of a dataset of 48: the bar's total is 48 (its ETA is the real one)."""
    totals = []
    real = st.progress

    def spy(*a, total=None, **kw):
        totals.append(total)
        return real(*a, total=total, **kw)

    monkeypatch.setattr(st, "progress", spy)
    data = torch.utils.data.TensorDataset(torch.randn(48, 3, 8, 8))
    loader = torch.utils.data.DataLoader(data, batch_size=16, collate_fn=lambda items: {"x": torch.stack([i[0] for i in items])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st.estimate(TinyCNN().eval(), ["conv2"], loader, n_samples=10_000)
    assert totals == [48]
