"""Dataset-level analyses: the streaming pooled Sensitivity-N equals the all-at-once correlation, merges
across shards, and a killed run resumes it without losing or double-counting a batch."""

from __future__ import annotations

import shutil

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
