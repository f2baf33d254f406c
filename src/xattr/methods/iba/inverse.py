"""Inverse IBA (Khakzar, dissertation ch. 8, sec. 2.1, eq. 4; CheXplain-IBA @8290f946).

A deletion game instead of IBA's preservation game: the model sees the *inverse* bottleneck
``z_inv = lambda * eps + (1 - lambda) * r`` and the objective ``L_inv = beta * L_I - L_CE^inv`` is minimised,
so lambda is pushed to 1 on *any* predictive feature (replacing it by noise raises the cross-entropy)
and to 0 elsewhere by ``L_I``. ``L_I`` is IBA's KL of ``lambda`` (the reference's capacity with the same
lambda, unchanged), and the heatmap is that KL in bits per pixel, as the reference's ``reverse_lambda``.
Reference defaults: beta 6 (DenseNet-121, BCE with logits); ``loss: bce`` for multi-label heads.
"""

from __future__ import annotations

from xattr.methods.iba.per_sample import PerSampleIBA


class InverseIBA(PerSampleIBA):
    """Per-sample Inverse IBA; arguments as :class:`PerSampleIBA` (``beta`` default 6 as the reference).

    >>> maps = InverseIBA(net, layer="features.denseblock3", loss="bce").attribute(x, target)
    """

    name = "inverse_iba"
    paper = "Khakzar et al., MICCAI 2021 (dissertation ch. 8, eq. 4)"
    inverse = True

    def __init__(self, model, layer: str, beta: float = 6.0, **kw) -> None:
        super().__init__(model, layer, beta=beta, **kw)
