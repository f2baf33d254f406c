"""Gradient methods on the embedding layer of a text model, through Captum (one score per token).

- :class:`TextGradient` (``method=gradient``): Simonyan et al. 2014 eq. 1, ``dS_c / d e_i`` reduced over
  the embedding dimension (``l2`` by default: the gradient norm of NLP saliency).
- :class:`TextInputXGradient` (``method=input_x_gradient``): Shrikumar et al. 2016, ``e_i * dS_c / d e_i``,
  signed sum over ``D``.
- :class:`TextIntegratedGradients` (``method=integrated_gradients``): Sundararajan et al. 2017 eq. 1/3,
  from a baseline embedding (``pad``: every token ``<pad>``; ``unk``; ``zero``) to the review's; signed sum
  over ``D``, so the token scores sum to ``f(x) - f(x')`` (completeness, Prop. 1 of the paper) up to the
  Riemann error. One of the four baselines of ch. 6 (L900, InputIBA comparison).
- :class:`TextDeepLift` (``method=deepshap``): Captum's DeepLift (rescale rule) from one baseline
  embedding; with ``baselines: normal`` (default) DeepLiftShap over ``n_baselines`` Gaussian embeddings with the
  table's per-dimension mean and std (seeded per review). DeepLift's multipliers apply to
  ``nn.Module`` non-linearities; an ``nn.LSTM``'s gates are inside one kernel, so through an LSTM the
  rule reduces to the gradient times (x - x') there (Captum treats the RNN as linear).

All take ``embedding`` (the layer), ``pad_index`` and the reduction ``token_reduce``; the image
``reduce`` / ``baseline`` keys of the shared method configs are image-only and ignored on text.
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import DeepLift, DeepLiftShap, InputXGradient, IntegratedGradients, Saliency
from torch import nn

from xattr.core.checks import check_choice, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.hooks import frozen
from xattr.methods.text.base import (
    TOKEN_BASELINES,
    TOKEN_REDUCTIONS,
    EmbeddedModel,
    TokenAttribution,
    reduce_tokens,
)

IG_METHODS = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")


class _EmbeddingGradient(TokenAttribution):
    """One Captum gradient method (``captum_cls`` with ``captum_kwargs``) on the embeddings, reduced per token."""

    captum_cls: type = Saliency
    captum_kwargs: dict = {}

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward and one backward to the embeddings (3)."""
        return 3.0

    def __init__(self, model: nn.Module, embedding: str, pad_index: int | None, token_reduce: str,
                 unk_index: int) -> None:
        super().__init__(model, embedding, pad_index, unk_index)
        check_choice("token reduction", token_reduce, TOKEN_REDUCTIONS)
        self.token_reduce = token_reduce

    def _scores(self, x, target, mask):
        emb = self.embed(x).detach().requires_grad_(True)
        with frozen(self.model):
            a = self.captum_cls(self.forward_embedded).attribute(emb, target=target, additional_forward_args=(x,),
                                                                 **self.captum_kwargs)
        return reduce_tokens(a, self.token_reduce)


class TextGradient(_EmbeddingGradient):
    """Gradient of the target logit w.r.t. each token's embedding, reduced to one score (``l2``)."""

    name = "gradient"
    text_form_of = ("gradient",)
    paper = "Simonyan et al., ICLR-W 2014 (on the embeddings)"
    captum_cls, captum_kwargs = Saliency, {"abs": False}

    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 token_reduce: str = "l2", unk_index: int = 1) -> None:
        super().__init__(model, embedding, pad_index, token_reduce, unk_index)


class TextInputXGradient(_EmbeddingGradient):
    """Embedding times its gradient, summed over ``D`` (signed)."""

    name = "input_x_gradient"
    text_form_of = ("input_x_gradient",)
    paper = "Shrikumar et al., 2016 (on the embeddings)"
    captum_cls, captum_kwargs = InputXGradient, {}

    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 token_reduce: str = "sum", unk_index: int = 1) -> None:
        super().__init__(model, embedding, pad_index, token_reduce, unk_index)


class TextIntegratedGradients(TokenAttribution):
    """Integrated gradients on the embeddings from ``token_baseline`` in ``n_steps`` steps.

    ``chunk``: forward rows (path points) per device call -> Captum's ``internal_batch_size`` with the
    reviews split in groups of ``min(B, chunk)`` (as the image wrapper); never changes the result.
    """

    name = "integrated_gradients"
    text_form_of = ("integrated_gradients",)
    paper = "Sundararajan et al., ICML 2017 (on the embeddings)"
    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: ``n_steps`` path points on the embeddings, each a forward and a backward (``3 n_steps``)."""
        return 3.0 * self.n_steps


    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 n_steps: int = 50, method: str = "riemann_right", chunk: int | str | None = None,
                 token_baseline: str = "pad", token_reduce: str = "sum", unk_index: int = 1) -> None:
        super().__init__(model, embedding, pad_index, unk_index)
        check_choice("integration method", method, IG_METHODS)
        check_choice("token baseline", token_baseline, TOKEN_BASELINES)
        check_positive_int("n_steps", n_steps)
        self.chunk = check_chunk(chunk)
        check_choice("token reduction", token_reduce, TOKEN_REDUCTIONS)
        self.n_steps, self.method, self.token_baseline, self.token_reduce = int(n_steps), method, token_baseline, token_reduce

    def attribute_embeddings(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The un-reduced ``(B, L, D)`` attribution (for completeness checks)."""
        chunk = resolve_chunk(self.chunk, self.model, x[:1], backward=True)
        step = items_per_call(x.shape[0], 1, chunk)
        out = []
        with torch.enable_grad(), frozen(self.model):
            ig = IntegratedGradients(self.forward_embedded)
            for i in range(0, x.shape[0], step):
                xi = x[i : i + step]
                emb = self.embed(xi).detach()
                out.append(ig.attribute(emb, baselines=self.baseline_embedding(xi, self.token_baseline).detach(),
                                        target=target[i : i + step], n_steps=self.n_steps, method=self.method,
                                        internal_batch_size=chunk, additional_forward_args=(xi,)).detach())
        return torch.cat(out)

    def _scores(self, x, target, mask):
        return reduce_tokens(self.attribute_embeddings(x, target), self.token_reduce)


class TextDeepLift(TokenAttribution):
    """DeepLiftShap (``baselines: normal``: ``n_baselines`` Gaussian embeddings) or DeepLift from one baseline
    (``pad`` / ``unk`` / ``zero``; the ``deepshap`` config's default is ``zero``, the zero baseline of InputIBA's
    code for images, here the all-zero embedding) on the embeddings. ``n_baselines`` and ``seed`` apply to
    ``normal``.
    Through an LSTM (no module non-linearities) DeepLift from ``pad`` (a zero row) equals Input x Gradient.
    """

    name = "deepshap"
    text_form_of = ("deepshap",)
    paper = "Shrikumar et al., ICML 2017; Lundberg & Lee, NeurIPS 2017 (on the embeddings)"
    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: the input and each reference (``normal``: ``n_baselines``, else one), forward and
        backward: ``6 refs``."""
        return 6.0 * (self.n_baselines if self.token_baseline == "normal" else 1)


    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 baselines: str = "normal", n_baselines: int = 10, seed: int | None = 0,
                 token_reduce: str = "sum", unk_index: int = 1) -> None:
        super().__init__(model, embedding, pad_index, unk_index)
        check_choice("DeepLift baselines", baselines, (*TOKEN_BASELINES, "normal"))
        token_baseline = baselines
        self.n_baselines = check_positive_int("n_baselines", n_baselines)
        check_choice("token reduction", token_reduce, TOKEN_REDUCTIONS)
        self.token_baseline, self.seed, self.token_reduce = token_baseline, seed, token_reduce

    def attribute_embeddings(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The un-reduced ``(B, L, D)`` attribution (for summation-to-delta checks)."""
        net = EmbeddedModel(self.model, self.embedding.module)
        emb = self.embed(x).detach()
        with torch.enable_grad(), frozen(self.model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum's notes on hooks and on non-module non-linearities
            if self.token_baseline != "normal":
                base = self.baseline_embedding(x, self.token_baseline).detach()
                return DeepLift(net).attribute(emb, baselines=base, target=target, additional_forward_args=(x,)).detach()
            table = self.embedding.module.weight.detach()
            mean, std = table.mean(0), table.std(0)
            out = []
            for i in range(x.shape[0]):  # one review at a time: the same baselines batched or not
                g = torch.Generator().manual_seed(int(self.seed)) if self.seed is not None else None
                real = x[i] != self.pad_index  # noise at the real tokens only: padding-invariant
                noise = torch.randn(self.n_baselines, int(real.sum()), emb.shape[-1], generator=g).to(emb)
                base = emb[i : i + 1].repeat(self.n_baselines, 1, 1)
                base[:, real] = mean + std * noise
                out.append(DeepLiftShap(net).attribute(emb[i : i + 1], baselines=base, target=target[i : i + 1],
                                                       additional_forward_args=(x[i : i + 1],)).detach())
            return torch.cat(out)

    def _scores(self, x, target, mask):
        return reduce_tokens(self.attribute_embeddings(x, target), self.token_reduce)
