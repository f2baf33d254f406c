"""A SYNTHETIC chest-X-ray-like set (``dataset=synthetic_cxr``): procedural grey images with two lung fields
and class-specific lesions with exact masks. It is a stand-in so the chest X-ray chapters' mechanism
(dissertation ch. 8-9: weighted BCE, Inverse IBA IoU, network dissection) runs where no chest X-ray can
reach; its numbers are about this synthetic set, never about NIH ChestX-ray8 or BrixIA.

**Interface (what every batch holds; agreed with the dissection / semantic-attribution code).**
Items are dicts, collated by :func:`xattr.data.transforms.collate`:

- ``x``: ``(B, C, S, S)`` float, the grey image replicated to ``C = len(preprocess.mean)`` channels and
  normalised with the model's ``preprocess`` mean / std (``S`` = the dataset's ``size``, 64 by default;
  generated at that size, never resized, so masks are exact).
- ``findings``: ``(B, K)`` float multi-hot, which of the ``K`` findings the image shows (every split).
- ``label``: depends on ``label`` (the constructor argument):
  ``multi_hot`` (training, ``conf/dataset/synthetic_cxr.yaml``'s ``train`` / ``test`` nodes) -> ``(B, K)``
  float = ``findings``; ``index`` (attribution / estimation) -> ``(B,)`` long, one finding per row, so
  ``target=label`` explains it (:mod:`xattr.engine.targets`).
- ``target``: added by the collate of training only (= ``label``); the engine resolves its own.
- ``concept_masks``: ``(B, K, S, S)`` bool, one exact mask per finding in the order of
  :data:`FINDINGS` (= the dataset config's ``concepts``); all False for a finding the image does not show.
- ``boxes``: list of ``(N_i, 4)`` float xyxy boxes (pixel edges, ``x2``/``y2`` exclusive): the tight box of
  the explained finding's mask for ``rows=finding``; of every shown finding for ``rows=image``.
- ``id`` (list of str: ``<split>_<image>`` plus ``_<finding>`` for ``rows=finding``), ``index`` ``(B,)``.

**Which finding a multi-label image is explained for** (``rows``):

- ``finding`` (attribution default): one row per (image, shown finding), ``label`` = that finding; images
  without a finding have no row. IoU is then per finding, as Table 3 of ch. 8 reports per pathology.
- ``image`` (dissection: every image once, so dataset sums count each image once): ``label`` = the first
  shown finding in :data:`FINDINGS` order, ``-1`` when none (use ``target=top1`` or a class index then).

**The generator** (deterministic from ``seed``, split and image number; images drawn on the fly): body
intensity 0.75 with a vertical gradient, two elliptic lung fields at about 0.3 (smooth sigmoid edge), a
low-frequency sinusoid texture and pixel noise (sigma 0.02). Each shown finding adds a constant-sign
intensity on exactly its mask, centred inside a lung: ``blob`` a disc (+0.35), ``ring`` an annulus (+0.35),
``streak`` a thick segment (+0.30), ``texture`` a square with a checkerboard (+0.15 / +0.35). Findings are
independent Bernoulli draws with the imbalanced ``rates`` (default 30 / 10 / 3 / 1 %).
``train`` and ``test`` images come from disjoint seed streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from xattr.core.labels import SYNTHETIC_CXR_FINDINGS
from xattr.core.preprocess import Preprocess
from xattr.errors import XattrConfigError, unknown

FINDINGS = tuple(SYNTHETIC_CXR_FINDINGS)
SPLITS = ("train", "test")
ROWS = ("finding", "image")
LABELS = ("index", "multi_hot")
DEFAULT_RATES = (0.3, 0.1, 0.03, 0.01)
_SPLIT_SALT = {"train": 1, "test": 2}


def _gen(seed: int, split: str, i: int, stream: int) -> torch.Generator:
    """One independent generator per (seed, split, image, stream): images are the same in any order."""
    key = ((int(seed) * 1_000_003 + _SPLIT_SALT[split]) * 10_000_019 + int(i)) * 7 + int(stream)
    return torch.Generator().manual_seed(key % (2**63 - 1))


def draw_findings(seed: int, split: str, n: int, rates: Sequence[float]) -> torch.Tensor:
    """``(n, K)`` float multi-hot findings: image ``i``'s finding ``k`` is ``u_ik < rates[k]``."""
    out = torch.zeros(n, len(rates))
    r = torch.tensor([float(v) for v in rates])
    for i in range(n):
        out[i] = (torch.rand(len(rates), generator=_gen(seed, split, i, 0)) < r).float()
    return out


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def lesion_mask(kind: str, s: int, g: torch.Generator, lungs: list[tuple[float, float, float, float]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask (S, S) bool, added intensity (S, S))`` of one lesion of ``kind`` placed inside a lung.

    The added intensity is > 0 exactly on the mask (so the mask is exact), 0 elsewhere."""
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    cx, cy, rx, ry = lungs[int(torch.randint(0, 2, (1,), generator=g))]
    ang, rad = _uniform(g, 0, 2 * math.pi), math.sqrt(_uniform(g, 0, 1)) * 0.5
    px, py = cx + rad * rx * math.cos(ang), cy + rad * ry * math.sin(ang)
    if kind == "blob":
        r = _uniform(g, 0.06, 0.09) * s
        mask = (xx - px) ** 2 + (yy - py) ** 2 <= r * r
        add = 0.35 * mask
    elif kind == "ring":
        r, w = _uniform(g, 0.08, 0.11) * s, max(0.03 * s, 1.5)
        d = ((xx - px) ** 2 + (yy - py) ** 2).sqrt()
        mask = (d <= r) & (d >= r - w)
        add = 0.35 * mask
    elif kind == "streak":
        length, w = _uniform(g, 0.2, 0.3) * s, max(0.025 * s, 1.2)
        th = _uniform(g, 0, math.pi)
        ux, uy = math.cos(th), math.sin(th)
        t = ((xx - px) * ux + (yy - py) * uy).clamp(-length / 2, length / 2)
        d = ((xx - px - t * ux) ** 2 + (yy - py - t * uy) ** 2).sqrt()
        mask = d <= w
        add = 0.30 * mask
    elif kind == "texture":
        half = _uniform(g, 0.08, 0.1) * s
        mask = ((xx - px).abs() <= half) & ((yy - py).abs() <= half)
        period = max(2, round(s / 16))
        checker = ((xx // period + yy // period) % 2).float()
        add = (0.15 + 0.2 * checker) * mask
    else:
        raise unknown("synthetic finding", kind, FINDINGS)
    return mask, add.float()


def render(seed: int, split: str, i: int, size: int, findings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` of ``split``: ``(grey (S, S) in [0, 1], masks (K, S, S) bool)`` for its ``findings`` (K,)."""
    s = int(size)
    g = _gen(seed, split, i, 1)
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    img = 0.75 + 0.1 * (yy / s - 0.5)
    lungs = []
    for side in (0.3, 0.7):
        cx = (side + _uniform(g, -0.03, 0.03)) * s
        cy = (0.47 + _uniform(g, -0.03, 0.03)) * s
        rx, ry = _uniform(g, 0.13, 0.16) * s, _uniform(g, 0.28, 0.32) * s
        lungs.append((cx, cy, rx, ry))
        e = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        img = img - 0.45 * torch.sigmoid((1 - e) * 8)
    for _ in range(3):  # low-frequency anatomy-like texture
        fx, fy, ph = _uniform(g, 1, 4), _uniform(g, 1, 4), _uniform(g, 0, 2 * math.pi)
        img = img + 0.02 * torch.sin(2 * math.pi * (fx * xx + fy * yy) / s + ph)
    img = img + 0.02 * torch.randn(s, s, generator=g)
    masks = torch.zeros(len(FINDINGS), s, s, dtype=torch.bool)
    for k, kind in enumerate(FINDINGS):
        if k < len(findings) and findings[k] > 0:
            m, add = lesion_mask(kind, s, _gen(seed, split, i, 2 + k), lungs)
            masks[k] = m
            img = img + add
    return img.clamp(0, 1).float(), masks


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """The tight ``(1, 4)`` xyxy box of a ``(H, W)`` bool mask (x2, y2 exclusive); ``(0, 4)`` if empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return torch.zeros(0, 4)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)


class SyntheticCXR(Dataset):
    """The synthetic chest-X-ray-like set (module docstring: the interface and the generator).

    Args:
        split: ``train`` or ``test`` (disjoint seed streams).
        n: number of images in the split.
        size: image side in pixels (64-128 sensible).
        rates: positive rate of each finding (:data:`FINDINGS` order).
        rows: ``finding`` (one row per image and shown finding) or ``image``.
        label: ``index`` (``(B,)`` long, one finding per row) or ``multi_hot`` (``(B, K)`` float, training).
        seed: of the whole set.
        preprocess: the model's preprocessing (mean / std used; the size is the dataset's).
        limit: keep the first ``limit`` rows.
    """

    concepts = FINDINGS

    def __init__(self, split: str = "test", n: int = 200, size: int = 64, rates: Sequence[float] = DEFAULT_RATES,
                 rows: str = "finding", label: str = "index", seed: int = 0, preprocess: Preprocess | None = None,
                 limit: int | None = None) -> None:
        if split not in SPLITS:
            raise unknown("synthetic_cxr split", split, SPLITS)
        if rows not in ROWS:
            raise unknown("synthetic_cxr rows", rows, ROWS)
        if label not in LABELS:
            raise unknown("synthetic_cxr label", label, LABELS)
        if label == "multi_hot" and rows != "image":
            raise XattrConfigError("synthetic_cxr label=multi_hot needs rows=image (one row per image); "
                                   "valid choices: rows=image, or label=index")
        rates = [float(r) for r in rates]
        if len(rates) != len(FINDINGS) or not all(0.0 <= r <= 1.0 for r in rates):
            raise XattrConfigError(f"bad synthetic_cxr rates {rates}; valid choices: {len(FINDINGS)} rates in [0, 1] "
                                   f"for {', '.join(FINDINGS)}")
        if int(size) < 32:
            raise XattrConfigError(f"synthetic_cxr size {size} too small; valid choices: 32 or more (64-128)")
        self.split, self.n, self.size, self.seed = split, int(n), int(size), int(seed)
        self.rates, self.rows, self.label_kind = rates, rows, label
        self.p = preprocess or Preprocess((0.5,) * 3, (0.25,) * 3, size=self.size, resize=self.size)
        self.findings = draw_findings(self.seed, split, self.n, rates)
        if rows == "finding":
            self.items = [(i, k) for i in range(self.n) for k in range(len(FINDINGS)) if self.findings[i, k] > 0]
        else:
            self.items = [(i, -1) for i in range(self.n)]
        if limit is not None:
            self.items = self.items[: int(limit)]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # training reads these: ``labels`` (the multi-hot matrix, or the finding per row), ``strata`` (the
    # rarest shown finding + 1, 0 for none: a stratified validation split keeps the rare positives)
    @property
    def labels(self) -> torch.Tensor | list[int]:
        if self.label_kind == "multi_hot":
            return self.findings[[i for i, _ in self.items]]
        return [int(self._index_label(i, k)) for i, k in self.items]

    @property
    def strata(self) -> list[int]:
        order = sorted(range(len(FINDINGS)), key=lambda k: self.rates[k])  # rarest first
        out = []
        for i, _ in self.items:
            shown = [k for k in order if self.findings[i, k] > 0]
            out.append(shown[0] + 1 if shown else 0)
        return out

    def _index_label(self, i: int, k: int) -> int:
        if k >= 0:
            return k
        shown = torch.nonzero(self.findings[i]).flatten()
        return int(shown[0]) if len(shown) else -1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, row: int) -> dict:
        i, k = self.items[row]
        if i not in self._cache:  # drawn once per process (training reads every image once per epoch)
            self._cache[i] = render(self.seed, self.split, i, self.size, self.findings[i])
        grey, masks = self._cache[i]
        c = len(self.p.mean)
        m = torch.tensor(self.p.mean).view(c, 1, 1)
        s = torch.tensor(self.p.std).view(c, 1, 1)
        x = (grey.unsqueeze(0).expand(c, -1, -1) - m) / s
        if k >= 0:
            boxes, name = mask_box(masks[k]), f"{self.split}_{i:05d}_{FINDINGS[k]}"
        else:
            shown = [j for j in range(len(FINDINGS)) if self.findings[i, j] > 0]
            boxes = torch.cat([mask_box(masks[j]) for j in shown]) if shown else torch.zeros(0, 4)
            name = f"{self.split}_{i:05d}"
        label = self.findings[i].clone() if self.label_kind == "multi_hot" else self._index_label(i, k)
        return {"x": x.contiguous(), "label": label, "findings": self.findings[i].clone(), "concept_masks": masks,
                "boxes": boxes, "id": name, "index": row}
