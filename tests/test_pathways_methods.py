"""Critical pathways (dissertation ch. 5): neuron scores, network-wide selection, pathway gradient, the
NeuronMCT / NeuronIntGrad / InputMCT / InputIntGrad methods, packed masks and the opening."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xattr.core.hooks import hook_count
from xattr.errors import XattrConfigError
from xattr.methods.pathways import (
    InputIntGrad,
    InputMCT,
    NeuronIntGrad,
    NeuronMCT,
    Neurons,
    alpha_schedule,
    intgrad_scores,
    mct_scores,
    opening,
    pack_bits,
    pathway_forward,
    pathway_gradient,
    percentile,
    reduce_map,
    select,
    unpack_bits,
)
from xattr.models.tiny import TinyCNN


def mlp(sizes=(6, 8, 8, 5), seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(1)
    return TinyCNN(5).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def images(cnn):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 12, 12, generator=g)
    return x, cnn(x).argmax(1)


# ------------------------------------------------------------------------------------------ scores
def test_mct_is_a_times_weight_on_a_two_layer_net():
    net = mlp((4, 6, 3))
    x, t = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    a = torch.relu(net[0](x))
    hand = a * net[2].weight[t]                          # dPhi/da = w_t of the last layer
    (c,) = mct_scores(Neurons(net), x, t)
    assert torch.allclose(c, hand, atol=1e-6)
    keep = NeuronMCT(net, sparsity=0.5).explain_pathway(x, t)
    assert torch.equal(keep, select(hand.abs(), 0.5))


def test_mct_on_a_pruned_net_by_hand_and_an_in_place_change_after_the_hook_is_an_error():
    """GreedyPruning's score on the pruned net (z = a * m, score z * dPhi/dz = a m w_t: 0 where pruned), with
    masks as bool or float; a model that scales its ReLU output in place afterwards would leave the scores on
    changed values: one error (the scores read z after the backward)."""
    net = mlp((4, 6, 3))
    x, t = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    m = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) > 0.4
    hand = torch.relu(net[0](x)) * m * net[2].weight[t]
    for masks in ([m], [m.float()]):
        (c,) = mct_scores(Neurons(net), x, t, masks)
        assert torch.allclose(c, hand, atol=1e-6) and (c[~m] == 0).all()

    class Doubles(nn.Module):
        def forward(self, h):
            return h.mul_(2.0)  # in place on the ReLU's output

    bad = nn.Sequential(net[0], nn.ReLU(), Doubles(), net[2]).eval()
    with pytest.raises(RuntimeError, match=r"^the model changed a ReLU output in place after its hook; the neuron "
                                           r"scores would be read from the changed values \(set inplace=False on "
                                           r"the modules after it\)$"):
        mct_scores(Neurons(bad), x, t)


@pytest.mark.parametrize("schedule,ok", [("linear", True), ("reference", False)])
def test_neuron_intgrad_completeness_per_layer(schedule, ok):
    net = mlp((6, 10, 10, 10, 4), seed=3).double()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = net(x).argmax(1)
    neurons = Neurons(net)
    layout = neurons.layout(x)
    n_steps = 200 if schedule == "linear" else 10
    scores = intgrad_scores(neurons, x, t, layout, n_steps=n_steps, schedule=schedule, chunk=97)
    phi = net(x).gather(1, t[:, None])[:, 0]
    errs = []
    for i, c in enumerate(scores):
        zeroed = neurons.forward(x, lambda k, a, i=i: a * 0 if k == i else a)[0].gather(1, t[:, None])[:, 0]
        errs.append((c.sum(1) - (phi - zeroed)).abs().max().item())
    assert (max(errs) < 1e-3) == ok, errs


def test_alpha_schedules():
    a, w = alpha_schedule(10, "reference")
    assert torch.allclose(a[:5], torch.tensor([0, 0.1, 0.3, 0.6, 1.0], dtype=a.dtype)) and a[-1] == pytest.approx(5.5)
    assert w.sum() == pytest.approx(1)
    a, w = alpha_schedule(4, "linear")
    assert a.tolist() == [0.25, 0.5, 0.75, 1.0] and w.sum() == pytest.approx(1)
    with pytest.raises(XattrConfigError, match="valid choices: linear, reference"):
        alpha_schedule(4, "cumulative")


def test_dead_neurons_never_selected_by_contributions(cnn, images):
    """Remark 2 (L503): MCT and IntGrad give a dead neuron 0, and 0 is never kept: dead share exactly 0."""
    x, t = images
    neurons = Neurons(cnn)
    _, acts = neurons.activations_of(x)
    dead = neurons.layout(x).flatten(acts) <= 0
    assert dead.float().mean() > 0.2
    for method in (NeuronMCT(cnn, sparsity=0.3), NeuronIntGrad(cnn, sparsity=0.3, n_steps=5, score="signed"),
                   NeuronIntGrad(cnn, sparsity=0.3, n_steps=5)):
        e = method.explain_pathway(x, t)
        assert e.sum() > 0 and not (e & dead).any()


# ----------------------------------------------------------------------------------------- selection
def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    from xattr.methods.pathways import selection

    s = torch.rand(3, 1001, generator=torch.Generator().manual_seed(0))
    s[:, :300] = 0  # ties, as the zero scores of dead neurons
    for q in (0.0, 0.3, 0.7, 0.9, 0.999, 1.0):
        expected = torch.tensor(np.percentile(s.numpy(), 100 * q, axis=1)).float()
        assert torch.allclose(percentile(s, q), expected)  # CPU: np.partition
        lo = int(q * 1000)  # the device path (torch.kthvalue), checked here on the CPU
        got = selection._ranked_torch(s, [lo, min(lo + 1, 1000)])
        assert torch.allclose(got[0] + (got[1] - got[0]) * (q * 1000 - lo), expected)
    # heavy-tailed rows of many lengths: the rank after the partition's kth is not always its right neighbour
    g = np.random.default_rng(0)  # (about 1 row in 250 shows it: 300 rows per length)
    for n in (330, 867, 1513, 2489):
        s = torch.from_numpy((g.standard_exponential((300, n)) ** 3).astype(np.float32))
        for q in (0.1, 0.27, 0.7, 0.9):
            expected = torch.from_numpy(np.percentile(s.numpy().astype(np.float64), 100 * q, axis=1)).float()
            assert torch.allclose(percentile(s, q), expected, rtol=1e-6, atol=0)  # numpy's lerp rounds its own way


def test_percentile_of_long_rows_equals_numpy_with_ties_outliers_subnormals_and_signs():
    """Long rows (selection.py's one-kth partition, then the least value right of it): ties (a block of zeros, as
    dead neurons), strided outliers, tiny and negative values give np.percentile's value; select's one comparison
    equals the two conditions of its docstring."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    n = 50_000
    s = torch.rand(4, n, generator=g) ** 3
    s[0, : n // 2] = 0  # half ties at zero
    s[1, ::12] = 5.0  # strided outliers (they misled the sampled selection this replaced)
    s[2] *= 1e-40  # subnormal scores: still positive
    s[3, torch.randperm(n, generator=g)[:1000]] = 0.5  # ties inside the bracket
    s[3] -= 0.3  # signed scores (NeuronIntGrad's score: signed): negatives are never kept
    for q in (0.0, 0.3, 0.5, 0.7, 0.9, 0.9999):
        expected = torch.tensor(np.percentile(s.numpy(), 100 * q, axis=1)).float()
        assert torch.equal(percentile(s, q), expected), q
        t = expected[:, None]
        assert torch.equal(select(s, q), (s >= t) & (s > 0))
        assert torch.equal(select(s, q, ties="drop"), (s > t) & (s > 0))


def test_lowest_equals_the_ranks_of_a_stable_sort_with_ties_inf_and_zero_counts():
    from xattr.core.ranking import lowest

    g = torch.Generator().manual_seed(0)
    key = torch.randint(0, 40, (5, 300), generator=g).float()  # many ties
    key[1, ::3] = float("inf")  # not live
    key[2] = 7.0  # one value only
    counts = torch.tensor([17, 60, 5, 0, 299])
    order = torch.sort(key, dim=1, stable=True).indices  # the oracle: Alg. 1's ranking by a stable sort
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(300).expand(5, 300).contiguous())
    expected = rank < counts[:, None]
    assert torch.equal(lowest(key, counts), expected)
    assert torch.equal(lowest(key, torch.zeros(5, dtype=torch.long)), torch.zeros_like(expected))


def test_percentile_partitions_the_block_once_with_one_kth_and_never_calls_kthvalue_on_a_cpu(monkeypatch):
    """The speed design of percentile on a CPU (issue 31), pinned: one ``np.partition`` of all rows with a single
    integer ``kth`` (numpy's SIMD selection; a list of two ranks ran 7x slower), and no ``torch.kthvalue``."""
    import numpy as np

    from xattr.methods.pathways import selection

    calls = []
    real = np.partition

    def partition(a, kth, **kw):
        assert isinstance(kth, int | np.integer), kth
        calls.append(a.shape)
        return real(a, kth, **kw)

    def no_kthvalue(*a, **kw):
        raise AssertionError("torch.kthvalue on a CPU")

    monkeypatch.setattr(np, "partition", partition)
    monkeypatch.setattr(selection.torch, "kthvalue", no_kthvalue)
    g = torch.Generator().manual_seed(1)
    for n in (10_000, 50_000):
        s = torch.rand(3, n, generator=g)
        s[:, 0] = -1.0
        for q in (0.0, 0.3, 0.7, 0.99, 1.0):
            calls.clear()
            expected = torch.tensor(np.percentile(s.numpy(), 100 * q, axis=1)).float()
            assert torch.equal(percentile(s, q), expected)
            assert calls == [(3, n)], (n, q, calls)


def test_percentile_edges_by_hand():
    inf = float("inf")
    # q = 0.5 of 5 values is rank 2 exactly: no interpolation, so inf - inf never makes a NaN
    assert percentile(torch.tensor([[1.0, inf, inf, inf, inf]]), 0.5).item() == inf
    # q = 0.9: rank 3.6, between the last two values
    assert percentile(torch.tensor([[4.0, 0.0, 1.0, 2.0, 3.0]]), 0.9).item() == pytest.approx(3.6)
    with pytest.raises(XattrConfigError, match=r"^bad sparsity False; valid choices: a fraction in \[0, 1\) \(0.7 = keep 30%\)$"):
        select(torch.rand(1, 5), False)
    with pytest.raises(XattrConfigError, match=r"^bad ties 'maybe'; valid choices: keep, drop$"):
        select(torch.rand(1, 5), 0.5, ties="maybe")


def test_selection_is_network_wide_and_keeps_one_minus_kappa():
    g = torch.Generator().manual_seed(0)
    sizes = [500, 300, 200]
    for kappa in (0.7, 0.9):
        s = torch.rand(2, 1000, generator=g) + 0.01
        keep = select(s, kappa)
        assert keep.sum(1).tolist() == [round((1 - kappa) * 1000)] * 2
    # one layer dominates: every kept neuron comes from it (layer-wise ranking would take 30% of each)
    s = torch.rand(1, 1000, generator=g)
    s[:, 500:800] += 10
    keep = select(s, 0.7)
    layer = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    assert keep.sum() == 300 and (layer[keep[0]] == 1).all()
    # zeros are ranked (they lower the percentile) but never kept
    s = torch.zeros(1, 100)
    s[0, :5] = torch.arange(1, 6).float()
    assert select(s, 0.5).sum() == 5
    with pytest.raises(XattrConfigError, match="bad sparsity 1.0"):
        select(s, 1.0)


def test_pack_bits_round_trip_and_size():
    m = torch.rand(3, 1003, generator=torch.Generator().manual_seed(0)) > 0.5
    p = pack_bits(m)
    assert p.dtype == torch.uint8 and p.shape == (3, 126)
    assert torch.equal(unpack_bits(p, 1003), m)
    from xattr.methods.pathways.neurons import _pack_bits_torch

    assert torch.equal(_pack_bits_torch(m), p)  # the device path (torch) == the CPU path (np.packbits)
    hand = torch.tensor([[1, 0, 1, 0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)  # MSB first, zero-padded
    for pack in (pack_bits, _pack_bits_torch):
        assert pack(hand).tolist() == [[0b10100001, 0b11000000]]


def test_layout_is_probed_once_per_input_shape():
    net = TinyCNN(5).eval()
    neurons = Neurons(net)
    calls = []
    handle = net.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    big = neurons.layout(torch.randn(4, 3, 16, 16))
    assert neurons.layout(torch.randn(2, 3, 16, 16)) is big and calls == [1]  # one probe, of one image
    small = neurons.layout(torch.randn(2, 3, 8, 8))
    assert calls == [1, 1] and small.sizes[0] * 4 == big.sizes[0]  # another shape: probed again
    handle.remove()


# ---------------------------------------------------------------------------------- pathway gradient
def test_freeze_pathway_is_locally_linear(cnn, images):
    """Prop. 4/5 (L561-565): pruned neurons held at their value, all pathway neurons active -> Phi_hat is
    linear around x: finite differences agree with the pathway gradient for small steps."""
    net = TinyCNN(5).eval().double().requires_grad_(False)
    net.load_state_dict(cnn.state_dict())
    x, t = images[0][:2].double(), images[1][:2]
    neurons = Neurons(net)
    layout = neurons.layout(x)
    e = layout.split(NeuronMCT(net, sparsity=0.7, pruned="freeze").explain_pathway(x, t))
    _, const = neurons.activations_of(x)
    grad, phi = pathway_gradient(neurons, x, t, e, "freeze")
    assert torch.allclose(phi, net(x).gather(1, t[:, None])[:, 0])  # freeze keeps the output at x
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)

    def f(eps: float) -> torch.Tensor:
        with torch.no_grad():
            out = pathway_forward(neurons, x + eps * d, e, "freeze", constants=const)
        return out.gather(1, t[:, None])[:, 0]

    slope = (grad * d).sum((1, 2, 3))
    for eps in (1e-5, 1e-4):
        assert torch.allclose((f(eps) - f(0)) / eps, slope, rtol=1e-7, atol=1e-10)
        assert torch.allclose(f(eps) + f(-eps) - 2 * f(0), torch.zeros(2, dtype=x.dtype), atol=1e-13)


def test_zero_vs_freeze_and_no_hooks_left(cnn, images):
    x, t = images
    a = NeuronMCT(cnn, pruned="zero").explain(x, t)
    b = NeuronMCT(cnn, pruned="freeze").explain(x, t)
    assert torch.equal(a.aux["pathway/mask"], b.aux["pathway/mask"])
    assert not torch.allclose(a.maps, b.maps)
    assert torch.allclose(b.aux["pathway/logit"], cnn(x).gather(1, t[:, None])[:, 0], atol=1e-5)
    assert hook_count(cnn) == 0


def test_signed_max_abs_reduction():
    g = torch.tensor([[[[1.0, -3.0]], [[-2.0, 2.0]], [[0.5, 0.0]]]])  # (1, 3, 1, 2)
    assert reduce_map(g).flatten().tolist() == [-2.0, -3.0]
    tie = torch.tensor([[[[2.0]], [[-2.0]], [[1.0]]]])  # |.| ties: the first channel's value, with its sign
    assert reduce_map(tie).item() == 2.0 and reduce_map(-tie).item() == -2.0


# ------------------------------------------------------------------------------------------ methods
METHODS = {
    "neuron_mct": lambda net: NeuronMCT(net, sparsity=0.7),
    "neuron_intgrad": lambda net: NeuronIntGrad(net, sparsity=0.7, n_steps=4, chunk=5),
    "input_mct": lambda net: InputMCT(net),
    "input_intgrad": lambda net: InputIntGrad(net, n_steps=8, chunk=7),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_batched_equals_one_at_a_time(name, cnn, images):
    x, t = images
    method = METHODS[name](cnn)
    full = method.explain(x, t)
    parts = [method.explain(x[i : i + 1], t[i : i + 1]) for i in range(len(x))]
    assert full.maps.shape == (3, 1, 12, 12)
    assert torch.allclose(full.maps, torch.cat([p.maps for p in parts]), atol=1e-5, rtol=1e-4)
    for k, v in full.aux.items():
        one = torch.cat([p.aux[k] for p in parts])
        assert torch.allclose(v, one, atol=1e-6) if v.is_floating_point() else torch.equal(v, one), k
    if name.startswith("neuron"):
        assert full.aux["pathway/mask"].dtype == torch.uint8 and full.aux["pathway/mask"].shape == (3, 504)
        assert full.aux["pathway/layer_sizes"][0].tolist() == [1152, 2304, 576]
        assert full.aux["pathway/kept"].tolist() == [1210] * 3


def test_intgrad_chunk_does_not_change_results(cnn, images):
    x, t = images
    a = NeuronIntGrad(cnn, n_steps=3, chunk=None).explain(x, t)
    b = NeuronIntGrad(cnn, n_steps=3, chunk=2).explain(x, t)
    assert torch.equal(a.aux["pathway/mask"], b.aux["pathway/mask"])
    assert torch.allclose(a.maps, b.maps, atol=1e-6)


def test_no_relu_network_is_one_line_error():
    with pytest.raises(XattrConfigError, match="valid choices"):
        NeuronMCT(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(XattrConfigError, match="unknown activation 'tanh'"):
        NeuronMCT(mlp(), activations=["tanh"])


# ------------------------------------------------------------------------------------------ opening
def test_opening_is_idempotent_and_removes_a_spike():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(2, 1, 16, 16, generator=g)
    for k in (2, 3, 5):
        o = opening(m, k)
        assert torch.equal(opening(o, k), o) and (o <= m).all()
    spike = torch.zeros(1, 1, 9, 9)
    spike[..., 4, 4] = 1.0
    spike[..., :3, :3] = 0.5                               # a 3x3 blob survives a 3x3 opening
    o = opening(spike, 3)
    assert o[..., 4, 4] == 0 and torch.equal(o[..., :3, :3], spike[..., :3, :3])
    star = NeuronMCT(TinyCNN(5).eval(), opening_size=3)
    assert star.explain(torch.randn(1, 3, 12, 12), torch.tensor([0])).maps.min() >= 0


def test_opening_equals_skimages_and_finish_map_opens_only_above_1():
    """NeuronIntGrad*'s opening against scikit-image's grey opening with a flat square (even sizes too), and
    finish_map: the signed map for opening_size 0 / 1, the opening of |map| from 2 on."""
    import numpy as np
    from skimage.morphology import opening as sk_opening

    from xattr.methods.pathways.maps import check_opening, check_reduce, finish_map

    m = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for k in (1, 2, 3, 4, 5):
        ref = np.stack([sk_opening(a[0].numpy(), np.ones((k, k), bool)) for a in m])[:, None]
        assert torch.equal(opening(m, k), torch.from_numpy(ref)), k
    attr = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    signed = reduce_map(attr)
    assert (signed < 0).any()
    for k in (0, 1):
        assert torch.equal(finish_map(attr, "signed_max_abs", k), signed)
    for k in (2, 3):
        assert torch.equal(finish_map(attr, "signed_max_abs", k), opening(signed.abs(), k))
    assert check_opening(None) == 0 and check_opening(4) == 4
    for bad in (True, -1, 2.0):
        with pytest.raises(XattrConfigError, match=rf"^bad opening_size {bad!r}; valid choices: 0 \(off\) or an integer >= 1$"):
            check_opening(bad)
    with pytest.raises(XattrConfigError, match=r"^unknown reduction 'mean_abs'"):
        check_reduce("mean_abs")


def test_activation_names_pick_their_modules_and_a_network_without_them_is_one_line():
    for name, act in (("leaky_relu", nn.LeakyReLU()), ("elu", nn.ELU()), ("silu", nn.SiLU()), ("relu6", nn.ReLU6())):
        net = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2))
        assert list(Neurons(net, [name]).modules) == ["1"], name
    with pytest.raises(XattrConfigError, match=r"^unknown network without relu/relu6 modules; valid choices: a network "
                       r"whose activations are modules of \['ReLU', 'ReLU6'\] \(functional relu is not seen\)$"):
        Neurons(nn.Sequential(nn.Linear(3, 4), nn.Tanh()))


def test_a_reused_relu_counts_once_per_call():
    class Twice(nn.Module):  # as torchvision ResNet-50's Bottleneck.relu, called three times
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.relu = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 2), nn.ReLU()

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    net = Twice().eval()
    layout = Neurons(net).layout(torch.randn(1, 3))
    assert layout.names == ("relu", "relu@1") and layout.sizes == [4, 5]
    e = NeuronMCT(net, sparsity=0.5).explain(torch.randn(2, 3), torch.tensor([0, 1]))
    assert e.aux["pathway/layer_sizes"][0].tolist() == [4, 5]


def test_pathway_methods_names_defaults_costs_and_error_lines():
    """Each method's name is its config's (conf/method/<name>.yaml targets the class); the defaults are the
    chapter's code (NeuronIntGrad 10 steps, InputIntGrad 50, no opening, sparsity 0.7, pruned zero); the stated
    cost: NeuronMCT a forward and a backward + the 4 of every pathway method, NeuronIntGrad 3 per step and
    layer (+1 step for the reference schedule) + 4; each bad value one whole line."""
    from pathlib import Path

    import yaml

    from xattr.methods.pathways import GreedyPruning as Greedy
    from xattr.methods.pathways.pathway import PathwayMethod

    conf = Path(__file__).resolve().parents[1] / "conf" / "method"
    for cls in (NeuronMCT, NeuronIntGrad, InputMCT, InputIntGrad, Greedy):
        target = yaml.safe_load((conf / f"{cls.name}.yaml").read_text())["_target_"]
        assert target == f"xattr.methods.pathways.{cls.__name__}"
    assert (PathwayMethod.BASE_FORWARDS, PathwayMethod.memory_knob) == (4.0, "chunk")
    net = TinyCNN(5).eval()  # 3 ReLU modules
    h = NeuronIntGrad(net).hparams
    assert (h["n_steps"], h["alpha_schedule"], h["score"], h["opening_size"], h["sparsity"], h["pruned"]) == (
        10, "linear", "abs", 0, 0.7, "zero")
    assert NeuronMCT(net).hparams["opening_size"] == 0 and InputMCT(net).hparams["opening_size"] == 0
    assert (InputIntGrad(net).hparams["n_steps"], InputIntGrad(net).hparams["opening_size"]) == (50, 0)
    assert NeuronMCT(net).forwards_per_image((3, 12, 12)) == 3 + 4
    assert NeuronIntGrad(net, n_steps=7).forwards_per_image((3, 12, 12)) == 3 * 7 * 3 + 4
    assert NeuronIntGrad(net, n_steps=7, alpha_schedule="reference").forwards_per_image((3, 12, 12)) == 3 * 8 * 3 + 4
    for kw, line in [({"alpha_schedule": "x"}, "unknown alpha_schedule 'x'; valid choices: linear, reference"),
                     ({"n_steps": 0}, "bad n_steps 0; valid choices: an integer >= 1"),
                     ({"score": "x"}, "unknown score 'x'; valid choices: abs, signed"),
                     ({"pruned": "x"}, "unknown pruned 'x'; valid choices: zero, freeze")]:
        with pytest.raises(XattrConfigError, match="^" + line + "$"):
            NeuronIntGrad(net, **kw)
    assert repr(NeuronMCT(net)) == "NeuronMCT(sparsity=0.7, pruned='zero')"
    one = NeuronMCT(net).explain_pathway(torch.randn(1, 3, 12, 12), torch.tensor([0]))  # one image: its row 0
    assert one.shape == (1, NeuronMCT(net).neurons.layout(torch.randn(1, 3, 12, 12)).total)
    from xattr.methods.pathways.contributions import alpha_schedule

    with pytest.raises(XattrConfigError, match="^unknown alpha_schedule 'x'; valid choices: linear, reference$"):
        alpha_schedule(3, "x")
    with pytest.raises(XattrConfigError, match="^bad n_steps 0; valid choices: an integer >= 1$"):
        alpha_schedule(0)


def test_chunks_smaller_than_the_batch_give_the_same_maps_and_pathways():
    """``chunk`` is memory only: 5 images in calls of 2 (more images than input channels, so a loop over the
    wrong axis would drop some) equal one call, for the selection and for the pathway gradient."""
    net = TinyCNN(5).eval()
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    t = net(x).argmax(1)
    for make in (lambda c: NeuronMCT(net, chunk=c), lambda c: NeuronIntGrad(net, n_steps=3, chunk=c)):
        whole, parts = make(None).explain(x, t), make(2).explain(x, t)
        assert torch.allclose(whole.maps, parts.maps, atol=1e-6)
        assert torch.equal(whole.aux["pathway/mask"], parts.aux["pathway/mask"])


def test_pathway_pieces_defaults_and_errors_by_hand():
    """The defaults the callers rely on and the one-line errors: ``pathway_gradient`` prunes by zeroing unless told
    otherwise (the code's ``zero``: a pruned neuron's output is 0), ``intgrad_scores`` integrates on the linear
    schedule, ``pathway_forward`` names a bad ``pruned``; a pathway method must say how it selects."""
    from xattr.methods.pathways.pathway import PathwayMethod

    net = mlp((4, 6, 3))
    x, t = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    neurons = Neurons(net)
    m = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    g_default, phi_default = pathway_gradient(neurons, x, t, [m])
    g_zero, phi_zero = pathway_gradient(neurons, x, t, [m], pruned="zero")
    assert torch.equal(g_default, g_zero) and torch.equal(phi_default, phi_zero)
    hidden = torch.relu(net[0](x)) * m  # zero pruning by hand: Phi = w_t . (a * m) + b_t
    assert torch.allclose(phi_zero, (hidden * net[2].weight[t]).sum(1) + net[2].bias[t], atol=1e-6)
    layout = neurons.layout(x)
    by_default = intgrad_scores(neurons, x, t, layout, n_steps=4)
    linear = intgrad_scores(neurons, x, t, layout, n_steps=4, schedule="linear")
    assert all(torch.equal(a, b) for a, b in zip(by_default, linear, strict=True))
    with pytest.raises(XattrConfigError, match=r"^unknown pruned 'bogus'; valid choices: zero, freeze$"):
        pathway_forward(neurons, x, [m], pruned="bogus")

    class NoSelection(PathwayMethod):
        name = "no_selection"

    with pytest.raises(TypeError, match="abstract"):
        NoSelection(net)


def test_flat_scores_written_through_layer_views_equal_the_concatenated_layers(cnn, images):
    """``flat_mct_scores`` (issue 31: one ``(B, N)`` buffer written through its per-layer views, no concatenation)
    equals the per-layer ``mct_scores`` flattened in call order, one image at a time, with and without masks, in
    chunks of 1 or all, and a reused buffer holds the new scores only (no trace of the previous ones)."""
    from xattr.methods.pathways.contributions import flat_mct_scores

    x, t = images
    neurons = Neurons(cnn)
    layout = neurons.layout(x)
    masks = torch.rand(len(x), layout.total, generator=torch.Generator().manual_seed(6)) > 0.4
    gates = masks.float()
    for m in (None, gates):
        want = torch.cat([torch.cat([s.reshape(1, -1) for s in mct_scores(
            neurons, x[i : i + 1], t[i : i + 1], None if m is None else layout.split(m[i : i + 1]))], 1)
            for i in range(len(x))])
        whole = torch.cat([s.reshape(len(x), -1) for s in mct_scores(
            neurons, x, t, None if m is None else layout.split(m))], 1)
        assert torch.equal(flat_mct_scores(neurons, x, t, layout, 1, m), want)
        assert torch.equal(flat_mct_scores(neurons, x, t, layout, None, m), whole)
        buf = torch.full((len(x), layout.total), float("nan"))
        assert flat_mct_scores(neurons, x, t, layout, 1, m, buf) is buf and torch.equal(buf, want)
    assert (want[~masks] == 0).all()  # pruned neurons score exactly 0


def test_rank_values_on_rows_mostly_at_their_minimum_equal_a_sort_and_skip_the_minimum(monkeypatch):
    """``core.ranking.rank_values`` (the percentile's selection): rows whose minimum repeats on many entries (dead
    neurons' zero scores, a negative floor, a constant row) give the ranks of ``np.sort`` (NaN last), for ``r``
    below, at and above the tied block, with the next rank as the least value right of ``r``; and such a row is
    partitioned without its minimum (numpy's selection degrades on it: 1.4 s for VGG-16's 13.5 M scores)."""
    import numpy as np

    from xattr.core import ranking

    rng = np.random.default_rng(3)
    n = 64
    rows = [np.abs(rng.standard_normal(n)), rng.standard_normal(n), np.full(n, 1.5), rng.standard_normal(n)]
    rows[0][:40] = 0.0  # 40 zeros of 64
    rows[1][rng.permutation(n)[:36]] = -7.0  # a negative minimum, 36 times
    rows[3][[5, 9]] = np.nan  # NaN: the plain path
    a = np.stack(rows).astype(np.float32)
    want = np.sort(a, axis=1)
    for r in (0, 19, 35, 36, 39, 40, 41, 62):
        v, nxt = ranking.rank_values(a, r, next_too=True)
        assert np.array_equal(v, want[:, r], equal_nan=True), r
        assert np.array_equal(nxt, np.min(want[:, r + 1:], axis=1), equal_nan=True), r
    v, nxt = ranking.rank_values(a, n - 1)
    assert nxt is None and np.array_equal(v, want[:, -1], equal_nan=True)
    for q in (0.1, 0.5, 0.62, 0.7, 0.99):
        torch.testing.assert_close(percentile(torch.from_numpy(a), q),
                                   torch.from_numpy(np.percentile(a, 100 * q, axis=1).astype(np.float32)),
                                   equal_nan=True)
    sizes: list[tuple[int, ...]] = []
    real = np.partition
    monkeypatch.setattr(np, "partition", lambda x, k, **kw: sizes.append(np.shape(x)) or real(x, k, **kw))
    ranking.rank_values(a, 50)
    assert sorted(sizes) == [(1, n), (n - 40,), (n - 36,)]  # the NaN row whole; rows 0, 1 above their minimum; 2 none
    sizes.clear()
    b = a.copy()  # row 1 with 26 ties of 64: under half, the plain selection (with the NaN row)
    b[1][np.flatnonzero(b[1] == -7.0)[:10]] = 1.0
    ranking.rank_values(b, 50)
    assert sorted(sizes) == [(2, n), (n - 40,)]


def test_intgrad_scores_default_is_the_papers_50_steps():
    """eq. 13 with the paper's 50 integration steps (appendix C; the code's 10 is NeuronIntGrad's default)."""
    import inspect

    assert inspect.signature(intgrad_scores).parameters["n_steps"].default == 50
    assert NeuronIntGrad(TinyCNN(5).eval()).n_steps == 10
    # the cost counts layers as modules; a module called up to three times in the forward (a ResNet block's ReLU,
    # the class comment) makes the run up to 3x the stated cost, never less
    assert NeuronIntGrad.cost_bounds == (1.0, 3.0)


def test_pathway_forward_prunes_to_zero_by_default_and_chunk_is_kept(cnn, images):
    """``pathway_forward``'s default is the code's ``pruned: zero``; a method keeps its ``chunk``."""
    x, _ = images
    neurons = Neurons(cnn)
    layout = neurons.layout(x)
    masks = layout.split((torch.rand(len(x), layout.total, generator=torch.Generator().manual_seed(2)) > 0.5).float())
    assert torch.equal(pathway_forward(neurons, x, masks), pathway_forward(neurons, x, masks, "zero"))
    assert not torch.equal(pathway_forward(neurons, x, masks), pathway_forward(neurons, x, masks, "freeze"))
    assert NeuronMCT(cnn, chunk=2).chunk == 2 and NeuronMCT(cnn).chunk is None


def test_percentile_on_the_device_path_equals_numpy(monkeypatch):
    """The device path (``torch.kthvalue`` at ranks ``lo`` and ``lo + 1``), run here on the CPU, equals
    ``np.percentile`` with its interpolation, as the CPU path does."""
    import numpy as np

    from xattr.methods.pathways import selection

    monkeypatch.setattr(selection, "_ranked_numpy", selection._ranked_torch)
    s = torch.randn(3, 101, generator=torch.Generator().manual_seed(4))
    for q in (0.0, 0.333, 0.5, 0.7, 0.999, 1.0):
        torch.testing.assert_close(percentile(s, q), torch.tensor(np.percentile(s.numpy(), 100 * q, axis=1)).float())
