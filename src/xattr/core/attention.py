"""Token-level attention flow, shared by the text and the image transformer methods.

- :func:`rollout`: Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers", Sec. 3: each
  layer's attention fused over heads, the residual added as ``A_hat = (1 - r) A + r I`` with rows
  renormalised, the layers multiplied ``R = A_hat_L ... A_hat_1``.
- :func:`chefer_relevance`: Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability",
  eqs. 5-6: ``A_bar = E_h[(grad A * A)^+]``, ``R = I``, then ``R <- R + A_bar R`` layer by layer.

With every gradient equal to 1 and ``r = 0.5``, Chefer's ``I + A_bar`` is ``2 (0.5 A + 0.5 I)``, whose rows
already sum to 1, so its relevance is ``2^L`` times the rollout's (the tests' closed case). Why written here:
no attribution library has either for HuggingFace, torchvision or timm models; both are a few tensor
products (the authors' code hooks their own BERT / ViT copies).
"""

from __future__ import annotations

import torch

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(att: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """``(B, heads, L, L)`` -> ``(B, L, L)``: mean (Abnar & Zuidema), max or min over heads."""
    if how == "mean":
        return att.mean(1)
    return att.amax(1) if how == "max" else att.amin(1)


def rollout(atts: list[torch.Tensor] | tuple[torch.Tensor, ...], residual: float = 0.5,
            head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout ``R = A_hat_L ... A_hat_1`` ``(B, L, L)`` of the layers' ``(B, heads, L, L)`` maps,
    ``A_hat = (1 - residual) A + residual I`` with rows renormalised to sum 1."""
    out = None
    for att in atts:
        a = fuse_heads(att.float(), head_fusion)
        eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = (1 - residual) * a + residual * eye
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        out = a if out is None else a @ out
    return out


def chefer_relevance(atts, grads) -> torch.Tensor:
    """Chefer et al. eqs. 5-6: ``R = I``; ``R <- R + E_h[(grad * A)^+] R`` per layer; ``(B, L, L)``."""
    rel = None
    for att, grad in zip(atts, grads):
        a_bar = (grad.float() * att.float()).clamp_min(0).mean(1)
        if rel is None:
            rel = torch.eye(a_bar.shape[-1], device=a_bar.device, dtype=a_bar.dtype).expand_as(a_bar).clone()
        rel = rel + a_bar @ rel
    return rel


__all__ = ["HEAD_FUSIONS", "chefer_relevance", "fuse_heads", "rollout"]
