"""InputIBA (Khakzar et al., NeurIPS 2021; ch. 6 of Khakzar's dissertation), batched over images.

Three stages, all images of a batch in one graph, each image with its own parameters:

1. **Feature bottleneck** (sec. 3.1, eq. 1/4): Per-Sample IBA at a deep layer (``layer``, VGG-16 conv4_1
   ``features.17`` by default) from :mod:`xattr.methods.iba` (its ``fit`` estimates / caches the feature
   statistics); gives ``lambda*`` and the per-feature capacity (KL) ``M``.
2. **Input bottleneck Z_G by a WGAN** (sec. 3.3, eq. 3): a generator of learnable input mask, noise mean
   and std is fitted so that ``f(Z_G)`` matches samples of ``P(Z*)`` (:mod:`.wgan`).
3. **Input bottleneck Z_I** (sec. 3.2, Prop. 3, eq. 4): ``min CE + beta KL[P(Z_I|I) || P(Z_I)]`` with the
   prior conditioned on ``lambda_G`` (:mod:`.input_bottleneck`).

The map is ``Lambda* = sigmoid(alpha)`` averaged over the colour channels, ``(B, 1, H, W)`` in [0, 1].
:meth:`InputIBA.explain` returns the three stages' maps as auxiliaries ``stages/feature`` (the feature
bottleneck's capacity, bits per pixel, as IBA's heatmap), ``stages/generator`` (``lambda_G`` channel mean)
and ``stages/input`` (the final map), which :func:`xattr.viz.input_iba_figure.stage_figure` draws side by
side (Fig. 1 of ch. 6), and the seconds each stage took per image (the group's time divided by its
images): ``timing/feature``, ``timing/wgan``, ``timing/input``, which add up to ``timing/total`` (the whole
group, timed on its own), and the WGAN's two parts ``timing/wgan_critic`` (discriminator steps, with their
target and generator samples) and ``timing/wgan_generator`` (generator steps), which add up to
``timing/wgan`` less the set-up of the generator and discriminators.

Defaults are the reference code's (CAMP-eXplain-AI/InputIBA @5f03549e, ../shared/REFERENCE.md): feature
beta 20 (paper text: 10), 10 steps, lr 1, 10 copies, alpha init 5, no feature smoothing; generator mask
logits initialised with the feature map (bits per pixel) resized to the input; WGAN as in :mod:`.wgan`;
input beta 20, 60 steps, lr 1, 10 copies, smoothing sigma 1, input prior N(0, 1).
Departures: randomness per image (seeded from ``seed`` and the image's bytes), so an image gets the same
map alone or in a batch; the WGAN targets are drawn afresh per minibatch (see :mod:`.wgan`).
Speed: on a CPU the network's passes (the generator's samples, the input stage's noisy copies) run in
channels-last pieces of ``chunk: auto``'s rows (:attr:`InputIBA.cpu_pieces`; issue 31: the WGAN stage went
from 43% to 68% of the rate of plain batched passes of the same networks, docs/speed.md).

>>> method = InputIBA(vgg, layer="features.17"); method.fit(estimation_loader, cache_dir)
>>> maps = method.attribute(x, target)                        # (B, 1, H, W)
>>> method.explain(x, target).group("stages")["generator"]    # (B, 1, H, W)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from xattr.core.checks import bad, check_positive, check_positive_int
from xattr.core.chunk import check_chunk, in_pieces, items_per_call, resolve_chunk
from xattr.core.hooks import capture, frozen
from xattr.core.layers import resolve
from xattr.core.seeding import image_generators
from xattr.errors import XattrConfigError, unknown
from xattr.methods.base import Attribution, Explanation, with_prefix
from xattr.methods.iba import Bottleneck, PerSampleIBA, optimize_alpha, to_bits_map
from xattr.methods.iba.bottleneck import cross_entropy_loss
from xattr.methods.input_iba.input_bottleneck import InputBottleneck
from xattr.methods.input_iba.wgan import (
    ConvDiscriminators,
    MaskGenerator,
    WGANConfig,
    WGANResult,
    fit_wgan,
)

TARGET_MASKS = ("capacity", "lambda")


class InputIBA(Attribution):
    """InputIBA for image classifiers (see the module docstring).

    Args:
        model: classifier on normalised images ``(B, C, H, W)``.
        layer: feature bottleneck layer (paper name or module path).
        feat_beta, feat_steps, feat_lr, feat_copies, feat_sigma: stage 1 (Per-Sample IBA).
        epochs, n_targets, n_groups, gan_batch, critic, lr_disc, lr_mask, lr_mean, lr_std, clip: stage 2
            (:class:`~xattr.methods.input_iba.wgan.WGANConfig`; ``gan_batch`` is the WGAN's minibatch of
            target samples, a hyper-parameter of the reference that changes results, not a memory knob).
        target_mask: ``capacity`` (the reference code: raw KL as the mask of the target samples) or
            ``lambda`` (``lambda*``, the paper's ``Z* = lambda* R + (1 - lambda*) eps``).
        beta, steps, lr, copies, sigma: stage 3; ``input_mean``, ``input_std``: its noise ``N(mu_I, sigma_I^2)``.
        init_alpha: alpha initialisation (both bottlenecks).
        seed: per-image noise seed; None: the global RNG.
        chunk: forward passes per device call (memory knob): images are processed in groups of
            ``max(1, chunk // max(copies, feat_copies))``; None: the whole batch; ``auto``: sized for the
            device (:mod:`xattr.core.chunk`). Never changes the result.
        n_samples, model_name, weights, dataset, statistics, tail: passed to the feature IBA (statistics
            and cache; ``statistics``: a statistics file used instead of estimating).
    """

    name = "input_iba"
    paper = "Khakzar et al., NeurIPS 2021"
    memory_knob = "chunk"
    #: on a CPU, run the network (the WGAN's generator samples, the input stage's noisy copies) in pieces of
    #: ``chunk: auto``'s CPU rows (:func:`xattr.core.chunk.resolve_chunk`: 13 rows at 224 px), channels-last:
    #: oneDNN's NHWC kernels on cache-sized pieces ran EfficientNet-Lite0's first blocks ~3x faster a row than
    #: one NCHW call on all 224 rows (docs/speed.md, InputIBA). An int: that many rows a piece. False: one
    #: call on the whole batch, as before issue 31 (the tests compare the two). Never changes the result
    #: beyond float rounding: the frozen network sees each row alone (eval-mode BatchNorm).
    cpu_pieces: bool | int = True
    #: the stages' passes the network's head does not see: the WGAN's generator samples run the network only
    #: up to the feature layer (counted as full forwards in :meth:`forwards_per_image`, an upper bound)
    head_free_stages = ("wgan",)

    def forwards_by_stage(self, shape: tuple[int, ...]) -> dict[str, float]:
        """Forward equivalents per image of each stage: ``feature`` (the feature IBA's), ``wgan`` (per epoch and
        minibatch of ``gan_batch`` target samples: the critic's fake samples without gradient, and on every
        ``critic``-th minibatch the generator's, forward and backward) and ``input`` (``steps`` x ``copies``
        noisy inputs, forward and backward)."""
        gan = self.gan
        starts = range(0, gan.n_targets, gan.batch)
        gen_rows = sum(min(gan.batch, gan.n_targets - s) for i, s in enumerate(starts) if i % gan.critic == 0)
        return {"feature": self.feature_iba.forwards_per_image(shape),
                "wgan": float(gan.epochs * (gan.n_targets + 3 * gen_rows)),
                "input": 3.0 * self.steps * self.copies}

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: the sum of :meth:`forwards_by_stage` (the WGAN's passes stop at the feature layer, so the
        real time is lower by the rest of the network's share of them)."""
        return float(sum(self.forwards_by_stage(shape).values()))


    def __init__(
        self, model: nn.Module, layer: str = "features.17", *,
        feat_beta: float = 20.0, feat_steps: int = 10, feat_lr: float = 1.0, feat_copies: int = 10,
        feat_sigma: float | None = None,
        epochs: int = 20, n_targets: int = 200, n_groups: int = 10, gan_batch: int = 32, critic: int = 5,
        lr_disc: float = 5e-5, lr_mask: float = 0.003, lr_mean: float = 0.1, lr_std: float = 0.05,
        clip: float = 0.01, target_mask: str = "capacity",
        beta: float = 20.0, steps: int = 60, lr: float = 1.0, copies: int = 10, sigma: float | None = 1.0,
        input_mean: float = 0.0, input_std: float = 1.0, init_alpha: float = 5.0,
        seed: int | None = 0, chunk: int | str | None = None, n_samples: int = 1000,
        model_name: str | None = None, weights: str | None = None, dataset: str | None = None, tail: str = "auto",
        statistics: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(model)
        if target_mask not in TARGET_MASKS:
            raise unknown("target mask", target_mask, TARGET_MASKS)
        for kind, value in (("feat_steps", feat_steps), ("feat_copies", feat_copies), ("epochs", epochs),
                            ("n_targets", n_targets), ("n_groups", n_groups), ("gan_batch", gan_batch),
                            ("critic", critic), ("steps", steps), ("copies", copies), ("n_samples", n_samples)):
            check_positive_int(kind, value)
        for kind, value in (("feat_beta", feat_beta), ("feat_lr", feat_lr), ("lr_disc", lr_disc), ("lr_mask", lr_mask),
                            ("lr_mean", lr_mean), ("lr_std", lr_std), ("clip", clip), ("beta", beta), ("lr", lr)):
            check_positive(kind, value)
        if n_targets < n_groups:
            raise bad("n_targets", n_targets, f"an integer >= n_groups ({n_groups})")
        self.layer = layer
        self.module = resolve(model, layer).module
        self.feature_iba = self._make_feature_iba(
            layer=layer, beta=feat_beta, steps=feat_steps, lr=feat_lr, copies=feat_copies, sigma=feat_sigma,
            init_alpha=init_alpha, seed=seed, n_samples=n_samples, model_name=model_name, weights=weights,
            dataset=dataset, tail=tail, statistics=statistics,
        )  # fmt: skip
        #: a vision transformer's token layer (:mod:`xattr.core.tokens`): the WGAN sees its patch grid
        self.layout = self.feature_iba.layouts.get(layer)
        self.gan = WGANConfig(epochs, n_targets, n_groups, gan_batch, critic, lr_disc, lr_mask, lr_mean, lr_std, clip)
        self.target_mask = target_mask
        self.beta, self.steps, self.lr, self.copies, self.sigma = float(beta), int(steps), float(lr), int(copies), sigma
        self.input_mean, self.input_std, self.init_alpha = input_mean, input_std, float(init_alpha)
        self.seed = seed
        self.chunk = check_chunk(chunk)

    # ------------------------------------------------------------------------------------- hooks per domain

    def _make_feature_iba(self, **kw) -> PerSampleIBA:
        return PerSampleIBA(self.model, **kw)

    def _grid(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A token layer's output as its patch grid ``(B, C, h, w)`` (special tokens dropped); else as is."""
        return t if self.layout is None else self.layout.to_grid(t, tuple(x.shape[-2:]))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` at the bottleneck layer (a token layer: its patch grid), detached."""
        with torch.no_grad():
            return self._grid(capture(self.model, self.module, x).detach(), x)

    def _head(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``z -> f(z)`` with gradients (the classifier up to the bottleneck layer; a token layer: its grid),
        on a CPU in pieces (:attr:`cpu_pieces`)."""
        return lambda z: self._grid(self._pieces(lambda t: capture(self.model, self.module, t), z), x)

    def _pieces(self, fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """``fn(z)``, on a CPU in pieces (:attr:`cpu_pieces`, channels-last); elsewhere in one call."""
        if z.device.type != "cpu" or self.cpu_pieces is False:
            return fn(z)
        rows = resolve_chunk("auto", self.model, z[:1]) if self.cpu_pieces is True else int(self.cpu_pieces)
        return in_pieces(fn, z, rows)

    def _mask_init(self, kl: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Generator mask logits: the feature map (bits per pixel) resized to ``x`` (reference)."""
        return to_bits_map(kl, tuple(x.shape[-2:])).expand_as(x)

    def _discriminator(self, r: torch.Tensor, x: torch.Tensor, gens) -> nn.Module:
        if r.dim() != 4:
            raise XattrConfigError(f"the image discriminator needs a (B, C, h, w) feature; layer {self.layer!r} gives {tuple(r.shape)}")
        return ConvDiscriminators(r.shape[0], r.shape[1:], gens, r.device)

    def _noise_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[1],) + (1,) * (x.dim() - 2)

    def _stage3(self, x: torch.Tensor, lam_g: torch.Tensor) -> tuple[torch.Tensor, Callable, Bottleneck]:
        """(input of the bottleneck, tail, bottleneck) for stage 3."""
        return (x.detach(), lambda z: self._pieces(self.model, z),
                InputBottleneck(lam_g, self.input_mean, self.input_std, self.sigma))

    def _maps(self, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return lam.mean(1, keepdim=True)

    def _stage_maps(self, kl: torch.Tensor, lam_g: torch.Tensor, final: torch.Tensor, x: torch.Tensor) -> dict:
        return {"feature": to_bits_map(kl, tuple(x.shape[-2:])), "generator": lam_g.mean(1, keepdim=True), "input": final}

    # ------------------------------------------------------------------------------------- API

    def fit_forwards(self, n_images: int, cache_dir: Path | None = None) -> float:
        """Cost rule of :meth:`fit`: the feature IBA's statistics."""
        return self.feature_iba.fit_forwards(n_images, cache_dir)

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """Feature statistics at ``layer`` (delegated to the Per-Sample IBA, cached in ``cache_dir``)."""
        self.feature_iba.fit(loader, cache_dir)

    def set_statistics(self, stats) -> None:
        self.feature_iba.set_statistics(stats)

    @property
    def statistics(self) -> str | None:
        """The feature IBA's statistics file (``xattr.fit(input_iba, "<stats.pt>")`` sets it here)."""
        return self.feature_iba.statistics

    @statistics.setter
    def statistics(self, path: str | None) -> None:
        self.feature_iba.statistics = path

    def _gens(self, x: torch.Tensor, stage: int):
        return image_generators(x, None if self.seed is None else self.seed + 1000 * stage)

    def images_per_group(self, x: torch.Tensor) -> int:
        """Images processed in one graph for the batch ``x`` (``chunk`` forwards per device call, the larger
        of ``copies`` and ``feat_copies`` rows per image; :func:`xattr.core.chunk.items_per_call`)."""
        chunk = resolve_chunk(self.chunk, self.model, x[:1], backward=True)
        return items_per_call(x.shape[0], max(self.copies, self.feature_iba.copies), chunk)

    def wgan_stage(self, x: torch.Tensor, r: torch.Tensor, kl: torch.Tensor, m: torch.Tensor,
                   clock: Callable[[str], None] | None = None) -> WGANResult:
        """Stage 2 for the images ``x`` (their features ``r``, the feature bottleneck's capacity ``kl`` and the
        targets' mask ``m``): the generator and one discriminator per image fitted by :func:`fit_wgan`. Call
        it with the model frozen and gradients on, as :meth:`explain` does (``scripts/bench_input_iba.py``
        times and counts it alone)."""
        gens = self._gens(x, 2)
        xin = x if x.is_floating_point() else self.model.embed(x).detach()
        generator = MaskGenerator(xin, self._head(x), self._mask_init(kl, xin), self._noise_shape(xin))
        return fit_wgan(generator, self._discriminator(r, x, gens), r, m, self.gan, gens, clock=clock)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._explain(x, target, frozenset()).maps

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        group = self.images_per_group(x)
        parts = [self._explain_group(x[i : i + group], target[i : i + group]) for i in range(0, x.shape[0], group)]
        return Explanation.cat(parts)

    def _explain_group(self, x: torch.Tensor, target: torch.Tensor) -> Explanation:
        timings: dict[str, float] = {}
        clock = _Clock(x.device, timings)
        start = clock.t
        # stage 1: feature bottleneck (Per-Sample IBA)
        feat = self.feature_iba.optimize(x, target)
        r = self._features(x)
        kl = self.feature_iba.kl_grid(feat.kl, x)  # a token layer: the patch tokens' KL on the grid
        m = kl if self.target_mask == "capacity" else self.feature_iba.kl_grid(torch.sigmoid(feat.alpha), x)
        clock("feature")
        with frozen(self.model), torch.enable_grad():
            lam_g = self.wgan_stage(x, r, kl, m, clock).mask  # stage 2: the WGAN fit of Z_G
            clock("wgan")
            timings["wgan"] += timings.get("wgan_critic", 0.0) + timings.get("wgan_generator", 0.0)
            # stage 3: input bottleneck with the prior of Proposition 3
            inp, tail, bn = self._stage3(x, lam_g)
            res = optimize_alpha(
                tail, inp, bn.to(inp.device), cross_entropy_loss(target), beta=self.beta, steps=self.steps,
                lr=self.lr, copies=self.copies, init_alpha=self.init_alpha, generators=self._gens(x, 3),
                desc="InputIBA input bottleneck",
            )  # fmt: skip
        final = self._maps(torch.sigmoid(res.alpha), x)
        clock("input")
        timings["total"] = clock.t - start
        per_image = {k: torch.full((x.shape[0],), v / x.shape[0], device=x.device) for k, v in timings.items()}
        return Explanation(final, {**with_prefix("stages", self._stage_maps(kl, lam_g, final, x)),
                                   **with_prefix("timing", per_image)})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r}, beta={self.beta}, epochs={self.gan.epochs})"


class _Clock:
    """Adds the seconds since the previous call to ``timings[stage]`` (synchronising CUDA first)."""

    def __init__(self, device: torch.device, timings: dict[str, float]) -> None:
        self.device, self.timings = device, timings
        self.t = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = self._now()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.t
        self.t = now
