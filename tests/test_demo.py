"""`make demo` (python -m xattr.demo): one column per configured method, the shipped photos' labels, no
../shared needed (the IBA family reads the shipped statistics), the runs resumable."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from omegaconf import open_dict
from PIL import Image

from xattr.demo import compose_demo, demo

STATS = "method.statistics=${paths.root}/assets/stats/efficientnet_lite0-block_4-imagenet1000.pt"


def test_demo_draws_one_column_per_method_with_the_labels(tmp_path, capsys):
    cfg = compose_demo(["dataset.limit=2"])
    with open_dict(cfg):
        cfg.demo.out_dir = str(tmp_path / "demo")
        cfg.demo.methods.iba.overrides = [STATS, "method.steps=2"]
        cfg.demo.methods.input_iba.overrides = [STATS, "method.epochs=1", "method.n_targets=10", "method.n_groups=2",
                                                "method.gan_batch=5", "method.steps=2", "method.feat_steps=2"]
    path = demo(cfg)
    out = capsys.readouterr().out
    # the duration up front: xattr.engine.cost on the built methods, one forward measured here
    assert re.search(r"; about \d+ min on \d+ CPU cores?$", out.splitlines()[0]), out.splitlines()[0]
    methods = [line.split("\t")[0] for line in (tmp_path / "demo" / "methods.txt").read_text().splitlines()]
    assert methods == ["gradient", "grad_cam", "iba", "input_iba"]
    table = pd.read_csv(tmp_path / "demo" / "demo.csv")
    assert table["prediction"].tolist() == ["chickadee", "Egyptian_cat"]
    w, h = Image.open(path).size
    assert w > 1.5 * h  # 2 photos x (photo + 4 method columns)
    for m in methods:
        assert (tmp_path / "demo" / m / "per_image.parquet").is_file()
    assert "  bird: chickadee (0." in out and out.count("  bird: chickadee") == 1  # listed once, not per method
    # the shipped statistics were used, not estimated from the photos
    assert not (tmp_path / "demo" / "cache").exists()
    # a second demo with one method's settings changed makes that method's folder again, resumes the others
    with open_dict(cfg):
        cfg.demo.methods.iba.overrides = [STATS, "method.steps=3"]
    kept = (tmp_path / "demo" / "gradient" / "heatmaps" / "b0000000-2.npz").stat().st_mtime_ns
    demo(cfg)
    out = capsys.readouterr().out
    assert re.search(r"demo/iba was made with other settings \(method\.steps=2 \(here 3\)\): made again", out), out
    assert out.count("made again") == 1 and "0 batches computed" not in out.split("[iba]")[1].split("[input_iba]")[0]
    assert (tmp_path / "demo" / "gradient" / "heatmaps" / "b0000000-2.npz").stat().st_mtime_ns == kept  # resumed


def test_statistics_of_other_weights_are_refused(tmp_path):
    import torch

    from xattr.errors import XattrConfigError
    from xattr.methods.iba import PerSampleIBA
    from xattr.models.zoo import load_model

    net = load_model("efficientnet_lite0", weights="random").net
    iba = PerSampleIBA(net, "block_4", statistics="assets/stats/efficientnet_lite0-block_4-imagenet1000.pt")
    with pytest.raises(XattrConfigError, match="other weights"):
        iba.fit([{"x": torch.zeros(1, 3, 224, 224)}])
