"""The information bottleneck of IBA, reusable: the noise layer, its closed-form KL and the batched
per-sample optimisation of alpha.

Schulz et al., "Restricting the Flow: Information Bottlenecks for Attribution", ICLR 2020, sec. 3:

- eq. 2: ``z = lambda * r + (1 - lambda) * eps``, ``eps ~ N(mu_R, sigma_R^2)`` (per neuron);
- eq. 7: ``lambda = blur(sigma_s, sigmoid(alpha))``;
- eq. 5: ``L_I = E_R[KL(P(Z|R) || Q(Z))]`` with ``Q(Z) = N(mu_R, sigma_R^2)``, in closed form per
  feature (see :func:`kl_divergence`);
- eq. 6: ``L = L_CE + beta * L_I``, Adam, lr 1, 10 steps, 10 noisy copies, alpha initialised to 5.

Parity with the authors' code (BioroboticsLab/IBA @7b2fbd53, ../shared/REFERENCE.md): the 0/1
active-neuron mask multiplies both the KL and ``z``; the std is floored at ``min_std``; ``z`` is
clamped at 0 when ``relu`` (post-ReLU layer); ``L_I`` is the *mean* over C, h, w (so ``beta = 10`` is the
paper's ``beta = 10 / k``); the heatmap is the KL of the last forward pass (before the last Adam step).

Reuse (InputIBA builds on this file): subclass :class:`Bottleneck` and override :meth:`Bottleneck.kl`
(and/or :meth:`Bottleneck.sample`), then call :func:`optimize_alpha` with any ``tail`` callable mapping
``z`` ``(B * copies, C, h, w)`` to outputs ``(B * copies, K)`` and a per-image ``model_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from xattr.core.progress import progress
from xattr.core.seeding import draw_noise
from xattr.errors import XattrConfigError, unknown


def kl_divergence(r: torch.Tensor, lam: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-feature ``KL(P(Z|R=r) || Q(Z))`` in nats (eq. 5, closed form of two normals).

    ``P(Z|r) = N(lam * r + (1 - lam) * mu, (1 - lam)^2 sigma^2)`` and ``Q = N(mu, sigma^2)``; in units
    normalised by ``r_n = (r - mu) / sigma``:
    ``KL = -0.5 * (1 + log((1 - lam)^2) - (lam * r_n)^2 - (1 - lam)^2)``.
    The variance is floored at 1e-12 so that ``lam == 1`` (float rounding of ``sigmoid``) stays finite.
    Shapes broadcast; returns the broadcast shape.
    """
    r_norm = (r - mean) / std
    var_z = (1 - lam) ** 2
    log_var_z = torch.log(var_z.clamp_min(1e-12))
    return -0.5 * (1 + log_var_z - (lam * r_norm) ** 2 - var_z)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """2-d Gaussian ``(k, k)``, ``k = round(2 sigma) * 2 + 1`` (the reference's size), summing to 1."""
    k = int(round(2 * sigma)) * 2 + 1
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g2 = torch.outer(g, g)
    return (g2 / g2.sum()).float()


class Smoothing(nn.Module):
    """Depth-wise Gaussian blur with reflection padding (eq. 7's ``blur``); identity for ``sigma`` <= 0.

    Maps smaller than the padding (reflection impossible) are padded by replication instead.
    """

    def __init__(self, sigma: float | None) -> None:
        super().__init__()
        self.sigma = float(sigma or 0.0)
        kernel = gaussian_kernel(self.sigma) if self.sigma > 0 else torch.ones(1, 1)
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    def forward(self, m: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        if self.sigma <= 0:
            return m
        b, c, h, w = m.shape
        pad = self.kernel.shape[-1] // 2
        mode = "reflect" if pad < min(h, w) else "replicate"
        flat = F.pad(m.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode=mode)
        return F.conv2d(flat, self.kernel.to(m.dtype)).reshape(b, c, h, w)


class Bottleneck(nn.Module):
    """The noise layer with a fitted prior ``N(mean, std^2)`` per neuron.

    Args:
        mean, std: ``(C, h, w)`` (or broadcastable) feature statistics; ``std`` is floored at ``min_std``.
        active: 0/1 mask of active neurons (multiplies KL and ``z``); ``None``: all active.
        sigma: smoothing of ``sigmoid(alpha)`` (eq. 7); 0 or ``None``: none.
        relu: clamp ``z`` at 0 (when the hooked layer's output is post-ReLU).
        min_std: floor of the std.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        active: torch.Tensor | None = None,
        sigma: float | None = 1.0,
        relu: bool = False,
        min_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().float())
        self.register_buffer("std", std.detach().float().clamp_min(min_std))
        act = torch.ones_like(self.mean) if active is None else active.detach().float()
        self.register_buffer("active", act)
        self.smooth = Smoothing(sigma)
        self.relu = relu

    def lam(self, alpha: torch.Tensor) -> torch.Tensor:
        """``lambda = blur(sigma_s, sigmoid(alpha))`` (eq. 7), ``(B, C, h, w)``."""
        return self.smooth(torch.sigmoid(alpha))

    def kl(self, r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Per-feature KL in nats, masked by the active neurons, ``(B, C, h, w)``."""
        return kl_divergence(r, lam, self.mean, self.std) * self.active

    def sample(self, r: torch.Tensor, lam: torch.Tensor, eps: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """``z = lam r + (1 - lam) eps'`` (eq. 2) with ``eps' = mean + std * eps`` and ``eps`` standard normal.

        ``inverse``: Inverse IBA's ``z_inv = lam eps' + (1 - lam) r`` (ch. 8, sec. 2.1). Shapes: ``r`` and
        ``lam`` ``(B, 1, C, h, w)`` or ``(B, C, h, w)``, ``eps`` broadcastable to the output.
        """
        noise = self.mean + self.std * eps
        z = lam * noise + (1 - lam) * r if inverse else lam * r + (1 - lam) * noise
        z = z * self.active
        return z.clamp_min(0) if self.relu else z


class TokenBottleneck(Bottleneck):
    """The bottleneck on a vision transformer's token output (:mod:`xattr.core.tokens`): one alpha, mean and
    std per (token, channel), so the noise, the KL (eq. 5) and ``z`` (eq. 2) are the image case's,
    element-wise. Only the smoothing of eq. 7 needs the grid: ``sigmoid(alpha)`` of the patch tokens is
    blurred on the patch grid ``(B, C, h, w)``; the special tokens (class, distillation, registers) are not
    blurred (they have no place on the grid). ``image_hw``: the input's size (the grid's aspect ratio).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, active: torch.Tensor | None = None,
                 sigma: float | None = 1.0, relu: bool = False, min_std: float = 0.01, *, layout,
                 image_hw: tuple[int, int] | None = None) -> None:
        super().__init__(mean, std, active, sigma, relu, min_std)
        self.layout, self.image_hw = layout, image_hw

    def lam(self, alpha: torch.Tensor) -> torch.Tensor:
        lam = torch.sigmoid(alpha)
        if self.smooth.sigma <= 0:
            return lam
        grid = self.smooth(self.layout.to_grid(lam, self.image_hw))
        return self.layout.grid_to_tokens(grid, self.layout.special(lam))


# --------------------------------------------------------------------------------------- heatmaps


RESIZES = ("bilinear", "reference")


def _mirror(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices reflected about the edge pixels' centres (numpy ``reflect`` / ndimage ``mirror``: -1 -> 1)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = i.abs().remainder(period)
    return torch.where(j < n, j, period - j)


def _resize_reference(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``skimage.transform.resize(m, size, order=1, mode='reflect', anti_aliasing=False)`` per map of
    ``(B, C, h, w)``, batched on ``m``'s device: separable linear interpolation at the pixel-centre
    coordinates ``(o + 0.5) * in / out - 0.5`` (scipy ``zoom(grid_mode=True)``), out-of-range neighbours
    reflected about the edge pixels (skimage's ``reflect`` = ndimage's ``mirror``), computed in float64,
    then clipped to each map's input range (skimage's ``clip=True``)."""
    out = m.double()
    for dim, (n_in, n_out) in ((2, (m.shape[2], size[0])), (3, (m.shape[3], size[1]))):
        if n_in == n_out:
            continue
        s = (torch.arange(n_out, dtype=torch.float64, device=m.device) + 0.5) * (n_in / n_out) - 0.5
        i0 = torch.floor(s)
        frac = (s - i0).view([-1 if d == dim else 1 for d in range(4)])
        i0 = i0.long()
        a, b = out.index_select(dim, _mirror(i0, n_in)), out.index_select(dim, _mirror(i0 + 1, n_in))
        out = a + (b - a) * frac
    lo, hi = m.double().amin((2, 3), keepdim=True), m.double().amax((2, 3), keepdim=True)
    return torch.minimum(torch.maximum(out, lo), hi).to(m.dtype)


def to_bits_map(kl: torch.Tensor, size: tuple[int, int], resize: str = "bilinear") -> torch.Tensor:
    """Per-feature KL ``(B, C, h, w)`` in nats -> bits per input pixel ``(B, 1, H, W)``.

    Channel sum (NaN-safe), divided by ln 2, times ``(h w) / (H W)``, resized to ``size`` (the reference's
    "saliency" mode), so the map's sum over pixels approximates the layer's total bits. ``resize``:
    ``reference`` = the reference's ``skimage.transform.resize(order=1, mode='reflect')`` (BioroboticsLab/IBA
    @7b2fbd53; the IBA classes' default), ``bilinear`` = ``F.interpolate(mode='bilinear',
    align_corners=False)`` (edges clamped); the two differ only in the border pixels.
    """
    if resize not in RESIZES:
        raise unknown("resize", resize, RESIZES)
    h, w = kl.shape[-2:]
    m = torch.nansum(kl.float(), dim=1, keepdim=True) / math.log(2) * (h * w) / (size[0] * size[1])
    if (h, w) == tuple(size):
        return m
    if resize == "reference":
        return _resize_reference(m, tuple(size))
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------- optimisation

ModelLoss = Callable[[torch.Tensor], torch.Tensor]
"""``outputs (B, copies, K) -> (B,)`` per-image loss (averaged over the copies)."""


@dataclass
class AlphaResult:
    """What :func:`optimize_alpha` returns (all detached).

    ``alpha`` ``(B, C, h, w)`` after the last step; ``kl`` ``(B, C, h, w)`` nats of the last forward pass
    (the reference's heatmap); ``outputs`` ``(B, copies, K)`` of the last forward pass; ``losses``
    ``(steps, B)`` model-loss per step and ``info`` ``(steps, B)`` mean KL per step; ``first_kl`` and
    ``first_outputs``: the same of the first forward pass (alpha = ``init_alpha``, the untrained bottleneck).
    """

    alpha: torch.Tensor
    kl: torch.Tensor
    outputs: torch.Tensor
    losses: torch.Tensor
    info: torch.Tensor
    first_kl: torch.Tensor | None = None
    first_outputs: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[AlphaResult]) -> AlphaResult:
        """Concatenate the results of consecutive groups of images (per-step fields on axis 1)."""
        def join(f: str, dim: int = 0):
            vals = [getattr(p, f) for p in parts]
            return None if any(v is None for v in vals) else torch.cat(vals, dim)

        return AlphaResult(join("alpha"), join("kl"), join("outputs"), join("losses", 1), join("info", 1),
                           join("first_kl"), join("first_outputs"))


def optimize_alpha(
    tail: Callable[[torch.Tensor], torch.Tensor],
    r: torch.Tensor,
    bottleneck: Bottleneck,
    model_loss: ModelLoss,
    *,
    beta: float = 10.0,
    steps: int = 10,
    lr: float = 1.0,
    copies: int = 10,
    init_alpha: float = 5.0,
    inverse: bool = False,
    generators: Sequence[torch.Generator] | None = None,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "IBA steps",
) -> AlphaResult:
    """Per-sample bottleneck: optimise one alpha per image, all images and copies in one graph.

    Per step: ``lam = bottleneck.lam(alpha)``, ``z`` for ``copies`` noisy copies of each image
    (``(B * copies, C, h, w)``, image-major), ``outputs = tail(z)``, loss per image
    ``model_loss + beta * mean_{C,h,w} KL`` (Inverse IBA: ``-model_loss + beta * KL``, eq. 4 of ch. 8),
    summed over images so each alpha gets its single-image gradient (Adam is per element, hence
    batched == one at a time exactly up to float rounding).

    Args:
        tail: the network after the bottleneck (``z -> outputs``), parameters frozen by the caller.
        r: ``(B, C, h, w)`` feature (detached) at the bottleneck.
        bottleneck: prior, smoothing, KL and sampling.
        model_loss: ``outputs (B, copies, K) -> (B,)``.
        generators: one per image for seed-identical noise; ``None``: the global RNG.
        autocast_dtype: e.g. ``torch.bfloat16`` to run ``tail`` under autocast (alpha, KL stay fp32).
    """
    if steps < 1 or copies < 1:
        raise XattrConfigError(f"steps and copies must be >= 1; got steps={steps}, copies={copies}")
    r = r.detach().float()
    b = r.shape[0]
    alpha = torch.full_like(r, float(init_alpha), requires_grad=True)
    opt = torch.optim.Adam([alpha], lr=lr)
    losses, infos = [], []
    kl = outputs = first_kl = first_outputs = None
    dev = r.device
    for step in progress(range(steps), desc=desc, unit="step"):
        opt.zero_grad(set_to_none=True)
        lam = bottleneck.lam(alpha)  # (B, C, h, w)
        kl = bottleneck.kl(r, lam)
        eps = draw_noise((copies, *r.shape[1:]), b, generators, dev)  # (B, copies, C, h, w)
        z = bottleneck.sample(r[:, None], lam[:, None], eps, inverse=inverse).flatten(0, 1)
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = tail(z)
        outputs = out.float().reshape(b, copies, *out.shape[1:])
        ml = model_loss(outputs)  # (B,)
        info = kl.flatten(1).mean(1)  # (B,)
        per_image = (-ml if inverse else ml) + beta * info
        per_image.sum().backward()
        opt.step()
        if step == 0:
            first_kl, first_outputs = kl.detach(), outputs.detach()
        losses.append(ml.detach())
        infos.append(info.detach())
    return AlphaResult(
        alpha=alpha.detach(),
        kl=kl.detach(),
        outputs=outputs.detach(),
        losses=torch.stack(losses),
        info=torch.stack(infos),
        first_kl=first_kl,
        first_outputs=first_outputs,
    )


def cross_entropy_loss(target: torch.Tensor) -> ModelLoss:
    """Softmax cross-entropy of ``target`` ``(B,)``, averaged over the copies (the paper's L_CE)."""

    def loss(outputs: torch.Tensor) -> torch.Tensor:  # (B, copies, K)
        logp = torch.log_softmax(outputs, dim=-1)
        idx = target.view(-1, 1, 1).expand(-1, outputs.shape[1], 1)
        return -logp.gather(-1, idx).squeeze(-1).mean(1)

    return loss


def bce_loss(target: torch.Tensor) -> ModelLoss:
    """Binary cross-entropy with logits against the one-hot ``target`` (multi-label heads, CheXplain)."""

    def loss(outputs: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(target, outputs.shape[-1]).float()[:, None].expand_as(outputs)
        return F.binary_cross_entropy_with_logits(outputs, onehot, reduction="none").flatten(1).mean(1)

    return loss


MODEL_LOSSES = {"ce": cross_entropy_loss, "bce": bce_loss}
