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


def test_one_score_per_token_padding_ignored() -> None:
    net = LSTMClassifier(40, 8, 8, 4).eval()
    m = InputIBAText(net, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit([{"x": torch.randint(2, 40, (8, 6)), "mask": torch.ones(8, 6, dtype=torch.bool)}])
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
