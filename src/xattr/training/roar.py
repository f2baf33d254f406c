"""ROAR retraining units (``python -m xattr.train recipe=roar``): one training per (maps, percent, repeat).

Dissertation ch. 5 appendix C.3 (L1988: 30/50/70/90 % removed, 3 retrainings each, ResNet-8 on CIFAR-10)
and ch. 6 appendix D.4 (L2168: 10..90 %, retrained from scratch, test accuracy of the perturbed test set).
The loop is the ordinary :class:`xattr.training.module.Classifier` with the Trainer of ``make_trainer``;
the data are :class:`xattr.data.roar.RoarDataset` nodes of ``conf/recipe/roar.yaml`` (removal on the fly).

``roar.device_data=true`` (for GPUs) swaps the per-item loaders for :class:`DeviceRoarData`: the split in
the device's memory, removal, crop and flip batched there.

A *unit* is one training, in its own folder ``outputs/roar/<method>/p<percent>-r<repeat>``:

- ``results.json`` present: the unit is finished and skipped (:func:`prepare_unit` returns True);
- ``checkpoints/last.ckpt`` present (a killed training): the unit resumes from it (``ckpt_path=last``);
- otherwise it trains from scratch; ``roar.repeat`` is the seed of the repeat.

:class:`ResNet8Net` (``net=resnet8``) is the net recipe: ROAR's ResNet-8 with configurable widths (the
tests train a narrow one), exported as a state dict that ``load_model("cifar_resnet8", weights=...)`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from xattr.core.preprocess import Preprocess
from xattr.core.store import RunStore
from xattr.data.roar import n_removed
from xattr.errors import XattrConfigError, missing_file
from xattr.models.cifar_resnet8 import CIFAR10_PRE, ResNet8

BASE = "base"  # roar.method of the unmodified baseline (roar.percent=0): the model the maps are computed on


class ResNet8Net:
    """Net recipe of ROAR's ResNet-8 (:class:`xattr.models.cifar_resnet8.ResNet8`) with ``widths``."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256), num_classes: int = 10,
                 channels_last: bool = False, compile: bool = False) -> None:
        self.widths = tuple(int(w) for w in widths)
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise XattrConfigError(f"bad net.widths {list(widths)}; valid choices: three positive integers")
        self.num_classes, self.channels_last, self.compile = int(num_classes), bool(channels_last), bool(compile)

    @property
    def preprocess(self) -> Preprocess:
        return CIFAR10_PRE

    def build(self, data: Any = None) -> nn.Module:
        net = ResNet8(self.num_classes, self.widths).train()
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return torch.compile(net) if self.compile else net

    def export(self, path: str | Path, net: nn.Module, data: Any = None, **meta: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        net = getattr(net, "_orig_mod", net)  # a compiled network: its module's plain keys
        torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, path)
        return path


def maps_method(maps_dir: Path) -> str | None:
    """The ``method_name`` recorded in a map run's config (None when it has none)."""
    cfg = RunStore(maps_dir).config()
    return None if cfg is None else cfg.get("method_name")


def prepare_unit(cfg: DictConfig, run_dir: Path) -> bool:
    """Before one ROAR training: True when the unit in ``run_dir`` is finished (skip it); otherwise checks
    the maps and sets ``cfg.ckpt_path=last`` when a killed training left ``checkpoints/last.ckpt``."""
    roar = cfg.roar
    percent = float(roar.percent)
    n_removed(percent, 1, 1)  # range check: one line naming the value
    done = run_dir / "results.json"
    if done.is_file():
        acc = json.loads(done.read_text()).get("test_acc")
        acc = f"{acc:.4f}" if isinstance(acc, float) else acc
        print(f"roar unit {roar.method} {percent:g}% repeat {roar.repeat}: done (test accuracy {acc}), skipped "
              f"-> {run_dir}")
        return True
    if percent > 0:
        if str(roar.method) == BASE:
            raise XattrConfigError(f"roar.percent={percent:g} needs maps: set roar.method=<method> (maps in "
                                   f"{roar.maps_root}/<method>) or roar.maps=<run dir of python -m xattr.run>")
        maps = Path(str(roar.maps))
        if not RunStore(maps).has_finished_work():
            raise missing_file(f"maps of {roar.method} for ROAR", maps,
                               "python -m xattr.run experiment=pathways_t1_roar (or inputiba_f6_roar) "
                               f"method={roar.method} writes them; or roar.maps=<its run dir>")
        recorded = maps_method(maps)
        if recorded is not None and str(recorded) != str(roar.method):
            print(f"note: the maps in {maps} are of method {recorded}, this unit is labelled {roar.method}")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and cfg.get("ckpt_path") in (None, "", "null", "none"):
        with open_dict(cfg):
            cfg.ckpt_path = "last"
    return False


def decoded_images(base: Any, cache_dir: str | Path | None = None) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 of every image of ``base`` (``base.image(i)`` -> PIL), decoded once and cached
    as ``<cache_dir>/roar_images-<key>.pt`` (key: root, names; about 180 MiB for CIFAR-10's 60 000)."""
    import hashlib

    import numpy as np

    key = hashlib.sha1((str(getattr(base, "root", "")) + "|" + "|".join(map(str, getattr(base, "names", []))))
                       .encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"roar_images-{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    from xattr.core.progress import progress

    arrays = [np.asarray(base.image(i), dtype=np.uint8) for i in progress(range(len(base)), desc="decoding images")]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if path is not None:
        from xattr.core.store import atomic_torch

        atomic_torch(path, images)
    return images


class DeviceRoarData(pl.LightningDataModule):
    """ROAR's splits held on the training device (``roar.device_data=true``; for GPUs): the images decoded
    once (cached), the removal masks of ``percent`` computed once, every batch normalised, filled, cropped
    and flipped on the device (:class:`xattr.data.roar.DeviceRoarBatches`); DDP ranks take disjoint shares.
    Same splits as :class:`xattr.training.data.ClassificationData` (seeded, per class), same removal as
    :class:`xattr.data.roar.RoarDataset` (tested equal), without per-item loading."""

    def __init__(self, dataset: DictConfig, roar: DictConfig, preprocess: Preprocess, batch_size: int,
                 val_fraction: float, stratified: bool, seed: int, cache_dir: str | Path | None = None,
                 channels_last: bool = False, augment: bool = True, val_split: str = "random") -> None:
        super().__init__()
        self.val_split = val_split
        self.dataset_cfg, self.roar, self.preprocess = dataset, roar, preprocess
        self.batch_size, self.val_fraction, self.stratified = int(batch_size), float(val_fraction), bool(stratified)
        self.seed, self.cache_dir, self.channels_last, self.augment = int(seed), cache_dir, channels_last, augment
        self.parts: dict[str, torch.Tensor] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.parts is not None:
            return
        from hydra.utils import instantiate

        from xattr.data.roar import load_maps
        from xattr.training.data import split_indices

        base = instantiate(self.dataset_cfg.base)
        base = base(preprocess=self.preprocess) if callable(base) and not hasattr(base, "__getitem__") else base
        self.images, self.labels = decoded_images(base, self.cache_dir), torch.tensor(base.labels)
        parts = list(base.parts)
        train_pool = [i for i, p in enumerate(parts) if p == "train"]
        tr, va = split_indices([base.labels[i] for i in train_pool], self.val_fraction, self.stratified, self.seed,
                               self.val_split)
        self.parts = {"train": torch.tensor([train_pool[i] for i in tr]), "val": torch.tensor([train_pool[i] for i in va]),
                      "test": torch.tensor([i for i, p in enumerate(parts) if p == "test"])}
        self.maps = None
        if float(self.roar.percent) > 0:
            maps, ids, present = load_maps(self.roar.maps, self.roar.quantise)
            if len(present) < len(base) or not bool(present[: len(base)].all()):
                raise XattrConfigError(f"the map run {self.roar.maps} lacks maps for some of the {len(base)} images; "
                                       "finish it (re-run the same xattr.run command)")
            self.maps = maps[: len(base)]

    def sizes(self) -> dict[str, int]:
        self.setup()
        return {k: len(v) for k, v in self.parts.items()}

    def _batches(self, split: str) -> Any:
        from xattr.data.roar import DeviceRoarBatches

        self.setup()
        dev = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        idx = self.parts[split]
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:  # a disjoint, equal share per rank (the tail that does not divide is dropped)
            rank = self.trainer.global_rank
            perm = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(self.seed))]
            idx = perm[: len(perm) // world * world][rank::world]
        train = split == "train"
        return DeviceRoarBatches(self.images[idx].to(dev), self.labels[idx], self.preprocess.mean, self.preprocess.std,
                                 self.roar.fill, maps=None if self.maps is None else self.maps[idx],
                                 percent=float(self.roar.percent), batch_size=self.batch_size,
                                 augment=train and self.augment, shuffle=train, channels_last=self.channels_last,
                                 seed=self.seed, ties=self.roar.get("ties", "stable"),
                                 quantise_train=train and self.roar.get("train_fill", "float") == "uint8")

    def train_dataloader(self) -> Any:
        return self._batches("train")

    def val_dataloader(self) -> Any:
        return self._batches("val")

    def test_dataloader(self) -> Any:
        return self._batches("test")


def device_data(cfg: DictConfig, preprocess: Preprocess) -> DeviceRoarData:
    """The :class:`DeviceRoarData` of a ``recipe=roar`` config (``roar.device_data=true``)."""
    return DeviceRoarData(cfg.dataset, cfg.roar, preprocess, cfg.batch_size, cfg.data.val_fraction,
                          cfg.data.stratified, cfg.seed, cache_dir=cfg.paths.get("cache_dir"),
                          channels_last=bool(cfg.net.get("channels_last", False)),
                          augment=cfg.data.get("augment") is not None, val_split=cfg.data.get("val_split", "random"))
