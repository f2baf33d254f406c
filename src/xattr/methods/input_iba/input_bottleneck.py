"""Stage 3 of InputIBA: the bottleneck on the input, with the prior of Proposition 3 (ch. 6).

Khakzar et al., "Fine-Grained Neural Network Explanation by Identifying Input Features with Predictive
Information", NeurIPS 2021 (ch. 6 of Khakzar's dissertation), sec. 3.2 and appendix A:

- ``Z_I = Lambda I + (1 - Lambda) eps``, ``eps ~ N(mu_I, sigma_I^2)`` (Remark 2:
  ``P(Z_I | I) = N(Lambda I + (1 - Lambda) mu_I, (1 - Lambda)^2 sigma_I^2)``);
- the prior conditions on the generator's input bottleneck ``Z_G = lambda_G I + (1 - lambda_G) eps_G``
  (Remark 1, eq. 9): ``P(Z_I) = N(lambda_G Lambda I + (1 - lambda_G Lambda) mu_I, (1 - lambda_G Lambda)^2 sigma_I^2)``;
- Proposition 3 (eq. 10): per element ``KL = log((1 - lG L) / (1 - L)) + (1 - L)^2 / (2 (1 - lG L)^2)
  + (I - mu)^2 (L - lG L)^2 / (2 (1 - lG L)^2 sigma^2) - 1/2``.

Parity with CAMP-eXplain-AI/InputIBA @5f03549e (../shared/REFERENCE.md): prior ``N(0, 1)`` in the model's
normalised input space (nothing estimated), ``Lambda`` smoothed with sigma 1 (images), beta 20, 60
steps, lr 1, 10 copies, alpha init 5; the loss is ``CE + beta * mean_k KL`` (mean, not sum, as IBA's code).
Reuses :class:`xattr.methods.iba.Bottleneck` (sampling, smoothing) and overrides only the KL.
"""

from __future__ import annotations

import torch

from xattr.methods.iba import Bottleneck


def input_kl(
    x: torch.Tensor, lam: torch.Tensor, gan_mask: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float
) -> torch.Tensor:
    """Proposition 3: ``KL[P(Z_I,k | I_k) || P(Z_I,k)]`` per element, in nats.

    Args:
        x: the input ``I``; ``lam``: ``Lambda`` in [0, 1); ``gan_mask``: ``lambda_G`` in [0, 1];
        mean, std: the input noise ``mu_I``, ``sigma_I``. All broadcast together.

    With ``gan_mask = 0`` this is IBA's KL against ``N(mu_I, sigma_I^2)``; with ``gan_mask = 1`` the prior
    equals the posterior and the KL is 0. The variances are floored at 1e-12 so that ``lam == 1`` stays finite.
    """
    one_m = (1 - lam).clamp_min(1e-6)  # (1 - Lambda)
    one_gm = (1 - gan_mask * lam).clamp_min(1e-6)  # (1 - lambda_G Lambda)
    ratio2 = (one_m / one_gm) ** 2  # variance of the posterior over the prior's
    diff = (x - mean) * (lam - gan_mask * lam) / (one_gm * std)
    return -0.5 * torch.log(ratio2.clamp_min(1e-12)) + 0.5 * ratio2 + 0.5 * diff**2 - 0.5


class InputBottleneck(Bottleneck):
    """The input bottleneck: IBA's noise layer on ``x`` with the KL of Proposition 3.

    Args:
        gan_mask: ``lambda_G`` ``(B, *S)`` from the WGAN generator (stage 2), one per image.
        mean, std: the input noise ``N(mu_I, sigma_I^2)`` (broadcast to ``S``); reference: 0 and 1.
        sigma: smoothing of ``sigmoid(alpha)`` (images: 1; text: None).
        weight: optional ``(B, *S')`` weight of each element's KL, broadcast (text: ``mask * L / n_valid``
            so that the mean over all positions is the mean over the real tokens and padding adds nothing).
    """

    def __init__(
        self,
        gan_mask: torch.Tensor,
        mean: torch.Tensor | float = 0.0,
        std: torch.Tensor | float = 1.0,
        sigma: float | None = 1.0,
        weight: torch.Tensor | None = None,
    ) -> None:
        shape = gan_mask.shape[1:]
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device=gan_mask.device)
        std_t = torch.as_tensor(std, dtype=torch.float32, device=gan_mask.device)
        super().__init__(mean_t.expand(shape).clone(), std_t.expand(shape).clone(), None, sigma, False, min_std=1e-6)
        self.register_buffer("gan_mask", gan_mask.detach().float())
        self.register_buffer("weight", None if weight is None else weight.detach().float())

    def kl(self, r: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """Proposition 3's KL per element ``(B, *S)``; ``r`` is the input ``x``."""
        kl = input_kl(r, lam, self.gan_mask, self.mean, self.std)
        return kl if self.weight is None else kl * self.weight
