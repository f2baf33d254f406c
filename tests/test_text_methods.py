"""Text methods on the embedding layer (xattr.methods.text) and Sensitivity-N over tokens.

Tiny models built here: a bag-of-embeddings classifier (closed forms), the 4-layer LSTM of ch. 6, and a
user's own GRU classifier whose embedding layer is only named (no ``embed`` / ``forward_embedded``)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from xattr.errors import XattrConfigError
from xattr.methods.baselines.cam import GradCAM
from xattr.methods.baselines.gradient import Gradient
from xattr.methods.baselines.integrated_gradients import IntegratedGradients
from xattr.methods.baselines.lime import LIME
from xattr.methods.input_iba import InputIBAText
from xattr.methods.text import (
    TextDeepLift,
    TextGradient,
    TextIBA,
    TextInputXGradient,
    TextIntegratedGradients,
    TextLIME,
    TextRandom,
    check_text_method,
    reduce_tokens,
    text_form,
)
from xattr.metrics.sensitivity_n import SensitivityN
from xattr.models.text import LSTMClassifier

V, D = 30, 5
IGNORED = 7  # the bag model never reads this token's embedding


class Bag(nn.Module):
    """logits = fc(tanh(sum_i keep[x_i] * W e_i)) over real tokens; token IGNORED has keep 0."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embedding = nn.Embedding(V, D, padding_idx=0)
        self.proj = nn.Linear(D, 4)
        self.act = nn.Tanh()
        self.fc = nn.Linear(4, 2)
        keep = torch.ones(V)
        keep[IGNORED] = 0
        keep[0] = 0
        self.register_buffer("keep", keep)
        self.num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.embedding(x)) * self.keep[x][..., None]
        return self.fc(self.act(h.sum(1)))


class GRUNet(nn.Module):
    """A user's own classifier: token ids -> ``emb`` -> GRU -> state at the last real token -> ``head``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(V, 6, padding_idx=0)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.hidden = nn.Identity()  # the GRU's output sequence, (B, L, H): IBA's layer
        self.head = nn.Linear(8, 3)
        self.num_classes = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(self.gru(self.emb(x))[0])
        last = (x != 0).long().cumsum(1).argmax(1)
        return self.head(h[torch.arange(x.shape[0]), last])


def reviews() -> torch.Tensor:
    """3 reviews of lengths 6, 4, 2, right-padded with 0."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(2, V, (3, 6), generator=g)
    x[x == IGNORED] = 8
    x[1, 4:] = 0
    x[2, 2:] = 0
    return x


def lstm() -> LSTMClassifier:
    torch.manual_seed(0)
    return LSTMClassifier(V, 6, 6, num_layers=2, dropout=0.0).eval()


def fitted_iba(net: nn.Module, layer: str, **kw) -> TextIBA:
    m = TextIBA(net, layer=layer, steps=3, copies=2, n_samples=8, **kw)
    g = torch.Generator().manual_seed(5)
    m.fit([{"x": torch.randint(2, V, (8, 6), generator=g)}])
    return m


FAST = {
    "gradient": lambda net, e: TextGradient(net, e),
    "input_x_gradient": lambda net, e: TextInputXGradient(net, e),
    "integrated_gradients": lambda net, e: TextIntegratedGradients(net, e, n_steps=8),
    "deepshap": lambda net, e: TextDeepLift(net, e, baselines="pad"),
    "deepshap_normal": lambda net, e: TextDeepLift(net, e, n_baselines=3),
    "lime": lambda net, e: TextLIME(net, e, n_samples=24, chunk=24),
    "random": lambda net, e: TextRandom(net, e),
}


def test_ig_completeness_on_the_embeddings() -> None:
    """Sum of token scores = f(x) - f(x') (Sundararajan eq. 1, Prop. 1) for pad, unk and zero baselines."""
    net, x, t = Bag().eval(), reviews(), torch.tensor([0, 1, 1])
    for base in ("pad", "unk", "zero"):
        m = TextIntegratedGradients(net, n_steps=48, method="gausslegendre", token_baseline=base)
        scores = m.attribute(x, t)
        emb, ref = m.embed(x), m.baseline_embedding(x, base)
        ref = torch.where((x != 0)[..., None], ref, emb)  # padding keeps its embedding (scores 0 there)
        with torch.no_grad():
            f = net.fc(net.act((net.proj(emb) * net.keep[x][..., None]).sum(1)))
            f0 = net.fc(net.act((net.proj(ref) * net.keep[x][..., None]).sum(1)))
        want = (f - f0).gather(1, t[:, None]).squeeze(1)
        assert torch.allclose(scores.sum(1), want, atol=1e-4), base


def test_ig_completeness_through_the_lstm() -> None:
    net, x, t = lstm(), reviews(), torch.tensor([1, 0, 1])
    m = TextIntegratedGradients(net, n_steps=64, method="gausslegendre")
    scores = m.attribute(x, t)
    mask = x != 0
    with torch.no_grad():
        f = net.forward_embedded(net.embed(x), mask)
        f0 = net.forward_embedded(torch.zeros_like(net.embed(x)), mask)  # <pad> row is 0
    assert torch.allclose(scores.sum(1), (f - f0).gather(1, t[:, None]).squeeze(1), atol=1e-3)


def test_deeplift_sums_to_delta_on_a_bag_model() -> None:
    """DeepLift's summation-to-delta (Shrikumar et al. 2017, eq. 1) on a model with an nn.Tanh."""
    net, x, t = Bag().eval(), reviews(), torch.tensor([0, 1, 0])
    m = TextDeepLift(net, baselines="pad")
    with torch.no_grad():
        f = net(x)
        base = torch.where(x != 0, torch.zeros_like(x), x)  # every real token -> <pad>
        f0 = net.fc(net.act((net.proj(net.embedding(base)) * net.keep[x][..., None]).sum(1)))
    want = (f - f0).gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(m.attribute(x, t).sum(1), want, atol=1e-5)


def test_gradient_closed_form_and_reductions() -> None:
    """Bag model: d logit_c / d e_i = keep_i * W^T (fc_c * (1 - tanh^2)); l2 / sum / abs_sum of it."""
    net, x, t = Bag().eval(), reviews(), torch.tensor([1, 1, 0])
    with torch.no_grad():
        s = (net.proj(net.embedding(x)) * net.keep[x][..., None]).sum(1)
        back = net.fc.weight[t] * (1 - torch.tanh(s) ** 2)  # (B, 4)
        grad = (back @ net.proj.weight)[:, None, :] * net.keep[x][..., None]  # (B, L, D)
    mask = x != 0
    for how, want in (("l2", grad.norm(dim=-1)), ("sum", grad.sum(-1)), ("abs_sum", grad.abs().sum(-1))):
        got = TextGradient(net, token_reduce=how).attribute(x, t)
        assert torch.allclose(got, want * mask, atol=1e-6), how
    ixg = TextInputXGradient(net).attribute(x, t)
    assert torch.allclose(ixg, (grad * net.embedding(x)).sum(-1).detach() * mask, atol=1e-6)


def test_ignored_token_gets_zero() -> None:
    net, t = Bag().eval(), torch.tensor([0, 1, 0])
    x = reviews()
    x[0, 2] = x[1, 1] = IGNORED
    for m in (TextGradient(net), TextInputXGradient(net), TextIntegratedGradients(net, n_steps=16)):
        s = m.attribute(x, t)
        assert s[0, 2] == 0 and s[1, 1] == 0, m
        assert (s[0, [0, 1, 3]] != 0).all(), m


@pytest.mark.parametrize("name", list(FAST))
def test_padding_batching_and_shape(name: str) -> None:
    """(B, L) for 3 reviews of different lengths; 0 on padding; extra padding changes nothing; batched ==
    one at a time (each review alone, unpadded)."""
    net = lstm()
    m, x, t = FAST[name](net, "embedding"), reviews(), torch.tensor([0, 1, 1])
    s = m.attribute(x, t)
    assert s.shape == (3, 6) and s.dtype == torch.float32
    assert (s[x == 0] == 0).all()
    assert (s[x != 0] != 0).any()
    wide = torch.cat([x, torch.zeros(3, 4, dtype=torch.long)], 1)
    assert torch.allclose(m.attribute(wide, t)[:, :6], s, atol=1e-5)
    for i, n in enumerate((6, 4, 2)):
        one = m.attribute(x[i : i + 1, :n], t[i : i + 1])
        assert torch.allclose(one[0], s[i, :n], atol=1e-5), i


def test_iba_scores_tokens_at_the_hidden_layer() -> None:
    net, x, t = lstm(), reviews(), torch.tensor([0, 1, 1])
    m = fitted_iba(net, "rnn_2")
    ex = m.explain(x, t)
    s = ex.maps
    assert s.shape == (3, 6) and (s[x == 0] == 0).all() and (s[x != 0] > 0).all()
    assert set(ex.group("bottleneck")) >= {"top1", "info_per_k"}
    one = m.attribute(x[2:, :2], t[2:])
    assert torch.allclose(one[0], s[2, :2], atol=1e-4)  # batched == one at a time, padding ignored


def test_a_users_gru_works_with_every_text_method() -> None:
    """Any nn.Module on (B, L) ids with its embedding layer named in config (here ``emb``)."""
    net, x, t = GRUNet().eval(), reviews(), torch.tensor([0, 2, 1])
    methods = {k: f(net, "emb") for k, f in FAST.items()}
    methods["iba"] = fitted_iba(net, "hidden", tail="hook")
    iiba = InputIBAText(net, layer="hidden", embedding="emb", tail="hook", epochs=1, n_targets=8, n_groups=2,
                        gan_batch=4, critic=2, feat_steps=2, feat_copies=2, steps=2, copies=2, n_samples=8)
    iiba.fit([{"x": torch.randint(2, V, (8, 6), generator=torch.Generator().manual_seed(5))}])
    methods["input_iba_text"] = iiba
    for name, m in methods.items():
        s = m.attribute(x, t)
        assert s.shape == (3, 6), name
        assert (s[x == 0] == 0).all() and torch.isfinite(s).all(), name


def test_text_form_dispatch() -> None:
    ig = text_form(functools.partial(IntegratedGradients, baseline="zero", n_steps=7, chunk=64, reduce="sum"),
                   embedding="emb")(GRUNet())
    assert isinstance(ig, TextIntegratedGradients) and ig.n_steps == 7 and ig.chunk == 64
    assert ig.token_baseline == "pad" and ig.embedding.name == "emb"
    g = text_form(functools.partial(Gradient, reduce="max_abs", abs=True))(lstm())
    assert isinstance(g, TextGradient) and g.token_reduce == "l2"
    lime = text_form(functools.partial(LIME, n_samples=12, segmentation="slic", kernel_width=0.25))(lstm())
    assert isinstance(lime, TextLIME) and lime.n_samples == 12 and lime.kernel_width == 25.0
    with pytest.raises(XattrConfigError, match="'grad_cam' has no text form; valid choices: .*integrated_gradients"):
        text_form(functools.partial(GradCAM, layer="x"))
    with pytest.raises(XattrConfigError, match="'occlusion' has no text form"):
        check_text_method("occlusion")
    check_text_method("saved")  # maps of an earlier run: any modality
    with pytest.raises(XattrConfigError, match="token reduction"):
        TextGradient(lstm(), token_reduce="max")
    with pytest.raises(XattrConfigError, match="layer"):
        TextGradient(lstm(), embedding="embeddings")
    assert torch.equal(reduce_tokens(torch.tensor([[[3.0, -4.0]]]), "l2"), torch.tensor([[5.0]]))


# --- Sensitivity-N over tokens -------------------------------------------------------------------


class Linear(nn.Module):
    """logit_1 = sum_i w[x_i] over real tokens, logit_0 = -logit_1; w[<pad>] = w[<unk>] = 0."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(V, generator=g)
        w[:2] = 0
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.w[x].sum(1)
        return torch.stack([-s, s], 1)


def test_sensitivity_n_tokens_is_one_for_true_weights() -> None:
    net, x, t = Linear(), reviews(), torch.tensor([1, 1, 0])
    sign = torch.where(t == 1, 1.0, -1.0)[:, None]
    maps = net.w[x] * sign * (x != 0)
    metric = SensitivityN(n_masks=20, fractions=[0.2, 0.5, 0.8], unk_index=1)
    res = metric(net, x[:2], t[:2], maps[:2], mask=x[:2] != 0)
    assert torch.allclose(res.curves["sensitivity_n"], torch.ones(2, 3), atol=1e-6)
    assert torch.allclose(res.x_axis["sensitivity_n"], torch.tensor([20.0, 50.0, 80.0]))
    # random scores correlate less; batched == one at a time (and padding ignored)
    rnd = SensitivityN(n_masks=20, unk_index=1)(net, x, t, torch.rand(3, 6) * (x != 0), mask=x != 0)
    assert (rnd.scores["sensitivity_n"][:2] < 0.99).all()
    one = SensitivityN(n_masks=20, unk_index=1)(net, x[1:2, :4], t[1:2], (torch.rand(3, 6) * 0)[1:2, :4] + maps[1:2, :4],
                                                mask=x[1:2, :4] != 0)
    both = SensitivityN(n_masks=20, unk_index=1)(net, x, t, maps, mask=x != 0)
    assert torch.allclose(one.curves["sensitivity_n"][0], both.curves["sensitivity_n"][1], equal_nan=True)


def test_sensitivity_n_tokens_config_errors() -> None:
    with pytest.raises(XattrConfigError, match="unk_index"):
        SensitivityN()(Linear(), reviews(), torch.tensor([1, 1, 0]), torch.rand(3, 6))
    with pytest.raises(XattrConfigError, match="fractions"):
        SensitivityN(fractions=[0.0, 1.5])


def test_sensitivity_n_token_masks_and_the_mask_extra() -> None:
    """Each fraction replaces round(f n_real) (at least 1) real tokens; reviews of one length share masks and a
    repeated call draws the same; without the ``mask`` extra every token is real; with it, padding is never
    replaced (the scores differ)."""
    metric = SensitivityN(n_masks=5, fractions=[0.01, 0.5, 1.0], unk_index=1)
    sets = metric.token_masks(10, torch.device("cpu"))
    assert sets.shape == (3, 5, 10) and sets.sum(-1).tolist() == [[1] * 5, [5] * 5, [10] * 5]
    assert torch.equal(sets, metric.token_masks(10, torch.device("cpu")))
    assert not torch.equal(sets[1], metric.token_masks(11, torch.device("cpu"))[1, :, :10])
    net, x, t = Linear(), reviews(), torch.tensor([1, 1, 0])
    maps = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    full = torch.ones_like(x, dtype=torch.bool)
    none = metric(net, x, t, maps)
    assert torch.equal(none.curves["sensitivity_n"].nan_to_num(9.0),
                       metric(net, x, t, maps, mask=full).curves["sensitivity_n"].nan_to_num(9.0))
    padded = metric(net, x, t, maps, mask=x != 0)
    assert not torch.allclose(padded.curves["sensitivity_n"], none.curves["sensitivity_n"], equal_nan=True)
    with pytest.raises(XattrConfigError, match=r"^bad maps shape \(3, 5\); valid choices: \(3, 6\) for tokens$"):
        metric(net, x, t, maps[:, :5])
