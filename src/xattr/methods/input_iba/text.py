"""InputIBA for text (ch. 6, sec. 4.1 and appendix D.1): attribution in the embedding space of an RNN.

The feature bottleneck sits after the last LSTM layer (``rnn_4``); the generator's mask, noise mean and
std act on the embeddings ``(B, L, D)``; the discriminator is a 1-layer RNN; the input bottleneck's
``Lambda`` is per embedding entry and the score of a token is its mean over ``D``. Padding (``mask``
False) is ignored everywhere: the classifier never reads it (see :mod:`xattr.models.text`), the
discriminator reads the last real token, and every KL term is weighted by ``mask * L / n_real`` so that
the mean over positions is the mean over the real tokens (an image's loss does not depend on how much it
is padded in a batch). Scores at padded positions are 0.

Defaults (reference code / appendix D.1): feature beta 15, input beta 30, 30 steps, lr 0.5, no smoothing.
Choices the reference does not pin down here: the feature statistics are per hidden unit, pooled over
the real tokens of the estimation reviews (a review has no fixed positions); the input noise is
``N(mean, std^2)`` of the embedding table per dimension (``input_prior="embedding"``; ``"standard"``
gives N(0, 1)); the generator's mask logits start at the feature capacity per token (bits), broadcast
over ``D``; the discriminator's hidden size is ``disc_hidden`` (64).

The model must offer ``embed(x)``, ``forward_embedded(emb, mask)`` and ``pad_index`` (as
:class:`xattr.models.text.LSTMClassifier`).

>>> method = InputIBAText(lstm, layer="rnn_4"); method.fit(loader)
>>> scores = method.attribute(x, target)   # (B, L), 0 on padding
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from xattr.core.hooks import capture
from xattr.errors import XattrConfigError, unknown
from xattr.methods.iba import Bottleneck, PerSampleIBA
from xattr.methods.iba import statistics as st
from xattr.methods.input_iba.input_bottleneck import InputBottleneck
from xattr.methods.input_iba.input_iba import InputIBA
from xattr.methods.input_iba.wgan import RNNDiscriminators

PRIORS = ("embedding", "standard")


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


class TextFeatureIBA(PerSampleIBA):
    """Per-Sample IBA on token inputs: statistics per hidden unit over real tokens, KL over real tokens."""

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """Mean / std per hidden unit of the layer's output over the real tokens of ``n_samples`` reviews
        (:func:`xattr.methods.iba.statistics.estimate` with ``tokens=True``, cached like IBA's)."""
        self.stats = st.load_or_estimate(self.model, [self.layer], loader, cache_dir, self.n_samples,
                                         self.model_name, self.weights, self.dataset, tokens=True, warn=False)

    def bottleneck(self, layer: str) -> Bottleneck:
        return _MaskedBottleneck(super().bottleneck(layer), self._weight)

    def images_per_group(self, n: int) -> int:
        return n  # the KL weight is per batch: one group

    def optimize(self, x: torch.Tensor, target: torch.Tensor):
        self._weight = token_weight(x != self.model.pad_index)
        return super().optimize(x, target)


class InputIBAText(InputIBA):
    """InputIBA on token batches ``(B, L)`` long; returns ``(B, L)`` scores in [0, 1] (0 on padding).

    Args: as :class:`~xattr.methods.input_iba.input_iba.InputIBA` (text defaults), plus
        input_prior: ``embedding`` (per-dimension mean / std of the embedding table) or ``standard``.
        disc_hidden: hidden size of the RNN discriminators.
    """

    name = "input_iba_text"

    def __init__(self, model: nn.Module, layer: str = "rnn_4", *, feat_beta: float = 15.0, beta: float = 30.0,
                 steps: int = 30, lr: float = 0.5, sigma: float | None = None, input_prior: str = "embedding",
                 disc_hidden: int = 64, **kw) -> None:
        for attr in ("embed", "forward_embedded", "pad_index"):
            if not hasattr(model, attr):
                raise XattrConfigError(f"InputIBAText needs a model with embed/forward_embedded/pad_index; {type(model).__name__} lacks {attr!r}")
        if input_prior not in PRIORS:
            raise unknown("input prior", input_prior, PRIORS)
        if sigma:
            raise XattrConfigError(f"text has no smoothing; got sigma={sigma}, valid choices: null, 0")
        kw.setdefault("feat_sigma", None)
        super().__init__(model, layer, feat_beta=feat_beta, beta=beta, steps=steps, lr=lr, sigma=None, **kw)
        self.input_prior, self.disc_hidden = input_prior, int(disc_hidden)

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
        return (kl.sum(-1, keepdim=True) / math.log(2)).expand_as(emb)

    def _noise_shape(self, emb: torch.Tensor) -> tuple[int, ...]:
        return (1, emb.shape[-1])

    def _discriminator(self, r: torch.Tensor, x: torch.Tensor, gens) -> nn.Module:
        return RNNDiscriminators(r.shape[0], r.shape[1:], x != self.model.pad_index, self.disc_hidden, gens, r.device)

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
