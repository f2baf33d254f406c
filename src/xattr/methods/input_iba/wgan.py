"""Stage 2 of InputIBA: fit the input bottleneck ``Z_G`` to the feature bottleneck ``Z*`` with a WGAN,
for many images at once (ch. 6, sec. 3.3, appendix D.1).

Generator (:class:`MaskGenerator`): not a network but three learnable tensors per image: mask logits
``m`` (shape of ``x``), noise mean ``mu_G`` and std ``sigma_G``; ``Z_G = s(m) x + (1 - s(m)) (mu_G + sigma_G e)``
(reparameterised), and the sample is ``f(Z_G)``, the frozen classifier up to the bottleneck layer.
Target set: samples of ``P(Z*)``: 10 groups of 20, group noise ``N(mu, s^2)``, ``mu ~ U(-2, 2)``,
``s ~ U(0, 5)``, ``real = M f(x) + (1 - M) noise`` with ``M`` the feature bottleneck's capacity (raw KL,
as the reference code does; ``target_mask="lambda"`` uses ``lambda*`` as the paper's text says).
Discriminator: images: Conv C->2C (k4 s2 p1), Conv 2C->4C (k4 s2 p1), Conv 4C->C (k3 p1), each with
BatchNorm and LeakyReLU 0.2, then Linear(C h/4 w/4 -> 512 -> 256 -> 1) (:class:`ConvDiscriminators`);
text: a 1-layer tanh RNN read at the last real token, then Linear(H_d -> 1) (:class:`RNNDiscriminators`).
Training (reference parity): RMSprop, discriminator lr 5e-5, generator lrs mask 0.003 / mean 0.1 /
std 0.05, weight clipping 0.01, batch 32, 20 epochs over the 200 targets, a generator step when the
batch index ``i % 5 == 0``.

Batching: one generator and one discriminator per image, stacked: convolutions are grouped over the
images (``groups=B``), BatchNorm over ``B * C`` channels is each image's own BatchNorm, the linears
are batched matmuls, the RNN is block-diagonal; every loss is a per-image mean summed over images and
RMSprop / clipping act per element, so each image's parameters follow exactly their single-image path.

Departures from the reference: the target noise is drawn afresh for each minibatch (same groups, same
distribution) instead of being stored (200 VGG conv4_1 samples are 320 MB per image); randomness is
per image (its own ``torch.Generator``), so an image gets the same result alone or in a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from xattr.core.progress import progress
from xattr.core.seeding import draw_noise

Generators = Sequence[torch.Generator] | None


def _uniform(shape: tuple[int, ...], bound: float, gens: Generators, b: int, device: torch.device) -> torch.Tensor:
    """``(b, *shape)`` uniform in ``[-bound, bound]``; image ``i`` from ``gens[i]`` when given."""
    if gens is None:
        u = torch.rand((b, *shape), device=device)
    else:
        u = torch.stack([torch.rand(shape, generator=g, device=device) for g in gens])
    return (2 * u - 1) * bound


def _rand(shape: tuple[int, ...], gens: Generators, b: int, device: torch.device) -> torch.Tensor:
    return _uniform(shape, 0.5, gens, b, device) + 0.5


def _randperm(n: int, gens: Generators, b: int, device: torch.device) -> torch.Tensor:
    if gens is None:
        return torch.rand(b, n, device=device).argsort(1)
    return torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])


class MaskGenerator(nn.Module):
    """The generator: per-image mask logits ``(B, *S)``, noise mean / std ``(B, *P)`` (``P`` broadcasts
    to ``S``: images ``(C, 1, 1)``, text ``(1, D)``).

    Args:
        x: the inputs ``(B, *S)`` (detached).
        head: ``z (N, *S) -> f(z) (N, *F)``, the frozen classifier up to the bottleneck.
        mask_init: initial mask logits ``(B, *S)`` (reference: the feature-IBA map resized to ``x``).
        param_shape: ``P``.
    """

    def __init__(
        self, x: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], mask_init: torch.Tensor,
        param_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.register_buffer("x", x.detach())
        self.head = head
        b = x.shape[0]
        self.mask = nn.Parameter(mask_init.detach().clone().float().expand_as(x).clone())
        self.mean = nn.Parameter(torch.zeros((b, *param_shape), device=x.device))
        self.std = nn.Parameter(torch.ones((b, *param_shape), device=x.device))

    def lam(self) -> torch.Tensor:
        """``lambda_G = sigmoid(m)`` ``(B, *S)``."""
        return torch.sigmoid(self.mask)

    def sample_inputs(self, n: int, gens: Generators) -> torch.Tensor:
        """``Z_G`` ``(B, n, *S)``: ``s(m) x + (1 - s(m)) (mu + sigma e)``, ``e`` standard normal."""
        b = self.x.shape[0]
        eps = draw_noise((n, *self.x.shape[1:]), b, gens, self.x.device)
        lam = self.lam()[:, None]
        noise = self.mean[:, None] + self.std[:, None] * eps
        return lam * self.x[:, None] + (1 - lam) * noise

    def forward(self, n: int, gens: Generators = None) -> torch.Tensor:
        """``f(Z_G)`` ``(B, n, *F)``."""
        z = self.sample_inputs(n, gens)
        out = self.head(z.flatten(0, 1))
        return out.reshape(z.shape[0], n, *out.shape[1:])


class ConvDiscriminators(nn.Module):
    """``B`` image discriminators (3 conv + BatchNorm + LeakyReLU, then 512 -> 256 -> 1), one per image,
    as grouped convolutions and batched matmuls. Input ``(B, N, C, h, w)``, output ``(B, N)``.

    Weights are drawn like PyTorch's defaults (uniform, bound ``1/sqrt(fan_in)``), per image from
    ``gens`` when given; BatchNorm starts at weight 1, bias 0 and always uses the batch statistics.
    """

    def __init__(self, b: int, feat_shape: Sequence[int], gens: Generators = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        c, h, w = feat_shape
        dev = torch.device(device)
        self.b, self.c = b, c
        self.convs = nn.ParameterList()
        self.norms = nn.ParameterList()
        self.spec = [(c, 2 * c, 4, 2, 1), (2 * c, 4 * c, 4, 2, 1), (4 * c, c, 3, 1, 1)]
        hh, ww = h, w
        for cin, cout, k, s, p in self.spec:
            bound = 1 / math.sqrt(cin * k * k)
            self.convs.append(nn.Parameter(_uniform((cout, cin, k, k), bound, gens, b, dev)))
            self.convs.append(nn.Parameter(_uniform((cout,), bound, gens, b, dev)))
            self.norms.append(nn.Parameter(torch.ones(b, cout, device=dev)))
            self.norms.append(nn.Parameter(torch.zeros(b, cout, device=dev)))
            hh, ww = (hh + 2 * p - k) // s + 1, (ww + 2 * p - k) // s + 1
        self.flat = c * hh * ww
        self.linears = nn.ParameterList()
        for fin, fout in ((self.flat, 512), (512, 256), (256, 1)):
            bound = 1 / math.sqrt(fin)
            self.linears.append(nn.Parameter(_uniform((fin, fout), bound, gens, b, dev)))
            self.linears.append(nn.Parameter(_uniform((1, fout), bound, gens, b, dev)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._run(z, 1)

    def pair(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward(real), forward(fake))`` in one graph: the two batches become ``2B`` groups of the
        grouped convolutions (weights repeated, so each keeps its own BatchNorm batch statistics, as two
        calls do); half the kernel launches of the critic step. Same values and gradients as two calls."""
        out = self._run(torch.cat([real, fake]), 2)
        return out[: real.shape[0]], out[real.shape[0] :]

    def _run(self, z: torch.Tensor, rep: int) -> torch.Tensor:
        """``z`` ``(rep * B, N, C, h, w)``: ``rep`` stacked batches, each through the ``B`` discriminators."""
        b, n = z.shape[:2]

        def w(t: torch.Tensor) -> torch.Tensor:
            return t if rep == 1 else t.repeat(rep, *([1] * (t.dim() - 1)))

        h = z.transpose(0, 1).reshape(n, b * z.shape[2], *z.shape[3:])  # (N, B*C, h, w)
        for i, (_cin, _cout, _k, s, p) in enumerate(self.spec):
            wt, bias = w(self.convs[2 * i]), w(self.convs[2 * i + 1])
            h = F.conv2d(h, wt.flatten(0, 1), bias.flatten(), stride=s, padding=p, groups=b)
            h = F.batch_norm(h, None, None, w(self.norms[2 * i]).flatten(), w(self.norms[2 * i + 1]).flatten(),
                             training=True)
            h = F.leaky_relu(h, 0.2)
        h = h.reshape(n, b, self.flat).transpose(0, 1)  # (B, N, F)
        for i in range(3):
            h = torch.baddbmm(w(self.linears[2 * i + 1]), h, w(self.linears[2 * i]))
            if i < 2:
                h = F.leaky_relu(h, 0.2)
        return h.squeeze(-1)  # (B, N)


class RNNDiscriminators(nn.Module):
    """``B`` text discriminators: a 1-layer tanh RNN (hidden ``hidden``) read at the last real token,
    then Linear(hidden -> 1); one per image, run as one block-diagonal RNN. Input ``(B, N, L, H)``
    (padded positions are zeroed and never read), output ``(B, N)``.

    Args:
        mask: ``(B, L)`` bool, True on real tokens.
    """

    def __init__(self, b: int, feat_shape: Sequence[int], mask: torch.Tensor, hidden: int = 64,
                 gens: Generators = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        _l, d = feat_shape
        dev = torch.device(device)
        bound = 1 / math.sqrt(hidden)
        self.w_ih = nn.Parameter(_uniform((hidden, d), bound, gens, b, dev))
        self.w_hh = nn.Parameter(_uniform((hidden, hidden), bound, gens, b, dev))
        self.b_ih = nn.Parameter(_uniform((hidden,), bound, gens, b, dev))
        self.b_hh = nn.Parameter(_uniform((hidden,), bound, gens, b, dev))
        self.w_out = nn.Parameter(_uniform((hidden, 1), bound, gens, b, dev))
        self.b_out = nn.Parameter(_uniform((1, 1), bound, gens, b, dev))
        self.register_buffer("mask", mask.to(dev).bool())
        self.register_buffer("last", (mask.long().cumsum(1) * mask).argmax(1).to(dev))  # (B,)
        self.hidden = hidden

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, n, l_, d = z.shape
        z = z * self.mask[:, None, :, None]
        seq = z.permute(1, 2, 0, 3).reshape(n, l_, b * d)  # (N, L, B*D)
        w_ih, w_hh = torch.block_diag(*self.w_ih), torch.block_diag(*self.w_hh)
        out, _ = torch._VF.rnn_tanh(
            seq, torch.zeros(1, n, b * self.hidden, device=z.device, dtype=z.dtype),
            [w_ih, w_hh, self.b_ih.flatten(), self.b_hh.flatten()], True, 1, 0.0, self.training, False, True,
        )  # fmt: skip
        out = out.reshape(n, l_, b, self.hidden)
        read = out[:, self.last, torch.arange(b, device=z.device)]  # (N, B, hidden)
        return torch.baddbmm(self.b_out, read.transpose(0, 1), self.w_out).squeeze(-1)  # (B, N)


@dataclass
class WGANConfig:
    """Stage-2 hyper-parameters (defaults: the reference's, ../shared/REFERENCE.md)."""

    epochs: int = 20
    n_targets: int = 200
    n_groups: int = 10
    batch: int = 32
    critic: int = 5
    lr_disc: float = 5e-5
    lr_mask: float = 0.003
    lr_mean: float = 0.1
    lr_std: float = 0.05
    clip: float = 0.01
    mean_range: float = 2.0
    std_max: float = 5.0
    redraw_targets: bool = True  # False: the n_targets samples drawn once, reshuffled per epoch (reference's text GAN)


def sample_targets(
    r: torch.Tensor, target_mask: torch.Tensor, group_mean: torch.Tensor, group_std: torch.Tensor,
    groups: torch.Tensor, gens: Generators,
) -> torch.Tensor:
    """Samples of ``P(Z*)``: ``M r + (1 - M) (mu_g + s_g e)`` ``(B, n, *F)`` for group ids ``(B, n)``."""
    b, n = groups.shape
    extra = (1,) * (r.dim() - 1)
    mu = group_mean.gather(1, groups).view(b, n, *extra)
    s = group_std.gather(1, groups).view(b, n, *extra)
    eps = draw_noise((n, *r.shape[1:]), b, gens, r.device)
    return target_mask[:, None] * r[:, None] + (1 - target_mask[:, None]) * (mu + s * eps)


@dataclass
class WGANResult:
    """``mask`` ``lambda_G`` ``(B, *S)``, ``mean`` / ``std`` of the generator noise, per-step losses
    ``d_loss`` ``(steps_d, B)`` and ``g_loss`` ``(steps_g, B)`` (all detached)."""

    mask: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    d_loss: torch.Tensor
    g_loss: torch.Tensor


def fit_wgan(
    generator: MaskGenerator, discriminator: nn.Module, r: torch.Tensor, target_mask: torch.Tensor,
    cfg: WGANConfig = WGANConfig(), gens: Generators = None,  # noqa: B008
    group_mean: torch.Tensor | None = None, group_std: torch.Tensor | None = None,
    clock: Callable[[str], None] | None = None,
) -> WGANResult:
    """Train one generator and one discriminator per image, batched (see the module docstring).

    Args:
        r: ``f(x)`` ``(B, *F)`` (detached); ``target_mask``: ``M`` ``(B, *F)``.
        gens: one ``torch.Generator`` per image (target groups, shuffling, noise); None: global RNG.
        group_mean, group_std: ``(B, n_groups)`` target noise per group; None: ``U(-2, 2)`` and ``U(0, 5)``.
        clock: called as ``clock("wgan_critic")`` after each discriminator step (target samples, the
            generator's samples, the step) and ``clock("wgan_generator")`` after each generator step, so the
            caller can time them (InputIBA's ``timing/wgan_critic`` and ``timing/wgan_generator``).
    """
    tick = clock or (lambda _stage: None)
    b, dev = r.shape[0], r.device
    r, target_mask = r.detach(), target_mask.detach()
    if group_mean is None:
        group_mean = _uniform((cfg.n_groups,), cfg.mean_range, gens, b, dev)  # (B, G)
    if group_std is None:
        group_std = _rand((cfg.n_groups,), gens, b, dev) * cfg.std_max
    per_group = cfg.n_targets // cfg.n_groups
    opt_d = torch.optim.RMSprop(discriminator.parameters(), lr=cfg.lr_disc)
    opt_g = torch.optim.RMSprop([
        {"params": [generator.mask], "lr": cfg.lr_mask},
        {"params": [generator.mean], "lr": cfg.lr_mean},
        {"params": [generator.std], "lr": cfg.lr_std},
    ])  # fmt: skip
    d_losses, g_losses = [], []
    fixed = None
    if not cfg.redraw_targets:
        ids = (torch.arange(cfg.n_targets, device=dev) // per_group).clamp_max(cfg.n_groups - 1).expand(b, -1)
        fixed = sample_targets(r, target_mask, group_mean, group_std, ids, gens)  # (B, n_targets, *F)
    for _epoch in progress(range(cfg.epochs), desc="InputIBA WGAN", unit="epoch"):
        perm = _randperm(cfg.n_targets, gens, b, dev)  # (B, n_targets)
        for i, start in enumerate(range(0, cfg.n_targets, cfg.batch)):
            groups = (perm[:, start : start + cfg.batch] // per_group).clamp_max(cfg.n_groups - 1)
            n = groups.shape[1]
            real = (sample_targets(r, target_mask, group_mean, group_std, groups, gens) if fixed is None
                    else fixed[torch.arange(b, device=dev)[:, None], perm[:, start : start + cfg.batch]])
            with torch.no_grad():
                fake = generator(n, gens)
            opt_d.zero_grad(set_to_none=True)
            # real and fake in one graph on CUDA (same values, half the launches); on CPU two calls, which
            # measured 1.2-1.8x faster there (bigger grouped convolutions, repeated weights)
            if real.is_cuda and hasattr(discriminator, "pair"):
                d_real, d_fake = discriminator.pair(real, fake)
            else:
                d_real, d_fake = discriminator(real), discriminator(fake)
            d_loss = -d_real.mean(1) + d_fake.mean(1)  # (B,)
            d_loss.sum().backward()
            opt_d.step()
            with torch.no_grad():
                for p in discriminator.parameters():
                    p.clamp_(-cfg.clip, cfg.clip)
            d_losses.append(d_loss.detach())
            tick("wgan_critic")
            if i % cfg.critic == 0:
                opt_g.zero_grad(set_to_none=True)
                g_loss = -discriminator(generator(n, gens)).mean(1)
                g_loss.sum().backward()
                opt_g.step()
                g_losses.append(g_loss.detach())
                tick("wgan_generator")
    return WGANResult(
        generator.lam().detach(), generator.mean.detach(), generator.std.detach(),
        torch.stack(d_losses) if d_losses else torch.zeros(0, b), torch.stack(g_losses) if g_losses else torch.zeros(0, b),
    )


class WGANFit(pl.LightningModule):
    """Lightning wrapper of :func:`fit_wgan` for users who drive stage 2 with a ``Trainer``: the whole
    batched fit is one ``training_step`` (manual optimisation), the result is kept in ``self.result``.

    >>> module = WGANFit(generator, discriminator, r, target_mask, cfg)
    >>> pl.Trainer(max_epochs=1, limit_train_batches=1).fit(module, [0]); module.result.mask
    """

    def __init__(self, generator: MaskGenerator, discriminator: nn.Module, r: torch.Tensor,
                 target_mask: torch.Tensor, cfg: WGANConfig = WGANConfig(), gens: Generators = None) -> None:  # noqa: B008
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.r, self.target_mask, self.cfg, self.gens = r, target_mask, cfg, gens
        self.result: WGANResult | None = None

    def training_step(self, *_: object) -> None:
        with torch.enable_grad():
            self.result = fit_wgan(self.generator, self.discriminator, self.r, self.target_mask, self.cfg, self.gens)

    def configure_optimizers(self) -> None:
        return None
