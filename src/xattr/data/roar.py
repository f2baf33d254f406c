"""ROAR's dataset: images with their top-ranked pixels removed on the fly, from stored attribution maps.

Remove-and-retrain (Hooker et al. 2019; dissertation ch. 5 appendix C.3 L1988, ch. 6 sec. 4.4.3 and D.4
L2168) retrains a network on a copy of the dataset whose most relevant pixels, by an attribution method's
map, are replaced by an uninformative value. As in the authors' RoarTorch code:

- the maps are computed once for every image (target: the predicted class) by ``python -m xattr.run``
  and read here from its run folder (``heatmaps/*.npz``, by dataset ``index``); RoarTorch stored them as
  8-bit min-max PNG, hence ``quantise="uint8"`` (default) re-quantises each map the same way
  (:func:`quantise_uint8`); ``none`` ranks the stored float16 maps;
- per image the top ``int(p H W)`` pixels of the channel-max map (:func:`n_removed`, :func:`removal_mask`)
  get all three channels set to the dataset mean (``fill``, in [0, 1] units, normalised with the model's
  preprocessing). Ties (``ties``): ``numpy`` is RoarTorch's ``argsort()[-k:]`` on the map read back as
  float32 (``uint8 / 255``), whose order scatters equal values over the image (the reference, and the
  configs' default: a uint8 map of a sparse method has many zeros, so ties decide which pixels go);
  ``stable`` takes the lower flat index first (a contiguous block);
- ``train_fill``: ``uint8`` is RoarTorch's training pipeline (``CompoundImageFolderDataset``): the image in
  [0, 1] gets the mean, then ``(image * 255).astype(uint8)`` (truncation: the fill becomes 125/255 for
  0.4914, and a kept value k/255 can come back as k - 1), then the augmentation; its validation and test
  images get 0 in normalised space, which is the mean exactly (``float``). ``float`` fills every split with
  the mean;
- train-time augmentation (RandomCrop(32, pad 4), horizontal flip) is applied *after* removal: it is the
  datamodule's ``augment``, which wraps this dataset's items.

No copy of the dataset is written per percentile: :class:`RoarDataset` keeps the maps in memory (uint8:
1 KiB per 32x32 image, 60 MiB for all of CIFAR-10) and removes pixels in ``__getitem__``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xattr.core.preprocess import Preprocess
from xattr.core.ranking import numpy_order, share_count
from xattr.core.store import RunStore
from xattr.errors import XattrConfigError, missing_file, unknown

QUANTISE = ("uint8", "none")
ROAR_TIES = ("numpy", "stable")
TRAIN_FILLS = ("uint8", "float")


def n_removed(percent: float, h: int, w: int) -> int:
    """``int(p H W)`` with ``p = percent / 100``, computed exactly (``Fraction``), so 70% of 1000 pixels is
    700, never 699 from a float round-off."""
    p = Fraction(str(percent)) / 100
    if not 0 <= p <= 1:
        raise XattrConfigError(f"bad roar.percent {percent!r}; valid choices: a number in [0, 100]")
    return share_count(p, h * w)


def quantise_uint8(maps: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled to [0, 255] and truncated to uint8, as RoarTorch's PNG files (a constant map
    becomes all zeros). ``maps``: ``(N, ...)``."""
    m = maps.float().flatten(1)
    lo, hi = m.min(1, keepdim=True).values, m.max(1, keepdim=True).values
    scaled = (m - lo) / (hi - lo).clamp_min(1e-12) * 255.0
    return scaled.clamp(0, 255).to(torch.uint8).view(maps.shape)


def removal_mask(maps: torch.Tensor, percent: float, ties: str = "stable") -> torch.Tensor:
    """``(N, H, W)`` bool: True at the top ``int(p H W)`` pixels of each map. ``maps``: ``(N, H, W)`` or
    ``(N, C, H, W)`` (reduced by the channel max first). Ties: ``stable`` (the lower flat index ranks higher)
    | ``numpy`` (RoarTorch's ``argsort()[-k:]`` on the float32 map, uint8 maps read as ``uint8 / 255``)."""
    if ties not in ROAR_TIES:
        raise unknown("roar.ties", ties, ROAR_TIES)
    if maps.dim() == 4:
        maps = maps.amax(1)
    if maps.dim() != 3:
        raise XattrConfigError(f"ROAR maps must be (N, H, W) or (N, C, H, W), got shape {tuple(maps.shape)}")
    n, h, w = maps.shape
    k = n_removed(percent, h, w)
    flat = maps.reshape(n, h * w)
    if ties == "numpy":
        values = flat.float() / 255 if flat.dtype == torch.uint8 else flat.float()  # as ToTensor reads the PNG
        order = numpy_order(values, descending=True)
    else:
        order = torch.sort(flat.float(), dim=1, descending=True, stable=True).indices
    mask = torch.zeros(n, h * w, dtype=torch.bool, device=maps.device)
    mask.scatter_(1, order[:, :k], True)
    return mask.view(n, h, w)


def truncate_uint8(x01: torch.Tensor) -> torch.Tensor:
    """RoarTorch's ``(image * 255).astype(np.uint8)`` of a float32 image in [0, 1] (truncation), as uint8."""
    return (x01.float() * 255).to(torch.uint8)


def remove(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., C, H, W)`` with every channel of the pixels in ``mask`` ``(..., H, W)`` set to ``fill`` ``(C,)``."""
    m = mask.unsqueeze(-3)
    return torch.where(m, fill.to(x).view(-1, 1, 1), x)


def normalised_fill(fill: Sequence[float], preprocess: Preprocess | None) -> torch.Tensor:
    """The fill colour (``[0, 1]`` RGB) in the model's normalised input space."""
    f = torch.tensor([float(v) for v in fill])
    if preprocess is None:
        return f
    return (f - torch.tensor(preprocess.mean)) / torch.tensor(preprocess.std)


def load_maps(run_dir: str | Path, quantise: str = "uint8") -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``(maps, ids, present)`` of a ``python -m xattr.run`` folder: ``maps[index]`` ``(N, H, W)`` (uint8 or
    float32), ``ids[index]`` and ``present[index]`` (bool) for ``N`` = the largest stored dataset index + 1."""
    if quantise not in QUANTISE:
        raise unknown("roar.quantise", quantise, QUANTISE)
    store = RunStore(run_dir)
    if not store.has_finished_work():
        raise missing_file("attribution maps (heatmaps/*.npz) for ROAR", store.heatmaps_dir,
                           "run python -m xattr.run experiment=pathways_t1_roar method=<m> first "
                           "(dataset.attribution.split=all)")
    stored, stored_index, names = store.heatmaps_by_index()
    maps, index = torch.from_numpy(stored.astype(np.float32)), torch.from_numpy(stored_index)
    if quantise == "uint8":
        maps = quantise_uint8(maps)
    n = int(index.max()) + 1
    out = torch.zeros((n, *maps.shape[1:]), dtype=maps.dtype)
    out[index] = maps
    present = torch.zeros(n, dtype=torch.bool)
    present[index] = True
    ids = [""] * n
    for i, name in zip(index.tolist(), names):
        ids[i] = name
    return out, ids, present


def save_maps(run_dir: str | Path, maps: torch.Tensor, ids: Sequence[str], index: Sequence[int] | None = None,
              method: str | None = None, labels: Sequence[int] | None = None) -> Path:
    """Write maps ``(N, H, W)`` as a run folder :func:`load_maps` reads (one finished batch of the run store,
    :meth:`~xattr.core.store.RunStore.write_maps`, and a config with ``method_name``): for maps made outside
    ``xattr.run`` (e.g. a RoarTorch PNG folder) and for tests."""
    store = RunStore(run_dir)
    store.write_maps(maps, list(ids), index, labels)
    if method is not None:
        store.write_config({"method_name": method})
    return store.dir


class RoarDataset(Dataset):
    """``base`` with the top ``percent`` % of each image's pixels (by the maps of ``maps``) set to ``fill``.

    Args:
        base: the image dataset (dict items with ``x``, ``label``, ``id``, ``index``), or a factory called
            with ``preprocess=`` (a ``_partial_: true`` config node); its ``index`` keys the maps, so it must
            be the dataset the maps were computed on (CIFAR-10 ``split: all``). Every item's ``id`` is
            checked against the stored one.
        maps: the map run's folder, or a tensor ``(N, H, W)`` / ``(N, C, H, W)`` indexed by ``index``;
            ``None`` or ``percent`` 0: no removal (the unmodified baseline).
        percent: share of pixels removed, in percent (``int(p H W)`` pixels).
        part: keep only the items whose ``base.parts`` entry is this (``train`` / ``test``); None: all.
        fill: the replacement colour in [0, 1] RGB (the dataset mean), normalised with ``preprocess``.
        quantise: ``uint8`` (RoarTorch's 8-bit min-max PNG) or ``none``.
        ties: ``numpy`` (RoarTorch's order among equal map values) | ``stable`` (see the module docstring).
        train_fill: ``uint8`` (the filled training image truncated to 8 bits, as RoarTorch) | ``float``;
            applies to :meth:`training_view`'s items only (validation and test are filled in float, as the code's).
        limit: a deterministic prefix of the kept items (quick runs); None: all.
    """

    def __init__(self, base: Dataset | Callable[..., Dataset], maps: str | Path | torch.Tensor | None = None,
                 percent: float = 0.0, part: str | None = None,
                 fill: Sequence[float] = (0.4914, 0.4822, 0.4465), quantise: str = "uint8",
                 preprocess: Preprocess | None = None, limit: int | None = None, ties: str = "stable",
                 train_fill: str = "float") -> None:
        if quantise not in QUANTISE:
            raise unknown("roar.quantise", quantise, QUANTISE)
        if ties not in ROAR_TIES:
            raise unknown("roar.ties", ties, ROAR_TIES)
        if train_fill not in TRAIN_FILLS:
            raise unknown("roar.train_fill", train_fill, TRAIN_FILLS)
        self.ties, self.train_fill = ties, train_fill
        self.truncate = False  # on in training_view() only: the training items, not validation nor test
        # the model's normalisation, to undo and redo it around the 8-bit truncation (identity without one)
        self._mean = torch.tensor(preprocess.mean).view(-1, 1, 1) if preprocess is not None else torch.tensor(0.0)
        self._std = torch.tensor(preprocess.std).view(-1, 1, 1) if preprocess is not None else torch.tensor(1.0)
        self.base = base if isinstance(base, Dataset) else base(preprocess=preprocess)
        self.percent = float(percent)
        n_removed(self.percent, 1, 1)  # range check
        indices = list(range(len(self.base)))
        if part is not None:
            parts = getattr(self.base, "parts", None)
            if parts is None:
                raise XattrConfigError(f"roar part={part!r} needs a base dataset with `parts` (CIFAR-10 split=all)")
            choices = sorted(set(parts))
            if part not in choices:
                raise unknown("roar part", part, choices)
            indices = [i for i in indices if parts[i] == part]
        if limit is not None:
            indices = indices[: int(limit)]
        self.indices = indices
        self.fill = normalised_fill(fill, preprocess)
        self._fill01 = torch.tensor([float(v) for v in fill])
        self.ids: list[str] | None = None
        self.maps: torch.Tensor | None = None
        if maps is not None and self.percent > 0:
            if isinstance(maps, torch.Tensor):
                self.maps = quantise_uint8(maps) if quantise == "uint8" else maps
            else:
                self.maps, self.ids, present = load_maps(maps, quantise)
                missing = [i for i in self.indices if i >= len(present) or not present[i]]
                if missing:
                    raise XattrConfigError(
                        f"the map run {maps} has no map for {len(missing)} of the {len(self.indices)} images "
                        f"(first missing dataset index {missing[0]}); finish it (re-run the same xattr.run "
                        "command: finished batches are skipped) or use the dataset the maps were made on")
            if self.maps.dim() == 4:
                self.maps = self.maps.amax(1)

    def training_view(self) -> RoarDataset:
        """This dataset as the training loop reads it: with ``train_fill="uint8"``, the filled image truncated to
        8 bits (RoarTorch's training pipeline); validation and test items stay in float, as the code's."""
        view = copy.copy(self)
        view.truncate = self.train_fill == "uint8"
        return view

    @property
    def labels(self) -> list[int]:
        base = getattr(self.base, "labels", None)
        if base is None:
            return [int(self.base[i]["label"]) for i in self.indices]
        return [int(base[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def mask(self, index: int) -> torch.Tensor:
        """``(H, W)`` bool: the pixels removed from the image at dataset ``index``."""
        return removal_mask(self.maps[index : index + 1], self.percent, self.ties)[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[self.indices[i]])
        if self.maps is None:
            return item
        index = int(item["index"])
        if self.ids is not None and self.ids[index] != str(item["id"]):
            raise XattrConfigError(
                f"ROAR maps do not belong to this dataset: index {index} is {item['id']!r} here but "
                f"{self.ids[index]!r} in the map run; compute the maps on the same dataset (split, per_class)")
        if self.truncate:  # back to the uint8 image, then RoarTorch's float32 arithmetic exactly
            mean, std = self._mean, self._std
            x01 = (item["x"] * std + mean).mul(255).round().clamp(0, 255) / 255
            filled = remove(x01, self.mask(index), self._fill01.to(x01))
            item["x"] = (truncate_uint8(filled).float() / 255 - mean) / std
            return item
        item["x"] = remove(item["x"], self.mask(index), self.fill)
        return item


# ---------------------------------------------------------------- batched pipeline (data held on the GPU)
def crop_flip_batch(x: torch.Tensor, padding: int = 4, pad_value: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """RandomCrop(H, ``padding``) + horizontal flip of a whole batch ``(B, C, H, W)`` on its device, the batched
    form of :class:`xattr.training.data.RandomCropFlip`: pad by ``padding`` with ``pad_value`` ``(C,)``
    (default 0), crop at ``offsets`` ``(B, 2)`` (drawn uniformly in [0, 2 padding] when None), flip where
    ``flips`` ``(B,)`` (drawn with probability 1/2 when None)."""
    b, c, h, w = x.shape
    p = int(padding)
    canvas = x.new_zeros(b, c, h + 2 * p, w + 2 * p)
    if pad_value is not None:
        canvas += pad_value.to(x).view(1, c, 1, 1)
    canvas[:, :, p : p + h, p : p + w] = x
    if offsets is None:
        offsets = torch.randint(0, 2 * p + 1, (b, 2), device=x.device, generator=generator)
    if flips is None:
        flips = torch.rand(b, device=x.device, generator=generator) < 0.5
    rows = offsets[:, :1].to(x.device) + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:].to(x.device) + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips.to(x.device).view(b, 1), cols.flip(1), cols)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return canvas[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class DeviceRoarBatches:
    """A ROAR split held on one device: uint8 images ``(N, 3, H, W)``, labels, the removal masks of one
    percentile computed once (:func:`removal_mask`); batches are normalised, filled, (``augment``) cropped and
    flipped there, so a GPU never waits for a loader. Yields ``{"x", "label", "target", "index"}`` dicts."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 fill: Sequence[float], maps: torch.Tensor | None = None, percent: float = 0.0,
                 batch_size: int = 256, augment: bool = True, shuffle: bool = True, padding: int = 4,
                 channels_last: bool = False, seed: int = 0, ties: str = "stable",
                 quantise_train: bool = False) -> None:
        dev = images.device
        self.images, self.labels = images, labels.to(dev)
        self.mean = torch.tensor(list(mean), device=dev).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), device=dev).view(1, -1, 1, 1)
        self.fill = ((torch.tensor(list(fill), device=dev) - self.mean.view(-1)) / self.std.view(-1))
        self.black = -self.mean.view(-1) / self.std.view(-1)  # torchvision pads before Normalize
        self.masks = None
        if maps is not None and percent > 0:
            self.masks = torch.cat([removal_mask(m.to(dev), percent, ties) for m in maps.split(4096)])
        self.fill01 = torch.tensor(list(fill), device=dev)
        self.quantise_train = bool(quantise_train)
        self.batch_size, self.augment, self.shuffle, self.padding = int(batch_size), augment, shuffle, padding
        self.channels_last = channels_last
        self.generator = torch.Generator(device=dev).manual_seed(int(seed))

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n, dev = len(self.images), self.images.device
        order = torch.randperm(n, device=dev, generator=self.generator) if self.shuffle else torch.arange(n, device=dev)
        for s in range(0, n, self.batch_size):
            idx = order[s : s + self.batch_size]
            if self.masks is not None and self.quantise_train:  # RoarTorch's training images (see RoarDataset)
                x01 = remove(self.images[idx].float() / 255, self.masks[idx], self.fill01)
                x = (truncate_uint8(x01).float() / 255 - self.mean) / self.std
            else:
                x = (self.images[idx].float() / 255 - self.mean) / self.std
                if self.masks is not None:
                    x = remove(x, self.masks[idx], self.fill)
            if self.augment:
                x = crop_flip_batch(x, self.padding, self.black, generator=self.generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = self.labels[idx]
            yield {"x": x, "label": y, "target": y, "index": idx}
