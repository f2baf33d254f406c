"""InputIBA on text: one score per token, padding ignored, masked KL weights."""

from __future__ import annotations

import warnings

import pytest
import torch

from xattr.core.hooks import hook_count
from xattr.errors import XattrConfigError
from xattr.methods.input_iba import InputIBAText
from xattr.methods.input_iba.text import token_weight
from xattr.models.text import LSTMClassifier
from xattr.models.tiny import TinyCNN

TINY = dict(epochs=1, n_targets=16, n_groups=2, gan_batch=8, critic=2, feat_steps=2, feat_copies=2, steps=3, copies=2)



def _fit_quietly(m: InputIBAText) -> InputIBAText:
    """The tiny fit the tests share: one batch of 8 random texts of 6 tokens, warnings (few samples) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit([{"x": torch.randint(2, 40, (8, 6)), "mask": torch.ones(8, 6, dtype=torch.bool)}])
    return m


def test_one_score_per_token_padding_ignored() -> None:
    net = LSTMClassifier(40, 8, 8, 4).eval()
    m = InputIBAText(net, **TINY)
    _fit_quietly(m)
    x = torch.randint(2, 40, (3, 7))
    x[0, 4:] = 0
    x[1, 6:] = 0
    ex = m.explain(x, torch.tensor([0, 1, 0]))
    scores, stages = ex.maps, ex.group("stages")
    assert scores.shape == (3, 7)
    assert (scores[0, 4:] == 0).all() and (scores[1, 6:] == 0).all()
    assert ((scores[x != 0] > 0) & (scores[x != 0] <= 1)).all()
    assert set(stages) == {"feature", "generator", "input"}
    assert all(v.shape == (3, 7) for v in stages.values())
    assert (stages["feature"][0, 4:] == 0).all()
    assert hook_count(net) == 0


def test_token_weight_makes_mean_over_real_tokens() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    kl = torch.rand(2, 4, 3)
    w = token_weight(mask)
    got = (kl * w).flatten(1).mean(1)
    want = torch.stack([kl[0, :2].mean(), kl[1].mean()])
    assert torch.allclose(got, want)


def test_text_needs_a_text_model() -> None:
    with pytest.raises(XattrConfigError, match="embed"):
        InputIBAText(TinyCNN(2), layer="conv2")
    with pytest.raises(XattrConfigError, match="input prior"):
        InputIBAText(LSTMClassifier(10, 4, 4, 4), input_prior="uniform")


# ------------------------------------------------------------------ issue 26: the text form's options pinned


def test_text_defaults_names_and_whole_error_lines() -> None:
    """The reference's text defaults (module docstring: feature beta 15, input beta 30, 30 steps, lr 0.5, no smoothing,
    N(0, 1) prior, an LSTM critic, token noise, nats mask init, targets drawn once, mask lr 0.03, slope 0.2, eval
    mode); the method's names; each bad option is one whole line."""
    import inspect

    params = inspect.signature(InputIBAText.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"layer": "rnn_4", "feat_beta": 15.0, "beta": 30.0, "steps": 30, "lr": 0.5, "sigma": None,
                        "input_prior": "standard", "discriminator": "lstm", "disc_hidden": None, "noise": "token",
                        "mask_init": "nats", "redraw_targets": False, "lr_mask": 0.03, "disc_slope": 0.2,
                        "classifier_mode": "eval", "embedding": None, "pad_index": None}
    assert InputIBAText.name == "input_iba_text" and InputIBAText.text_form_of == ("input_iba", "input_iba_text")
    net = LSTMClassifier(10, 4, 4, 4)
    assert InputIBAText(net, disc_hidden=5).disc_hidden == 5 and InputIBAText(net).disc_hidden is None
    cases = [({"input_prior": "uniform"}, "unknown input prior 'uniform'; valid choices: standard, embedding"),
             ({"discriminator": "gru"}, "unknown text discriminator 'gru'; valid choices: lstm, rnn"),
             ({"noise": "pixel"}, "unknown noise 'pixel'; valid choices: token, dimension"),
             ({"mask_init": "ones"}, "unknown mask init 'ones'; valid choices: nats, bits"),
             ({"sigma": 1.0}, "text has no smoothing; got sigma=1.0, valid choices: null, 0")]
    for kw, line in cases:
        with pytest.raises(XattrConfigError) as err:
            InputIBAText(net, **kw)
        assert str(err.value) == line, kw
    with pytest.raises(XattrConfigError) as err:
        InputIBAText(TinyCNN(2), layer="conv2")
    assert str(err.value) == "InputIBAText needs a model with embed/forward_embedded/pad_index; TinyCNN lacks 'embed'"


def test_text_critic_noise_shape_and_maps_by_hand() -> None:
    """``discriminator: rnn`` is a tanh RNN of 64 units (``disc_hidden`` unset), ``lstm`` the LSTM critic, one per
    text; the generator noise is one per token (``(L, 1)``) or per dimension (``(1, D)``); the score of a token is
    its ``Lambda`` averaged over the embedding, the feature stage its capacity summed over hidden units in bits,
    the generator stage ``lambda_G`` averaged; all 0 on padding."""
    import math

    from xattr.methods.input_iba import RNNDiscriminators
    from xattr.methods.input_iba.text_discriminator import LSTMDiscriminators

    net = LSTMClassifier(10, 4, 4, 4)
    x = torch.tensor([[3, 4, 5, 0, 0], [2, 3, 4, 5, 6]])
    r = torch.randn(2, 5, 6)
    rnn = InputIBAText(net, discriminator="rnn")._discriminator(r, x, None)
    assert type(rnn) is RNNDiscriminators and rnn.w_hh.shape == (2, 64, 64) and rnn.w_ih.shape == (2, 64, 6)
    lstm = InputIBAText(net, disc_slope=0.3)._discriminator(r, x, None)
    assert type(lstm) is LSTMDiscriminators and lstm.w_ih.shape[0] == 2 and lstm.slope == 0.3
    for d in (rnn, lstm):  # each critic reads its text's last real token
        assert d.last.tolist() == [2, 4] and torch.equal(d.mask, x != 0)
    emb = torch.randn(2, 5, 3)
    assert InputIBAText(net)._noise_shape(emb) == (5, 1)
    assert InputIBAText(net, noise="dimension")._noise_shape(emb) == (1, 3)
    m = InputIBAText(net)
    real = (x != 0).float()
    lam, kl, lam_g = torch.rand(2, 5, 3), torch.rand(2, 5, 6), torch.rand(2, 5, 3)
    torch.testing.assert_close(m._maps(lam, x), lam.mean(-1) * real)
    stages = m._stage_maps(kl, lam_g, lam.mean(-1), x)
    torch.testing.assert_close(stages["feature"], kl.sum(-1) / math.log(2) * real)
    torch.testing.assert_close(stages["generator"], lam_g.mean(-1) * real)


def test_the_text_feature_bottleneck_is_per_unit_floored_and_weighted_by_real_tokens() -> None:
    """The feature bottleneck of a text batch: the per-unit statistics repeated over the L positions, the std
    floored at the method's ``min_std`` (0.01) only, and eq. 5's KL (on the active units) times ``mask * L / n_real``
    (a pad position adds nothing, a real one counts L / n_real)."""
    from xattr.methods.iba import kl_divergence

    net = LSTMClassifier(40, 8, 8, 4).eval()
    m = InputIBAText(net, **TINY)
    _fit_quietly(m)
    f = m.feature_iba
    s = f.stats[f.layer]
    s.std[0, :2] = 0.001  # under the floor
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    f._weight = token_weight(mask)
    bn = f.bottleneck(f.layer)
    h = s.mean.shape[-1]
    assert torch.equal(bn.std, s.std.clamp_min(0.01).expand(4, h)) and torch.equal(bn.mean, s.mean.expand(4, h))
    r, lam = torch.randn(2, 4, h), torch.rand(2, 4, h) * 0.9
    want = kl_divergence(r, lam, s.mean, s.std.clamp_min(0.01)) * s.active() * torch.tensor([[4 / 3], [1.0]])[..., None]
    want[0, 3] = 0
    torch.testing.assert_close(bn.kl(r, lam), want)


def test_train_mode_estimates_under_dropout_without_a_cache_and_eval_mode_caches(tmp_path) -> None:
    """``classifier_mode: train`` (the reference's dropout): the statistics are estimated with the classifier in train
    mode and not cached (a cache file does not record the mode), the classifier is back in eval mode after;
    ``eval`` (the default) estimates in eval mode and caches."""
    net = LSTMClassifier(40, 8, 8, 4).eval()
    modes = []
    net.register_forward_hook(lambda mod, *a: modes.append(mod.training))
    batch = [{"x": torch.randint(2, 40, (8, 6)), "mask": torch.ones(8, 6, dtype=torch.bool)}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        InputIBAText(net, classifier_mode="train", **TINY).fit(batch, tmp_path / "train")
        assert modes and all(modes) and not net.training
        modes.clear()
        InputIBAText(net, **TINY).fit(batch, tmp_path / "eval")
    assert modes and not any(modes)
    assert not (tmp_path / "train").exists() and len(list((tmp_path / "eval").rglob("*.pt"))) == 1


def test_a_padded_text_scores_as_the_same_text_alone() -> None:
    """Each text runs without its right padding (the reference runs texts one by one): a text padded to 7 in a batch
    gets the scores it gets alone at its own length, zeros after."""
    net = LSTMClassifier(40, 8, 8, 4).eval()
    m = InputIBAText(net, **TINY)
    _fit_quietly(m)
    x = torch.randint(2, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    x[0, 4:] = 0
    both = m.attribute(x, torch.tensor([0, 1]))
    alone = m.attribute(x[:1, :4], torch.tensor([0]))
    torch.testing.assert_close(both[0, :4], alone[0])
    assert (both[0, 4:] == 0).all()


def test_one_real_token_weight_an_interface_model_kept_and_no_capacity_on_padding() -> None:
    """``mask * L / n_real`` for a text of one real token (L there) and of none (0); a model that already offers
    ``embed`` / ``forward_embedded`` / ``pad_index`` is used as it is even with ``embedding`` named; the feature
    bottleneck's capacities are 0 on padding (the loss weight divided out only where it is > 0)."""
    assert token_weight(torch.tensor([[0, 1, 0], [0, 0, 0]], dtype=torch.bool)).flatten(1).tolist() == \
        [[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]
    net = LSTMClassifier(40, 8, 8, 4).eval()
    assert InputIBAText(net, embedding="embedding").model is net
    m = InputIBAText(net, **TINY)
    _fit_quietly(m)
    x = torch.randint(2, 40, (2, 5))
    x[0, 3:] = 0
    kl = m.feature_iba.optimize(x, torch.tensor([0, 1])).kl
    assert (kl[0, 3:] == 0).all() and (kl[0, :3] > 0).any() and torch.isfinite(kl).all()
