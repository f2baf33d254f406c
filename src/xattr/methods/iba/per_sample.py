"""Per-Sample IBA (Schulz et al., "Restricting the Flow", ICLR 2020, sec. 3.2 and appendix F).

One alpha ``(B, C, h, w)`` per image, all images x ``copies`` noisy copies in one graph; the layers
before the bottleneck run once (:class:`~xattr.methods.iba.tail.NetworkTail`), only the tail per step.
Heatmap: per-feature KL (eq. 5) of the last forward pass, channel sum, in bits per input pixel.

Vision transformers (docs/transformers.md): at a token layer (:func:`xattr.core.tokens.token_layout`) alpha
is ``(B, N, C)``, one per (token, channel), special tokens included: the class token is bottlenecked like
every patch (left open, it would carry the image's information past the bottleneck), its KL counts in
``L_I``, but it has no place on the image, so the heatmap is the patch tokens' KL on the patch grid and the
class token's bits are returned as ``bottleneck/cls_bits``. Eq. 7's blur acts on the patch grid only.

Auxiliary results (:meth:`PerSampleIBA.explain`), at no extra cost: the Table 1 scores of the optimised
bottleneck (``bottleneck/info_per_k``, ``bottleneck/top1``, ``bottleneck/top5``) and of the untrained one
(``bottleneck/initial_*``: the first forward pass of the optimisation, at alpha = ``init_alpha``).

Departures from the reference code (BioroboticsLab/IBA @7b2fbd53), all with the reference as default:
noise is drawn per image from a generator seeded by ``seed`` and the image's bytes (so an image gets the
same heatmap alone or in a batch; ``seed: null`` uses the global RNG); the tail is run on the copies
only (same values); ``autocast: bf16`` runs the tail in bfloat16 (GPU speed option, off by default).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from xattr.core.checks import bad, check_positive, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.hooks import frozen
from xattr.core.layers import resolve
from xattr.core.seeding import image_generators
from xattr.core.tokens import token_layout
from xattr.errors import XattrConfigError, unknown
from xattr.methods.base import Attribution, Explanation, with_prefix
from xattr.methods.iba import statistics as st
from xattr.methods.iba.bottleneck import (
    MODEL_LOSSES,
    RESIZES,
    AlphaResult,
    Bottleneck,
    ModelLoss,
    TokenBottleneck,
    optimize_alpha,
    to_bits_map,
)
from xattr.methods.iba.tail import TAIL_MODES, NetworkTail

AUTOCAST = {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class IBABase(Attribution):
    """Feature statistics (``fit``) and the bottleneck for one or more layers; shared by the IBA family.

    Args:
        model: the network; ``layers``: the layers needing statistics.
        n_samples: images used to estimate the statistics (reference: 10 000; warns under 1 000).
        min_std, active_threshold, sigma, relu: see :class:`~xattr.methods.iba.bottleneck.Bottleneck`.
        resize: how the heatmap reaches the input size: ``reference`` (skimage's linear resize with
            reflection at the border, as BioroboticsLab/IBA) or ``bilinear`` (``F.interpolate``, edges clamped);
            see :func:`~xattr.methods.iba.bottleneck.to_bits_map`.
        model_name, weights, dataset: shown in the statistics cache's file name (config interpolations
            such as ``${model.name}``); the file name also holds a hash of the weights.
        statistics: a statistics file to use instead of estimating (``fit`` then reads no data); it must
            match the model's weights (e.g. ``assets/stats/`` files shipped for the demo).
    """

    def __init__(
        self, model: nn.Module, layers: list[str], *, n_samples: int = 10_000, min_std: float = 0.01,
        active_threshold: float = 0.01, sigma: float | None = 1.0, relu: bool = False,
        model_name: str | None = None, weights: str | None = None, dataset: str | None = None, resize: str = "reference",
        statistics: str | Path | None = None,
    ) -> None:
        super().__init__(model)
        if resize not in RESIZES:
            raise unknown("resize", resize, RESIZES)
        self.resize = resize
        #: resolved once (a bad name fails here, with the valid choices)
        self.resolved = {name: resolve(model, name) for name in layers}
        self.layers = list(layers)
        #: the token-grid layout of each layer (vision transformers, :mod:`xattr.core.tokens`); None: a map
        self.layouts = {name: token_layout(model, r.path) for name, r in self.resolved.items()}
        self.n_samples = check_positive_int("n_samples", n_samples)
        if isinstance(min_std, bool) or not isinstance(min_std, int | float) or min_std < 0:
            raise bad("min_std", min_std, "a number >= 0")
        self.min_std = float(min_std)
        self.active_threshold = float(active_threshold)
        self.sigma = sigma
        self.relu = bool(relu)
        self.model_name, self.weights, self.dataset = model_name, weights, dataset
        self.statistics = statistics
        self.stats: dict[str, st.FeatureStats] = {}

    def refuse_tokens(self, why: str) -> None:
        """One line when a layer is a vision transformer's token layer and this variant has no token form."""
        tokens = [n for n, lay in self.layouts.items() if lay is not None]
        if tokens:
            raise XattrConfigError(f"method {self.name} has no vision-transformer form (layer {tokens[0]!r} gives "
                                   f"tokens): {why}; use iba or inverse_iba (docs/transformers.md)")

    def fit_forwards(self, n_images: int, cache_dir: Path | None = None) -> float:
        """Cost rule of :meth:`fit`: one forward per statistics image (``min(n_samples, n_images)``), 0 when the
        statistics come from a file or the cache."""
        if self.statistics or st.is_cached(self.model, self.layers, cache_dir, self.n_samples, self.model_name,
                                           self.weights, self.dataset):
            return 0.0
        return float(min(self.n_samples, n_images))

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """Estimate (or load from ``cache_dir``, or from the ``statistics`` file) the layers' statistics."""
        if self.statistics:
            self.stats = st.load_file(self.statistics, self.model, self.layers)
            return
        self.stats = st.load_or_estimate(self.model, self.layers, loader, cache_dir, self.n_samples,
                                         self.model_name, self.weights, self.dataset)

    def set_statistics(self, stats: dict[str, st.FeatureStats]) -> None:
        """Use given statistics (e.g. computed elsewhere) instead of :meth:`fit`."""
        self.stats = {k: v.to(self.device) for k, v in stats.items()}

    def bottleneck(self, layer: str) -> Bottleneck:
        """The layer's bottleneck; a token layer's (:class:`TokenBottleneck`) blurs on the patch grid (its
        ``image_hw`` set from the input)."""
        if layer not in self.stats:
            raise XattrConfigError(f"no feature statistics for layer {layer!r}: call fit(loader, cache_dir) first")
        s = self.stats[layer]
        args = (s.mean, s.std, s.active(self.active_threshold), self.sigma, self.relu, self.min_std)
        layout = self.layouts.get(layer)
        if layout is not None:
            return TokenBottleneck(*args, layout=layout).to(self.device)
        return Bottleneck(*args).to(self.device)

    def kl_grid(self, kl: torch.Tensor, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Per-feature KL on the feature map ``(B, C, h, w)``: as is for a CNN layer; a token layer's patch
        tokens on the patch grid (the special tokens' KL is left out: :meth:`special_bits`)."""
        layout = self.layouts.get(layer or self.layers[0])
        return kl if layout is None else layout.to_grid(kl, tuple(x.shape[-2:]))

    def special_bits(self, kl: torch.Tensor, layer: str | None = None) -> dict[str, torch.Tensor]:
        """Bits that pass through each special token of a token layer (``{"cls_bits": (B,)}``); {} else."""
        layout = self.layouts.get(layer or self.layers[0])
        if layout is None or layout.kind != "tokens":
            return {}
        sp = layout.special(kl).float()
        return {f"{n}_bits": sp[:, i].nansum(-1) / math.log(2) for i, n in enumerate(layout.prefix_names)}

    def heatmap(self, kl: torch.Tensor, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Bits per input pixel ``(B, 1, H, W)`` from the per-feature KL of ``layer`` (its patch grid)."""
        return to_bits_map(self.kl_grid(kl, x, layer), tuple(x.shape[-2:]), self.resize)


class PerSampleIBA(IBABase):
    """Per-Sample Bottleneck: ``L = L_CE + beta * L_I`` (eq. 6) optimised per image.

    Args:
        model: classifier; ``layer``: bottleneck layer (paper name or module path), e.g. ``features.17``.
        beta: weight of ``L_I`` = mean KL over C, h, w (reference convention: beta 10 = paper's 10/k).
        steps, lr, copies, init_alpha: Adam steps, learning rate, noisy copies per image, alpha init.
        sigma: smoothing of ``sigmoid(alpha)`` (eq. 7).
        chunk: forward passes per device call (memory knob): images are optimised in groups of
            ``max(1, chunk // copies)``; ``None``: the whole batch in one graph; ``auto``: sized for the
            device (:mod:`xattr.core.chunk`); never changes results.
        seed: noise seed (per image, see module docstring); ``None``: global RNG.
        autocast: ``null`` | ``bf16`` | ``fp16``: the tail under autocast (GPU).
        tail: ``auto`` | ``fx`` | ``hook`` (see :mod:`xattr.methods.iba.tail`).
        optimise_tail: fold conv + BatchNorm and run the fx tail channels-last (same maps up to float
            rounding; about 2x faster on the 224 px MobileNet-V2 run on CPU, see ``scripts/bench_iba.py``).
        loss: ``ce`` (softmax cross-entropy) | ``bce`` (multi-label).
        Other arguments: see :class:`IBABase`.

    >>> iba = PerSampleIBA(net, layer="features.17"); iba.fit(loader, cache_dir)
    >>> maps = iba.attribute(x, target)   # (B, 1, H, W) bits per pixel
    >>> iba.explain(x, target).aux["bottleneck/top1"]   # (B,) Table 1 accuracy with the bottleneck
    """

    name = "iba"
    paper = "Schulz et al., ICLR 2020"
    inverse = False
    #: the Table 1 scores are defined (classification targets)
    scores = True
    memory_knob = "chunk"
    #: the fx tail's set-up per image: one full forward (the split's recording) and three tail rows (its
    #: checks with one and two copies); a tail that falls back to the hook skips them (``tail: hook``: none)
    TAIL_SETUP = 4.0

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: ``steps`` optimisation steps of ``copies`` noisy copies, each a forward and a backward,
        plus the tail's set-up: ``3 steps copies + 4``. The steps run only the network after the bottleneck
        (tail-only forwards), counted here as full ones: the real time is lower by the head's share."""
        return 3.0 * self.steps * self.copies + (0.0 if self.tail_mode == "hook" else self.TAIL_SETUP)


    def __init__(
        self, model: nn.Module, layer: str, beta: float = 10.0, steps: int = 10, lr: float = 1.0,
        copies: int = 10, sigma: float | None = 1.0, init_alpha: float = 5.0, chunk: int | str | None = None,
        seed: int | None = 0, autocast: str | None = None, tail: str = "auto", loss: str = "ce",
        optimise_tail: bool = True, **kw,
    ) -> None:
        super().__init__(model, [layer], sigma=sigma, **kw)
        if autocast not in AUTOCAST:
            raise unknown("autocast", autocast, [k for k in AUTOCAST if k])
        if tail not in TAIL_MODES:
            raise unknown("tail mode", tail, TAIL_MODES)
        if loss not in MODEL_LOSSES:
            raise unknown("loss", loss, MODEL_LOSSES)
        self.layer = layer
        check_positive("beta", beta)
        check_positive("lr", lr)
        self.beta, self.lr = float(beta), float(lr)
        self.steps, self.copies = check_positive_int("steps", steps), check_positive_int("copies", copies)
        self.init_alpha = float(init_alpha)
        self.chunk = check_chunk(chunk)
        self.seed = seed
        self.autocast = autocast
        self.tail_mode = tail
        self.optimise_tail = bool(optimise_tail)
        self.loss = loss

    def model_loss(self, target: torch.Tensor, tail: NetworkTail) -> ModelLoss:
        """Per-image loss on the copies' outputs ``(B, copies, K) -> (B,)`` (``tail`` gives access to the
        clean feature ``tail.r`` and network, for losses that need the clean prediction)."""
        return MODEL_LOSSES[self.loss](target)

    def images_per_group(self, x: torch.Tensor) -> int:
        """Images optimised in one graph for the batch ``x`` (``chunk`` forwards per device call, ``copies``
        rows per image; :func:`xattr.core.chunk.items_per_call`)."""
        chunk = resolve_chunk(self.chunk, self.model, x[:1], backward=True)
        return items_per_call(x.shape[0], self.copies, chunk)

    def optimize(self, x: torch.Tensor, target: torch.Tensor) -> AlphaResult:
        """Run the per-sample optimisation on ``x`` (in groups, see ``chunk``); returns the concatenated result."""
        bn = self.bottleneck(self.layer)
        if isinstance(bn, TokenBottleneck):
            bn.image_hw = tuple(x.shape[-2:])  # the patch grid's aspect ratio
        group = self.images_per_group(x)
        parts = []
        with frozen(self.model), torch.enable_grad():
            for i in range(0, x.shape[0], group):
                xs, ts = x[i : i + group], target[i : i + group]
                tail = NetworkTail(self.model, self.resolved[self.layer], xs, self.tail_mode,
                                   optimise=self.optimise_tail)
                check_shape(tail.r, bn, self.layer)
                parts.append(optimize_alpha(
                    tail, tail.r, bn, self.model_loss(ts, tail), beta=self.beta, steps=self.steps, lr=self.lr,
                    copies=self.copies, init_alpha=self.init_alpha, inverse=self.inverse,
                    generators=self._generators(xs), autocast_dtype=AUTOCAST[self.autocast]))
        return AlphaResult.cat(parts)

    def _generators(self, xs: torch.Tensor):
        """The noise generators of a group of inputs: one per image, seeded by its content."""
        return image_generators(xs, self.seed)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.heatmap(self.optimize(x, target).kl, x)

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        res = self.optimize(x, target)
        extra = {}
        if self.scores:
            extra = with_prefix("bottleneck", {**bottleneck_scores(res, target),
                                               **{f"initial_{k}": v for k, v in initial_scores(res, target).items()}})
        extra.update(with_prefix("bottleneck", self.special_bits(res.kl)))
        return Explanation(self.heatmap(res.kl, x), extra)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r}, beta={self.beta}, steps={self.steps})"


def check_shape(r: torch.Tensor, bn: Bottleneck, layer: str) -> None:
    """One clear error when the feature does not match the statistics (other input size or layer)."""
    if tuple(r.shape[1:]) != tuple(bn.mean.shape):
        raise XattrConfigError(f"feature shape {tuple(r.shape[1:])} at layer {layer!r} differs from its statistics' "
                               f"{tuple(bn.mean.shape)}: estimate them at the input size used for attribution")


def _scores(kl: torch.Tensor, out: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    t = target.view(-1, 1, 1).to(out.device)
    k5 = min(5, out.shape[-1])
    top5 = (out.topk(k5, dim=-1).indices == t).any(-1).float().mean(1)
    top1 = (out.argmax(-1, keepdim=True) == t).squeeze(-1).float().mean(1)
    return {"info_per_k": kl.flatten(1).mean(1), "top1": top1, "top5": top5}


def bottleneck_scores(result: AlphaResult, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Table 1 quantities per image from an :class:`AlphaResult`: ``info_per_k`` (``L_I / k``: mean KL
    over C, h, w in nats, last forward pass) and ``top1`` / ``top5`` (share of the noisy copies whose
    top-1 / top-5 classes under the bottleneck contain ``target``), each ``(B,)``."""
    return _scores(result.kl, result.outputs, target)  # outputs (B, copies, K)


def initial_scores(result: AlphaResult, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same quantities for the untrained bottleneck (alpha = ``init_alpha`` everywhere): the first
    forward pass of the optimisation (Table 1's "Initial" column)."""
    return _scores(result.first_kl, result.first_outputs, target)


class PerSampleIBAModule(pl.LightningModule):
    """Lightning wrapper of a per-sample IBA method: ``trainer.predict`` yields maps and Table 1 scores.

    ``predict_step(batch)`` takes a dict with ``x`` and ``target`` and returns ``{"maps", "info_per_k",
    "top1", "top5"}``; the optimisation itself is per batch (nothing is trained across batches).
    """

    def __init__(self, method: PerSampleIBA) -> None:
        super().__init__()
        self.method = method
        self.net = method.model  # registered so Lightning moves it to the device

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict[str, torch.Tensor]:
        x, target = batch["x"], batch["target"].long()
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()
            res = self.method.optimize(x, target)
        return {"maps": self.method.heatmap(res.kl, x), **bottleneck_scores(res, target)}
