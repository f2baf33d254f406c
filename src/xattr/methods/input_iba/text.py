"""InputIBA for text (ch. 6, sec. 4.1 and appendix D.1): attribution in the embedding space of an RNN.

The feature bottleneck sits after the last LSTM layer (``rnn_4``); the generator's mask, noise mean and
std act on the embeddings ``(B, L, D)``; the discriminator is a 1-layer RNN; the input bottleneck's
``Lambda`` is per embedding entry and the score of a token is its mean over ``D``. Padding (``mask``
False) is ignored everywhere: the classifier never reads it (see :mod:`xattr.models.text`), the
discriminator reads the last real token, and every KL term is weighted by ``mask * L / n_real`` so that
the mean over positions is the mean over the real tokens (an image's loss does not depend on how much it
is padded in a batch). Scores at padded positions are 0.

Defaults are the reference code's (CAMP-eXplain-AI/InputIBA @5f03549e, ``configs/deep_lstm.py`` and
``nlp_*.py``; ../shared/REFERENCE.md "InputIBA on text"), each a config value with the earlier choice kept
as an option:

- feature beta 15, input beta 30, 30 steps, lr 0.5, no smoothing (appendix D.1);
- input prior N(0, 1) (``input_prior="standard"``; the reference's config sets none, so its default
  N(0, 1) applies); ``"embedding"``: per-dimension mean / std of the embedding table;
- generator mask learning rate 0.03 (``lr_mask``; the image GAN's is 0.003);
- discriminator an LSTM of the hidden width, then Linear(H, 128), LeakyReLU(0.2), Linear(128, 1)
  (``discriminator="lstm"``, :mod:`.text_discriminator`; ``disc_slope``, the reference's
  ``nlp_discriminator.py:20``); ``"rnn"``: a tanh RNN of width ``disc_hidden`` (64) and one linear layer;
- generator noise mean / std one per token (``noise="token"``); ``"dimension"``: one per embedding dimension;
- mask logits initialised with the feature capacity summed over hidden units in nats
  (``mask_init="nats"``); ``"bits"``: the same divided by ln 2;
- the WGAN's target samples drawn once and reshuffled per epoch (``redraw_targets=False``); ``True``:
  redrawn per minibatch.

``classifier_mode``: the reference forces the classifier into train mode (``nlp_attributor.py:26-39``), so
its dropout (0.5 in the reference LSTM) is active in every stage (statistics, feature IBA, WGAN, input IBA):
``train`` reproduces that, each text under its own seed (``seed`` and its ids), so batched == one at a time
still holds; ``eval`` (the default) explains the deterministic model the metrics score, the same model the
image form and every other method explain; the reference's dropout makes a map depend on dropout draws.

The feature statistics are per hidden unit, pooled over the real tokens of the estimation reviews (a
review has no fixed positions). Stages 2 and 3 backpropagate through the RNN in eval mode, which cuDNN
refuses; they run with cuDNN disabled on CUDA (:func:`xattr.core.rnn.rnn_backward_ok`).

The model offers ``embed(x)``, ``forward_embedded(emb, mask)`` and ``pad_index`` (as
:class:`xattr.models.text.LSTMClassifier`), or names its embedding layer (``embedding=``; any ``nn.Module``
on token ids, wrapped in :class:`xattr.methods.embedding.EmbeddingAdapter`).

>>> method = InputIBAText(lstm, layer="rnn_4"); method.fit(loader)
>>> scores = method.attribute(x, target)   # (B, L), 0 on padding
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from xattr.core.hooks import capture
from xattr.core.rnn import rnn_backward_ok
from xattr.core.seeding import image_seeds, seeded, token_generators
from xattr.errors import XattrConfigError, unknown
from xattr.methods.base import Explanation
from xattr.methods.embedding import EmbeddingAdapter
from xattr.methods.iba import Bottleneck, PerSampleIBA
from xattr.methods.iba import statistics as st
from xattr.methods.input_iba.input_bottleneck import InputBottleneck
from xattr.methods.input_iba.input_iba import InputIBA
from xattr.methods.input_iba.text_discriminator import DISCRIMINATORS, LSTMDiscriminators
from xattr.methods.input_iba.wgan import RNNDiscriminators

PRIORS = ("standard", "embedding")
NOISE = ("token", "dimension")
MASK_INIT = ("nats", "bits")
CLASSIFIER_MODES = ("eval", "train")


def token_weight(mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, 1)`` KL weight ``mask * L / n_real``: a mean over all positions becomes one over real tokens."""
    m = mask.float()
    return (m * m.shape[1] / m.sum(1, keepdim=True).clamp_min(1))[..., None]


class _MaskedBottleneck(Bottleneck):
    def __init__(self, base: Bottleneck, weight: torch.Tensor) -> None:
        shape = (weight.shape[1], base.mean.shape[-1])  # per-unit statistics, repeated over the L positions
        super().__init__(base.mean.expand(shape), base.std.expand(shape), base.active.expand(shape), None,
                         base.relu, min_std=0.0)
        self.register_buffer("weight", weight)

    def kl(self, r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return super().kl(r, lam) * self.weight


class _WithMask:
    """A loader whose batches get ``mask = x != pad`` where they have none."""

    def __init__(self, loader: Iterable[dict], pad: int) -> None:
        self.loader, self.pad = loader, pad

    def __iter__(self):
        for b in self.loader:
            yield b if "mask" in b else {**b, "mask": b["x"] != self.pad}

    def __len__(self) -> int:
        return len(self.loader)


class TextFeatureIBA(PerSampleIBA):
    """Per-Sample IBA on token inputs: statistics per hidden unit over real tokens, KL over real tokens."""

    def fit_forwards(self, n_images: int, cache_dir: Path | None = None) -> float:
        """Cost rule of :meth:`fit`: one forward per statistics review, 0 when cached (token-pooled key)."""
        if st.is_cached(self.model, [self.layer], cache_dir, self.n_samples, self.model_name, self.weights,
                        self.dataset, tokens=True):
            return 0.0
        return float(min(self.n_samples, n_images))

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """Mean / std per hidden unit of the layer's output over the real tokens of ``n_samples`` reviews
        (:func:`xattr.methods.iba.statistics.estimate` with ``tokens=True``, cached like IBA's)."""
        pad = getattr(self, "pad_index", None)
        if pad is not None:  # a model without pad_index: batches without a mask get one from pad_index
            loader = _WithMask(loader, pad)
        self.stats = st.load_or_estimate(self.model, [self.layer], loader, cache_dir, self.n_samples,
                                         self.model_name, self.weights, self.dataset, tokens=True, warn=False)

    def bottleneck(self, layer: str) -> Bottleneck:
        return _MaskedBottleneck(super().bottleneck(layer), self._weight)

    def _generators(self, xs: torch.Tensor):
        """One generator per text, seeded by its ids without the padding (batched == one at a time)."""
        pad = getattr(self, "pad_index", None)
        return token_generators(xs, self.seed, self.model.pad_index if pad is None else pad)

    def images_per_group(self, x: torch.Tensor) -> int:
        return x.shape[0]  # the KL weight is per batch: one group

    def optimize(self, x: torch.Tensor, target: torch.Tensor):
        """The per-sample optimisation; the returned ``kl`` / ``first_kl`` are the capacities per token and
        hidden unit in nats (the loss's weight ``mask * L / n_real`` divided out; 0 on padding)."""
        pad = getattr(self, "pad_index", None)
        self._weight = token_weight(x != (self.model.pad_index if pad is None else pad))
        res = super().optimize(x, target)
        w = self._weight.to(res.kl.device)
        unweight = lambda kl: None if kl is None else torch.where(w > 0, kl / w.clamp_min(1e-12), torch.zeros_like(kl))  # noqa: E731
        res.kl, res.first_kl = unweight(res.kl), unweight(res.first_kl)
        return res


def _pad_tokens(t: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """A per-token result ``(1, n, ...)`` padded with zeros to ``(1, length, ...)``; other shapes as they are."""
    if t.dim() < 2 or t.shape[1] != n or n == length:
        return t
    return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, length - n))


class InputIBAText(InputIBA):
    """InputIBA on token batches ``(B, L)`` long; returns ``(B, L)`` scores in [0, 1] (0 on padding).

    Args: as :class:`~xattr.methods.input_iba.input_iba.InputIBA` (text defaults), plus
        input_prior: ``standard`` (N(0, 1), reference) or ``embedding`` (per-dimension table statistics).
        discriminator: ``lstm`` (reference) or ``rnn``; disc_hidden: its width (``None``: the hidden
            width for ``lstm``, 64 for ``rnn``).
        noise: ``token`` (reference) or ``dimension``; mask_init: ``nats`` (reference) or ``bits``.
        redraw_targets: redraw the WGAN's target samples per minibatch (reference: False, drawn once).
        lr_mask: generator mask learning rate (reference text GAN: 0.03).
        disc_slope: the LSTM discriminator's LeakyReLU slope (reference 0.2).
        classifier_mode: ``eval`` (default) | ``train`` (the reference: dropout active; see the module docstring).
        embedding, pad_index: for a model without ``embed`` / ``forward_embedded`` / ``pad_index`` (any
            ``nn.Module`` on token ids): its embedding layer's name; it is then wrapped in
            :class:`xattr.methods.embedding.EmbeddingAdapter`.
    """

    name = "input_iba_text"
    #: the text form of ``method=input_iba`` on a text model, and ``method=input_iba_text`` itself; the image
    #: keys it shares are :class:`InputIBA`'s parameters less the ones it declares with text defaults
    text_form_of = ("input_iba", "input_iba_text")

    def __init__(self, model: nn.Module, layer: str = "rnn_4", *, feat_beta: float = 15.0, beta: float = 30.0,
                 steps: int = 30, lr: float = 0.5, sigma: float | None = None, input_prior: str = "standard",
                 discriminator: str = "lstm", disc_hidden: int | None = None, noise: str = "token",
                 mask_init: str = "nats", redraw_targets: bool = False, lr_mask: float = 0.03,
                 disc_slope: float = 0.2, classifier_mode: str = "eval",
                 embedding: str | None = None, pad_index: int | None = None, **kw) -> None:
        if embedding is not None and not all(hasattr(model, a) for a in ("embed", "forward_embedded", "pad_index")):
            model = EmbeddingAdapter(model, embedding, pad_index).eval()
        for attr in ("embed", "forward_embedded", "pad_index"):
            if not hasattr(model, attr):
                raise XattrConfigError(f"InputIBAText needs a model with embed/forward_embedded/pad_index; {type(model).__name__} lacks {attr!r}")
        if input_prior not in PRIORS:
            raise unknown("input prior", input_prior, PRIORS)
        for kind, value, choices in (("text discriminator", discriminator, DISCRIMINATORS), ("noise", noise, NOISE),
                                     ("mask init", mask_init, MASK_INIT),
                                     ("classifier_mode", classifier_mode, CLASSIFIER_MODES)):
            if value not in choices:
                raise unknown(kind, value, choices)
        if sigma:
            raise XattrConfigError(f"text has no smoothing; got sigma={sigma}, valid choices: null, 0")
        kw.setdefault("feat_sigma", None)
        super().__init__(model, layer, feat_beta=feat_beta, beta=beta, steps=steps, lr=lr, sigma=None,
                         lr_mask=lr_mask, **kw)
        self.input_prior, self.discriminator, self.noise, self.mask_init = input_prior, discriminator, noise, mask_init
        self.disc_hidden = None if disc_hidden is None else int(disc_hidden)
        self.disc_slope, self.classifier_mode = float(disc_slope), classifier_mode
        self.gan.redraw_targets = bool(redraw_targets)

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        """Each text alone, without its (right) padding, as the reference code runs them: the noise of the
        ``copies`` is drawn as ``(copies, L, D)``, so a padded length would shift every copy after the first and
        a text would get other scores in a batch. The maps are padded back with zeros."""
        pad, length = self.model.pad_index, x.shape[1]
        parts = []
        with rnn_backward_ok(x.device):
            for i in range(x.shape[0]):
                real = (x[i] != pad).nonzero()
                n = int(real.max()) + 1 if len(real) else 1
                with self._classifier_mode(x[i : i + 1, :n]):
                    ex = self._explain_group(x[i : i + 1, :n], target[i : i + 1])
                parts.append(Explanation(_pad_tokens(ex.maps, n, length),
                                         {k: _pad_tokens(v, n, length) for k, v in ex.aux.items()}))
        return Explanation.cat(parts)

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """The feature statistics; with ``classifier_mode="train"`` under dropout too (seeded by ``seed``), and
        then not cached (a cache file does not record the mode)."""
        if self.classifier_mode == "eval":
            return super().fit(loader, cache_dir)
        with self._dropout_on(0 if self.seed is None else self.seed, torch.device("cpu")):
            super().fit(loader, None)

    @contextlib.contextmanager
    def _classifier_mode(self, ids: torch.Tensor):
        """``train``: the classifier in train mode (dropout on) with the global RNG seeded from ``seed`` and the
        text's ids, restored afterwards; ``eval``: nothing changes."""
        if self.classifier_mode == "eval":
            yield
            return
        with self._dropout_on(image_seeds(ids, 0 if self.seed is None else self.seed)[0], ids.device):
            yield

    @contextlib.contextmanager
    def _dropout_on(self, seed: int, device: torch.device):
        """The classifier in train mode under torch's global RNG seeded with ``seed``; mode and RNG restored."""
        was = self.model.training
        try:
            with seeded(seed, device):
                self.model.train()
                yield
        finally:
            self.model.train(was)

    def _make_feature_iba(self, **kw) -> PerSampleIBA:
        return TextFeatureIBA(self.model, **kw)

    def _run_to_layer(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return capture(self.model.forward_embedded, self.module, emb, mask)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._run_to_layer(self.model.embed(x), x != self.model.pad_index).detach()

    def _head(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        mask = x != self.model.pad_index
        return lambda z: self._run_to_layer(z, mask.repeat_interleave(z.shape[0] // mask.shape[0], 0))

    def _mask_init(self, kl: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        cap = kl.sum(-1, keepdim=True)  # capacity per token, summed over hidden units (nats)
        return (cap if self.mask_init == "nats" else cap / math.log(2)).expand_as(emb)

    def _noise_shape(self, emb: torch.Tensor) -> tuple[int, ...]:
        return (emb.shape[1], 1) if self.noise == "token" else (1, emb.shape[-1])

    def _discriminator(self, r: torch.Tensor, x: torch.Tensor, gens) -> nn.Module:
        mask = x != self.model.pad_index
        if self.discriminator == "lstm":
            return LSTMDiscriminators(r.shape[0], r.shape[1:], mask, self.disc_hidden, gens, r.device,
                                      slope=self.disc_slope)
        return RNNDiscriminators(r.shape[0], r.shape[1:], mask, self.disc_hidden or 64, gens, r.device)

    def _stage3(self, x: torch.Tensor, lam_g: torch.Tensor):
        mask = x != self.model.pad_index
        emb = self.model.embed(x).detach()
        if self.input_prior == "embedding":
            table = self.model.embedding.weight.detach()
            keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
            keep[self.model.pad_index] = False
            mean, std = table[keep].mean(0), table[keep].std(0)
        else:
            mean, std = 0.0, 1.0
        bn = InputBottleneck(lam_g, mean, std, None, token_weight(mask))

        def tail(z: torch.Tensor) -> torch.Tensor:
            return self.model.forward_embedded(z, mask.repeat_interleave(z.shape[0] // mask.shape[0], 0))

        return emb, tail, bn

    def _maps(self, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return lam.mean(-1) * (x != self.model.pad_index)

    def _stage_maps(self, kl, lam_g, final, x) -> dict:
        mask = x != self.model.pad_index
        return {"feature": kl.sum(-1) / math.log(2) * mask, "generator": lam_g.mean(-1) * mask, "input": final}
