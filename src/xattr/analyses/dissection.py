"""Network dissection (Bau et al., CVPR 2017) of one layer against concept masks (dissertation ch. 9, sec. 2.2,
eq. 5 L1731; CheXplain-Dissection).

For every unit ``k`` (channel) of the dissected layer and image ``x``, the feature map ``F_k(x)`` is
upsampled bilinearly to the masks' size, ``S'_k(x)``, and thresholded at the unit's activation quantile
``T_k`` (``P(f_k > T_k) = 1 - quantile`` over all images and positions: ``quantile: 0.995`` is the paper's
0.005, ``0.99`` the code's): ``M_k(x) = S'_k(x) > T_k``. Against each concept's mask ``L_c(x)``

    ``IoU_kc = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|``          (eq. 5)

summed over the images that contain concept ``c`` (a dataset sum, not a mean of per-image IoUs). A unit
is a *detector* of its best concept when that IoU exceeds ``iou_threshold`` (0.04, L1733).

Two passes. The threshold needs every image's activations before any IoU, so :meth:`Dissection.update`
keeps, per image, the layer's low-resolution activations in float16 and the concept masks packed 8 per
byte; :meth:`Dissection.compute` finds the thresholds and sums the intersections and unions. Memory
(and the size of the state the engine saves with every batch): ``K * h * w * 2 + ceil(C * H * W / 8)``
bytes per image (DenseNet-121's 1024 x 7 x 7 block 4 and 8 concepts at 224 px: about 150 KB, so 130 MB
for the 880 boxed NIH images; the synthetic set's 8 x 8 maps: a few KB). Rows are independent of order,
so resuming and merging shards (:meth:`merge`) give the one-pass result exactly.

Paper vs code (CheXplain-Dissection ``src/visualization/netdissect_results.py`` @63cfbd66 / @be4a31b, on
Bau et al.'s ``netdissect``). The published counts (65 vs 100 detectors) come from the code; each of its
settings is a switch (``conf/analysis/dissection_code.yaml`` sets them all). The defaults stay the text's:
eq. 5 is the better definition where they differ (the code's union adds the unit's pixels of every image
without the concept, which buries a rare concept's IoU: on the synthetic set it leaves no texture detector,
``docs/chest_xray.md``). The code's settings, and the text's:

- ``quantile: 0.99`` of the maps *upsampled* 7x7 -> 56x56 (``quantile_on: upsampled``; the code's
  ``tally_quantile`` over a sample of 100 images; exact here, ``kthvalue``, over every image of the run); the
  text says 0.005 (``quantile: 0.995``) of the feature maps (``quantile_on: features``);
- the unit mask ``S' > T`` (the code's ``hacts > level_at_99``; the text writes ``>=``, equal but for ties);
- ``union: all_images``: ``iou_from_conditional_indicator_mean`` counts the unit's pixels of *every* image
  in the union (its conditional tally reads the whole loader: ``loader=`` overrides ``sample_size=20``);
  ``concept_images`` is eq. 5 (sums over the images holding the concept);
- ``labels: single``: the code's segmentation is one label per pixel (where concepts overlap the highest
  concept index wins), resized nearest to 56x56 (``mask_size: 56``); ``multi`` keeps overlapping masks at
  their own size.

``compute()`` returns one row per unit (its best concept; NetDissect's ``tally_result.csv``), detectors
first; :meth:`Dissection.write_extras` adds ``<name>_iou.csv`` (every unit x concept),
``<name>_detectors.csv`` (detectors per concept, :func:`detector_counts`) and ``<name>.png`` (each
concept's top units on example images, :func:`xattr.viz.dissection.concept_units_figure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from xattr.analyses.base import Analysis
from xattr.core.checks import check_choice
from xattr.core.hooks import capture
from xattr.core.layers import resolve
from xattr.core.progress import progress
from xattr.errors import XattrConfigError
from xattr.methods.pathways.neurons import pack_bits, unpack_bits

MASKS = "concept_masks"
QUANTILE_ON = ("features", "upsampled")
UNIONS = ("concept_images", "all_images")
LABELS = ("single", "multi")


def single_label(masks: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` bool masks as the code's one-label-per-pixel segmentation: where concepts overlap, the
    highest concept index wins (the others are cleared there)."""
    c = masks.shape[1]
    idx = torch.arange(1, c + 1, device=masks.device).view(1, c, 1, 1)
    top = (masks.long() * idx).amax(1, keepdim=True)  # 0: no concept
    return top == idx


def resize_masks(masks: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, C, H, W)`` bool masks to ``size`` (``None``: unchanged)."""
    if size is None or tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks.float(), size=tuple(int(v) for v in size), mode="nearest") > 0.5
#: up-sampled unit maps held at once in compute() (elements, float32): about 128 MB
BLOCK_ELEMENTS = 1 << 25


def _upsample(acts: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear (``align_corners=False``) to ``size``; float32; ``None`` or the same size: unchanged."""
    if size is None or tuple(acts.shape[-2:]) == tuple(size):
        return acts.float()
    return F.interpolate(acts.float(), size=tuple(size), mode="bilinear", align_corners=False)


def quantile_thresholds(acts: torch.Tensor, quantile: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-unit thresholds ``T_k`` of ``acts`` ``(N, K, h, w)`` (upsampled to ``size`` first when given: the
    code's ``quantile_on: upsampled``): the value with exactly ``m = round((1 - quantile) * n)`` of the unit's
    ``n`` values above it (when they are distinct), i.e. the ``(n - m)``-th smallest (``m = 0``: the maximum)."""
    k = acts.shape[1]
    hw = acts.shape[2] * acts.shape[3] if size is None else size[0] * size[1]
    n = acts.shape[0] * hw
    m = int(round((1.0 - quantile) * n))
    rank = min(max(n - m, 1), n)
    out = torch.empty(k, dtype=torch.float32)
    ku = max(1, BLOCK_ELEMENTS // max(n, 1))                    # units per block
    rows = max(1, BLOCK_ELEMENTS // max(ku * hw, 1))            # images upsampled at once
    for u in range(0, k, ku):
        vals = torch.cat([_upsample(acts[i : i + rows, u : u + ku], size) for i in range(0, acts.shape[0], rows)])
        out[u : u + ku] = vals.transpose(0, 1).reshape(vals.shape[1], -1).kthvalue(rank, dim=1).values
    return out


def iou_sums(acts: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sums of eq. 5 over a block of images: ``acts`` ``(n, K, h, w)``, ``masks`` ``(n, C, H, W)`` bool,
    ``thresholds`` ``(K,)``. Returns ``inter``, ``union`` ``(K, C)`` float64, each summed over the images
    that contain the concept; the number of those images ``(C,)``; and ``|M_k|`` summed over the images that
    do *not* contain each concept ``(K, C)`` (what the code's union adds: ``union: all_images``)."""
    n, k = acts.shape[:2]
    up = _upsample(acts, tuple(masks.shape[-2:]))
    unit = (up > thresholds.view(1, k, 1, 1)).reshape(n, k, -1).float()  # M_k(x)   (n, K, P)
    label = masks.reshape(n, masks.shape[1], -1).float()                  # L_c(x)   (n, C, P)
    has = (label.sum(-1) > 0).double()                                     # (n, C)
    inter = torch.bmm(unit, label.transpose(1, 2)).double()                # (n, K, C)
    size = unit.sum(-1).double()                                           # (n, K)
    union = size[:, :, None] + label.sum(-1).double()[:, None, :] - inter
    w = has[:, None, :]
    return (inter * w).sum(0), (union * w).sum(0), has.sum(0), (size[:, :, None] * (1 - w)).sum(0)


def detector_counts(units: pd.DataFrame, concepts: Sequence[str] | None = None) -> pd.DataFrame:
    """Detectors per concept of a :meth:`Dissection.compute` frame (one row per unit), every concept in
    ``concepts`` listed (0 when none), then ``total``."""
    det = units[units["detector"].astype(bool)]
    counts = det.groupby("concept").size()
    names = list(concepts) if concepts is not None else sorted(units["concept"].astype(str).unique())
    rows = [{"concept": c, "detectors": int(counts.get(c, 0))} for c in names]
    rows.append({"concept": "total", "detectors": int(len(det))})
    return pd.DataFrame(rows, columns=["concept", "detectors"])


def _grey(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C, H, W)`` normalised images -> ``(B, H', W')`` uint8 grey thumbnails at ``size``, min-max."""
    g = x.detach().float().mean(1, keepdim=True)
    if tuple(g.shape[-2:]) != tuple(size):
        g = F.interpolate(g, size=size, mode="bilinear", align_corners=False)
    g = g[:, 0]
    lo = g.flatten(1).amin(1).view(-1, 1, 1)
    hi = g.flatten(1).amax(1).view(-1, 1, 1)
    return ((g - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8).cpu()


class Dissection(Analysis):
    """Network dissection of ``layer`` against the batches' ``concept_masks`` (see module docstring).

    Args:
        layer: the dissected layer (paper name or module path); its output must be ``(B, K, h, w)``.
        concepts: the concept names, in the order of the masks' channel axis (the dataset's ``concepts``);
            ``None``: ``concept_0``, ``concept_1``, ...
        quantile: the activation quantile of the threshold: 0.995 (paper, ``P(f > T) = 0.005``) or 0.99 (code).
        iou_threshold: a unit is a detector when its best IoU exceeds this (0.04).
        quantile_on: ``features`` (paper: ``T_k`` from the feature map's values) | ``upsampled`` (code: from
            the maps upsampled to the masks' size).
        union: ``concept_images`` (paper eq. 5: sums over the images holding the concept) | ``all_images``
            (code, netdissect's ``iou_from_conditional_indicator_mean``: the unit's pixels in every image count
            in the union).
        labels: ``multi`` (paper: a mask per concept) | ``single`` (code: one concept per pixel, the highest
            index where they overlap).
        mask_size: ``None`` (the masks' own size) | ``(H, W)`` the masks are resized to, nearest (code: 56).
        examples: images kept per concept for the figure (grey thumbnails, ``H * W`` bytes each).
        top_units: units per concept in the figure.

    >>> d = Dissection("denseblock4", concepts=["nodule", "mass"])
    >>> d.update(net, x, target, maps, concept_masks=masks)   # per batch
    >>> d.compute()   # unit, concept, iou, detector, ...
    """

    name = "dissection"
    needs = (MASKS,)
    paper = "Khakzar et al. (dissertation ch. 9), eq. 5 L1731; Bau et al., CVPR 2017 (network dissection)"

    def __init__(self, layer: str, concepts: Sequence[str] | None = None, quantile: float = 0.995,
                 iou_threshold: float = 0.04, quantile_on: str = "features", union: str = "concept_images",
                 labels: str = "multi", mask_size: int | Sequence[int] | None = None,
                 examples: int = 4, top_units: int = 3) -> None:
        if not isinstance(quantile, float | int) or not 0.0 < float(quantile) < 1.0:
            raise XattrConfigError(f"bad quantile {quantile!r}; valid choices: a number in (0, 1), "
                                   "0.995 (paper) or 0.99 (code)")
        if not isinstance(iou_threshold, float | int) or not 0.0 <= float(iou_threshold) < 1.0:
            raise XattrConfigError(f"bad iou_threshold {iou_threshold!r}; valid choices: a number in [0, 1), 0.04 (paper)")
        check_choice("quantile_on", quantile_on, QUANTILE_ON)
        check_choice("union", union, UNIONS)
        check_choice("labels", labels, LABELS)
        if mask_size is not None:
            mask_size = [int(mask_size)] * 2 if isinstance(mask_size, int | float) else [int(v) for v in mask_size]
            if len(mask_size) != 2 or min(mask_size) < 1:
                raise XattrConfigError(f"bad mask_size {mask_size!r}; valid choices: null, an integer >= 1 or [H, W]")
        self.quantile_on, self.union, self.labels = quantile_on, union, labels
        self.mask_size = None if mask_size is None else tuple(mask_size)
        self.layer = str(layer)
        self.concepts = [str(c) for c in concepts] if concepts is not None else None
        self.quantile, self.iou_threshold = float(quantile), float(iou_threshold)
        self.examples, self.top_units = int(examples), int(top_units)
        self._clear()

    def _clear(self) -> None:
        self.acts: list[torch.Tensor] = []     # (B, K, h, w) float16 per batch
        self.masks: list[torch.Tensor] = []    # (B, ceil(C * H * W / 8)) uint8 per batch
        self.shape: tuple[int, ...] | None = None  # (K, h, w, C, H, W)
        self.example_rows: list[list[int]] = []    # per concept: rows (over all images) kept for the figure
        self.example_images: dict[int, torch.Tensor] = {}  # row -> (H, W) uint8 grey
        self._cache: tuple | None = None

    # ----------------------------------------------------------------------------------- accumulate
    @property
    def n_images(self) -> int:
        return sum(a.shape[0] for a in self.acts)

    def names(self) -> list[str]:
        c = self.shape[3] if self.shape else len(self.concepts or [])
        return self.concepts if self.concepts is not None else [f"concept_{i}" for i in range(c)]

    def update(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               **extras: Any) -> None:
        masks = extras.get(MASKS)
        if masks is None:
            raise XattrConfigError("dissection needs batches with 'concept_masks' (B, C, H, W); valid choices: "
                                   "dataset=synthetic_cxr, or a dataset that yields concept masks")
        masks = torch.as_tensor(masks)
        if masks.dim() != 4:
            raise XattrConfigError(f"bad concept_masks shape {tuple(masks.shape)}; valid choices: (B, C, H, W) bool")
        if self.concepts is not None and masks.shape[1] != len(self.concepts):
            raise XattrConfigError(f"concept_masks have {masks.shape[1]} concepts, the config names "
                                   f"{len(self.concepts)}: {self.concepts}; valid choices: one mask per concept")
        with torch.no_grad():
            act = capture(model, resolve(model, self.layer).module, x)
        if isinstance(act, tuple | list):
            act = act[0]
        if act.dim() != 4:
            raise XattrConfigError(f"layer {self.layer!r} gives {tuple(act.shape)}; valid choices: a layer with "
                                   "spatial feature maps (B, K, h, w)")
        masks = resize_masks(masks.bool(), self.mask_size)
        if self.labels == "single":
            masks = single_label(masks)
        self.add(act, masks, _grey(x, tuple(masks.shape[-2:])))

    def add(self, act: torch.Tensor, masks: torch.Tensor, grey: torch.Tensor | None = None) -> None:
        """Keep a batch: activations ``(B, K, h, w)``, concept masks ``(B, C, H, W)`` bool, optional grey
        thumbnails ``(B, H, W)`` uint8 for the figure."""
        shape = (*act.shape[1:], *masks.shape[1:])
        if self.shape is None:
            self.shape = tuple(int(s) for s in shape)
            self.example_rows = [[] for _ in range(shape[3])]
        elif tuple(shape) != self.shape:
            raise ValueError(f"dissection batch of shape {tuple(shape)} after {self.shape}")
        start = self.n_images
        if grey is not None:
            has = masks.flatten(2).any(-1).cpu()  # (B, C)
            for c, rows in enumerate(self.example_rows):
                for i in torch.nonzero(has[:, c]).flatten().tolist():
                    if len(rows) < self.examples:
                        rows.append(start + i)
                        self.example_images[start + i] = grey[i].clone()
        self.acts.append(act.detach().to(torch.float16).cpu())
        self.masks.append(pack_bits(masks.detach().reshape(masks.shape[0], -1).cpu()))
        self._cache = None

    # ----------------------------------------------------------------------------------- compute
    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(self.acts), torch.cat(self.masks)

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape[3:]
        return unpack_bits(packed, c * h * w).view(-1, c, h, w)

    def iou(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``IoU`` ``(K, C)`` (NaN for concepts in no image), thresholds ``(K,)``, images per concept ``(C,)``."""
        if self._cache is not None:
            return self._cache
        acts, packed = self._all()
        k, c, h, w = self.shape[0], self.shape[3], self.shape[4], self.shape[5]
        thresholds = quantile_thresholds(acts, self.quantile, (h, w) if self.quantile_on == "upsampled" else None)
        inter = torch.zeros(k, c, dtype=torch.float64)
        union = torch.zeros(k, c, dtype=torch.float64)
        outside = torch.zeros(k, c, dtype=torch.float64)
        images = torch.zeros(c, dtype=torch.float64)
        ku = max(1, min(k, BLOCK_ELEMENTS // (h * w)))         # units, then images, per block of
        step = max(1, BLOCK_ELEMENTS // (ku * h * w))           # up-sampled maps held at once
        for i in progress(range(0, acts.shape[0], step), desc="dissection IoU", unit="block"):
            masks = self._unpack(packed[i : i + step])
            for u in range(0, k, ku):
                a, b, n, o = iou_sums(acts[i : i + step, u : u + ku], masks, thresholds[u : u + ku])
                inter[u : u + ku] += a
                union[u : u + ku] += b
                outside[u : u + ku] += o
            images += n
        if self.union == "all_images":
            union = torch.where(images > 0, union + outside, union)
        iou = torch.where(union > 0, inter / union.clamp_min(1e-300), torch.full_like(inter, float("nan")))
        self._cache = (iou, thresholds, images)
        return self._cache

    def compute(self) -> pd.DataFrame:
        cols = ["layer", "unit", "concept", "concept_index", "iou", "detector", "threshold", "images"]
        if self.shape is None:
            return pd.DataFrame(columns=cols)
        iou, thresholds, _ = self.iou()
        filled = torch.nan_to_num(iou, nan=-1.0)
        best = filled.argmax(1)
        score = filled.gather(1, best[:, None])[:, 0]
        names = self.names()
        df = pd.DataFrame({
            "layer": self.layer, "unit": np.arange(iou.shape[0]),
            "concept": [names[int(c)] for c in best], "concept_index": best.numpy(),
            "iou": torch.where(score >= 0, score, torch.full_like(score, float("nan"))).numpy(),
            "detector": (score > self.iou_threshold).numpy(), "threshold": thresholds.numpy(),
            "images": self.n_images}, columns=cols)
        return df.sort_values(["detector", "iou", "unit"], ascending=[False, False, True],
                              na_position="last").reset_index(drop=True)

    def iou_table(self) -> pd.DataFrame:
        """Every unit x concept: ``unit, concept, iou, images`` (images: those containing the concept)."""
        iou, _, images = self.iou()
        names = self.names()
        k, c = iou.shape
        return pd.DataFrame({"unit": np.repeat(np.arange(k), c), "concept": names * k,
                             "iou": iou.reshape(-1).numpy(), "images": np.tile(images.numpy().astype(int), k)})

    def write_extras(self, folder: str | Path, name: str | None = None) -> list[Path]:
        """Write ``<name>_iou.csv``, ``<name>_detectors.csv`` and the figure ``<name>.png`` to ``folder``."""
        from xattr.viz.dissection import concept_units_figure

        if self.shape is None:
            return []
        folder, name = Path(folder), name or self.name
        folder.mkdir(parents=True, exist_ok=True)
        units = self.compute()
        out = [folder / f"{name}_iou.csv", folder / f"{name}_detectors.csv", folder / f"{name}.png"]
        self.iou_table().to_csv(out[0], index=False)
        detector_counts(units, self.names()).to_csv(out[1], index=False)
        panels = self.figure_panels(units)
        if not panels:
            return out[:2]
        concept_units_figure(panels, out[2], title=f"network dissection of {self.layer}: top units per concept "
                             f"(red: unit mask, green: concept; IoU of eq. 5 over the dataset)")
        return out

    def figure_panels(self, units: pd.DataFrame | None = None) -> list[dict]:
        """For each concept with examples, its ``top_units`` units by IoU: the grey examples, the units'
        thresholded masks and the concept masks on them."""
        iou, thresholds, _ = self.iou()
        names = self.names()
        best = torch.nan_to_num(iou, nan=-1.0).argmax(1)
        panels = []
        for c, rows in enumerate(self.example_rows):
            if not rows:
                continue
            order = torch.argsort(torch.nan_to_num(iou[:, c], nan=-1.0), descending=True)[: self.top_units]
            acts = torch.cat([self._row(r)[0] for r in rows])      # (E, K, h, w)
            masks = torch.cat([self._row(r)[1] for r in rows])[:, c]  # (E, H, W)
            up = _upsample(acts[:, order], tuple(masks.shape[-2:])) > thresholds[order].view(1, -1, 1, 1)
            panels.append({
                "concept": names[c],
                "images": [self.example_images[r].numpy() for r in rows],
                "concept_masks": masks.numpy(),
                "units": [int(u) for u in order],
                "ious": [float(iou[u, c]) for u in order],
                "detector": [bool(best[u] == c and iou[u, c] > self.iou_threshold) for u in order],
                "unit_masks": up.permute(1, 0, 2, 3).numpy(),     # (U, E, H, W)
            })
        return panels

    def _row(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        for a, m in zip(self.acts, self.masks):
            if row < a.shape[0]:
                return a[row : row + 1], self._unpack(m[row : row + 1])
            row -= a.shape[0]
        raise IndexError(row)

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        acts, packed = (self._all() if self.acts else (None, None))
        return {"layer": self.layer, "shape": self.shape, "acts": acts, "masks": packed,
                "example_rows": [list(r) for r in self.example_rows],
                "example_images": {int(k): v.clone() for k, v in self.example_images.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._clear()
        if state.get("shape") is None:
            return
        self.shape = tuple(state["shape"])
        self.acts = [state["acts"].clone()]
        self.masks = [state["masks"].clone()]
        self.example_rows = [list(r) for r in state["example_rows"]]
        self.example_images = {int(k): v.clone() for k, v in state["example_images"].items()}

    def merge(self, other: Dissection) -> None:
        if other.shape is None:
            return
        if self.shape is None:
            self.load_state_dict(other.state_dict())
            return
        if self.shape != other.shape:
            raise ValueError(f"cannot merge dissections of different shapes {self.shape} and {other.shape}")
        offset = self.n_images
        for c, rows in enumerate(other.example_rows):
            for r in rows:
                if len(self.example_rows[c]) < self.examples:
                    self.example_rows[c].append(offset + r)
                    self.example_images[offset + r] = other.example_images[r].clone()
        self.acts += [a.clone() for a in other.acts]
        self.masks += [m.clone() for m in other.masks]
        self._cache = None
