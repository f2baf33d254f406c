"""LIME on tokens through Captum (``captum.attr.Lime``), one of the four baselines of ch. 6 (L900).

Ribeiro et al., KDD 2016, Eq. 1, with the interpretable features of its text explainer: one on/off
feature per token of the review (padding is not a feature: each review is run without it). An "off" token
takes the ``token_baseline`` embedding (``unk``: ``<unk>``, the removal that Sensitivity-N and
insertion/deletion use on IMDB; ``pad``; ``zero``). Sample weights: LIME's text kernel
``pi(z) = exp(-(100 * cos_dist(1, z))^2 / width^2)`` with ``kernel_width`` 25 (``LimeTextExplainer``:
cosine distance x 100, width 25). Surrogate: ``ridge`` (LIME's default ``Ridge(alpha=1)``) or ``lasso``
(Captum's default, ``lasso_alpha``).

Randomness: each review is attributed under torch's global RNG forked and seeded with ``seed``, so a
batch gives the same scores as one review at a time; ``chunk`` (forward rows per call) -> Captum's
``perturbations_per_eval``.
"""

from __future__ import annotations

import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge
from captum.attr import Lime
from torch import nn

from xattr.core.checks import check_choice, check_positive, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.hooks import frozen
from xattr.core.seeding import seeded
from xattr.methods.text.base import TOKEN_BASELINES, TokenAttribution

SURROGATES = ("ridge", "lasso")


def text_kernel(width: float):
    """LIME's text similarity: ``exp(-(100 * cosine distance to all-on)^2 / width^2)``."""

    def similarity(_original, _perturbed, interpretable: torch.Tensor, **_kw) -> torch.Tensor:
        z = interpretable.float().reshape(1, -1)
        cos = z.sum() / (z.norm() * z.shape[1] ** 0.5).clamp_min(1e-12)
        d = 100.0 * (1.0 - cos)
        return torch.exp(-(d**2) / width**2)

    return similarity


class TextLIME(TokenAttribution):
    """LIME coefficient of each real token; ``(B, L)``, 0 on padding."""

    name = "lime"
    text_form_of = ("lime",)
    paper = "Ribeiro et al., KDD 2016 (text explainer)"
    requires_grad = False
    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: ``n_samples`` perturbed forwards per review, no backward."""
        return float(self.n_samples)


    def __init__(self, model: nn.Module, embedding: str = "embedding", pad_index: int | None = None,
                 n_samples: int = 1000, token_baseline: str = "unk", token_kernel_width: float = 25.0,
                 surrogate: str = "ridge", lasso_alpha: float = 0.01, seed: int | None = 0,
                 chunk: int | str | None = 256, unk_index: int = 1) -> None:
        super().__init__(model, embedding, pad_index, unk_index)
        check_choice("token baseline", token_baseline, TOKEN_BASELINES)
        check_choice("LIME surrogate", surrogate, SURROGATES)
        check_positive_int("n_samples", n_samples)
        check_positive("token_kernel_width", token_kernel_width)
        self.chunk = check_chunk(chunk)
        self.n_samples, self.token_baseline, self.kernel_width = int(n_samples), token_baseline, float(token_kernel_width)
        self.surrogate, self.lasso_alpha, self.seed = surrogate, float(lasso_alpha), seed

    def _scores(self, x, target, mask):
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        ppe = items_per_call(self.n_samples, 1, resolve_chunk(self.chunk, self.model, x[:1]))
        with torch.no_grad(), frozen(self.model):
            for i in range(x.shape[0]):
                xi = x[i : i + 1, mask[i]]  # the review without its padding
                n = xi.shape[1]
                if n == 0:
                    continue
                emb = self.embed(xi)
                base = self.baseline_embedding(xi, self.token_baseline)
                fmask = torch.arange(n, device=x.device)[None, :, None].expand_as(emb)
                model = SkLearnRidge(alpha=1.0) if self.surrogate == "ridge" else SkLearnLasso(alpha=self.lasso_alpha)
                lime = Lime(self.forward_embedded, interpretable_model=model, similarity_func=text_kernel(self.kernel_width))
                with seeded(self.seed, x.device):
                    attr = lime.attribute(emb, baselines=base, target=target[i : i + 1], feature_mask=fmask,
                                          n_samples=self.n_samples, perturbations_per_eval=ppe,
                                          additional_forward_args=(xi,))
                out[i, mask[i]] = attr[0, :, 0].float()
        return out
