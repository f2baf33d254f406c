"""Boxes as pixel masks: the one rasterisation rule shared by the localisation metrics and the datasets' box
filter (``dataset.max_box_coverage``), so that a filtered run keeps exactly the images the metrics count."""

from __future__ import annotations

import torch

from xattr.errors import XattrConfigError


def box_masks(boxes: list | None, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Union of each image's xyxy boxes as a bool ``(B, H*W)``: pixel (i, j) is inside when its centre
    (j + 0.5, i + 0.5) lies in [x1, x2) x [y1, y2) (integer boxes give ``mask[y1:y2, x1:x2]`` as the
    reference codes do)."""
    if boxes is None:
        raise XattrConfigError("missing extra 'boxes'; valid choices: a list of (N_i, 4) xyxy tensors per image")
    if len(boxes) != b:
        raise XattrConfigError(f"bad boxes length {len(boxes)}; valid choices: one entry per image ({b})")
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    per = [torch.as_tensor(bx, dtype=torch.float32).reshape(-1, 4) for bx in boxes]
    sizes = [p.shape[0] for p in per]
    k = max(sizes + [1])
    if sizes.count(k) == b:
        padded = torch.stack(per)
    else:
        padded = torch.zeros(b, k, 4)  # missing boxes: empty (x1 = x2 = 0)
        for i, p in enumerate(per):
            padded[i, : sizes[i]] = p
    x1, y1, x2, y2 = padded.to(device).unbind(-1)  # (B, K) each: all boxes at once
    rows = (ys >= y1[..., None]) & (ys < y2[..., None])  # (B, K, H)
    cols = (xs >= x1[..., None]) & (xs < x2[..., None])  # (B, K, W)
    return (rows[..., :, None] & cols[..., None, :]).any(1).reshape(b, -1)


def uncounted(box: torch.Tensor, max_coverage: float | None) -> torch.Tensor:
    """The images the localisation metrics leave out (score NaN), from box masks ``(B, N)`` bool: no box pixel,
    or boxes covering more than ``max_coverage`` of the image (the float32 mean compared with the float32
    ``max_coverage``, as torch compares a tensor with a Python float)."""
    bad = box.sum(1) == 0
    if max_coverage is not None:
        bad |= box.float().mean(1) > max_coverage
    return bad


def box_coverage(boxes: torch.Tensor, h: int, w: int) -> float:
    """Share of an ``h x w`` image covered by the union of ``boxes`` ``(N, 4)`` (0.0 for none): the float32 mean
    of :func:`box_masks`."""
    return float(box_masks([boxes], 1, h, w, torch.device("cpu")).float().mean())


def counted(boxes: torch.Tensor, h: int, w: int, max_coverage: float | None) -> bool:
    """Whether the localisation metrics score an ``h x w`` image with ``boxes`` ``(N, 4)`` (not
    :func:`uncounted`)."""
    return not bool(uncounted(box_masks([boxes], 1, h, w, torch.device("cpu")), max_coverage)[0])
