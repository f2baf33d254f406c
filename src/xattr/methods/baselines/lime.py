"""LIME through Captum (``captum.attr.Lime``) on superpixels.

Ribeiro et al., "Why Should I Trust You?", KDD 2016, Eq. 1: a sparse linear surrogate ``g`` fitted on
``n_samples`` random on/off patterns of interpretable features (superpixels), weighted by the exponential
kernel ``pi_x(z) = exp(-D(x, z)^2 / sigma^2)`` with cosine distance (LIME's image default kernel width 0.25);
each pixel gets its superpixel's coefficient. Off superpixels take the ``baseline`` (``"zero"``: 0 in
normalised space; ``"mean"``: the image's mean colour, as LIME's ``hide_color=None``).

Superpixels (``segmentation``): ``"slic"`` (scikit-image SLIC with ``n_segments``; LIME itself uses quickshift,
whose segment count depends on the image size) or ``"grid"`` (square cells of ``cell`` pixels).
Surrogate: Captum's ``SkLearnLasso(alpha=lasso_alpha)`` (Captum's default).

Randomness: each image is attributed under its own forked generator seeded with ``seed``, so a batch gives the
same maps as one image at a time; ``chunk`` (forward rows per device call) only groups the same samples into
forward passes.
"""

from __future__ import annotations

import numpy as np
import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import Lime as _CaptumLime
from captum.attr._core.lime import get_exp_kernel_similarity_function
from torch import nn

from xattr.core.checks import check_choice, check_positive, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.seeding import seeded
from xattr.methods.base import Attribution, reduce_channels
from xattr.methods.baselines._utils import baseline_tensor

SEGMENTATIONS = ("slic", "grid")


def superpixels(x: torch.Tensor, segmentation: str = "slic", n_segments: int = 50, cell: int = 16) -> torch.Tensor:
    """``(H, W)`` long segment ids (0..S-1) for one image ``x`` ``(C, H, W)``."""
    h, w = x.shape[-2:]
    if segmentation == "grid":
        rows = torch.arange(h, device=x.device) // cell
        cols = torch.arange(w, device=x.device) // cell
        return rows[:, None] * (-(-w // cell)) + cols[None, :]
    from skimage.segmentation import slic

    img = x.detach().float().cpu().permute(1, 2, 0).numpy()
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    seg = slic(img.astype(np.float64), n_segments=n_segments, compactness=10.0, start_label=0, channel_axis=-1)
    _, seg = np.unique(seg, return_inverse=True)
    return torch.as_tensor(seg.reshape(h, w), dtype=torch.long, device=x.device)


class LIME(Attribution):
    """LIME coefficients of superpixels, painted back on the pixels, ``(B, 1, H, W)``.

    ``chunk``: forward rows (perturbed samples) per device call, ``None``: all ``n_samples`` samples of an
    image in one call; the result does not depend on it. Mapping: ``chunk`` -> Captum's
    ``perturbations_per_eval = min(chunk, n_samples)`` (images are looped over, one per Captum call, so its
    perturbations per evaluation are its rows).
    """

    name = "lime"
    paper = "Ribeiro et al., KDD 2016"
    requires_grad = False

    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: ``n_samples`` perturbed forwards, no backward."""
        return float(self.n_samples)

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 1000,
        segmentation: str = "slic",
        n_segments: int = 50,
        cell: int = 16,
        kernel_width: float = 0.25,
        lasso_alpha: float = 0.01,
        baseline: str | float = "zero",
        seed: int | None = 0,
        chunk: int | str | None = "auto",
        reduce: str = "sum",
    ) -> None:
        super().__init__(model)
        check_choice("segmentation", segmentation, SEGMENTATIONS)
        for k, v in (("n_samples", n_samples), ("n_segments", n_segments), ("cell", cell)):
            check_positive_int(k, v)
        check_positive("kernel_width", kernel_width)
        check_chunk(chunk)
        baseline_tensor(torch.zeros(1, 1, 1, 1), baseline)
        check_choice("LIME reduce", reduce, ("sum", "abs", "positive", "none"))
        self.n_samples, self.segmentation, self.n_segments, self.cell = int(n_samples), segmentation, n_segments, cell
        self.kernel_width, self.lasso_alpha, self.baseline, self.seed = kernel_width, lasso_alpha, baseline, seed
        self.chunk, self.reduce = chunk, reduce

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ppe = items_per_call(self.n_samples, 1, resolve_chunk(self.chunk, self.model, x[:1]))
        out = []
        with torch.no_grad():
            for i in range(x.shape[0]):
                xi = x[i : i + 1]
                seg = superpixels(xi[0], self.segmentation, self.n_segments, self.cell)
                lime = _CaptumLime(
                    self.model,
                    interpretable_model=SkLearnLasso(alpha=self.lasso_alpha),
                    similarity_func=get_exp_kernel_similarity_function("cosine", self.kernel_width),
                )
                with seeded(self.seed, x.device):
                    attr = lime.attribute(
                        xi,
                        target=target[i : i + 1],
                        baselines=baseline_tensor(xi, self.baseline),
                        feature_mask=seg[None, None].expand_as(xi),
                        n_samples=self.n_samples,
                        perturbations_per_eval=ppe,
                    )
                out.append(attr[:, :1].float())
        return reduce_channels(torch.cat(out), self.reduce)
