"""Semantic attribution (dissertation ch. 9, eq. 6 L1749): per-neuron integrated gradients at the dissected
layer, completeness, the top unit by sum_i |s_k^i|, its concept from a dissection, its normalised map."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from xattr.core.hooks import hook_count
from xattr.errors import XattrConfigError
from xattr.methods.semantic import SemanticAttribution, layer_output, neuron_intgrad


class Net(nn.Module):
    """conv -> ReLU (the dissected layer ``body``, 4 units at 4x4) -> conv -> ReLU -> pool -> linear."""

    def __init__(self, linear_head: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.top = nn.Identity() if linear_head else nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 16, 3)
        self.num_classes = 3

    def forward(self, x):
        return self.fc(self.top(self.body(x)).flatten(1))


X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
T = torch.tensor([0, 2, 1])


def test_completeness_sum_equals_output_minus_output_with_layer_zeroed():
    net = Net().eval()
    with torch.no_grad():
        net.fc.weight.mul_(10.0)
    layer = net.body
    with torch.no_grad():
        full = net(X).gather(1, T[:, None])[:, 0]
        zeroed = layer_output(net, layer, X, torch.zeros_like(net.body(X))).gather(1, T[:, None])[:, 0]
    diff = full - zeroed
    assert diff.abs().min() > 0.05                               # not trivially zero
    coarse = neuron_intgrad(net, layer, X, T, n_steps=2).sum((1, 2, 3))
    fine = neuron_intgrad(net, layer, X, T, n_steps=1000).sum((1, 2, 3))
    assert torch.allclose(fine, diff, rtol=1e-2, atol=1e-4)
    assert (fine - diff).abs().sum() < (coarse - diff).abs().sum()  # the Riemann sum converges to it


def test_linear_above_the_layer_gives_activation_times_weight_exactly():
    """f = w . a + b above the layer: the gradient is w at every alpha, so s = a * w for any n_steps."""
    net = Net(linear_head=True).eval()
    a = net.body(X).detach()
    w = net.fc.weight.detach()[T].view(3, 4, 4, 4)
    for n in (1, 7):
        s = neuron_intgrad(net, net.body, X, T, n_steps=n)
        assert torch.allclose(s, a * w, atol=1e-6)


def _dissection_csv(tmp_path, detectors: dict[int, tuple[str, int, float]]):
    rows = [{"layer": "body", "unit": u, "concept": c, "concept_index": i, "iou": v, "detector": v > 0.04,
             "threshold": 0.1} for u, (c, i, v) in detectors.items()]
    p = tmp_path / "analyses" / "dissection.csv"
    p.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(p, index=False)
    return tmp_path


def test_top_unit_label_and_map(tmp_path):
    net = Net(linear_head=True).eval()
    with torch.no_grad():
        net.fc.weight.mul_(0.01)
        net.fc.weight.view(3, 4, 16)[:, 2] *= 500.0               # unit 2 dominates every class
    run = _dissection_csv(tmp_path, {0: ("ring", 1, 0.2), 1: ("blob", 0, 0.01), 2: ("streak", 2, 0.3),
                                     3: ("blob", 0, 0.0)})
    m = SemanticAttribution(net, "body", dissection=run, n_steps=4)
    e = m.explain(X, T)
    a = net.body(X).detach()
    s = a * net.fc.weight.detach()[T].view(3, 4, 4, 4)
    contribution = s.abs().flatten(2).sum(-1)
    assert torch.allclose(e.aux["semantic/contribution"], contribution, atol=1e-6)
    assert e.aux["semantic/unit"].tolist() == contribution.argmax(1).tolist() == [2, 2, 2]
    assert e.aux["semantic/concept"].tolist() == [2, 2, 2] and m.concept_name(2) == "streak"
    assert torch.allclose(e.aux["semantic/iou"], torch.full((3,), 0.3))
    top = s[:, 2]
    peak = top.flatten(1).amax(1)
    scale = torch.where(peak > 0, peak, top.flatten(1).abs().amax(1))
    want = nn.functional.interpolate((top / scale.view(-1, 1, 1))[:, None], size=(8, 8), mode="bilinear",
                                     align_corners=False)
    assert e.maps.shape == (3, 1, 8, 8) and torch.allclose(e.maps, want, atol=1e-5)
    # a top unit that is no detector has no concept
    m2 = SemanticAttribution(net, "body", dissection=_dissection_csv(tmp_path / "b", {2: ("blob", 0, 0.01)}),
                             n_steps=4)
    assert m2.explain(X, T).aux["semantic/concept"].tolist() == [-1, -1, -1]
    assert hook_count(net) == 0


def test_batched_equals_one_at_a_time_and_chunk_does_not_matter():
    net = Net().eval()
    m = SemanticAttribution(net, "body", n_steps=5, chunk=None)
    whole = m.explain(X, T)
    parts = [m.explain(X[i : i + 1], T[i : i + 1]) for i in range(3)]
    chunked = SemanticAttribution(net, "body", n_steps=5, chunk=3).explain(X, T)
    for e in (chunked,):
        assert torch.allclose(e.maps, whole.maps, atol=1e-6)
    assert torch.allclose(torch.cat([p.maps for p in parts]), whole.maps, atol=1e-6)
    assert torch.cat([p.aux["semantic/unit"] for p in parts]).tolist() == whole.aux["semantic/unit"].tolist()
    assert whole.aux["semantic/concept"].tolist() == [-1, -1, -1]   # no dissection given
    assert torch.isnan(whole.aux["semantic/iou"]).all()


def test_bad_input(tmp_path):
    net = Net()
    with pytest.raises(XattrConfigError, match="missing network dissection result: put it at"):
        SemanticAttribution(net, "body", dissection=tmp_path)
    with pytest.raises(XattrConfigError, match="unknown layer 'conv9'"):
        SemanticAttribution(net, "conv9")
    with pytest.raises(XattrConfigError, match="bad n_steps 0"):
        SemanticAttribution(net, "body", n_steps=0)
    m = SemanticAttribution(net, "fc")
    with pytest.raises(XattrConfigError, match="layer 'fc' gives .*spatial feature maps"):
        m.attribute(X, T)
    big = SemanticAttribution(net, "body", dissection=_dissection_csv(tmp_path, {9: ("blob", 0, 0.5)}))
    with pytest.raises(XattrConfigError, match="the dissection has unit 9 but layer 'body' has 4 units"):
        big.attribute(X, T)


def test_semantic_concepts_analysis_counts_by_hand():
    from types import SimpleNamespace

    from xattr.analyses.semantic import SemanticConcepts

    a = SemanticConcepts(classes=["blob", "ring", "streak"])
    method = SimpleNamespace(concepts={0: "blob", 1: "ring", 2: "streak"})
    # class blob: units 5, 5, 7 with concepts blob, none, ring; class ring: unit 2 (ring)
    a.update(None, None, torch.tensor([0, 0]), None, **{"semantic/unit": torch.tensor([5, 5]),
                                                       "semantic/concept": torch.tensor([0, -1]), "method": method})
    b = SemanticConcepts(classes=["blob", "ring", "streak"])
    b.update(None, None, torch.tensor([0, 1]), None, **{"semantic/unit": torch.tensor([7, 2]),
                                                       "semantic/concept": torch.tensor([1, 1]), "method": method})
    restored = SemanticConcepts(classes=["blob", "ring", "streak"])
    restored.load_state_dict(a.state_dict())
    restored.merge(b)
    df = restored.compute().set_index("class")
    assert df.loc["blob", "images"] == 3 and df.loc["blob", "detector_share"] == pytest.approx(2 / 3)
    assert df.loc["blob", "matched_share"] == pytest.approx(1 / 3) and df.loc["blob", "top_unit"] == 5
    assert df.loc["ring", "matched_share"] == 1.0 and df.loc["ring", "top_concept"] == "ring"
    assert df.loc["all", "images"] == 4 and df.loc["all", "matched_share"] == pytest.approx(2 / 4)
    with pytest.raises(XattrConfigError, match="semantic_concepts needs the auxiliaries"):
        restored.update(None, None, torch.tensor([0]), None)


def test_semantic_concepts_table_by_hand_with_unknown_concepts_and_classes():
    """Seven explanations counted by hand: a concept index the dissection lacks and -1 are no detector, concept 0
    and class 0 are real ones, a class past the names (2 of 2) is ``class_<i>``; one row per class (sorted), then
    ``all``; the auxiliaries both needed, one line naming the method that gives them."""
    from types import SimpleNamespace

    from xattr.analyses.semantic import SemanticConcepts

    a = SemanticConcepts(classes=("blob", "ring"))
    assert a.classes == ["blob", "ring"] and SemanticConcepts().classes is None
    method = SimpleNamespace(concepts={0: "blob", 1: "ring", 3: "streak"})
    # (class, unit, concept): blob -> blob (matched), 2 (not in the dissection), streak, streak, -1; ring -> ring;
    # class 2 -> streak
    a.update(None, None, torch.tensor([[0, 0, 0]]), None, method=method,
             **{"semantic/unit": torch.tensor([4, 4, 9]), "semantic/concept": torch.tensor([0, 2, 3])})
    a.update(None, None, torch.tensor([0, 0, 1, 2]), None, method=SimpleNamespace(concepts=None),
             **{"semantic/unit": [9, 4, 7, 2], "semantic/concept": [3, -1, 1, 3]})
    a.update(None, None, torch.tensor([]), None, method=SimpleNamespace(),
             **{"semantic/unit": torch.tensor([]), "semantic/concept": torch.tensor([])})  # no concepts attribute
    assert a.concepts == {0: "blob", 1: "ring", 3: "streak"}
    df = a.compute()
    assert list(df.columns) == ["class", "images", "detector_share", "matched_share", "top_concept", "top_unit"]
    assert df["class"].tolist() == ["blob", "ring", "class_2", "all"]
    assert df["images"].tolist() == [5, 1, 1, 7]
    assert df["detector_share"].tolist() == pytest.approx([3 / 5, 1.0, 1.0, 5 / 7])
    assert df["matched_share"].tolist() == pytest.approx([1 / 5, 1.0, 0.0, 2 / 7])
    assert df["top_concept"].tolist() == ["streak", "ring", "streak", "streak"]
    assert df["top_unit"].tolist() == [4, 7, 2, 4]
    # no names: class_<i>; only non-detectors: top concept "none"
    b = SemanticConcepts()
    b.add(torch.tensor([2, 2, 2]), torch.tensor([3, 3, 1]), torch.tensor([-1, -1, 0]))
    b.concepts = {1: "ring"}
    df = b.compute()
    assert df["class"].tolist() == ["class_2", "all"] and df["top_concept"].tolist() == ["none", "none"]
    assert df["detector_share"].tolist() == [0.0, 0.0] and df["top_unit"].tolist() == [3, 3]
    msg = ("semantic_concepts needs the auxiliaries 'semantic/unit' and 'semantic/concept'; "
           "valid choices: method=semantic_attribution")
    for given in ({"semantic/unit": torch.tensor([1])}, {"semantic/concept": torch.tensor([1])}, {}):
        with pytest.raises(XattrConfigError) as err:
            b.update(None, None, torch.tensor([0]), None, **given)
        assert str(err.value) == msg


def test_semantic_concepts_state_empty_and_merge_copies():
    from xattr.analyses.semantic import SemanticConcepts

    empty = SemanticConcepts()
    assert list(empty.compute().columns) == ["class", "images", "detector_share", "matched_share", "top_concept",
                                             "top_unit"] and empty.compute().empty
    state = empty.state_dict()
    assert state["rows"].shape == (0, 3) and state["rows"].dtype == torch.long and state["concepts"] == {}
    back = SemanticConcepts()
    back.load_state_dict(state)
    assert back.rows == [] and back.compute().empty
    full = SemanticConcepts(classes=["blob"])
    full.add(torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([0, 0]))
    full.concepts = {0: "blob"}
    back.load_state_dict({"concepts": {"0": 7}, "rows": full.state_dict()["rows"]})  # keys int, names str
    assert back.concepts == {0: "7"} and torch.equal(torch.cat(back.rows), torch.tensor([[0, 1, 0], [0, 2, 0]]))
    merged = SemanticConcepts(classes=["blob"])
    merged.merge(full)
    full.rows[0][0, 2] = 9  # the merged state holds copies
    full.concepts[0] = "ring"
    assert merged.concepts == {0: "blob"} and merged.compute()["matched_share"].tolist() == [1.0, 1.0]


def test_run_stores_the_semantic_aux_and_summarises_concepts(tmp_path):
    """Through the engine: the method's aux reach the store and analysis=[semantic_concepts], concept names
    come from the dissection file, classes from the dataset's concepts."""
    from tests.helpers import compose_cfg
    from xattr.core.store import RunStore
    from xattr.run import run

    diss = _dissection_csv(tmp_path / "diss", {u: (["blob", "ring", "streak", "texture"][u % 4], u % 4, 0.1)
                                               for u in range(64)})
    cfg = compose_cfg(["model=synthetic_cxr_resnet8", "model.weights=random", "dataset=synthetic_cxr",
                       "method=semantic_attribution", f"method.dissection={diss}", "method.n_steps=2",
                       "metric=[]", "analysis=[semantic_concepts]", "dataset.limit=4", "batch_size=4",
                       "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"],
                      output_dir=tmp_path / "run")
    out = run(cfg)
    aux = RunStore(out).aux("semantic/")
    assert len(aux) == 4
    for a in aux.values():
        unit = int(a["unit"])
        assert int(a["concept"]) == unit % 4 and a["contribution"].shape == (64,)
        assert unit == int(a["contribution"].argmax())
    df = pd.read_csv(out / "analyses" / "semantic_concepts.csv").set_index("class")
    assert df.loc["all", "images"] == 4 and df.loc["all", "detector_share"] == 1.0
    assert set(df.index) - {"all"} <= {"blob", "ring", "streak", "texture"}
