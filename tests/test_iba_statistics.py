"""Feature statistics of IBA: Welford == direct estimates, active neurons, on-disk cache hit/miss/stale."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

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


# ------------------------------------------------------------------ issue 26: statistics pinned by hand


def test_defaults_the_warning_line_and_welfords_sample_count_edges():
    """The reference's defaults (10 000 samples, active = non-zero in more than 1%); the warning below 1 000
    samples is one whole line pointing at the caller (none at exactly 1 000, none with ``warn=False``); Welford
    needs two samples (two give ``|a - b| / sqrt 2``), fewer is one whole line."""
    import inspect

    for f in (st.estimate, st.load_or_estimate):
        assert inspect.signature(f).parameters["n_samples"].default == 10_000
    assert inspect.signature(st.FeatureStats.active).parameters["threshold"].default == 0.01
    s = st.FeatureStats(torch.zeros(3), torch.ones(3), torch.tensor([0.5, 0.51, 0.01]), 10)
    assert s.active(0.5).tolist() == [0.0, 1.0, 0.0] and s.active().tolist() == [1.0, 1.0, 0.0]
    model = TinyCNN().eval()
    x = torch.randn(1000, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st.estimate(model, ["conv1"], [{"x": x}], n_samples=1000)
        st.estimate(model, ["conv1"], [{"x": x}], n_samples=10, warn=False)
    with pytest.warns(UserWarning) as rec:
        st.estimate(model, ["conv1"], [{"x": x}], n_samples=999)
    assert [str(w.message) for w in rec] == ["feature statistics from only 999 samples; at least 1000 are recommended "
                                             "(reference: 10 000)"]
    assert rec[0].filename == __file__
    w = st.Welford()
    assert w.n == 0
    for n, batch in ((0, None), (1, torch.tensor([[3.0]]))):
        if batch is not None:
            w.update(batch)
        with pytest.raises(ValueError) as err:
            w.result()
        assert str(err.value) == f"need at least 2 samples to estimate feature statistics, got {n}"
    w.update(torch.tensor([[1.0]]))
    assert w.result().std.item() == pytest.approx(2 / 2**0.5)


class _Pair(nn.Module):
    """A layer whose output is a tuple (as transformer blocks): the statistics are its first item's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x), torch.full_like(x, 7.0)


class _TwoStage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = _Pair()

    def forward(self, x):
        return self.pair(x)[0].mean((2, 3))


def test_estimate_reads_tuples_tuple_outputs_and_no_batch_past_n_samples():
    """Tuple batches give their first item; a layer's tuple output its first item; ``n_samples`` = 33 of batches
    of 16 takes 16 + 16 + 1 images in three forwards and draws one batch more, no further."""
    torch.manual_seed(0)
    model = _TwoStage().eval()
    xs = [torch.randn(16, 3, 2, 2) for _ in range(6)]
    drawn, forwards = [], []
    model.register_forward_hook(lambda *a: forwards.append(1))

    def loader():
        for i, x in enumerate(xs):
            drawn.append(i)
            yield (x, torch.zeros(16))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = st.estimate(model, ["pair"], loader(), n_samples=33)["pair"]
    assert (s.n, len(drawn), len(forwards)) == (33, 4, 3)
    with torch.no_grad():
        feats = model.pair.conv(torch.cat(xs)[:33])
    torch.testing.assert_close(s.mean, feats.mean(0))
    torch.testing.assert_close(s.std, feats.std(0))


class _Tokens(nn.Module):
    pad_index = 0

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 3)

    def forward(self, x):
        return self.emb(x).sum(1)


def test_token_statistics_pool_the_real_tokens_and_key_the_file():
    """``tokens=True``: per hidden unit over the real tokens (the batch's ``mask``, else ``x != pad_index``), with a
    leading position axis of 1; the cache key says ``pooled: tokens``."""
    torch.manual_seed(0)
    model = _Tokens().eval()
    ids = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 0], [2, 2, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).bool()
    for batch, real in (({"x": ids}, ids != 0), ({"x": ids, "mask": mask}, mask)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = st.estimate(model, ["emb"], [batch], n_samples=3, tokens=True)["emb"]
        vec = model.emb.weight.detach()[ids[real]]  # (real tokens, 3)
        assert s.mean.shape == (1, 3) and s.n == int(real.sum())
        torch.testing.assert_close(s.mean, vec.mean(0, keepdim=True))
        torch.testing.assert_close(s.std, vec.std(0, keepdim=True))
    _, key = st.cache_key(model, ["emb"], 3, tokens=True)
    assert key["pooled"] == "tokens" and "pooled" not in st.cache_key(model, ["emb"], 3)[1]


def test_cache_key_file_name_and_errors_by_hand(tmp_path):
    """The cache file name ``{model}-{weights}-{layers joined by +}-{dataset}-n{n}-{sha1 of the sorted JSON key}``,
    each part slugged to ``[A-Za-z0-9_.+=-]`` (48 characters at most), ``unnamed`` for no weights / dataset; the
    statistics file's errors are whole lines."""
    import hashlib
    import json

    from xattr.errors import XattrConfigError

    model = TinyCNN().eval()
    name, key = st.cache_key(model, ["conv1", "conv3"], 32, model_name="my model/v1" + "x" * 50)
    assert key == {"model": "my model/v1" + "x" * 50, "weights": "unnamed", "layers": ["features.0", "features.5"],
                   "dataset": "unnamed", "n_samples": 32, "fingerprint": st.weights_fingerprint(model)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    assert name == f"{('my_model_v1' + 'x' * 50)[:48]}-unnamed-features.0+features.5-unnamed-n32-{digest}.pt"
    missing = tmp_path / "none.pt"
    with pytest.raises(XattrConfigError) as err:
        st.load_file(missing, model, ["conv1"])
    assert str(err.value) == (f"missing feature statistics: put it at {missing} (a file written by an IBA run into "
                              "<cache_dir>/iba_stats/)")
    for blob, why in (({"key": {}}, "no 'stats' in it; valid choices: a file written by an IBA run into "
                                    "<cache_dir>/iba_stats/"),
                      (None, "cannot load it as data (UnpicklingError); valid choices: a file written by an IBA run "
                             "into <cache_dir>/iba_stats/ (delete a cached one to estimate again)")):
        path = tmp_path / "bad.pt"
        if blob is None:
            path.write_bytes(b"not a torch file")
        else:
            torch.save(blob, path)
        with pytest.raises(XattrConfigError) as err:
            st.load_file(path, model, ["conv1"])
        assert str(err.value) == f"bad feature statistics {path}: {why}"


def test_the_shipped_statistics_file_keeps_its_key_and_loads(tmp_path):
    """``assets/stats/`` was written by an earlier xattr (its key holds the weights' fingerprint): today's
    ``cache_key`` of the same model must give that key (else every cache and shipped file is orphaned), and
    ``load_file`` returns its statistics; other weights or a layer it lacks are one whole line."""
    from xattr.errors import XattrConfigError
    from xattr.models.zoo import load_model

    path = Path(__file__).resolve().parents[1] / "assets" / "stats" / "efficientnet_lite0-block_4-imagenet1000.pt"
    blob = torch.load(path, weights_only=True)
    net = load_model("efficientnet_lite0", weights="imagenet").net
    assert st.cache_key(net, ["block_4"], 1000, "efficientnet_lite0", "imagenet", "imagenet")[1] == blob["key"]
    s = st.load_file(path, net, ["block_4"])["block_4"]
    for f in ("mean", "std", "nonzero"):
        assert torch.equal(getattr(s, f), next(iter(blob["stats"].values()))[f])
    assert s.n == 1000
    with pytest.raises(XattrConfigError) as err:
        st.load_file(path, TinyCNN(), ["conv1"])
    assert str(err.value) == (f"feature statistics {path} belong to other weights (model 'efficientnet_lite0', "
                              "weights 'imagenet'); valid choices: a file estimated with this model")
    with pytest.raises(XattrConfigError) as err:
        st.load_file(path, net, ["block_4", "block_3"])
    assert str(err.value) == "unknown layer of the statistics file 'block_3'; valid choices: _blocks.4"


def test_a_stale_cache_is_one_whole_warning_and_the_cache_folder_is_made(tmp_path):
    model = TinyCNN().eval()
    cache = tmp_path / "a" / "b"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st.load_or_estimate(model, ["conv1"], _loader(), cache, n_samples=32)
    fname, key = st.cache_key(model, ["conv1"], 32)
    path = cache / "iba_stats" / fname
    blob = torch.load(path, weights_only=True)
    blob["key"] = {**key, "n_samples": 31}
    torch.save(blob, path)
    with pytest.warns(UserWarning) as rec:
        st.load_or_estimate(model, ["conv1"], _loader(), cache, n_samples=32, warn=False)
    assert [str(w.message) for w in rec] == [f"stale IBA statistics cache {path} (key {blob['key']} != {key}); "
                                             "re-estimating"]
    assert rec[0].filename == __file__
