"""Which class to explain: the label, the model's top-1, or a fixed class index (``target`` config)."""

from __future__ import annotations

import torch

from xattr.errors import XattrConfigError


def parse_target(spec: str | int, num_classes: int) -> str | int:
    """Validate the ``target`` config before any work: ``label``, ``top1`` or an int in range."""
    if isinstance(spec, str) and spec in ("label", "top1"):
        return spec
    try:
        idx = int(spec)
    except (TypeError, ValueError):
        raise XattrConfigError(
            f"unknown target {spec!r}; valid choices: label, top1, or a class index 0..{num_classes - 1}"
        ) from None
    if not 0 <= idx < num_classes:
        raise XattrConfigError(f"class index {idx} out of range; valid choices: 0..{num_classes - 1}")
    return idx


def resolve_target(spec: str | int, label: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` long targets for a batch."""
    if spec == "top1":
        return logits.argmax(1)
    if spec == "label":
        if (label < 0).any():
            raise XattrConfigError("target 'label' but some images have no label (-1); use target=top1 or an index")
        return label.to(logits.device).long()
    return torch.full_like(label, int(spec), device=logits.device).long()
