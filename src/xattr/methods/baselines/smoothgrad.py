"""SmoothGrad through Captum (``captum.attr.NoiseTunnel`` around ``captum.attr.Saliency``).

Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017, Eq. 2:
``M(x) = 1/n sum_{k=1..n} M_c(x + N(0, sigma^2))`` with ``M_c`` the saliency map and ``sigma`` a fraction
(``noise_level``) of the image's value range ``max(x) - min(x)``. Defaults of the IBA paper code
(``SmoothGrad(Gradient, std=0.15, steps=50)``): 50 samples, noise level 0.15.

Randomness: each image is attributed under its own forked generator seeded with ``seed``, so a batch gives the
same maps as one image at a time, and ``chunk`` (forward rows per device call) only splits the same noise into
chunks. Images are looped over (the noise and its scale are per image); the ``n_samples`` noisy copies of one
image form the GPU batch.
"""

from __future__ import annotations

import torch
from captum.attr import NoiseTunnel, Saliency
from torch import nn

from xattr.core.checks import check_positive, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.hooks import frozen
from xattr.core.seeding import seeded
from xattr.methods.base import Attribution, reduce_channels


class SmoothGrad(Attribution):
    """Average of ``|grad|`` (``abs=True``) over ``n_samples`` noisy copies of each image.

    Args:
        n_samples: noisy copies per image (50).
        noise_level: noise std as a fraction of the image's value range (0.15).
        abs: average ``|grad|`` (SmoothGrad of Saliency) or the signed gradient.
        seed: seed of the noise (``None``: unseeded).
        chunk: forward rows (noisy copies) per device call (``None``: all ``n_samples`` copies of an image in one
            call); the result does not depend on it. Mapping: ``chunk`` -> Captum's
            ``nt_samples_batch_size = min(chunk, n_samples)`` (each Captum call holds one image, so its noisy
            samples per call are its rows).
        reduce: channel reduction (``max_abs``, as for the gradient).
    """

    name = "smoothgrad"
    paper = "Smilkov et al., arXiv 2017"

    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: ``n_samples`` noisy copies, each a forward and a backward (``3 n_samples``)."""
        return 3.0 * self.n_samples

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 50,
        noise_level: float = 0.15,
        abs: bool = True,
        seed: int | None = 0,
        chunk: int | str | None = "auto",
        reduce: str = "max_abs",
    ) -> None:
        super().__init__(model)
        check_positive_int("n_samples", n_samples)
        check_positive("noise_level", noise_level)
        check_chunk(chunk)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)
        self.n_samples, self.noise_level, self.abs, self.seed = int(n_samples), float(noise_level), abs, seed
        self.chunk, self.reduce = chunk, reduce

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tunnel = NoiseTunnel(Saliency(self.model))
        per_call = items_per_call(self.n_samples, 1, resolve_chunk(self.chunk, self.model, x[:1], backward=True))
        out = []
        with frozen(self.model):
            for i in range(x.shape[0]):
                xi = x[i : i + 1].detach()
                sigma = self.noise_level * float(xi.max() - xi.min())
                with seeded(self.seed, x.device):
                    # Captum draws the noise chunk after chunk from this one stream (tests: chunking is neutral)
                    attr = tunnel.attribute(
                        xi.clone().requires_grad_(True),
                        nt_type="smoothgrad",
                        nt_samples=self.n_samples,
                        nt_samples_batch_size=per_call,
                        stdevs=max(sigma, 1e-12),
                        target=target[i : i + 1],
                        abs=self.abs,
                    )
                out.append(attr.detach())
        return reduce_channels(torch.cat(out), self.reduce)
