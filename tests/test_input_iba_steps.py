"""InputIBA's stages 2 and 3 step by step against per-image loops written here from the equations (ch. 6,
sec. 3.2-3.3, appendix D.1; not from the code): one WGAN critic step and one generator step (RMSprop by
hand, weight clipping), and two steps of the input bottleneck (Remark 2's sample, Proposition 3's KL,
cross-entropy + beta * mean KL, Adam by hand), for images and for text. The random draws (standard normal
noise) are recorded from the code and handed to the loops: the arithmetic is what is compared."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from xattr.methods.iba import bottleneck as iba_bottleneck
from xattr.methods.iba import optimize_alpha
from xattr.methods.iba.bottleneck import cross_entropy_loss
from xattr.methods.input_iba import (
    ConvDiscriminators,
    InputIBA,
    MaskGenerator,
    RNNDiscriminators,
    WGANConfig,
    fit_wgan,
)
from xattr.methods.input_iba import wgan as wgan_module

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread, no contention on a shared CPU


def _recording(monkeypatch, module):
    """Every standard-normal draw of ``module.draw_noise``, in order."""
    seen = []
    original = module.draw_noise

    def draw(*args, **kw):
        out = original(*args, **kw)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(module, "draw_noise", draw)
    return seen


def _rmsprop(p, g, lr):
    """One RMSprop step from v = 0 (alpha 0.99, eps 1e-8): v = 0.01 g^2, p - lr g / (sqrt(v) + eps)."""
    v = 0.01 * g**2
    return p - lr * g / (v.sqrt() + 1e-8)


# ------------------------------------------------------------------------------ the discriminators, by hand
def _conv_critic(disc: ConvDiscriminators, i: int, c: int) -> nn.Module:
    """Image i's critic as plain layers: Conv c->2c (k4 s2 p1), BN, LeakyReLU 0.2, Conv 2c->4c (k4 s2 p1), BN,
    LeakyReLU, Conv 4c->c (k3 p1), BN, LeakyReLU, flatten, Linear -> 512 -> 256 -> 1 (LeakyReLU between),
    BatchNorm on the batch statistics; its weights copied from the batched module's image i."""
    layers: list[nn.Module] = []
    for k, (cin, cout, ks, s, p) in enumerate([(c, 2 * c, 4, 2, 1), (2 * c, 4 * c, 4, 2, 1), (4 * c, c, 3, 1, 1)]):
        conv = nn.Conv2d(cin, cout, ks, s, p)
        bn = nn.BatchNorm2d(cout, track_running_stats=False)
        with torch.no_grad():
            conv.weight.copy_(disc.convs[2 * k][i])
            conv.bias.copy_(disc.convs[2 * k + 1][i])
            bn.weight.copy_(disc.norms[2 * k][i])
            bn.bias.copy_(disc.norms[2 * k + 1][i])
        layers += [conv, bn, nn.LeakyReLU(0.2)]
    layers.append(nn.Flatten())
    for k, (fin, fout) in enumerate([(disc.flat, 512), (512, 256), (256, 1)]):
        lin = nn.Linear(fin, fout)
        with torch.no_grad():
            lin.weight.copy_(disc.linears[2 * k][i].T)
            lin.bias.copy_(disc.linears[2 * k + 1][i].flatten())
        layers += [lin] + ([nn.LeakyReLU(0.2)] if k < 2 else [])
    return nn.Sequential(*layers).train()


class _RNNCritic(nn.Module):
    """Text i's critic: a tanh RNN over the (padding-zeroed) features, read at the last real token, Linear -> 1."""

    def __init__(self, disc: RNNDiscriminators, i: int, mask: torch.Tensor) -> None:
        super().__init__()
        hidden, d = disc.w_ih.shape[1:]
        self.rnn = nn.RNN(d, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(disc.w_ih[i])
            self.rnn.weight_hh_l0.copy_(disc.w_hh[i])
            self.rnn.bias_ih_l0.copy_(disc.b_ih[i])
            self.rnn.bias_hh_l0.copy_(disc.b_hh[i])
            self.out.weight.copy_(disc.w_out[i].T)
            self.out.bias.copy_(disc.b_out[i].flatten())
        self.mask = mask  # (L,) bool
        self.last = int(mask.nonzero().max())

    def forward(self, z):  # (N, L, H)
        h, _ = self.rnn(z * self.mask[None, :, None])
        return self.out(h[:, self.last]).squeeze(-1)


def _params(critic):
    return [p for p in critic.parameters()]


# ------------------------------------------------------------------------------ stage 2: one WGAN round
@pytest.mark.parametrize("kind", ["image", "text"])
def test_one_wgan_critic_and_generator_step_by_hand(kind, monkeypatch):
    """One minibatch of n = n_targets samples, critic = 1: a critic step then a generator step. Per image:
    real = M f(x) + (1 - M)(mu_g + s_g e0) (one group), fake = f(s(m) x + (1 - s(m))(mu_G + sigma_G e1));
    d_loss = -mean D(real) + mean D(fake), RMSprop (lr_disc), clip to +-clip; then g_loss = -mean D'(f(Z_G))
    with fresh e2, RMSprop on mask / mean / std with their own learning rates."""
    torch.manual_seed(5)
    b, n = 2, 6
    if kind == "image":
        x = torch.randn(b, 2, 8, 8)
        head = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh()).requires_grad_(False)
        r = head(x)
        disc = ConvDiscriminators(b, r.shape[1:])
        param_shape = (2, 1, 1)
        masks = None
    else:
        x = torch.randn(b, 5, 4)  # embeddings (B, L, D)
        head = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).requires_grad_(False)
        r = head(x)
        masks = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        disc = RNNDiscriminators(b, r.shape[1:], masks, hidden=6)
        param_shape = (5, 1)
    target_mask = torch.rand_like(r)
    mask_init = torch.randn_like(x)
    gen = MaskGenerator(x, head, mask_init, param_shape)
    critics = [_conv_critic(disc, i, 3) if kind == "image" else _RNNCritic(disc, i, masks[i]) for i in range(b)]
    group_mean, group_std = torch.tensor([[0.7], [-1.2]]), torch.tensor([[1.5], [0.4]])
    cfg = WGANConfig(epochs=1, n_targets=n, n_groups=1, batch=n, critic=1, lr_disc=0.01, lr_mask=0.2, lr_mean=0.3,
                     lr_std=0.1, clip=0.05)
    noise = _recording(monkeypatch, wgan_module)
    res = fit_wgan(gen, disc, r, target_mask, cfg, None, group_mean, group_std)
    e0, e1, e2 = noise  # targets, the critic's fakes, the generator step's samples

    for i in range(b):  # one image at a time, from the equations
        critic = critics[i]
        real = target_mask[i] * r[i] + (1 - target_mask[i]) * (group_mean[i, 0] + group_std[i, 0] * e0[i])
        lam = torch.sigmoid(mask_init[i])
        fake = head(lam * x[i] + (1 - lam) * (0.0 + 1.0 * e1[i]))  # mu_G = 0, sigma_G = 1 at the start
        d_loss = -critic(real).mean() + critic(fake).mean()
        grads = torch.autograd.grad(d_loss, _params(critic))
        with torch.no_grad():
            for p, g in zip(_params(critic), grads):
                p.copy_(_rmsprop(p, g, cfg.lr_disc).clamp(-cfg.clip, cfg.clip))
        torch.testing.assert_close(res.d_loss[0, i], d_loss.detach(), rtol=1e-4, atol=1e-6)
        m = mask_init[i].clone().requires_grad_(True)
        mu = torch.zeros(param_shape, requires_grad=True)
        sd = torch.ones(param_shape, requires_grad=True)
        lam = torch.sigmoid(m)
        g_loss = -critic(head(lam * x[i] + (1 - lam) * (mu + sd * e2[i]))).mean()
        gm, gmu, gsd = torch.autograd.grad(g_loss, [m, mu, sd])
        torch.testing.assert_close(res.g_loss[0, i], g_loss.detach(), rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(res.mask[i], torch.sigmoid(_rmsprop(m, gm, cfg.lr_mask)), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(res.mean[i], _rmsprop(mu, gmu, cfg.lr_mean), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(res.std[i], _rmsprop(sd, gsd, cfg.lr_std), rtol=1e-4, atol=1e-5)
        # the critic after its step: the batched module's image i equals the hand-stepped, clipped weights
        if kind == "image":
            torch.testing.assert_close(disc.convs[0][i], critic[0].weight, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(disc.linears[4][i], critic[-1].weight.T, rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(disc.w_hh[i], critic.rnn.weight_hh_l0, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(disc.w_out[i], critic.out.weight.T, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ stage 3: the input bottleneck
def _blur(m: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Eq. 7's blur: a normalised Gaussian of std sigma on a (2 round(2 sigma) + 1)^2 grid, reflection at the
    border, per channel."""
    k = int(round(2 * sigma)) * 2 + 1
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kern = (torch.outer(g, g) / torch.outer(g, g).sum()).to(m.dtype)
    c = m.shape[0]
    padded = F.pad(m[None], (k // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kern.expand(c, 1, k, k), groups=c)[0]


def _prop3(x, lam, lam_g, mu, sd):
    """Proposition 3 per element: log((1 - lG L)/(1 - L)) + (1 - L)^2 / (2 (1 - lG L)^2)
    + (x - mu)^2 (L - lG L)^2 / (2 (1 - lG L)^2 sd^2) - 1/2."""
    a, q = 1 - lam, 1 - lam_g * lam
    return torch.log(q / a) + a**2 / (2 * q**2) + (x - mu) ** 2 * (lam - lam_g * lam) ** 2 / (2 * q**2 * sd**2) - 0.5


def _adam_two_steps(alpha0, grad_fn, lr):
    """Two Adam steps (betas 0.9, 0.999, eps 1e-8, bias-corrected) from alpha0; grad_fn(alpha, step) -> (g, extras)."""
    a, m, v, extras = alpha0, torch.zeros_like(alpha0), torch.zeros_like(alpha0), []
    for t in (1, 2):
        g, extra = grad_fn(a, t - 1)
        extras.append(extra)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        a = a - lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    return a, extras


def test_two_input_bottleneck_steps_by_hand_image(monkeypatch):
    """Images: Lambda = blur(sigmoid(alpha)), Z_I = Lambda x + (1 - Lambda)(mu_I + sigma_I e) over `copies`
    copies, loss = mean CE(target) + beta mean_k KL_k (Proposition 3 against lambda_G), Adam; the method's
    own stage-3 bottleneck and tail (InputIBA._stage3) with input prior N(0.2, 1.5^2)."""
    from xattr.models.tiny import TinyCNN

    torch.manual_seed(3)
    net = TinyCNN(5).eval().requires_grad_(False)
    method = InputIBA(net, layer="conv2", beta=7.0, lr=1.5, copies=3, input_mean=0.2, input_std=1.5, init_alpha=1.0)
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([1, 4])
    lam_g = torch.rand(2, 3, 16, 16)
    inp, tail, bn = method._stage3(x, lam_g)
    noise = _recording(monkeypatch, iba_bottleneck)
    res = optimize_alpha(tail, inp, bn, cross_entropy_loss(target), beta=method.beta, steps=2, lr=method.lr,
                         copies=method.copies, init_alpha=method.init_alpha)
    for i in range(2):
        def grad(alpha, step, i=i):
            alpha = alpha.clone().requires_grad_(True)
            lam = _blur(torch.sigmoid(alpha))
            kl = _prop3(x[i], lam, lam_g[i], 0.2, 1.5)
            z = lam * x[i] + (1 - lam) * (0.2 + 1.5 * noise[step][i])  # (copies, C, H, W)
            ce = -torch.log_softmax(net(z), 1)[:, target[i]].mean()
            loss = ce + method.beta * kl.mean()
            return torch.autograd.grad(loss, alpha)[0], (ce.detach(), kl.mean().detach())

        alpha2, extras = _adam_two_steps(torch.full((3, 16, 16), float(method.init_alpha)), grad, method.lr)
        for step, (ce, info) in enumerate(extras):
            torch.testing.assert_close(res.losses[step, i], ce, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(res.info[step, i], info, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.alpha[i], alpha2, rtol=1e-4, atol=1e-4)
    assert (res.alpha != method.init_alpha).any()


def test_two_input_bottleneck_steps_by_hand_text(monkeypatch):
    """Text: Lambda = sigmoid(alpha) per embedding entry (no blur), prior N(0, 1), the KL averaged over the
    real tokens only (padding weighs nothing), the tail the model on the embeddings with the padding mask;
    the method's own stage-3 pieces (InputIBAText._stage3)."""
    from xattr.methods.input_iba import InputIBAText
    from xattr.models.text import LSTMClassifier

    torch.manual_seed(4)
    net = LSTMClassifier(30, 6, 5, 4, num_classes=3).eval().requires_grad_(False)
    method = InputIBAText(net, beta=4.0, lr=1.5, copies=3, init_alpha=1.0)
    x = torch.randint(2, 30, (2, 7))
    x[0, 4:] = net.pad_index
    target = torch.tensor([2, 0])
    mask = x != net.pad_index
    lam_g = torch.rand(2, 7, 6)
    inp, tail, bn = method._stage3(x, lam_g)
    noise = _recording(monkeypatch, iba_bottleneck)
    res = optimize_alpha(tail, inp, bn, cross_entropy_loss(target), beta=method.beta, steps=2, lr=method.lr,
                         copies=method.copies, init_alpha=method.init_alpha)
    emb = net.embedding(x).detach()
    for i in range(2):
        real = mask[i]

        def grad(alpha, step, i=i, real=real):
            alpha = alpha.clone().requires_grad_(True)
            lam = torch.sigmoid(alpha)
            kl = _prop3(emb[i], lam, lam_g[i], 0.0, 1.0)[real].mean()  # mean over the real tokens' entries
            z = lam * emb[i] + (1 - lam) * noise[step][i]  # (copies, L, D)
            logits = net.forward_embedded(z, real.expand(z.shape[0], -1))
            ce = -torch.log_softmax(logits, 1)[:, target[i]].mean()
            return torch.autograd.grad(ce + method.beta * kl, alpha)[0], (ce.detach(), kl.detach())

        alpha2, extras = _adam_two_steps(torch.full((7, 6), float(method.init_alpha)), grad, method.lr)
        for step, (ce, info) in enumerate(extras):
            torch.testing.assert_close(res.losses[step, i], ce, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(res.info[step, i], info, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.alpha[i][real], alpha2[real], rtol=1e-4, atol=1e-4)
    assert math.isfinite(float(res.info.sum()))
