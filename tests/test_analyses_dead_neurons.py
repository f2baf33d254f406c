"""The dead-neuron analysis (dissertation ch. 5, Fig. 1: the share of originally dead neurons in a pathway) and
the Jaccard overlap of pathways, against oracles written here: ReLU outputs read by forward hooks, shares and
their standard errors averaged by hand with numpy (issue 26: the module's mutants)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_pathways_evaluation import _store
from xattr.analyses.dead_neurons import DeadNeurons, pathway_jaccard
from xattr.errors import XattrConfigError
from xattr.models.tiny import TinyCNN


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(1)
    return TinyCNN(4).eval().requires_grad_(False)


def test_dead_neuron_rows_by_hand_from_hooked_relus(cnn):
    """The published dead-neuron share, per image from the ReLU outputs read by forward hooks (dead: output
    <= 0) and a drawn pathway, averaged by hand: share, its s.e. (ddof 1), images, kept and dead fractions,
    per layer and network-wide; an empty pathway (or layer part) is left out."""
    from xattr.analyses.dead_neurons import MASK, SIZES
    from xattr.methods.pathways import pack_bits

    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    acts = []
    hooks = [cnn.features[i].register_forward_hook(lambda m, i, o: acts.append(o.flatten(1))) for i in (1, 3, 6)]
    cnn(x)
    for h in hooks:
        h.remove()
    dead = torch.cat(acts, 1) <= 0
    sizes = [a.shape[1] for a in acts]
    e = torch.rand(5, sum(sizes), generator=torch.Generator().manual_seed(5)) < 0.3
    e[4] = False  # an empty pathway: no share
    e[3, sizes[0]:] = False  # image 3 holds neurons of the first layer only
    an = DeadNeurons()
    an.update(cnn, x, torch.zeros(5, dtype=torch.long), torch.zeros(5, 1, 6, 6),
              **{MASK: pack_bits(e), SIZES: torch.tensor([sizes] * 5)})
    df = an.compute().set_index("layer")
    assert list(df.columns) == ["neurons", "share", "sem", "n", "kept", "dead"]
    edges = np.cumsum([0, *sizes])
    parts = {"all": (0, edges[-1]), "features.1": (edges[0], edges[1]), "features.3": (edges[1], edges[2]),
             "features.6": (edges[2], edges[3])}
    assert list(df.index) == list(parts)
    for name, (lo, hi) in parts.items():
        ei, di = e[:, lo:hi], dead[:, lo:hi]
        shares = [int((ei[i] & di[i]).sum()) / int(ei[i].sum()) for i in range(5) if ei[i].any()]
        row = df.loc[name]
        assert row["neurons"] == hi - lo and row["n"] == len(shares) == (4 if name in ("all", "features.1") else 3)
        assert row["share"] == pytest.approx(np.mean(shares), abs=1e-12)
        assert row["sem"] == pytest.approx(np.std(shares, ddof=1) / np.sqrt(len(shares)), abs=1e-12)
        assert row["kept"] == pytest.approx(ei.double().mean(1).mean().item(), abs=1e-12)
        assert row["dead"] == pytest.approx(di.double().mean(1).mean().item(), abs=1e-12)
    one = DeadNeurons()
    one.update(cnn, x[:1], torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 6, 6),
               **{MASK: pack_bits(e[:1]), SIZES: torch.tensor([sizes])})
    single = one.compute().set_index("layer").loc["all"]
    assert single["n"] == 1 and np.isnan(single["sem"]) and np.isfinite(single["share"])  # one image: no s.e.
    assert single["kept"] == pytest.approx(e[0].double().mean().item(), abs=1e-12)
    two = DeadNeurons()  # two updates add up: the frame of all five images, and two images' s.e. (n - 1 = 1)
    for sl in (slice(0, 2), slice(2, 5)):
        two.update(cnn, x[sl], torch.zeros(len(x[sl]), dtype=torch.long), torch.zeros(len(x[sl]), 1, 6, 6),
                   **{MASK: pack_bits(e[sl]), SIZES: torch.tensor([sizes] * len(x[sl]))})
    pd.testing.assert_frame_equal(two.compute(), an.compute())
    pair = DeadNeurons()
    pair.update(cnn, x[:2], torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 6, 6),
                **{MASK: pack_bits(e[:2]), SIZES: torch.tensor([sizes] * 2)})
    shares = [int((e[i] & dead[i]).sum()) / int(e[i].sum()) for i in range(2)]
    assert pair.compute().set_index("layer").loc["all", "sem"] == pytest.approx(np.std(shares, ddof=1) / np.sqrt(2))
    empty = DeadNeurons()
    empty.update(cnn, x[4:], torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 6, 6),
                 **{MASK: pack_bits(e[4:]), SIZES: torch.tensor([sizes])})
    row = empty.compute().set_index("layer").loc["all"]
    assert row["n"] == 0 and np.isnan(row["share"]) and np.isnan(row["sem"]) and row["kept"] == 0


def test_dead_neuron_states_merge_with_empty_ones_and_refuse_other_networks(cnn):
    from xattr.analyses.dead_neurons import MASK, SIZES
    from xattr.methods.pathways import pack_bits

    assert list(DeadNeurons().compute().columns) == ["layer", "neurons", "share", "sem", "n", "kept", "dead"]
    assert DeadNeurons().compute().empty
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    sizes = [288, 576, 144]
    e = torch.rand(2, sum(sizes), generator=torch.Generator().manual_seed(5)) < 0.3
    full = DeadNeurons()
    full.update(cnn, x, torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 6, 6),
                **{MASK: pack_bits(e), SIZES: torch.tensor([sizes] * 2)})
    before = full.compute()
    full.merge(DeadNeurons())  # an empty state adds nothing
    pd.testing.assert_frame_equal(full.compute(), before)
    into_empty = DeadNeurons()
    into_empty.merge(full)  # an empty state takes the other's
    pd.testing.assert_frame_equal(into_empty.compute(), before)
    into_empty.merge(full)  # twice the same images: the same means
    assert into_empty.compute()["n"].tolist() == [2 * v for v in before["n"].tolist()]
    other = DeadNeurons()
    other._init(["a"], [5])
    with pytest.raises(ValueError, match="^cannot merge dead-neuron states of different networks$"):
        full.merge(other)
    with pytest.raises(XattrConfigError, match=r"^bad pathway layer sizes \[1, 2\]\.\.\.; valid choices: the "
                                               r"network's \[288, 576, 144\]\.\.\. \(set analysis"):
        DeadNeurons().update(cnn, x, torch.zeros(2, dtype=torch.long), torch.zeros(2, 1, 6, 6),
                             **{MASK: pack_bits(e), SIZES: torch.tensor([[1, 2]] * 2)})


def test_jaccard_of_empty_pathways_is_nan_and_runs_of_other_networks_fail(tmp_path):
    from xattr.analyses.dead_neurons import jaccard

    assert np.isnan(jaccard(np.zeros(3, bool), np.zeros(3, bool)))
    assert jaccard(np.array([1, 1, 0], bool), np.array([0, 1, 1], bool)) == pytest.approx(1 / 3)
    a = _store(tmp_path, "a", [[1, 0, 0, 0, 0]], [2, 3])
    b = _store(tmp_path, "b", [[0, 1, 0, 0, 0]], [2, 3])
    net, layers = pathway_jaccard({"A": a, "B": b})
    assert net.loc["A", "B"] == 0 and np.isnan(layers.set_index(["a", "b", "layer"]).loc[("A", "B", 1), "jaccard"])
    assert layers.set_index(["a", "b", "layer"]).loc[("A", "B", 1), "images"] == 0
    assert list(layers.columns) == ["a", "b", "layer", "jaccard", "images"]
    c = _store(tmp_path, "c", [[1, 0, 0, 0, 0]], [3, 2])
    with pytest.raises(ValueError, match="^runs 'A' and 'C' have pathways of different networks$"):
        pathway_jaccard({"A": a, "C": c})


def test_dead_neuron_labels_empty_state_and_whole_error_lines():
    """The analysis' name and auxiliaries; an empty state round-trips; a method without one of the two
    auxiliaries, or with another network's layer sizes (the first four of each shown), is one whole line."""
    import re

    from xattr.analyses.dead_neurons import MASK, SIZES
    from xattr.methods.pathways import pack_bits

    assert DeadNeurons.name == "dead_neurons" and DeadNeurons.needs == ("pathway/mask", "pathway/layer_sizes")
    restored = DeadNeurons()
    restored.load_state_dict(DeadNeurons().state_dict())
    assert restored.compute().empty
    deep = torch.nn.Sequential(*[m for _ in range(5) for m in (torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU())]).eval()
    x, t, maps = torch.rand(1, 3, 2, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 2, 2)
    e = torch.ones(1, 60, dtype=torch.bool)
    msg = ("dead_neurons needs a pathway method's auxiliaries 'pathway/mask' and 'pathway/layer_sizes'; valid "
           "choices: method=neuron_mct, neuron_intgrad, greedy_pruning, dgr, dgr_uniform")
    for extras in ({MASK: pack_bits(e)}, {SIZES: torch.tensor([[12] * 5])}):
        with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
            DeadNeurons().update(deep, x, t, maps, **extras)
    msg = ("bad pathway layer sizes [1, 2, 3, 4]...; valid choices: the network's [12, 12, 12, 12]... "
           "(set analysis.dead_neurons.activations as the method's)")
    with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
        DeadNeurons().update(deep, x, t, maps, **{MASK: pack_bits(e), SIZES: torch.tensor([[1, 2, 3, 4, 5, 6]])})


def test_jaccard_per_layer_of_three_layers_over_shared_images_only(tmp_path):
    """Three layers (2, 2, 1 neurons): each layer's Jaccard by hand; images only one run holds are left out; a
    pair of runs without a shared image is skipped (the other pairs are still computed); a run without the
    pathway auxiliaries holds no pathway."""
    from xattr.core.store import RunStore

    a = _store(tmp_path, "a", [[1, 1, 0, 1, 1], [1, 0, 0, 0, 0]], [2, 2, 1])
    b = _store(tmp_path, "b", [[1, 0, 1, 1, 0]], [2, 2, 1])  # image 0 only
    net, layers = pathway_jaccard({"A": a, "B": b})
    ab = layers[(layers.a == "A") & (layers.b == "B")].set_index("layer")
    assert ab["jaccard"].tolist()[:2] == [pytest.approx(1 / 2), pytest.approx(1 / 2)] and ab.loc[2, "jaccard"] == 0
    assert ab["images"].tolist() == [1, 1, 1] and net.loc["A", "B"] == pytest.approx(2 / 5)
    c = tmp_path / "c"
    batch = {"id": ["other"], "index": torch.arange(1), "label": torch.zeros(1, dtype=torch.long)}
    RunStore(c).write("b0000000-0", batch, batch["label"], torch.zeros(1, 1, 2, 2), torch.ones(1, 3) / 3,
                      aux={"pathway/mask": torch.zeros(1, 1, dtype=torch.uint8)})  # no layer sizes: no pathway
    from xattr.methods.pathways import pack_bits

    e = tmp_path / "e"
    batch = {"id": ["zzz"], "index": torch.arange(1), "label": torch.zeros(1, dtype=torch.long)}
    RunStore(e).write("b0000000-0", batch, batch["label"], torch.zeros(1, 1, 2, 2), torch.ones(1, 3) / 3,
                      aux={"pathway/mask": pack_bits(torch.ones(1, 5, dtype=torch.bool)),
                           "pathway/layer_sizes": torch.tensor([[2, 2, 1]])})  # shares no image with A or B
    net, _ = pathway_jaccard({"A": a, "C": c, "E": e, "B": b})
    assert list(net.index) == ["A", "E", "B"] and np.isnan(net.loc["A", "E"])
    assert net.loc["A", "B"] == pytest.approx(2 / 5) and net.loc["E", "E"] == 1
