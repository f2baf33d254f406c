"""Pathways from the pruning objective (dissertation ch. 5, sec. 3.2): GreedyPruning (Alg. 1) and DGR (eq. 3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xattr.core.seeding import image_generators
from xattr.errors import XattrConfigError
from xattr.methods.pathways import DGR, GreedyPruning, NeuronMCT, Neurons
from xattr.models.tiny import TinyCNN


def dead_trap() -> nn.Sequential:
    """x = 1. Layer 1: u = relu(x) = 1, v = relu(x) = 1, w = relu(-x) = 0 (dead).
    Layer 2: p = relu(0.1 u + v) = 1.1, d = relu(v - 2 u) = 0 (dead), z = relu(0.12 v) = 0.12.
    Phi = p + 0.22 d + z = 1.22. Scores |a dPhi/da|: u 0.1, v 1.12, p 1.1, z 0.12, w = d = 0.
    Pruning u (the lowest) switches d on (p = 1, d = 1); then z (0.12 < d's 0.22) goes, leaving v, p, d with
    Phi = 1 + 0.22 = 1.22: the output is preserved by a pathway holding an originally dead neuron."""
    net = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [1.0], [-1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[0.1, 1.0, 0.0], [-2.0, 1.0, 0.0], [0.0, 0.12, 0.0]]))
        net[2].bias.zero_()
        net[4].weight.copy_(torch.tensor([[1.0, 0.22, 1.0], [0.0, 0.0, 0.0]]))
        net[4].bias.zero_()
    return net.eval().requires_grad_(False)


def test_greedy_pruning_lets_an_originally_dead_neuron_in_with_the_output_preserved():
    net, x, t = dead_trap(), torch.ones(1, 1), torch.tensor([0])
    assert net(x)[0, 0].item() == pytest.approx(1.22)
    # neurons (flat): u v w | p d z; K = 6 - ceil(0.5 * 5) = 3
    greedy = GreedyPruning(net, sparsity=0.5, prune_step=0.1)
    exp = greedy.explain(x, t)
    e = greedy.explain_pathway(x, t)[0]
    assert e.tolist() == [False, True, False, True, True, False]           # v, p and the dead d
    assert exp.aux["pathway/logit"].item() == pytest.approx(1.22, abs=1e-6)  # same response as the network
    assert exp.aux["pathway/iterations"].item() == 2
    _, acts = Neurons(net).activations_of(x)
    dead = torch.cat([a.flatten() for a in acts]) <= 0
    assert (e & dead).sum() == 1
    # the contribution-based pathway at the same sparsity keeps no dead neuron
    mct = NeuronMCT(net, sparsity=0.5).explain_pathway(x, t)[0]
    assert mct.tolist() == [False, True, False, True, False, True] and not (mct & dead).any()


def test_greedy_reference_variant_restores_zero_scores():
    """PathwayGrad's rounds worked by hand on dead_trap (u v w | p d z; scores u .1, v 1.12, w 0, p 1.1, d 0,
    z .12). Round 0 (percentile 0 of the scores with zeros raised to the max: .1): u pruned, the zero-score
    w, d restored -> u off. Then u = 0: p = d = 1, Phi = 1.34; scores v 1.34, p 1, d .22, z .12, u = w = 0.
    Round 1 (40th percentile of [1.34, 1.34, 1.34, 1, .22, .12] = 1): p, d, z pruned, u, w restored (score 0).
    Then layer 2 is off: every score is 0, so round 2 (t = 0) restores everything."""
    net, x, t = dead_trap(), torch.ones(1, 1), torch.tensor([0])
    rounds = {k: GreedyPruning(net, variant="reference", iterations=k, percentile_step=0.4).explain_pathway(x, t)[0]
              for k in (1, 2, 3, 4)}
    assert rounds[1].tolist() == [False, True, True, True, True, True]
    assert rounds[2].tolist() == [True, True, True, False, False, False]
    assert rounds[3].tolist() == [True] * 6
    # round 3 asks for the 120th percentile, capped at the 100th: t = the largest score (1.12, zeros raised to it),
    # everything pruned, the zero scores w and d restored
    assert rounds[4].tolist() == [False, False, True, False, True, False]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(1)
    return TinyCNN(4).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def images(cnn):
    x = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    return x, cnn(x).argmax(1)


METHODS = {
    "greedy_pruning": lambda net: GreedyPruning(net, sparsity=0.7, prune_step=0.05),
    "greedy_reference": lambda net: GreedyPruning(net, variant="reference", iterations=5, percentile_step=0.1),
    "dgr": lambda net: DGR(net, iterations=6, max_retries=2, lr=0.5),
    "dgr_uniform": lambda net: DGR(net, init="uniform", iterations=6, max_retries=3, lr=0.5, seed=3),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_batched_equals_one_at_a_time(name, cnn, images):
    x, t = images
    method = METHODS[name](cnn)
    full = method.explain(x, t)
    parts = [method.explain(x[i : i + 1], t[i : i + 1]) for i in range(len(x))]
    assert torch.allclose(full.maps, torch.cat([p.maps for p in parts]), atol=1e-5, rtol=1e-4)
    for k, v in full.aux.items():
        one = torch.cat([p.aux[k] for p in parts])
        assert torch.allclose(v, one, atol=1e-5) if v.is_floating_point() else torch.equal(v, one), k


def test_greedy_paper_stops_at_the_kept_count(cnn, images):
    x, t = images
    exp = GreedyPruning(cnn, sparsity=0.8, prune_step=0.05).explain(x, t)
    n = int(exp.aux["pathway/layer_sizes"][0].sum())
    k = n - int(torch.ceil(torch.tensor(0.8 * (n - 1))))
    assert (exp.aux["pathway/kept"] <= k).all() and (exp.aux["pathway/kept"] > k - 0.05 * n - 1).all()


def test_dgr_gamma_zero_init_one_stays_at_one(cnn, images):
    x, _ = images
    dgr = DGR(cnn, gamma=0.0, init="one", iterations=15)
    layout = dgr.neurons.layout(x)
    lam, info = dgr.optimise(x, layout)
    assert info["found"].all() and info["rounds"].tolist() == [1, 1, 1]
    assert torch.allclose(lam, torch.ones_like(lam), atol=1e-5)


def test_dgr_gates_are_clamped_and_retries_lower_gamma(cnn, images):
    x, _ = images
    dgr = DGR(cnn, init="uniform", iterations=5, lr=50.0, gamma=1.0, clamp=100.0, max_retries=4)
    layout = dgr.neurons.layout(x)
    lam, info = dgr.optimise(x, layout)
    assert lam.min() >= 0 and lam.max() <= 100
    assert ((info["gamma"] - 10.0 ** (1 - info["rounds"].float())).abs() < 1e-6).all()
    with pytest.raises(XattrConfigError, match="unknown init 'r'"):
        DGR(cnn, init="r")


def test_dgr_ties_at_the_percentile_kept_or_dropped(cnn, images):
    x, t = images
    # gamma 0, lr tiny: every gate stays ~1, the percentile is 1: keep (>=) takes all, drop (>, the code) none
    # but the gates that grew; the never-active neurons (gradient 0) tie at exactly 1 under both
    keep = DGR(cnn, gamma=0.0, iterations=2, ties="keep").explain(x, t)
    assert (keep.aux["pathway/kept"] == keep.aux["pathway/layer_sizes"].sum(1)).all()
    drop = DGR(cnn, gamma=0.0, iterations=2, ties="drop").explain(x, t)
    assert (drop.aux["pathway/kept"] < keep.aux["pathway/kept"]).all()
    with pytest.raises(XattrConfigError, match="unknown ties 'x'; valid choices: keep, drop"):
        DGR(cnn, ties="x")


def test_select_ties_by_hand():
    from xattr.methods.pathways.selection import select

    scores = torch.tensor([[0.0, 1.0, 2.0, 2.0, 2.0, 3.0]])  # 50th percentile: 2.0 (np.percentile)
    assert select(scores, 0.5, "keep").tolist() == [[False, False, True, True, True, True]]
    assert select(scores, 0.5, "drop").tolist() == [[False, False, False, False, False, True]]


def test_dgr_eq3_by_hand_on_a_two_layer_net():
    """DGR's eq. 3 on Linear(4, 6) -> ReLU (gated) -> Linear(6, 3), written here per image: loss(lambda) =
    -sum_k p_orig[k] log(softmax(W2 (lambda * relu(W1 x + b1)) + b2)[k] + 1e-20) + gamma sum |lambda|, SGD with
    momentum 0.9 from lambda = 1, clamp [0, 100], the kept gates the lowest-loss iterate predicting the
    original class. Hidden neuron 5 feeds nothing (W2[:, 5] = 0): only gamma's term moves its gate, which
    shrinks as 1 - lr gamma sum_{t<=k} (1 - 0.9^t) / 0.1 after k steps."""
    torch.manual_seed(21)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        net[0].bias.fill_(0.5)  # every hidden neuron active on these inputs
        net[2].weight[:, 5] = 0.0
    x = torch.rand(2, 4)
    gamma, lr, iters = 0.05, 0.1, 20
    dgr = DGR(net, gamma=gamma, lr=lr, iterations=iters, max_retries=1, init="one")
    with torch.no_grad():
        layout = dgr.neurons.layout(x)
    gates, aux = dgr.optimise(x, layout)
    w1, b1, w2, b2 = (p.detach() for p in (net[0].weight, net[0].bias, net[2].weight, net[2].bias))
    for i in range(2):  # one image at a time, from the equation
        a = torch.relu(w1 @ x[i] + b1)
        p0 = torch.softmax(w2 @ a + b2, 0)

        def loss(lam, a=a, p0=p0):
            return -(p0 * torch.log(torch.softmax(w2 @ (lam * a) + b2, 0) + 1e-20)).sum() + gamma * lam.abs().sum()

        lam, buf, best, best_loss, best_k = torch.ones(6), torch.zeros(6), None, float("inf"), None
        for k in range(iters):
            leaf = lam.clone().requires_grad_(True)
            value = loss(leaf)
            (g,) = torch.autograd.grad(value, leaf)
            same = int((w2 @ (lam * a) + b2).argmax()) == int(p0.argmax())
            if same and float(value.detach()) < best_loss:
                best, best_loss, best_k = lam.clone(), float(value), k
            buf = 0.9 * buf + g
            lam = (lam - lr * buf).clamp(0, 100)
        assert bool(aux["found"][i]) and best_k == iters - 1
        torch.testing.assert_close(aux["dgr_loss"][i], torch.tensor(best_loss), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gates[i], best, rtol=1e-5, atol=1e-6)
        shrunk = 1 - lr * gamma * sum((1 - 0.9**t) / 0.1 for t in range(1, best_k + 1))
        assert gates[i, 5] == pytest.approx(shrunk, rel=1e-5) and shrunk < 0.5


def test_dgr_defaults_are_the_papers_and_bad_values_are_one_line(cnn):
    """Defaults of ch. 5 / the reference code (module docstring of dgr.py: gamma 0.01, SGD lr 0.01, momentum
    0.9, 1000 iterations, gates clamped to [0, 100], up to 100 rounds, sparsity 0.7, init one); each bad value
    is one XattrConfigError line naming it, and the values at the edge of each range are accepted. The stated
    cost: the clean forward, 3 per iteration (a forward and a backward), and the 4 forwards every pathway
    method spends besides its selection (pathway.BASE_FORWARDS), rounds 1 .. max_retries."""
    h = DGR(cnn).hparams
    assert {k: h[k] for k in ("gamma", "lr", "momentum", "iterations", "clamp", "max_retries", "sparsity", "init",
                              "seed", "opening_size", "pruned", "ties")} == {
        "gamma": 0.01, "lr": 0.01, "momentum": 0.9, "iterations": 1000, "clamp": 100.0, "max_retries": 100,
        "sparsity": 0.7, "init": "one", "seed": 0, "opening_size": 0, "pruned": "zero", "ties": "drop"}
    for kw, line in [({"gamma": -0.1}, "bad gamma -0.1; valid choices: a number >= 0"),
                     ({"gamma": True}, "bad gamma True; valid choices: a number >= 0"),
                     ({"gamma": "x"}, "bad gamma 'x'; valid choices: a number >= 0"),
                     ({"lr": 0.0}, "bad lr 0.0; valid choices: a number > 0"),
                     ({"clamp": 0.0}, "bad clamp 0.0; valid choices: a number > 0"),
                     ({"momentum": 1.0}, r"bad momentum 1.0; valid choices: a number in \[0, 1\)"),
                     ({"momentum": -0.1}, r"bad momentum -0.1; valid choices: a number in \[0, 1\)"),
                     ({"iterations": 0}, "bad iterations 0; valid choices: an integer >= 1"),
                     ({"max_retries": 0}, "bad max_retries 0; valid choices: an integer >= 1")]:
        with pytest.raises(XattrConfigError, match="^" + line + "$"):
            DGR(cnn, **kw)
    DGR(cnn, gamma=0, momentum=0.0, iterations=1, max_retries=1)  # the edges are valid
    dgr = DGR(cnn, iterations=7, max_retries=3)
    assert dgr.forwards_per_image((3, 10, 10)) == 1 + 3 * 7 + 4
    assert dgr.cost_bounds == (1.0, 3.0)
    assert DGR.name == "dgr"


def test_dgr_loss_stays_finite_when_a_probability_underflows():
    """Logits (0, 300): softmax's first probability is 0 in float32, and eq. 3's log(p + 1e-20) keeps the
    distillation term finite: at the start (gates 1, three hidden units of 1) the loss is -1 log 1 + 0.01 * 3."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(1.0)
        net[2].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0]]))
        net[2].bias.zero_()
    x = torch.zeros(1, 2)
    dgr = DGR(net, iterations=1, max_retries=1)
    with torch.no_grad():
        layout = dgr.neurons.layout(x)
    _, aux = dgr.optimise(x, layout)
    assert bool(aux["found"][0]) and float(aux["dgr_loss"][0]) == pytest.approx(0.03, rel=1e-5)


def test_greedy_defaults_and_bad_values_are_one_line():
    """Alg. 1 as the dissertation's text (variant paper, 1% of the neurons per iteration) and the code's call
    ``prune_greedy(1, 99)`` (reference: 99 rounds of 1 percentile point)."""
    h = GreedyPruning(TinyCNN(5).eval()).hparams
    assert {k: h[k] for k in ("sparsity", "variant", "prune_step", "max_iterations", "iterations", "percentile_step",
                              "pruned", "opening_size")} == {
        "sparsity": 0.7, "variant": "paper", "prune_step": 0.01, "max_iterations": 1000, "iterations": 99,
        "percentile_step": 0.01, "pruned": "zero", "opening_size": 0}
    for kw, line in [({"variant": "x"}, "unknown variant 'x'; valid choices: paper, reference"),
                     ({"prune_step": 0}, "bad prune_step 0; valid choices: a number > 0"),
                     ({"percentile_step": -1}, "bad percentile_step -1; valid choices: a number > 0"),
                     ({"max_iterations": 0}, "bad max_iterations 0; valid choices: an integer >= 1"),
                     ({"iterations": 0}, "bad iterations 0; valid choices: an integer >= 1")]:
        with pytest.raises(XattrConfigError, match="^" + line + "$"):
            GreedyPruning(TinyCNN(5).eval(), **kw)
    # the stated cost: 3 per scoring round (a forward and a backward) + the 4 of every pathway method; rounds:
    # paper 1 + ceil(kappa / step) (0.7 / 0.01 = 70), reference 1 + iterations
    cost = lambda **kw: GreedyPruning(TinyCNN(5).eval(), **kw).forwards_per_image((3, 8, 8))  # noqa: E731
    assert cost() == 3 * 71 + 4 and cost(variant="reference") == 3 * 100 + 4
    assert cost(prune_step=0.07) == 3 * 11 + 4  # 0.7 / 0.07 = 10.000000000000002 in floats: 10 rounds, not 11
    assert cost(max_iterations=5) == 3 * 6 + 4 and cost(variant="reference", iterations=7) == 3 * 8 + 4
    # the stated cost is the most rounds (cost_bounds' upper end 1), the loop may stop after a quarter of them
    assert GreedyPruning.cost_bounds == (0.25, 1.0) and GreedyPruning.name == "greedy_pruning"


def test_greedy_paper_prunes_n_step_per_round_down_to_exactly_k_on_an_all_live_net():
    """A network with positive weights, biases and inputs: every neuron is live in every pruned network, so
    Alg. 1 prunes ceil(prune_step N) per round until K = N - ceil(kappa (N - 1)) are left: ceil((N - K) / step)
    rounds, exactly K kept (the last round prunes only what is left above K)."""
    from xattr.methods.pathways.greedy import kept_count

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 50), nn.ReLU(), nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 3)).eval()
    for layer in (net[0], net[2], net[4]):
        layer.weight.data.uniform_(0.1, 1.0)
        layer.bias.data.uniform_(0.1, 1.0)
    x, t = torch.rand(2, 4) + 0.1, torch.tensor([0, 2])
    n, k = 90, kept_count(90, 0.7)
    assert k == 90 - 63  # ceil(0.7 * 89) = ceil(62.3)
    assert kept_count(11, 0.7) == 4  # 0.7 * 10 is 7.000000000000001 in floats: the 1e-9 keeps it 7
    for step, n_step in ((0.05, 5), (0.01, 1)):
        exp = GreedyPruning(net, sparsity=0.7, prune_step=step).explain(x, t)
        assert exp.aux["pathway/kept"].tolist() == [k, k]
        assert exp.aux["pathway/iterations"].tolist() == [-(-(n - k) // n_step)] * 2, step
    ref = GreedyPruning(net, variant="reference", iterations=3).explain(x, t)
    assert ref.aux["pathway/iterations"].tolist() == [3, 3]
    # the loop stops once every image is done: one layout probe, the first scores, one scoring pass per round
    # and the pathway gradient are all the forwards (max_iterations 1000 is never reached)
    calls = []
    handle = net[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        exp = GreedyPruning(net, sparsity=0.7, prune_step=0.05).explain(x, t)
    finally:
        handle.remove()
    assert len(calls) == 1 + 1 + int(exp.aux["pathway/iterations"][0]) + 1


def test_dgr_retries_by_hand_where_some_images_find_a_pathway_and_others_retry():
    """DGR's retry rounds (``cdrp/main2.py``), written here per image from eq. 3: a round of SGD with momentum from
    the gates where the previous round stopped (momentum kept); an image whose iterates never predict the original
    class divides gamma by 10 and goes on, the others stop. On Linear(5, 4) -> ReLU (gated) -> Linear(4, 2), whose
    two logits are near equal, the U[0, 1] initial gates flip some images' class: the batch mixes images done in
    round 1 (the whole-batch step) with images that retry (the step on the remaining images), and the kept gates,
    losses, rounds and gammas must equal the per-image loop's."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[0].bias.fill_(0.3)
        net[2].weight.copy_(torch.tensor([[1.0, 0.9, 0.0, 0.2], [0.0, 0.2, 1.0, 0.9]]))
        net[2].bias.zero_()
    x = torch.rand(8, 5, generator=torch.Generator().manual_seed(2))
    gamma, lr, iters, tries, seed = 0.2, 0.3, 4, 3, 4
    dgr = DGR(net, gamma=gamma, lr=lr, iterations=iters, max_retries=tries, init="uniform", seed=seed)
    with torch.no_grad():
        layout = dgr.neurons.layout(x)
    gates, aux = dgr.optimise(x, layout)
    assert 1 in aux["rounds"].tolist() and max(aux["rounds"].tolist()) > 1  # a mixed batch
    w1, b1, w2, b2 = (p.detach() for p in (net[0].weight, net[0].bias, net[2].weight, net[2].bias))
    for i in range(len(x)):
        a = torch.relu(w1 @ x[i] + b1)
        p0 = torch.softmax(w2 @ a + b2, 0)
        lam = torch.rand(4, generator=image_generators(x[i : i + 1], seed)[0])  # the method's U[0, 1] draw
        buf, best, best_loss, g, rounds = torch.zeros(4), lam.clone(), float("inf"), gamma, 0
        for r in range(tries):
            if r:
                g /= 10
            rounds += 1
            for _ in range(iters):
                leaf = lam.clone().requires_grad_(True)
                value = -(p0 * torch.log(torch.softmax(w2 @ (leaf * a) + b2, 0) + 1e-20)).sum() + g * leaf.abs().sum()
                (grad,) = torch.autograd.grad(value, leaf)
                if int((w2 @ (lam * a) + b2).argmax()) == int(p0.argmax()) and float(value.detach()) < best_loss:
                    best, best_loss = lam.clone(), float(value.detach())
                buf = 0.9 * buf + grad
                lam = (lam - lr * buf).clamp(0, 100)
            if best_loss < float("inf"):
                break
        assert int(aux["rounds"][i]) == rounds and bool(aux["found"][i]) == (best_loss < float("inf"))
        assert float(aux["gamma"][i]) == pytest.approx(g, rel=1e-6)
        torch.testing.assert_close(gates[i], best if best_loss < float("inf") else lam, rtol=1e-5, atol=1e-6)
        if best_loss < float("inf"):
            assert float(aux["dgr_loss"][i]) == pytest.approx(best_loss, rel=1e-5, abs=1e-6)


def test_dgr_loss_and_gradient_by_hand_at_given_gates_where_a_probability_underflows():
    """Eq. 3 at given gates, written here: hidden units a = (1, 1, 1), logits W2 (lambda * a) = (0, 10) at lambda = 1
    (p_orig = softmax(0, 10): the first class keeps 4.5e-5), and at lambda = 100 the logits (0, 1000) make softmax's
    first probability 0 in float32: the loss is -p0[0] log(0 + 1e-20) - p0[1] log(1 + 1e-20) + gamma * 300, finite
    only through the 1e-20. The whole-batch step (``_step``) and the retry rounds' path (``_loss`` and autograd)
    give that value and autograd's gradient of the formula."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(1.0)
        net[2].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [10 / 3, 10 / 3, 10 / 3]]))
        net[2].bias.zero_()
    x, gamma = torch.zeros(1, 2), 0.05
    dgr = DGR(net, gamma=gamma)
    with torch.no_grad():
        layout = dgr.neurons.layout(x)
    p0 = torch.softmax(torch.tensor([[0.0, 10.0]]), 1)
    lam = torch.tensor([[100.0, 100.0, 100.0]])
    leaf = lam.clone().requires_grad_(True)
    logits = (leaf * torch.ones(3)) @ net[2].weight.detach().T
    hand = -(p0 * torch.log(torch.softmax(logits, 1) + 1e-20)).sum(1) + gamma * leaf.abs().sum(1)
    (hand_grad,) = torch.autograd.grad(hand.sum(), leaf)
    assert float(torch.softmax(logits, 1)[0, 0]) == 0.0 and float(hand[0]) == pytest.approx(
        -float(p0[0, 0]) * math.log(1e-20) + gamma * 300, rel=1e-5)
    g = torch.full((1,), gamma)
    loss, pred = dgr._loss(x, leaf.detach().clone(), layout, p0, g)
    assert float(loss[0]) == pytest.approx(float(hand[0]), rel=1e-6) and pred.tolist() == [1]
    loss, pred, grads = dgr._step(x, lam.clone(), layout, p0, g, torch.empty_like(lam))
    assert float(loss[0]) == pytest.approx(float(hand[0]), rel=1e-6) and pred.tolist() == [1]
    torch.testing.assert_close(layout.flatten(grads), hand_grad, rtol=1e-5, atol=1e-9)


def test_greedy_alg1_scores_nan_as_zero_never_live():
    """Alg. 1's scores with a NaN (an overflowing network) count it as 0: never live, never pruned (the reference
    variant keeps NaN, as the code's numpy comparisons do)."""
    net = TinyCNN(4).eval()
    g = GreedyPruning(net)
    raw = torch.tensor([[0.5, float("nan"), 0.0, float("inf"), 2.0]])
    g.scores = lambda *a, **k: raw.clone()
    assert g._live_scores(None, None, None, None).tolist() == [[0.5, 0.0, 0.0, float("inf"), 2.0]]
