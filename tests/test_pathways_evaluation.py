"""Evaluations of the critical-pathways chapter: the dead-neuron analysis, the Jaccard overlap of pathways
between runs, and the LeRF metric."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_pathways_pruning import dead_trap
from xattr.analyses.dead_neurons import DeadNeurons, dead_shares, pathway_jaccard
from xattr.core.store import RunStore
from xattr.errors import XattrConfigError
from xattr.methods.pathways import GreedyPruning, NeuronIntGrad, NeuronMCT, pack_bits
from xattr.metrics.lerf import LeRF
from xattr.models.tiny import PixelLinear, TinyCNN


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(1)
    return TinyCNN(4).eval().requires_grad_(False)


def _update(analysis, net, x, exp):
    analysis.update(net, x, torch.zeros(len(x), dtype=torch.long), exp.maps,
                    **{k: exp.aux[k] for k in analysis.needs})


def test_dead_share_is_zero_for_contributions_and_positive_for_greedy(cnn):
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    t = cnn(x).argmax(1)
    for method in (NeuronMCT(cnn, sparsity=0.9), NeuronIntGrad(cnn, sparsity=0.9, n_steps=3)):
        an = DeadNeurons()
        _update(an, cnn, x, method.explain(x, t))
        df = an.compute().set_index("layer")
        assert df.loc["all", "share"] == 0 and df.loc["all", "n"] == 4
        assert list(df.index) == ["all", "features.1", "features.3", "features.6"]
        assert df.loc["all", "kept"] == pytest.approx(0.1, abs=0.002) and 0 < df.loc["all", "dead"] < 1
    net, one = dead_trap(), torch.ones(1, 1)
    an = DeadNeurons()
    _update(an, net, one, GreedyPruning(net, sparsity=0.5, prune_step=0.1).explain(one, torch.tensor([0])))
    df = an.compute().set_index("layer")
    assert df.loc["all", "share"] == pytest.approx(1 / 3) and df.loc["3", "share"] == pytest.approx(0.5)


def test_dead_shares_by_hand():
    e = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    dead = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    net, layers = dead_shares(e, dead, [2, 3])
    assert net[0] == pytest.approx(2 / 3) and net[1].isnan()
    assert layers[0].tolist() == [0.5, 1.0] and layers[1].isnan().all()


def test_analysis_state_streams_merges_and_resumes(cnn):
    x = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    t = cnn(x).argmax(1)
    method = GreedyPruning(cnn, sparsity=0.9, variant="reference", iterations=4, percentile_step=0.2)
    whole = DeadNeurons()
    _update(whole, cnn, x, method.explain(x, t))
    a, b = DeadNeurons(), DeadNeurons()
    _update(a, cnn, x[:2], method.explain(x[:2], t[:2]))
    _update(b, cnn, x[2:], method.explain(x[2:], t[2:]))
    restored = DeadNeurons()
    restored.load_state_dict(a.state_dict())
    restored.merge(b)
    pd.testing.assert_frame_equal(restored.compute(), whole.compute())
    assert whole.compute().set_index("layer").loc["all", "share"] > 0.3


def test_analysis_refuses_a_method_without_pathways(cnn):
    with pytest.raises(XattrConfigError, match="valid choices: method=neuron_mct"):
        DeadNeurons().update(cnn, torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 8, 8))


def _store(root, name, masks, sizes):
    batch = {"id": [f"img{i}" for i in range(len(masks))], "index": torch.arange(len(masks)),
             "label": torch.zeros(len(masks), dtype=torch.long)}
    m = torch.tensor(masks, dtype=torch.bool)
    aux = {"pathway/mask": pack_bits(m), "pathway/layer_sizes": torch.tensor([sizes] * len(masks))}
    RunStore(root / name).write("b0000000-2", batch, batch["label"], torch.zeros(len(masks), 1, 2, 2),
                                torch.ones(len(masks), 3) / 3, aux=aux)
    return root / name


def test_pathway_jaccard_between_runs(tmp_path):
    a = _store(tmp_path, "a", [[1, 1, 0, 0, 1], [1, 0, 0, 0, 0]], [2, 3])
    b = _store(tmp_path, "b", [[1, 0, 0, 1, 1], [0, 1, 0, 0, 0]], [2, 3])
    net, layers = pathway_jaccard({"A": a, "B": b})
    assert net.loc["A", "A"] == 1 and net.loc["A", "B"] == net.loc["B", "A"]
    assert net.loc["A", "B"] == pytest.approx(np.mean([2 / 4, 0]))
    ab = layers[(layers.a == "A") & (layers.b == "B")].set_index("layer")
    assert ab.loc[0, "jaccard"] == pytest.approx(np.mean([1 / 2, 0])) and ab.loc[1, "jaccard"] == pytest.approx(1 / 2)
    assert ab.loc[1, "images"] == 1  # image 2 has no neuron of layer 1 in either pathway


# ------------------------------------------------------------------------------------------------ LeRF
def test_lerf_ranks_the_true_weight_map_best():
    """By |map| (rank: abs): the exact per-pixel contributions' magnitudes change the output least."""
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(3, 3, 8, 8)
    w[0] = torch.randn(3, 8, 8, generator=g) * 0.2          # only the target's logit moves
    net = PixelLinear(w).eval().requires_grad_(False)
    x = torch.randn(6, 3, 8, 8, generator=g)
    t = torch.zeros(6, dtype=torch.long)
    truth = (w[0] * x).sum(1, keepdim=True)                      # each pixel's exact contribution to the logit
    maps = {"truth": truth, "weight": w[0].abs().sum(0).expand(6, 1, 8, 8),
            "random": torch.rand(6, 1, 8, 8, generator=g), "inverse": 1 / (truth.abs() + 1e-3)}
    metric = LeRF(rank="abs", chunk=17)
    auc = {k: metric(net, x, t, m).scores["auc"].mean().item() for k, m in maps.items()}
    assert auc["truth"] < min(auc["weight"], auc["random"], auc["inverse"]), auc
    res = metric(net, x, t, maps["random"])
    assert res.curves["change"].shape == (6, 10) and res.x_axis["change"][-1] == pytest.approx(0.1)


def test_lerf_auc_over_q_and_normalised_by_the_q_range():
    class Const(torch.nn.Module):  # p0 = 0.5; any removal: p = 0.25 -> change 0.5 everywhere
        num_classes = 2

        def forward(self, x):
            z = torch.where(x.flatten(1).abs().sum(1) < 64, torch.log(torch.tensor(1 / 3.0)), torch.tensor(0.0))
            return torch.stack([z, torch.zeros_like(z)], 1)

    x = torch.ones(2, 1, 8, 8)
    res = LeRF(fractions=[0.02, 0.05, 0.1])(Const(), x, torch.zeros(2, dtype=torch.long), torch.rand(2, 1, 8, 8))
    # change 0.5 at every q: area 0.5 * (0.10 - 0.02) = 0.04; divided by the range 0.08: 0.5
    assert torch.allclose(res.scores["auc"], torch.full((2,), 0.04))
    assert torch.allclose(res.scores["auc_normalised"], torch.full((2,), 0.5)) and torch.allclose(res.scores["p0"], torch.full((2,), 0.5))
    with pytest.raises(XattrConfigError, match="bad fractions"):
        LeRF(fractions=[0.1, 0.05])


# ------------------------------------------------------------------------------------ through the engine
FAST = ["experiment=pathways_f1_dead", "model=cifar_resnet20", "model.weights=random", "dataset=samples", "dataset.limit=2",
        "batch_size=2", "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false", "metric=[lerf]"]


def test_f1_runs_write_dead_shares_and_the_table_adds_jaccard(tmp_path):
    from tests.helpers import compose_cfg
    from xattr.run import run
    from xattr.tables import build_table

    dirs = {}
    for method, extra in (("neuron_mct", []), ("neuron_intgrad", ["method.n_steps=2", "method.chunk=null"])):
        cfg = compose_cfg([*FAST, f"method={method}", *extra], output_dir=tmp_path / "multirun" / method)
        dirs[method] = run(cfg)
    dead = {m: pd.read_csv(d / "analyses" / "dead_neurons.csv").set_index("layer") for m, d in dirs.items()}
    assert dead["neuron_mct"].loc["all", "share"] == 0 and dead["neuron_mct"].loc["all", "n"] == 2
    assert len(dead["neuron_mct"]) == 1 + 19                      # ResNet-20: 19 ReLU calls
    assert dead["neuron_intgrad"].loc["all", "share"] == 0
    assert dead["neuron_intgrad"].loc["all", "kept"] == pytest.approx(0.1, abs=1e-4)
    mask = RunStore(dirs["neuron_mct"]).aux("pathway/")
    assert len(mask) == 2 and next(iter(mask.values()))["mask"].dtype == np.uint8
    per_image = RunStore(dirs["neuron_mct"]).per_image()
    assert per_image["lerf/auc"].notna().all()
    df = build_table("pathways_f1_dead", [tmp_path / "multirun"], tmp_path / "tables").set_index("")
    assert df.loc["NeuronMCT", "dead share (paper)"] == "0.000"
    assert df.loc["NeuronMCT", "dead share (ours)"].startswith("0.000 ± 0.000 (cifar_resnet20)")
    assert df.loc["DGR(init=1), gates > percentile (reference code)", "dead share (ours)"] == "–"
    jac = pd.read_csv(tmp_path / "tables" / "pathways_f1_dead_jaccard.csv", index_col=0)
    assert jac.loc["NeuronMCT", "NeuronMCT"] == 1 and 0 < jac.loc["NeuronMCT", "NeuronIntGrad"] < 1
    assert "Jaccard overlap" in (tmp_path / "tables" / "pathways_f1_dead.md").read_text()


# ------------------------------------------------------------------------------- sanity check and tables
def test_sanity_check_max_abs_and_pathway_methods_rebuild(cnn):
    from xattr.metrics.sanity_check import CascadingRandomisation, normalise_map

    a = np.array([[-2.0, 1.0], [0.5, 0.0]])
    assert np.array_equal(normalise_map(a, "max_abs"), a / 2)
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    t = cnn(x).argmax(1)
    method = NeuronMCT(cnn, sparsity=0.7)
    metric = CascadingRandomisation(layers=["fc", "conv3", "conv2", "conv1"], init="normal", std=0.1,
                                    normalise="max_abs")
    res = metric(cnn, x, t, method.attribute(x, t), method=method)
    ssim = res.curves["ssim"]
    assert ssim.shape == (2, 5) and torch.allclose(ssim[:, 0], torch.ones(2))   # step 0: the same map
    assert (res.curves["spearman_abs"][:, -1] < 0.9).all()                      # fully randomised: a new map


def test_lerf_and_sanity_tables_place_ours_beside_the_paper(tmp_path):
    from omegaconf import OmegaConf

    from xattr.tables import build_table

    def fake(name, method, dataset, model, cols, metric):
        d = tmp_path / name
        d.mkdir()
        OmegaConf.save(OmegaConf.create({"method_name": method, "model": {"name": model}, "dataset": {"name": dataset},
                                         "method": {}, "metric": metric}), d / "config.yaml")
        pd.DataFrame({"id": ["0", "1"], "index": [0, 1], "label": [1, 1], "target": [1, 1], "prob": [0.9, 0.9],
                      "top1": [1, 1], **cols}).to_parquet(d / "per_image.parquet", index=False)

    lerf = {"lerf": {"_target_": "xattr.metrics.lerf.LeRF"}}
    fake("a", "neuron_intgrad_star", "imagenet", "mobilenet_v2", {"lerf/auc": [0.01, 0.03], "lerf/p0": [0.5, 0.5]}, lerf)
    fake("b", "grad_cam", "cifar10", "cifar_resnet20", {"lerf/auc": [0.02, 0.02], "lerf/auc_normalised": [0.2, 0.4],
                                                        "lerf_abs/auc": [0.05, 0.07], "lerf/p0": [0.5, 0.5]}, lerf)
    df = build_table("pathways_t2_lerf", [tmp_path], tmp_path / "t").set_index("")
    star = "NeuronIntGrad* (opening 3x3, our choice)"
    assert df.loc["ImageNet", f"{star} (paper)"] == "0.009"
    assert df.loc["ImageNet", f"{star} (ours)"].startswith("0.020 ± 0.010")
    assert df.loc["CIFAR-10", "GradCAM (ours)"].startswith("0.020") and df.loc["Birdsnap", "GradCAM (ours)"] == "–"
    assert df.loc["CIFAR-10, AUC / q range", "GradCAM (ours)"].startswith("0.300 ± 0.100")   # the other conventions:
    assert df.loc["CIFAR-10, ranked by abs(map)", "GradCAM (ours)"].startswith("0.060 ± 0.010")  # own rows, no paper
    assert df.loc["CIFAR-10, ranked by abs(map)", "GradCAM (paper)"] == "–"
    sanity = {"sanity_check": {"_target_": "xattr.metrics.sanity_check.CascadingRandomisation"}}
    fake("c", "neuron_mct", "imagenet", "mobilenet_v2", {"sanity_check/ssim": [0.1, 0.3], "sanity_check/spearman":
         [0.0, 0.2], "sanity_check/spearman_abs": [0.1, 0.1]}, sanity)
    df = build_table("pathways_f6_sanity", [tmp_path / "c"], tmp_path / "t").set_index("")
    assert df.loc["NeuronMCT", "SSIM (ours)"].startswith("0.200 ± 0.100") and df.loc["NeuronMCT", "SSIM (paper)"] == "–"


@pytest.mark.parametrize("model", ["cifar_resnet20", "mobilenet_v2", "resnet50"])
def test_block_by_block_plan_covers_every_parameter(model):
    """The f6 experiment randomises block by block from the output (model.layers.blocks)."""
    from tests.helpers import compose_cfg
    from xattr.metrics.sanity_check import CascadingRandomisation, parametric_leaves
    from xattr.models import load_model

    cfg = compose_cfg(["experiment=pathways_f6_sanity", f"model={model}", "model.weights=random"])
    layers = list(cfg.metric.sanity_check.layers)
    assert layers[0] == "fc" and cfg.metric.sanity_check.normalise == "max_abs"
    net = load_model(model, "random").net
    plan = CascadingRandomisation(layers=layers).plan(net)
    assert sorted(p for step in plan for p in step) == sorted(parametric_leaves(net))


def test_lerf_defaults_cost_and_bad_fractions():
    """LeRF's defaults are RoarTorch's protocol (``src/lerf``: q = 1..10% of the pixels, removed lowest first by
    the signed channel max, counted with ``int(q H W)``, set to 0 in normalised space, the predicted class's
    softmax); its cost rule (one forward per fraction plus the clean one) equals the rows a call runs; a bad
    ``fractions`` is one whole line."""
    lerf = LeRF()
    assert lerf.fractions == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1]
    assert (lerf.rank, lerf.channels, lerf.count, lerf.fill, lerf.output, lerf.ties) == (
        "signed", "max", "floor", 0.0, "softmax", "stable")
    torch.manual_seed(0)
    net = PixelLinear(torch.randn(3, 1, 6, 6)).eval()
    rows = []
    net.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    x, t = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    m = LeRF(fractions=[0.1, 0.5, 1.0], chunk=None)
    m(net, x, t, torch.rand(4, 1, 6, 6))
    assert sum(rows) == 4 * m.forwards_per_image((1, 6, 6), 0.0) == 4 * 4
    assert LeRF(fractions=[0.0, 1.0]).fractions == [0.0, 1.0]  # the edges are valid
    for bad in ([0.1], [0.2, 0.1], [0.1, 0.1], [0.1, 1.5], [-0.1, 0.1]):
        line = f"bad fractions {bad!r}; valid choices: >= 2 increasing shares in [0, 1]"
        with pytest.raises(XattrConfigError, match=f"^{re.escape(line)}$"):
            LeRF(fractions=bad)


def test_lerf_class_defaults_equal_its_config_and_bad_choices_are_one_whole_line():
    """The class and ``conf/metric/lerf.yaml`` (what ``metric=lerf`` runs) hold the same defaults, and the memory
    knob is ``chunk``; each bad choice names itself and the valid ones in one line."""
    from omegaconf import OmegaConf

    from xattr.config import CONF_DIR

    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "metric" / "lerf.yaml"))
    conf.pop("_target_")
    built = LeRF()
    for key, value in conf.items():
        assert getattr(built, key) == value, key
    assert LeRF.memory_knob == "chunk"
    for key, bad, valid in (("rank", "x", "signed, abs"), ("channels", "x", "max, mean"), ("count", "x", "floor, round"),
                            ("output", "x", None), ("ties", "x", "stable, random, numpy"), ("precision", "x", None)):
        line = f"unknown {key} 'x'; valid choices: " + (valid or "")
        with pytest.raises(XattrConfigError, match="^" + re.escape(line) + ("$" if valid else "")):
            LeRF(**{key: bad})
