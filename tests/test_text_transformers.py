"""Text transformers (HuggingFace sequence classifiers, ``model=hf``): loading, attention masks, every text
method on their tokens, IBA on their token states, attention rollout and Chefer.

The model is a tiny ``BertForSequenceClassification`` built here from a config (random weights, drawn with
a wide initialiser so that every token matters), saved with its tokenizer (a 25-word vocabulary) to a temp
folder and loaded back through ``xattr.load_model(folder)``, the path ``model=hf model.path=`` takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import xattr  # noqa: E402
from xattr.core.attention import chefer_relevance, rollout  # noqa: E402
from xattr.errors import XattrConfigError  # noqa: E402
from xattr.metrics.insertion_deletion import InsertionDeletion  # noqa: E402
from xattr.metrics.sensitivity_n import SensitivityN  # noqa: E402

from .helpers import TINY_BERT_WORDS, tiny_bert_folder  # noqa: E402

TEXTS = ["The movie was great! Good acting, not bad", "awful plot but good film", "very bad"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return str(tiny_bert_folder(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="module")
def zoo(folder):
    return xattr.load_model(folder)


def batch(folder, texts=TEXTS, special_tokens="exclude") -> dict:
    from xattr.data.imdb import IMDB

    ds = IMDB(None, "test", folder, rows=[{"id": str(i), "label": i % 2, "text": t} for i, t in enumerate(texts)],
              max_len=32, special_tokens=special_tokens)
    return ds.collate([ds[i] for i in range(len(ds))])


def test_loads_through_model_hf_with_its_tokenizer_and_layers(folder, zoo) -> None:
    net = zoo.net
    assert zoo.labels == ["negative", "positive"] and net.num_classes == 2
    assert net.pad_index == 0 and net.unk_index == 1 and net.special_ids == (2, 3, 4)  # [UNK] is a word the model does not know: not special
    assert set(net.xattr_layers) >= {"embedding", "layer_1", "layer_2"}
    assert zoo.roles["embedding"] == "embedding" and zoo.roles["bottleneck"] == "layer_2"
    b = batch(folder)
    x = b["x"]
    assert x[:, 0].eq(2).all()  # [CLS] first
    assert [x[i, int(b["special"][i].nonzero().max())].item() for i in range(3)] == [3, 3, 3]  # [SEP] last
    # the batch mask: real words only ([CLS], [SEP] and padding out); padding only at the right
    assert not (b["mask"] & b["special"]).any() and not (b["mask"] & (x == 0)).any()
    # the words by hand: "the movie was great ! good acting , not bad", "awful plot but good film", "very bad"
    assert b["mask"].sum(1).tolist() == [10, 5, 2]
    assert batch(folder, special_tokens="include")["mask"].sum().item() == b["mask"].sum().item() + 6
    # the model's tokenisation: the words of the vocabulary, an unknown word is [UNK]
    unk = batch(folder, ["the zebra"])["x"][0].tolist()
    assert unk == [2, 5, 1, 3]


def test_texts_are_cut_at_the_head_or_the_tail_around_the_special_tokens(folder) -> None:
    """max_len counts [CLS] and [SEP]; ``tail`` keeps the last words, ``head`` the first."""
    from xattr.data.imdb import IMDB

    rows = [{"id": "0", "label": 1, "text": "the movie was great but the plot was bad"}]
    ids = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS])}
    for truncate, words in (("head", "the movie was great"), ("tail", "the plot was bad")):
        x = IMDB(None, "test", folder, rows=rows, max_len=6, truncate=truncate)[0][0].tolist()
        assert x == [2, *[ids[w] for w in words.split()], 3], truncate


def test_sst2_sentences_with_the_models_tokenizer(folder, tmp_path) -> None:
    from xattr.data.sst2 import SST2, read_sst2

    (tmp_path / "stsa.binary.test").write_text("1 a great film .\n0 not good , very bad .\n")
    rows = read_sst2(tmp_path, "test")
    assert [r["label"] for r in rows] == [1, 0] and rows[1]["text"] == "not good , very bad ."
    ds = SST2(tmp_path, "test", folder)
    b = ds.collate([ds[0], ds[1]])
    assert b["x"][0].tolist() == [2, 6, 11, 8, 22, 3, 0, 0] and b["mask"].sum(1).tolist() == [4, 6]
    (tmp_path / "stsa.binary.dev").write_text("positive a great film\n")
    with pytest.raises(XattrConfigError, match="bad SST-2 line 1"):
        read_sst2(tmp_path, "dev")
    with pytest.raises(XattrConfigError, match="SST-2 split"):
        read_sst2(tmp_path, "validation")


def test_missing_folder_and_missing_package_are_one_line(tmp_path) -> None:
    with pytest.raises(XattrConfigError, match=r"HuggingFace model folder.*config\.json"):
        xattr.load_model("hf", weights=str(tmp_path / "nothing"))
    from xattr.models.zoo import check_model

    with pytest.raises(XattrConfigError, match="model.path"):
        check_model("hf", {"kind": "hf", "path": str(tmp_path)})


def test_padding_never_changes_the_output(folder, zoo) -> None:
    """The attention mask comes from the ids: more [PAD] on the right leaves every logit as it was, and a
    text alone (no padding) gives the logits it has in the padded batch."""
    net, x = zoo.net, batch(folder)["x"]
    out = net(x)
    wide = torch.cat([x, torch.zeros(3, 5, dtype=torch.long)], 1)
    assert torch.allclose(net(wide), out, atol=1e-5)
    for i in range(3):
        n = int((x[i] != 0).sum())
        assert torch.allclose(net(x[i : i + 1, :n]), out[i : i + 1], atol=1e-5)
    # and the mask matters: the same ids with padding attended (no mask) give other logits
    plain = net.model(input_ids=x).logits
    assert not torch.allclose(plain[1:], out[1:], atol=1e-3)


METHODS = {
    "gradient": {}, "input_x_gradient": {}, "integrated_gradients": {"n_steps": 16}, "deepshap": {},
    "lime": {"n_samples": 40}, "random": {}, "attention_rollout": {}, "chefer": {},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_zero_on_padding_and_batched_equals_one_at_a_time(folder, zoo, name) -> None:
    b = batch(folder)
    x, t = b["x"], torch.tensor([1, 0, 0])
    m = xattr.method(name, zoo, **METHODS[name])
    s = m.attribute(x, t)
    assert s.shape == x.shape and (s[x == 0] == 0).all()
    assert (s[x != 0] != 0).any()
    for i in range(3):
        n = int((x[i] != 0).sum())
        one = m.attribute(x[i : i + 1, :n], t[i : i + 1])
        assert torch.allclose(one[0], s[i, :n], atol=1e-4, rtol=1e-3), (name, i)


def test_ig_completeness_on_the_embeddings(folder, zoo) -> None:
    """Sum of IG's token scores = f(x) - f(baseline) (Sundararajan et al. Prop. 1), [CLS]/[SEP] included."""
    x, t = batch(folder)["x"], torch.tensor([1, 0, 1])
    m = xattr.method("integrated_gradients", zoo, n_steps=300)
    s = m.attribute(x, t)
    net = zoo.net
    emb = net.embed(x)
    base = net.embed(torch.full_like(x, net.pad_index))
    mask = x != net.pad_index
    f = net.forward_embedded(emb, mask).gather(1, t[:, None])[:, 0]
    f0 = net.forward_embedded(base, mask).gather(1, t[:, None])[:, 0]
    assert torch.allclose(s.sum(1), f - f0, atol=1e-2 * float((f - f0).abs().max()))  # Riemann error, 300 steps
    assert (f - f0).abs().min() > 1e-2  # the check is not 0 == 0


class Spy(torch.nn.Module):
    """The model, keeping every batch of token ids it is called with."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.append(ids.clone())
        return self.net(ids)


def test_insertion_deletion_never_unpads_nor_removes_special_tokens(folder, zoo) -> None:
    """Every forward the metrics make (each text alone, so each row's source is known): padding stays [PAD],
    [CLS] / [SEP] stay, a word is either itself or [UNK]; deletion and insertion both reach every word."""
    b = batch(folder)
    maps = xattr.method("gradient", zoo).attribute(b["x"], torch.tensor([1, 0, 0]))
    unk = zoo.net.unk_index
    for i in range(3):
        x, mask, t = b["x"][i : i + 1], b["mask"][i : i + 1], torch.tensor([i % 2])
        spy = Spy(zoo.net)
        InsertionDeletion(per_step=1, min_prob=0.0, points="all", chunk=None, unk_index=unk)(
            spy, x, t, maps[i : i + 1], mask=mask)
        SensitivityN(n_masks=4, fractions=[0.2, 0.5], unk_index=unk)(spy, x, t, maps[i : i + 1], mask=mask)
        rows = torch.cat(spy.seen)
        fixed = torch.isin(x[0], torch.tensor([0, 2, 3]))  # [PAD], [CLS], [SEP] by their ids
        assert (fixed == ~mask[0]).all(), i  # the batch's mask is the words and nothing else
        assert (rows[:, fixed] == x[0, fixed]).all(), i  # padding, [CLS], [SEP] never touched
        words = rows[:, mask[0]]
        assert ((words == x[0, mask[0]]) | (words == unk)).all(), i
        assert (words == unk).all(1).any() and (words == x[0, mask[0]]).all(1).any(), i  # both ends reached


def test_metrics_take_the_models_unk_index(folder, zoo) -> None:
    """``unk_index: null`` on tokens: the model's own ``[UNK]`` (before: an error asking for it)."""
    b = batch(folder)
    x, t = b["x"], torch.tensor([1, 0, 0])
    maps = torch.rand(x.shape) * b["mask"]
    a = InsertionDeletion(per_step=1, min_prob=0.0, points="all")(zoo.net, x, t, maps, mask=b["mask"])
    c = InsertionDeletion(per_step=1, min_prob=0.0, points="all", unk_index=1)(zoo.net, x, t, maps, mask=b["mask"])
    for k in a.scores:
        assert torch.allclose(a.scores[k], c.scores[k], equal_nan=True)


# ------------------------------------------------------------------------------------------------ rollout, Chefer
def test_rollout_on_hand_matrices() -> None:
    """Two layers, one head, three tokens: A_hat = 0.5 A + 0.5 I (rows sum to 1), R = A_hat_2 A_hat_1."""
    a1 = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.6, 0.2], [0.0, 0.0, 1.0]])
    a2 = torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.25, 0.25, 0.5]])
    h1 = 0.5 * a1 + 0.5 * torch.eye(3)
    h2 = 0.5 * a2 + 0.5 * torch.eye(3)
    # by hand, row 0 of h2 @ h1: h2[0] = [.5, .5, 0]; h1 rows 0, 1 = [.75, .25, 0], [.1, .8, .1]
    assert torch.allclose((h2 @ h1)[0], torch.tensor([0.425, 0.525, 0.05]))
    got = rollout([a1[None, None], a2[None, None]])
    assert torch.allclose(got[0, 0], torch.tensor([0.425, 0.525, 0.05]))
    # heads are averaged before the residual
    two = rollout([torch.stack([a1, torch.eye(3)])[None], a2[None, None]])
    m1 = 0.5 * (0.5 * (a1 + torch.eye(3))) + 0.5 * torch.eye(3)
    assert torch.allclose(two[0], h2 @ m1)


def test_chefer_is_2_to_the_L_times_rollout_with_unit_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    atts = [torch.softmax(torch.randn(2, 3, 5, 5, generator=g), -1) for _ in range(3)]
    ones = [torch.ones_like(a) for a in atts]
    assert torch.allclose(chefer_relevance(atts, ones), 2 ** 3 * rollout(atts), atol=1e-5)
    # negative gradient x attention is clipped: all-negative gradients leave R = I
    neg = [-torch.ones_like(a) for a in atts]
    assert torch.allclose(chefer_relevance(atts, neg), torch.eye(5).expand(2, 5, 5))


def test_chefer_on_the_model_matches_an_independent_autograd(folder, zoo) -> None:
    """Chefer's relevance rebuilt here from the model's attention maps and torch.autograd, eq. by eq."""
    x, t = batch(folder)["x"], torch.tensor([1, 0, 1])
    s = xattr.method("chefer", zoo).attribute(x, t)
    net = zoo.net
    emb = net.embed(x).detach().requires_grad_(True)
    out = net.model(inputs_embeds=emb, attention_mask=(x != 0).long(), output_attentions=True)
    atts = out.attentions
    grads = torch.autograd.grad(out.logits[torch.arange(3), t].sum(), atts)
    r = torch.eye(x.shape[1]).repeat(3, 1, 1)
    for a, gr in zip(atts, grads):
        r = r + torch.bmm((gr * a).clamp(min=0).mean(1), r)
    assert torch.allclose(s, r[:, 0] * (x != 0), atol=1e-5)


def test_attention_methods_refuse_a_model_without_attention_maps() -> None:
    lstm = xattr.load_model(torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Flatten(), torch.nn.Linear(6, 2)),
                            layers={"embedding": "0"}, num_classes=2)
    with pytest.raises(XattrConfigError, match="attention_rollout needs a transformer"):
        xattr.method("attention_rollout", lstm)


# ------------------------------------------------------------------------------------------------ IBA on tokens
def test_iba_on_token_states_closed_form_kl_and_masked_tokens(folder, zoo) -> None:
    """Per-Sample IBA at ``layer_1``: statistics per hidden unit over the real words of the fitting texts;
    at the first step (alpha = sigmoid(init_alpha)) each token's KL is the closed form of Schulz et al. eq. 4
    per unit, KL(N(a r + (1-a) mu, (1-a)^2 s^2) || N(mu, s^2)); a padded position carries exactly 0."""
    b = batch(folder)
    x, t = b["x"], torch.tensor([1, 0, 0])
    m = xattr.method("iba", zoo, layer="layer_1", steps=2, copies=2, n_samples=3, init_alpha=1.5)
    xattr.fit(m, [b])
    # the statistics, computed here from the layer's output on the words (mask: no [CLS]/[SEP], no padding)
    states = {}
    hook = zoo.net.model.bert.encoder.layer[0].register_forward_hook(lambda mod, i, o: states.setdefault("r", o))
    with torch.no_grad():
        zoo.net(x)
    hook.remove()
    r = states["r"]
    words = r[b["mask"]]
    mu, sd = words.mean(0), words.std(0, unbiased=True)
    stats = m.stats["layer_1"]
    assert torch.allclose(stats.mean.flatten(), mu, atol=1e-4)
    assert torch.allclose(stats.std.flatten(), sd, rtol=2e-2, atol=1e-4)
    res = m.optimize(x, t)
    a = torch.sigmoid(torch.tensor(1.5))
    sd_ = stats.std.flatten().clamp_min(1e-12)
    hand = 0.5 * ((1 - a) ** 2 + a**2 * (r - mu) ** 2 / sd_**2 - 1 - 2 * torch.log(1 - a))
    real = x != 0
    assert torch.allclose(res.first_kl[real], hand[real], rtol=2e-2, atol=1e-4)
    assert (res.first_kl[~real] == 0).all() and (res.kl[~real] == 0).all()
    s = m.attribute(x, t)
    assert (s[~real] == 0).all() and (s[real] > 0).all()
    one = m.attribute(x[2:, : int(real[2].sum())], t[2:])  # batched == one at a time, padding ignored
    assert torch.allclose(one[0], s[2, : one.shape[1]], atol=1e-4, rtol=1e-3)


def test_special_tokens_are_shown_apart_and_do_not_set_the_scale() -> None:
    """[CLS] / [SEP] keep their raw score and stay out of the min-max of the words (hand case: without the
    exclusion [CLS]'s 5 would make every word plain)."""
    from xattr.viz.tokens import render_html, render_plain

    tokens, scores = ["[CLS]", "a", "great", "film", "[SEP]"], [5.0, 0.0, 1.0, 0.5, -2.0]
    special = [True, False, False, False, True]
    assert render_plain(tokens, scores, special=special) == "[CLS]{5} a [[great]] [film] [SEP]{-2}"
    assert render_plain(tokens, scores) == "[[[CLS]]] a [great] [film] [SEP]"  # the scale the specials would set
    html = render_html(tokens, scores, special=special)
    assert html.count("#ff4d4d") == 1 and html.count("#ffb347") == 1 and html.count("color:#888") == 2


# ------------------------------------------------------------------------------------------------ the shipped model
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "text" / "imdb_transformer"


def test_the_shipped_transformer_loads_as_a_model_hf_folder() -> None:
    """assets/text/imdb_transformer: the HuggingFace layout, loaded by name and by folder, the same network;
    it reads sentiment words the right way round."""
    if not (SHIPPED / "config.json").is_file():
        pytest.skip("assets/text/imdb_transformer is not in this checkout")
    zoo = xattr.load_model("imdb_transformer")
    assert zoo.labels == ["negative", "positive"] and zoo.roles["bottleneck"] == "layer_1"
    b = batch(str(SHIPPED), ["a wonderful , moving film . i loved every minute", "awful , boring and stupid . "
                             "the worst film i have seen"])
    p = zoo.net(b["x"]).softmax(1)
    assert p[0, 1] > 0.8 and p[1, 0] > 0.8
    same = xattr.load_model(str(SHIPPED)).net(b["x"]).softmax(1)
    assert torch.allclose(p, same)


@pytest.mark.slow
@pytest.mark.shared
def test_the_shipped_transformer_reaches_its_stated_accuracy(shared_data) -> None:
    """The accuracy the README states, on 2 000 balanced IMDB test reviews (the last 256 tokens)."""
    import json

    from xattr.data.imdb import IMDB

    stated = json.loads((SHIPPED / "xattr.json").read_text())["test_acc"]
    zoo = xattr.load_model("imdb_transformer")
    ds = IMDB(shared_data / "imdb", "test", str(SHIPPED), max_len=256, truncate="tail", limit=2000)
    right = 0
    with torch.no_grad():
        for i in range(0, len(ds), 100):
            b = ds.collate([ds[j] for j in range(i, min(i + 100, len(ds)))])
            right += int((zoo.net(b["x"]).argmax(1) == b["label"]).sum())
    assert right / len(ds) > stated - 0.02, (right / len(ds), stated)


def test_input_iba_text_on_the_transformer(folder, zoo) -> None:
    """Text InputIBA on a transformer (feature bottleneck on layer_1's token states, WGAN and input bottleneck
    on the word embeddings; tiny settings): a score in (0, 1] per real token, 0 on padding, the three stages;
    a text alone gives its scores in the batch."""
    b = batch(folder)
    x, t = b["x"], torch.tensor([1, 0, 0])
    tiny = dict(epochs=1, n_targets=16, n_groups=2, gan_batch=8, critic=2, feat_steps=2, feat_copies=2, steps=3,
                copies=2, n_samples=3)
    m = xattr.method("input_iba_text", zoo, layer="layer_1", **tiny)
    xattr.fit(m, [b])
    ex = m.explain(x, t)
    s = ex.maps
    assert s.shape == x.shape and (s[x == 0] == 0).all() and ((s[x != 0] > 0) & (s[x != 0] <= 1)).all()
    assert set(ex.group("stages")) == {"feature", "generator", "input"}
    n = int((x[2] != 0).sum())
    one = m.attribute(x[2:, :n], t[2:])
    assert torch.allclose(one[0], s[2, :n], atol=1e-4), (one[0], s[2, :n])


def test_text_only_keys_pass_the_key_check_and_typos_do_not() -> None:
    """On a text model the method's keys are those of the image class and of its text form:
    ``+method.token_reduce=l2`` is taken, ``+method.betta=1`` is one line naming the keys."""
    from xattr.config import build, check_values
    from xattr.methods.text import text_form

    from .helpers import compose_cfg

    cfg = compose_cfg(["model=imdb_lstm", "dataset=imdb", "method=gradient", "+method.token_reduce=l2"])
    check_values(cfg)
    assert text_form(build(cfg.method), "embedding").keywords["token_reduce"] == "l2"
    bad = compose_cfg(["model=imdb_lstm", "dataset=imdb", "method=gradient", "+method.betta=1"])
    check_values(bad)
    with pytest.raises(XattrConfigError, match=r"unknown key 'method.betta'; valid choices: .*token_reduce"):
        text_form(build(bad.method), "embedding")
    with pytest.raises(XattrConfigError, match="unknown key 'method.betta'"):
        check_values(compose_cfg(["model=mobilenet_v2", "method=gradient", "+method.betta=1"]))


def test_the_api_takes_text_only_keys_on_a_text_model(zoo) -> None:
    assert xattr.method("gradient", zoo, token_reduce="abs_sum").token_reduce == "abs_sum"
    with pytest.raises(XattrConfigError, match="unknown key 'method.betta'"):
        xattr.method("gradient", zoo, betta=1)
