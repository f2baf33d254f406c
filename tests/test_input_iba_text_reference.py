"""InputIBA (image and text) against the reference code's values (../shared/REFERENCE.md, "InputIBA"
and "InputIBA on text"): every default pinned, the text GAN's reference pieces, and the GPU path."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from xattr.config import CONF_DIR
from xattr.methods.input_iba import InputIBA, InputIBAText, MaskGenerator, WGANConfig, fit_wgan
from xattr.methods.input_iba import wgan as wgan_module
from xattr.methods.input_iba.text_discriminator import LSTMDiscriminators
from xattr.methods.text import TextIntegratedGradients
from xattr.models.text import LSTMClassifier
from xattr.models.tiny import TinyCNN

GAN = dict(epochs=20, n_targets=200, n_groups=10, batch=32, critic=5, lr_disc=5e-5, lr_mean=0.1, lr_std=0.05, clip=0.01)


def _method_cfg(name: str, model: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[f"method={name}", f"model={model}"]).method


def _check_gan(gan: WGANConfig, lr_mask: float, redraw: bool) -> None:
    for k, v in GAN.items():
        assert getattr(gan, k) == pytest.approx(v), k
    assert gan.lr_mask == pytest.approx(lr_mask) and gan.redraw_targets is redraw


def test_text_defaults_are_the_reference_values() -> None:
    net = LSTMClassifier(20, 4, 4, 4)
    cfg = _method_cfg("input_iba_text", "imdb_lstm")
    for m in (InputIBAText(net), instantiate(cfg)(model=net)):
        assert m.layer == "rnn_4"
        f = m.feature_iba
        assert (f.beta, f.steps, f.lr, f.copies, f.sigma, f.init_alpha) == (15.0, 10, 1.0, 10, None, 5.0)
        _check_gan(m.gan, 0.03, False)
        assert (m.beta, m.steps, m.lr, m.sigma, m.copies, m.init_alpha) == (30.0, 30, 0.5, None, 10, 5.0)
        assert (m.input_prior, m.discriminator, m.disc_hidden, m.noise, m.mask_init) == (
            "standard", "lstm", None, "token", "nats")
        assert m.disc_slope == 0.2 and m.classifier_mode == "eval"
        assert m.target_mask == "capacity" and f.n_samples == 1000


def test_image_defaults_are_the_reference_values() -> None:
    net = TinyCNN(3)
    cfg = _method_cfg("input_iba", "custom")
    for m in (InputIBA(net, "conv2"), instantiate(cfg)(model=net)):
        f = m.feature_iba
        assert (f.beta, f.steps, f.lr, f.copies, f.sigma, f.init_alpha) == (20.0, 10, 1.0, 10, None, 5.0)
        _check_gan(m.gan, 0.003, True)
        assert (m.beta, m.steps, m.lr, m.copies, m.sigma, m.init_alpha) == (20.0, 60, 1.0, 10, 1.0, 5.0)
        assert (m.input_mean, m.input_std) == (0.0, 1.0) and m.target_mask == "capacity" and f.n_samples == 1000


def test_text_generator_noise_mask_init_and_prior() -> None:
    net = LSTMClassifier(20, 4, 6, 4).eval()
    x = torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]])
    kl = torch.rand(2, 4, 6)
    emb = net.embed(x)
    m = InputIBAText(net)
    assert m._noise_shape(emb) == (4, 1)  # one mean / std per token
    assert torch.allclose(m._mask_init(kl, emb), kl.sum(-1, keepdim=True).expand_as(emb))  # nats
    bits = InputIBAText(net, noise="dimension", mask_init="bits")
    assert bits._noise_shape(emb) == (1, 4)
    assert torch.allclose(bits._mask_init(kl, emb), (kl.sum(-1, keepdim=True) / math.log(2)).expand_as(emb))
    _, _, bn = m._stage3(x, torch.full_like(emb, 0.5))
    assert float(torch.as_tensor(bn.mean).abs().max()) == 0 and float(torch.as_tensor(bn.std).min()) == 1
    table = net.embedding.weight[1:]
    _, _, bn = InputIBAText(net, input_prior="embedding")._stage3(x, torch.full_like(emb, 0.5))
    assert torch.allclose(torch.as_tensor(bn.mean).flatten()[-4:], table.mean(0))


def test_lstm_discriminator_is_the_reference_architecture() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    d = LSTMDiscriminators(2, (3, 5), mask, gens=gens)
    assert d.w_ih.shape == (2, 20, 5) and d.w_hh.shape == (2, 20, 5)  # LSTM of the hidden width (4 gates)
    assert d.w1.shape == (2, 128, 5) and d.w2.shape == (2, 1, 128)  # Linear(H, 128), Linear(128, 1)
    z = torch.randn(2, 4, 3, 5)
    out = d(z)
    assert out.shape == (2, 4)
    z2 = z.clone()
    z2[0, :, 2] = 100.0  # a padded position of review 0
    assert torch.equal(d(z2)[0], out[0])
    # the same as an nn.LSTM + the head built from review 1's weights
    lstm = torch.nn.LSTM(5, 5, batch_first=True)
    with torch.no_grad():
        for name, p in (("weight_ih_l0", d.w_ih), ("weight_hh_l0", d.w_hh), ("bias_ih_l0", d.b_ih), ("bias_hh_l0", d.b_hh)):
            getattr(lstm, name).copy_(p[1])
        h = lstm(z[1])[0][:, 2]
        pre = h @ d.w1[1].T + d.b1[1]
        want = torch.where(pre > 0, pre, 0.2 * pre) @ d.w2[1].T + d.b2[1]  # LeakyReLU(0.2), nlp_discriminator.py:20
    assert torch.allclose(out[1], want[:, 0], atol=1e-6)
    # one review at a time == batched (each review's discriminator from its own generator)
    one = LSTMDiscriminators(1, (3, 5), mask[1:], gens=[torch.Generator().manual_seed(2)])
    assert torch.allclose(one(z[1:])[0], out[1], atol=1e-6)


def test_lstm_discriminator_init_is_pytorchs_default_law_from_each_reviews_generator() -> None:
    """Each parameter is drawn from its review's generator in the order ``w_ih, w_hh, b_ih, b_hh, w1, b1, w2, b2``
    as PyTorch's default init: ``U(-1/sqrt(hidden), 1/sqrt(hidden))`` for the LSTM (nn.LSTM), ``U(-1/sqrt(fan_in),
    ...)`` for each Linear (nn.Linear's bias and weight bound); hidden and head widths as given, hidden ``None``:
    the feature width. Then the forward of a padded review at hidden != feature width against nn.LSTM + the head,
    and its backward: no gradient (and no NaN) on padding."""
    h, d, head = 7, 5, 6
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    disc = LSTMDiscriminators(2, (4, d), mask, hidden=h, gens=[torch.Generator().manual_seed(s) for s in (3, 4)],
                              head=head, slope=0.1)
    assert disc.hidden == h and disc.slope == 0.1 and disc.last.tolist() == [1, 3] and torch.equal(disc.mask, mask)
    for i, seed in enumerate((3, 4)):
        g = torch.Generator().manual_seed(seed)
        for name, shape, fan in (("w_ih", (4 * h, d), h), ("w_hh", (4 * h, h), h), ("b_ih", (4 * h,), h),
                                 ("b_hh", (4 * h,), h), ("w1", (head, h), h), ("b1", (head,), h),
                                 ("w2", (1, head), head), ("b2", (1,), head)):
            want = (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan)
            assert torch.allclose(getattr(disc, name)[i], want, atol=1e-7), (i, name)
    assert LSTMDiscriminators(1, (4, d), mask[:1]).hidden == d
    z = torch.randn(2, 3, 4, d, generator=torch.Generator().manual_seed(0))
    out = disc(z)
    lstm = torch.nn.LSTM(d, h, batch_first=True)
    for i in range(2):
        with torch.no_grad():
            for name, p in (("weight_ih_l0", disc.w_ih), ("weight_hh_l0", disc.w_hh), ("bias_ih_l0", disc.b_ih),
                            ("bias_hh_l0", disc.b_hh)):
                getattr(lstm, name).copy_(p[i])
            real = int(mask[i].sum())
            read = lstm(z[i, :, :real])[0][:, -1]  # the last real token, padding never seen
            pre = read @ disc.w1[i].T + disc.b1[i]
            want = torch.where(pre > 0, pre, 0.1 * pre) @ disc.w2[i].T + disc.b2[i]
        assert torch.allclose(out[i], want[:, 0], atol=1e-6), i
    disc.train()  # dropout 0: the same in train mode; the weights and the real tokens get gradients, padding 0
    z.requires_grad_(True)
    out_train = disc(z)
    assert torch.allclose(out_train, out, atol=1e-6)
    out_train.sum().backward()
    assert disc.w_ih.grad is not None and disc.w_ih.grad.abs().sum() > 0
    assert torch.isfinite(z.grad).all() and z.grad[0, :, 2:].abs().max() == 0 and z.grad[0, :, :2].abs().min() > 0


@pytest.mark.parametrize("redraw", [False, True])
def test_targets_drawn_once_or_per_minibatch(monkeypatch, redraw: bool) -> None:
    calls = []
    real = wgan_module.sample_targets
    monkeypatch.setattr(wgan_module, "sample_targets", lambda *a: calls.append(a[4].shape) or real(*a))
    x, r = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    gen = MaskGenerator(x, lambda z: z * 2, torch.zeros(2, 3, 4), (3, 1))
    disc = LSTMDiscriminators(2, (3, 4), torch.ones(2, 3, dtype=torch.bool))
    cfg = WGANConfig(epochs=2, n_targets=8, n_groups=2, batch=4, critic=1, redraw_targets=redraw)
    fit_wgan(gen, disc, r, torch.rand(2, 3, 4), cfg)
    assert calls == ([(2, 4)] * 4 if redraw else [(2, 8)])


def test_train_mode_has_dropout_on_in_every_stage_and_batched_equals_single() -> None:
    """classifier_mode=train (the reference's): the maps differ from eval mode (dropout 0.5 active), the same
    text gets the same map alone or in a batch (seeded per text), and the model is left in eval mode."""
    torch.manual_seed(0)
    net = LSTMClassifier(30, 4, 6, 2, dropout=0.5).eval()
    tiny = dict(epochs=1, n_targets=8, n_groups=2, gan_batch=4, critic=2, feat_steps=2, feat_copies=2, steps=2, copies=2)
    loader = [{"x": torch.randint(2, 30, (6, 5)), "mask": torch.ones(6, 5, dtype=torch.bool)}]
    x = torch.randint(2, 30, (2, 5))
    x[1, 3:] = 0
    t = torch.tensor([0, 1])
    modes = []
    seen = []
    hook = net.rnn_1.register_forward_pre_hook(lambda mod, inp: seen.append(net.training))
    for mode in ("eval", "train"):
        m = InputIBAText(net, layer="rnn_2", classifier_mode=mode, **tiny)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(loader)
            seen.clear()
            modes.append(m.attribute(x, t))
            assert all(s == (mode == "train") for s in seen) and seen
            assert not net.training
            if mode == "train":
                one = m.attribute(x[1:], t[1:])
                assert torch.allclose(one[0], modes[-1][1], atol=1e-6)
    hook.remove()
    assert not torch.allclose(modes[0], modes[1])
    with pytest.raises(Exception, match="unknown classifier_mode 'x'"):
        InputIBAText(net, classifier_mode="x")


def test_text_input_iba_runs_with_the_reference_pieces() -> None:
    net = LSTMClassifier(30, 4, 6, 2).eval()
    tiny = dict(epochs=1, n_targets=8, n_groups=2, gan_batch=4, critic=2, feat_steps=2, feat_copies=2, steps=2, copies=2)
    m = InputIBAText(net, layer="rnn_2", **tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit([{"x": torch.randint(2, 30, (6, 5)), "mask": torch.ones(6, 5, dtype=torch.bool)}])
    x = torch.randint(2, 30, (2, 5))
    x[1, 3:] = 0
    s = m.attribute(x, torch.tensor([0, 1]))
    assert s.shape == (2, 5) and (s[1, 3:] == 0).all() and ((s[x != 0] > 0) & (s[x != 0] <= 1)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN refuses an eval-mode RNN backward)")
def test_text_methods_backpropagate_through_an_eval_lstm_on_cuda() -> None:
    net = LSTMClassifier(30, 4, 6, 2).eval().cuda()
    tiny = dict(epochs=1, n_targets=8, n_groups=2, gan_batch=4, critic=2, feat_steps=2, feat_copies=2, steps=2, copies=2)
    m = InputIBAText(net, layer="rnn_2", **tiny)
    m.fit([{"x": torch.randint(2, 30, (6, 5)).cuda(), "mask": torch.ones(6, 5, dtype=torch.bool).cuda()}])
    x = torch.randint(2, 30, (2, 5)).cuda()
    assert m.attribute(x, torch.tensor([0, 1]).cuda()).shape == (2, 5)
    ig = functools.partial(TextIntegratedGradients, n_steps=4)(net)
    assert ig.attribute(x, torch.tensor([0, 1]).cuda()).is_cuda
