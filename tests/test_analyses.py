"""Dataset-level analyses: the streaming pooled Sensitivity-N equals the all-at-once correlation, merges
across shards, and a killed run resumes it without losing or double-counting a batch."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import compose_cfg
from xattr.analyses.sensitivity_n import PooledSensitivityN, pooled_curve
from xattr.run import run


def _pairs(seed: int, b: int = 5, n_values=(1, 4, 16), m: int = 7):
    g = torch.Generator().manual_seed(seed)
    x_axis = torch.tensor([float(v) for v in n_values for _ in range(m)])
    a = torch.randn(b, len(x_axis), generator=g)
    d = 0.5 * a + torch.randn(b, len(x_axis), generator=g) * x_axis / 8  # correlation falls with n
    return a, d, x_axis


def test_streaming_equals_pooled_at_once_and_shards_merge():
    batches = [_pairs(s) for s in range(4)]
    whole_a = torch.cat([b[0] for b in batches])
    whole_d = torch.cat([b[1] for b in batches])
    values, corr = pooled_curve(whole_a, whole_d, batches[0][2])
    streamed = PooledSensitivityN()
    for a, d, xa in batches:
        streamed.add(a, d, xa)
    df = streamed.compute()
    assert df["n"].tolist() == values.tolist()
    assert torch.allclose(torch.tensor(df["correlation"].to_numpy()).float(), corr, atol=1e-6)
    assert (df["pairs"] == 4 * 5 * 7).all()
    assert corr[0] > corr[-1]  # the synthetic case: less correlation at larger n
    left, right = PooledSensitivityN(), PooledSensitivityN()
    for i, (a, d, xa) in enumerate(batches):
        (left if i % 2 else right).add(a, d, xa)
    restored = PooledSensitivityN()
    restored.load_state_dict(left.state_dict())
    restored.merge(right)
    pd.testing.assert_frame_equal(restored.compute(), df)


def test_other_n_values_are_refused():
    an = PooledSensitivityN()
    an.add(*_pairs(0))
    with pytest.raises(ValueError, match="n values changed"):
        an.add(*_pairs(1, n_values=(1, 2, 3)))


FAST = ["model=custom", "dataset=samples", "target=top1", "batch_size=2", "trainer=cpu", "logger=none",
        "trainer.enable_progress_bar=false", "method=random", "metric=[sensitivity_n]",
        "metric.sensitivity_n.protocol=iba", "metric.sensitivity_n.tile=56", "metric.sensitivity_n.n_masks=4",
        "metric.sensitivity_n.n=[1,4,8]", "analysis=[pooled_sensitivity_n]", "dataset.limit=5"]


def test_killed_run_resumes_the_analysis_without_double_counting(tmp_path):
    full = run(compose_cfg(FAST, output_dir=tmp_path / "full"))
    expect = pd.read_csv(full / "analyses" / "pooled_sensitivity_n.csv")
    assert (expect["pairs"] == 5 * 4).all() and expect["correlation"].notna().all()
    # a copy killed after the analysis saved batch 2's state but before its heatmaps (the done marker)
    killed = tmp_path / "killed"
    shutil.copytree(full, killed)
    (killed / "heatmaps" / "b0000002-2.npz").unlink()
    (killed / "analyses" / "pooled_sensitivity_n.csv").unlink()
    again = run(compose_cfg(FAST, output_dir=killed))
    pd.testing.assert_frame_equal(pd.read_csv(again / "analyses" / "pooled_sensitivity_n.csv"), expect)
    state = torch.load(full / "analyses" / "pooled_sensitivity_n.pt", weights_only=False)
    assert state["keys"] == ["b0000000-2", "b0000002-2", "b0000004-1"]
    # a run that stopped after two batches (state holds them), resumed over the whole set: adds the third once
    part = tmp_path / "part"
    run(compose_cfg([*FAST[:-1], "dataset.limit=4"], output_dir=part))
    assert torch.load(part / "analyses" / "pooled_sensitivity_n.pt", weights_only=False)["keys"] == ["b0000000-2", "b0000002-2"]
    resumed = run(compose_cfg(FAST, output_dir=part))
    pd.testing.assert_frame_equal(pd.read_csv(resumed / "analyses" / "pooled_sensitivity_n.csv"), expect)


def _ancona_pairs(seed: int, b: int, n_values=(1, 3, 6), m: int = 5, d: int = 12):
    """Sensitivity-N's pairs from its definition (Ancona et al., ICLR 2018), one image and one subset at a time:
    ``f(x) = tanh(w . x)``, attribution ``x * w``; per random subset ``S`` of ``n`` features, the sum of the
    attributions over ``S`` and the output drop ``f(x) - f(x with S zeroed)``. Columns n-major, ``m`` per n."""
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-1, 2, d, dtype=torch.float64)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    attr, drop = torch.zeros(b, len(n_values) * m), torch.zeros(b, len(n_values) * m)
    for i in range(b):
        for j, n in enumerate(n_values):
            for k in range(m):
                subset = torch.randperm(d, generator=g)[:n]
                removed = x[i].clone()
                removed[subset] = 0
                attr[i, j * m + k] = float((x[i] * w)[subset].sum())
                drop[i, j * m + k] = float(torch.tanh(w @ x[i]) - torch.tanh(w @ removed))
    return attr, drop, torch.tensor([float(n) for n in n_values for _ in range(m)])


def test_pooled_correlation_is_scipys_pearson_over_every_finite_pair_of_each_n():
    """One Pearson correlation per n over all (image, subset) pairs of all batches (IBA paper, fig. 6): scipy's
    ``pearsonr`` on the pooled pairs; the streaming sums leave out a pair with a non-finite side."""
    from scipy.stats import pearsonr

    batches = [_ancona_pairs(0, 3), _ancona_pairs(1, 2), _ancona_pairs(2, 4)]
    batches[1][0][0, 0], batches[1][1][1, 7], batches[2][1][3, 14] = float("nan"), float("inf"), float("nan")
    streamed = PooledSensitivityN()
    for a, d, xa in batches:
        streamed.add(a, d, xa)
    df = streamed.compute()
    assert list(df.columns) == ["n", "correlation", "pairs"] and df["n"].tolist() == [1.0, 3.0, 6.0]
    a = torch.cat([b[0] for b in batches]).numpy()
    d = torch.cat([b[1] for b in batches]).numpy()
    for j in range(3):
        aj, dj = a[:, 5 * j:5 * j + 5].ravel(), d[:, 5 * j:5 * j + 5].ravel()
        ok = np.isfinite(aj) & np.isfinite(dj)
        assert df["pairs"][j] == ok.sum() == 45 - 1  # one bad pair per n (n=1: the NaN, n=3: the inf, n=6: the NaN)
        assert df["correlation"][j] == pytest.approx(pearsonr(aj[ok], dj[ok])[0], abs=1e-6)
    clean = [_ancona_pairs(s, 3) for s in (3, 4)]
    values, corr = pooled_curve(torch.cat([c[0] for c in clean]), torch.cat([c[1] for c in clean]), clean[0][2])
    ca, cd = torch.cat([c[0] for c in clean]).numpy(), torch.cat([c[1] for c in clean]).numpy()
    assert values.tolist() == [1.0, 3.0, 6.0] and corr.dtype == torch.float32
    for j in range(3):
        assert corr[j].item() == pytest.approx(pearsonr(ca[:, 5 * j:5 * j + 5].ravel(), cd[:, 5 * j:5 * j + 5].ravel())[0], abs=1e-6)


def test_update_reads_the_named_metric_and_constant_pairs_have_no_correlation():
    from xattr.metrics.base import MetricResult

    a, d, xa = _ancona_pairs(5, 3)
    res = MetricResult(curves={"attr_sum": a, "output_drop": d}, x_axis={"attr_sum": xa})
    default, named, direct = PooledSensitivityN(), PooledSensitivityN(metric="sens_iba"), PooledSensitivityN()
    assert default.metric == "sensitivity_n" and default.compute().empty
    assert list(default.compute().columns) == ["n", "correlation", "pairs"]
    default.update(None, None, None, None, results={"sensitivity_n": res, "other": None})
    named.update(None, None, None, None, results={"sens_iba": res})
    direct.add(a, d, xa)
    pd.testing.assert_frame_equal(default.compute(), direct.compute())
    pd.testing.assert_frame_equal(named.compute(), direct.compute())
    assert named.state_dict()["metric"] == "sens_iba"
    msg = "\"pooled_sensitivity_n needs metric 'sens_iba' with protocol 'iba' (curves attr_sum, output_drop) in this run\""
    for results in (None, {}, {"sensitivity_n": res}, {"sens_iba": MetricResult(curves={"output_drop": d})}):
        with pytest.raises(KeyError) as err:
            named.update(None, None, None, None, results=results)
        assert str(err.value) == msg
    flat = PooledSensitivityN()
    flat.add(torch.ones(2, 4), torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), torch.tensor([1.0, 1, 2, 2]))
    # constant attribution sums: no correlation; at 0.1 (7 pairs) the sums leave a covariance of -2e-16 over a
    # variance of exactly 0, NaN too (not -inf)
    tenth = PooledSensitivityN()
    tenth.add(torch.full((1, 7), 0.1), torch.arange(7.0)[None] * 0.37 + 1, torch.ones(7))
    assert flat.compute()["correlation"].isna().all() and tenth.compute()["correlation"].isna().all()
    # exactly linear pairs: +1 and -1
    line = PooledSensitivityN()
    line.add(torch.tensor([[1.0, 2, 1, 2], [3, 5, 3, 5]]), torch.tensor([[2.0, 4, -1, -2], [6, 10, -3, -5]]),
             torch.tensor([1.0, 1, 2, 2]))
    assert line.compute()["correlation"].tolist() == pytest.approx([1.0, -1.0], abs=1e-12)
    small = PooledSensitivityN()  # a correlation has no scale: the same pairs / 1000 (variances far below 1)
    small.add(torch.tensor([[1.0, 2, 1, 2], [3, 5, 3, 5]]) / 1000, torch.tensor([[2.0, 4, -1, -2], [6, 10, -3, -5]]) / 1000,
              torch.tensor([1.0, 1, 2, 2]))
    assert small.compute()["correlation"].tolist() == pytest.approx([1.0, -1.0], abs=1e-9)


def test_merge_copies_into_an_empty_state_and_refuses_other_n():
    a, d, xa = _ancona_pairs(6, 2)
    src, empty, dst = PooledSensitivityN(), PooledSensitivityN(), PooledSensitivityN()
    src.add(a, d, xa)
    before = src.compute()
    dst.merge(empty)  # nothing to add
    assert dst.n is None and dst.compute().empty
    dst.merge(src)
    pd.testing.assert_frame_equal(dst.compute(), before)
    src.add(a, d, xa)  # the merged copy is not a view of src's state
    pd.testing.assert_frame_equal(dst.compute(), before)
    src.merge(empty)
    assert (src.compute()["pairs"] == 2 * 2 * 5).all()
    state = empty.state_dict()  # a shard that saw no batch saves (and restores) an empty state
    assert state["n"] is None and state["stats"] == {}
    restored = PooledSensitivityN()
    restored.load_state_dict(state)
    restored.merge(src)
    pd.testing.assert_frame_equal(restored.compute(), src.compute())
    other = PooledSensitivityN()
    other.add(*_pairs(0))
    with pytest.raises(ValueError) as err:
        dst.merge(other)
    assert str(err.value) == "cannot merge Sensitivity-N states with different n values"
    with pytest.raises(ValueError) as err:
        dst.add(*_pairs(0))
    assert str(err.value) == "Sensitivity-N n values changed between batches: [1.0, 3.0, 6.0] vs [1.0, 4.0, 16.0]"


def test_the_engine_hands_each_analysis_what_it_needs_and_each_is_named_after_its_option():
    """The engine passes an analysis only the extras its ``needs`` name (``select_extras``): the pooled analysis
    gets the batch's metric results, the semantic one the method's auxiliaries and the method; and an analysis's
    ``name`` is the option that builds it (``analysis=[<name>]``, the key of its files)."""
    import importlib

    from omegaconf import OmegaConf

    from xattr.analyses.semantic import SemanticConcepts
    from xattr.config import CONF_DIR
    from xattr.engine.module import select_extras
    from xattr.methods.base import Explanation
    from xattr.metrics.base import MetricResult

    a, d, xa = _ancona_pairs(7, 2)
    res = {"sensitivity_n": MetricResult(curves={"attr_sum": a, "output_drop": d}, x_axis={"attr_sum": xa})}
    aux = {"semantic/unit": torch.tensor([3, 1]), "semantic/concept": torch.tensor([0, -1])}
    explanation = Explanation(torch.zeros(2, 1, 4, 4), aux)
    method = type("M", (), {"concepts": {0: "blob"}})()
    context = {"method": method, "method_factory": None, "results": res}
    pooled, direct = PooledSensitivityN(), PooledSensitivityN()
    pooled.update(None, None, None, None, **select_extras(pooled.needs, {"x": a}, explanation, context, torch.device("cpu")))
    direct.add(a, d, xa)
    pd.testing.assert_frame_equal(pooled.compute(), direct.compute())
    sem = SemanticConcepts()
    sem.update(None, None, torch.tensor([0, 0]), None,
               **select_extras(sem.needs, {"x": a}, explanation, context, torch.device("cpu")))
    assert sem.compute()["detector_share"].tolist() == [0.5, 0.5] and sem.concepts == {0: "blob"}
    checked = 0
    for path in sorted((CONF_DIR / "analysis").glob("*.yaml")):
        node = OmegaConf.load(path)
        if "_target_" not in node:  # a variant (defaults: another option)
            continue
        module, _, cls = node["_target_"].rpartition(".")
        assert getattr(importlib.import_module(module), cls).name == path.stem, path.name
        checked += 1
    assert checked >= 4


def test_constant_sums_of_any_value_have_no_correlation_as_scipy_says():
    """Equal values whose rounded mean is not themselves (1.1 x 11 in float64) leave a spread of ~1e-16 in raw
    sums and in a centred pass: the correlation of that residue came out as 0.0. scipy's ``pearsonr`` returns NaN
    for any constant input; so do the pooled analysis, :func:`pooled_curve` and the per-image ``pearson`` of
    the metrics (shifted by one of the values, equal values are exactly 0)."""
    import warnings

    from scipy.stats import pearsonr

    from xattr.metrics._perturb import pearson

    drops = torch.arange(11.0, dtype=torch.float64)[None] * 0.37 + 1
    for value in (1.1, 0.1, 0.7, 3.3, 1e6 + 0.1):
        flat = torch.full((1, 11), value, dtype=torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isnan(pearsonr(flat[0].numpy(), drops[0].numpy())[0])
        pooled = PooledSensitivityN()
        pooled.add(flat, drops, torch.ones(11))
        assert pooled.compute()["correlation"].isna().all(), value
        assert torch.isnan(pooled_curve(flat, drops, torch.ones(11))[1]).all(), value
        assert torch.isnan(pearson(flat, drops)).all() and torch.isnan(pearson(drops, flat)).all(), value
        # the constant side split over two batches and merged: still constant; a second value makes it vary
        first, second = PooledSensitivityN(), PooledSensitivityN()
        first.add(flat[:, :5], drops[:, :5], torch.ones(5))
        second.add(flat[:, 5:], drops[:, 5:], torch.ones(6))
        first.merge(second)
        assert first.compute()["correlation"].isna().all()
        other = PooledSensitivityN()
        other.add(flat[:, :1] + 1, drops[:, :1] + 1, torch.ones(1))
        first.merge(other)
        assert first.compute()["correlation"].notna().all()
    # a state saved before the shift (sums of the raw values, no ka / kd) loads with shift 0 and merges right
    pooled = PooledSensitivityN()
    a, d, xa = _ancona_pairs(7, 3)
    pooled.add(a, d, xa)
    raw = {"count": [], "sa": [], "sd": [], "saa": [], "sdd": [], "sad": []}
    for v in (1.0, 3.0, 6.0):
        aj, dj = a[:, xa == v].reshape(-1).double(), d[:, xa == v].reshape(-1).double()
        for k, val in zip(raw, (aj.numel(), aj.sum(), dj.sum(), (aj * aj).sum(), (dj * dj).sum(), (aj * dj).sum())):
            raw[k].append(float(val))
    old = {"metric": "sensitivity_n", "n": pooled.n.clone(),
           "stats": {k: torch.tensor(v, dtype=torch.float64) for k, v in raw.items()}}
    loaded = PooledSensitivityN()
    loaded.load_state_dict(old)
    pd.testing.assert_frame_equal(loaded.compute(), pooled.compute(), atol=1e-12, rtol=0)
    loaded.merge(pooled)  # the saved state is a copy: merging into the loaded one leaves the source as it was
    assert loaded.compute()["pairs"].tolist() == [2 * p for p in pooled.compute()["pairs"]] == [30, 30, 30]
    twice = PooledSensitivityN()
    for _ in range(2):
        twice.add(a, d, xa)
    pd.testing.assert_frame_equal(loaded.compute(), twice.compute(), atol=1e-12, rtol=0)


def _exact_pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's r of the float64 values as they are, in exact rational arithmetic (the square root last)."""
    from decimal import Decimal, localcontext
    from fractions import Fraction

    xs, ys = [Fraction(float(v)) for v in x.ravel()], [Fraction(float(v)) for v in y.ravel()]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((p - mx) * (q - my) for p, q in zip(xs, ys))
    sxx, syy = sum((p - mx) ** 2 for p in xs), sum((q - my) ** 2 for q in ys)
    with localcontext() as ctx:
        ctx.prec = 40
        dec = lambda f: Decimal(f.numerator) / Decimal(f.denominator)  # noqa: E731
        return float(dec(sxy) / dec(sxx * syy).sqrt())


def test_sums_far_from_zero_with_a_small_spread_correlate_exactly():
    """Attribution sums around 1e9 varying by 1e-6 (a few float64 steps) and drops around 1e8: the one-pass
    variance of the raw values rounds to nothing (it gave 2.8e-8 for a correlation of 0.59 on such data), and
    even a two-pass formula is off by its rounded mean (scipy's pearsonr: 0.9151, warning that the input is
    nearly constant; exact: 0.9179). The shifted sums give the exact value, streamed in three batches, merged
    from shards made with other shifts, and after a save and load; so does the per-image ``pearson``. A constant
    side stays NaN after a save and load."""
    from xattr.metrics._perturb import pearson

    g = torch.Generator().manual_seed(0)
    a = 1e9 + 1e-6 * torch.randint(0, 5, (6, 8), generator=g).double()
    d = 1e8 + 1e-7 * (a - 1e9) / 1e-6 + 1e-7 * torch.randint(0, 3, (6, 8), generator=g).double()
    xa = torch.tensor([1.0] * 4 + [2.0] * 4)
    want = [_exact_pearson(a[:, :4], d[:, :4]), _exact_pearson(a[:, 4:], d[:, 4:])]
    assert 0.3 < min(want) and max(want) < 0.99
    streamed = PooledSensitivityN()
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):
        streamed.add(a[rows], d[rows], xa)
    assert streamed.compute()["correlation"].tolist() == pytest.approx(want, abs=1e-12)
    assert float(pearson(a[:, :4].ravel(), d[:, :4].ravel())) == pytest.approx(want[0], abs=1e-12)
    empty = pearson(torch.zeros(3, 0), torch.zeros(3, 0))  # no pairs: NaN per row
    assert empty.shape == (3,) and torch.isnan(empty).all()
    single = pearson(torch.tensor([[2.0], [3.0]]), torch.tensor([[1.0], [5.0]]))  # one pair: no spread, NaN
    assert single.shape == (2,) and torch.isnan(single).all()
    shards = [PooledSensitivityN() for _ in range(3)]
    for shard, rows in zip(shards, (slice(4, 6), slice(0, 1), slice(1, 4))):  # each its own shift
        shard.add(a[rows], d[rows], xa)
    merged = PooledSensitivityN()
    for shard in shards:
        merged.merge(shard)
    assert merged.compute()["correlation"].tolist() == pytest.approx(want, abs=1e-12)
    assert merged.compute()["pairs"].tolist() == [24, 24]
    loaded = PooledSensitivityN()
    loaded.load_state_dict(streamed.state_dict())
    pd.testing.assert_frame_equal(loaded.compute(), streamed.compute())
    flat = PooledSensitivityN()
    flat.add(torch.full((2, 4), 1.1, dtype=torch.float64), d[:2, :4], xa[:4])
    again = PooledSensitivityN()
    again.load_state_dict(flat.state_dict())
    assert again.compute()["correlation"].isna().all()
    # an n with no finite pair in the first shard takes the next shard's shift when merged
    half = PooledSensitivityN()
    half.add(torch.cat([torch.full((1, 4), float("nan"), dtype=torch.float64), a[:1, 4:]], 1), d[:1], xa)
    half.merge(shards[2])
    assert half.compute()["correlation"].tolist() == pytest.approx(
        [_exact_pearson(a[1:4, :4], d[1:4, :4]), _exact_pearson(a[0:4, 4:], d[0:4, 4:])], abs=1e-12)
