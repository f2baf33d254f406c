"""IBA on a text model (ch. 6 L900): the Per-Sample bottleneck at a hidden layer of the RNN, "the hidden
attribution taken as valid for the embedding space, since the RNN does not change the size and dimension
of the input tensor". The score of token ``i`` is the capacity of the hidden state at position ``i``
summed over hidden units, in bits (Schulz et al., ICLR 2020, eq. 5 and Sec. 3.2; the reference code's
``capacity`` summed over channels); 0 on padding.

Feature statistics are per hidden unit, pooled over the real tokens of the estimation reviews, and the
KL of ``L_I`` is averaged over real tokens only (:class:`xattr.methods.input_iba.text.TextFeatureIBA`,
the stage 1 of text InputIBA), so padding changes neither the loss nor the scores. No smoothing (a
Gaussian blur over hidden units x tokens has no meaning); the image ``sigma`` / ``resize`` are ignored.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xattr.core.rnn import rnn_backward_ok
from xattr.methods.base import Explanation, with_prefix
from xattr.methods.iba.per_sample import bottleneck_scores, initial_scores
from xattr.methods.input_iba.text import TextFeatureIBA
from xattr.methods.text.base import pad_index_of


class TextIBA(TextFeatureIBA):
    """Per-Sample IBA at hidden layer ``layer`` (``(B, L, H)`` output) of a text model; ``(B, L)`` bits.

    Args: as :class:`xattr.methods.iba.PerSampleIBA` (``layer`` e.g. ``rnn_4``, beta, steps, lr, copies,
    init_alpha, n_samples, seed, ...), plus ``pad_index`` (``None``: the model's, else 0).
    """

    name = "iba"
    text_form_of = ("iba",)
    paper = "Schulz et al., ICLR 2020 (at an RNN's hidden layer, ch. 6 L900)"
    image_keys = ("layer", "beta", "steps", "lr", "copies", "init_alpha", "min_std", "active_threshold",
                  "n_samples", "statistics", "chunk", "seed", "autocast", "tail", "loss", "model_name",
                  "weights", "dataset")

    def __init__(self, model: nn.Module, layer: str = "rnn_4", pad_index: int | None = None, **kw) -> None:
        kw.pop("sigma", None)
        kw.pop("resize", None)
        kw.pop("embedding", None)
        super().__init__(model, layer, sigma=None, **kw)
        self.pad_index = pad_index_of(model, nn.Identity(), pad_index)  # read by TextFeatureIBA.optimize

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        with rnn_backward_ok(x.device):
            res = self.optimize(x, target)
        mask = x != self.pad_index
        maps = res.kl.sum(-1) / math.log(2) * mask  # capacity per token in bits (nats / ln 2)
        extra = with_prefix("bottleneck", {**bottleneck_scores(res, target),
                                           **{f"initial_{k}": v for k, v in initial_scores(res, target).items()}})
        return Explanation(maps, extra)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._explain(x, target, frozenset()).maps
