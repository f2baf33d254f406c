"""Train / validation / test splits of a dataset config, as a LightningDataModule.

The dataset config (``conf/dataset/<name>.yaml``) gives the training nodes:

- ``train`` and ``test``: the two splits of the dataset, each a ``_target_`` node (built with
  ``preprocess=`` the model's preprocessing);
- ``augment`` (optional): a ``_target_`` node of a train-time augmentation, a callable on one item's ``x``
  (built with ``preprocess=``), e.g. :class:`RandomCropFlip`;
- text only, ``read`` and ``build_vocab``: the reviews are read first (``read(split=...)`` returns row
  dicts with a ``label``), the vocabulary is built from the *training* rows only
  (``build_vocab(rows=...)``), and ``train`` / ``test`` are built with ``rows=`` and ``vocab=``.

The validation split is carved from the training split with a fixed seed: ``val_fraction`` of it, per
class when ``stratified`` (ROAR keeps 1/8 of every class). ``limit`` / ``test_limit`` keep a balanced
random subset of the training / test split (per class, fixed seed) before that, for quick runs.

Batches are dicts (docs/ARCHITECTURE.md): ``x``, ``label``, ``target`` (= ``label``), ``id``, ``index``
(row in the split's dataset); text adds ``mask``. The dataset's own ``collate`` is used when it has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from xattr.core.preprocess import Preprocess
from xattr.core.signals import worker_ignores_interrupts
from xattr.data.transforms import collate as image_collate
from xattr.errors import XattrConfigError


# ---------------------------------------------------------------- index helpers (pure, tested directly)
def balanced_indices(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """``n`` indices drawn at random (fixed ``seed``), as equal a share per class as the classes allow,
    sorted. A class with fewer rows than its share gives all it has."""
    g = torch.Generator().manual_seed(int(seed))
    by_class = _by_class(labels)
    classes = sorted(by_class)
    if n >= len(labels):
        return list(range(len(labels)))
    share = {c: n // len(classes) + (k < n % len(classes)) for k, c in enumerate(classes)}
    out: list[int] = []
    for c in classes:
        idx = by_class[c]
        perm = torch.randperm(len(idx), generator=g).tolist()
        out += [idx[i] for i in perm[: share[c]]]
    return sorted(out)


VAL_SPLITS = ("random", "first")


def split_indices(labels: Sequence[int], val_fraction: float, stratified: bool = True,
                  seed: int = 0, order: str = "random") -> tuple[list[int], list[int]]:
    """``(train, val)`` positions into ``labels``; both lists sorted and disjoint.

    ``random``: ``val_fraction`` of all rows (``stratified``: of every class, rounded) go to validation, drawn
    with a fixed ``seed``. ``first`` (RoarTorch's ``CIFAR10._uniform_train_val_split``): per class the first
    ``int((1 - val_fraction) n)`` rows train and the rest validate, the same split for every seed.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise XattrConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if order not in VAL_SPLITS:
        raise XattrConfigError(f"bad data.val_split {order!r}; valid choices: {', '.join(VAL_SPLITS)}")
    g = torch.Generator().manual_seed(int(seed))
    groups = [idx for _, idx in sorted(_by_class(labels).items())] if stratified else [list(range(len(labels)))]
    val: list[int] = []
    for idx in groups:
        if order == "first":
            val += idx[int((1.0 - float(val_fraction)) * len(idx)):]
            continue
        perm = torch.randperm(len(idx), generator=g).tolist()
        val += [idx[i] for i in perm[: int(round(len(idx) * float(val_fraction)))]]
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)


def _by_class(labels: Sequence[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        out.setdefault(int(y), []).append(i)
    return out


def labels_of(ds: Dataset) -> list[int]:
    """The class label of every item: ``ds.labels``, ``ds.rows[i]["label"]`` (text), else read item by item."""
    if isinstance(ds, Subset):
        base = labels_of(ds.dataset)
        return [base[i] for i in ds.indices]
    if getattr(ds, "strata", None) is not None:  # multi-label sets (chest X-ray): the stratum of each item
        return [int(y) for y in ds.strata]
    if getattr(ds, "labels", None) is not None:
        return [int(y) for y in ds.labels]
    if getattr(ds, "rows", None) is not None:
        return [int(r["label"]) for r in ds.rows]
    out = []
    for i in range(len(ds)):
        item = ds[i]
        out.append(int(item["label"] if isinstance(item, Mapping) else item[1]))
    return out


# ---------------------------------------------------------------- augmentation, collate
class RandomCropFlip:
    """CIFAR's train-time augmentation on a normalised ``(C, H, W)`` tensor: pad by ``padding``, crop a
    random ``size`` square, flip left-right with probability 1/2 (``flip``). ``fill``: ``black`` pads with
    the normalised value of a black pixel (torchvision's ``RandomCrop(32, 4)`` before ``Normalize``), ``zero``
    with 0 (the mean colour). Draws from torch's global generator (in training seeded per item by :class:`Augmented`)."""

    def __init__(self, size: int = 32, padding: int = 4, flip: bool = True, fill: str = "black",
                 preprocess: Preprocess | None = None) -> None:
        if fill not in ("black", "zero"):
            raise XattrConfigError(f"unknown fill {fill!r}; valid choices: black, zero")
        self.size, self.padding, self.flip = int(size), int(padding), bool(flip)
        self.fill = None
        if fill == "black" and preprocess is not None:
            self.fill = -torch.tensor(preprocess.mean) / torch.tensor(preprocess.std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape
        p, s = self.padding, self.size
        canvas = x.new_zeros(c, h + 2 * p, w + 2 * p)
        if self.fill is not None and len(self.fill) == c:
            canvas += self.fill.to(x).view(c, 1, 1)
        canvas[:, p : p + h, p : p + w] = x
        i = int(torch.randint(0, h + 2 * p - s + 1, (1,)))
        j = int(torch.randint(0, w + 2 * p - s + 1, (1,)))
        out = canvas[:, i : i + s, j : j + s]
        if self.flip and torch.rand(1).item() < 0.5:
            out = out.flip(-1)
        return out.contiguous()

    def __repr__(self) -> str:
        return f"RandomCropFlip(size={self.size}, padding={self.padding}, flip={self.flip})"


class Augmented(Dataset):
    """``base`` with ``augment`` applied to each item's ``x`` (dict items). A key ``(i, seed)`` (from
    :class:`SeededSampler`) draws item ``i``'s augmentation from torch's generator seeded with ``seed`` (the
    global state is put back after): the same crops whatever process or worker loads it, so a resumed
    training draws what the uninterrupted one drew."""

    def __init__(self, base: Dataset, augment: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.base, self.augment = base, augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        i, seed = key if isinstance(key, tuple) else (key, None)
        item = self.base[i]
        if not isinstance(item, Mapping):
            raise XattrConfigError("data.augment works on image datasets (dict items); set data.augment=null")
        if seed is None:
            return {**item, "x": self.augment(item["x"])}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return {**item, "x": self.augment(item["x"])}


class SeededSampler(Sampler):
    """A random permutation of ``range(n)`` per epoch drawn from ``generator`` (the only state: checkpointed
    by :class:`xattr.training.resume.RandomState`); ``seeds``: each index comes with a seed for its
    augmentation, ``(i, seed)`` (:class:`Augmented`)."""

    def __init__(self, n: int, generator: torch.Generator, seeds: bool = False) -> None:
        self.n, self.generator, self.seeds = int(n), generator, bool(seeds)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        if not self.seeds:
            return iter(order)
        seeds = torch.randint(0, 2**62, (self.n,), generator=self.generator).tolist()
        return iter(list(zip(order, seeds)))


def collate_with_target(items: list[dict]) -> dict:
    """The image collate, plus ``target`` = ``label`` (training's target is the label)."""
    batch = image_collate(items)
    if "target" not in batch:
        batch["target"] = batch["label"].clone()
    return batch


# ---------------------------------------------------------------- the datamodule
class ClassificationData(pl.LightningDataModule):
    """Train / val / test loaders from a dataset config (see the module docstring).

    Args:
        dataset: the ``dataset`` config node (``train``, ``test``, optional ``augment``, text: ``read`` and
            ``build_vocab``).
        preprocess: the model's preprocessing, given to the image datasets and the augmentation.
        batch_size, num_workers: of every loader.
        val_fraction, stratified: the validation share of the training split (per class when stratified).
        val_split: ``random`` (seeded) | ``first`` (the first rows of every class train: RoarTorch's split).
        limit, test_limit: balanced random subsets of the training / test split (None: all).
        augment: a train-time augmentation node (``_target_``) or callable; None: none.
        seed: of the subsets and the validation split.
    """

    def __init__(self, dataset: Mapping, preprocess: Preprocess | None = None, batch_size: int = 128,
                 num_workers: int = 0, val_fraction: float = 0.1, stratified: bool = True,
                 limit: int | None = None, test_limit: int | None = None, augment: Any = None,
                 seed: int = 0, val_split: str = "random") -> None:
        super().__init__()
        for key in ("train", "test"):
            if dataset.get(key) is None:
                raise XattrConfigError(f"dataset {dataset.get('name')!r} has no '{key}' node: training needs "
                                       "dataset.train and dataset.test (see conf/dataset/cifar10.yaml)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise XattrConfigError(f"bad batch_size {batch_size!r}; valid choices: an integer >= 1")
        for key, value in (("data.limit", limit), ("data.test_limit", test_limit)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise XattrConfigError(f"bad {key} {value!r}; valid choices: an integer >= 1, or null for all items")
        split_indices([0, 0], val_fraction, order=val_split)  # checks the values before any work
        self.val_split = val_split
        self.dataset_cfg, self.preprocess = dataset, preprocess
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.val_fraction, self.stratified, self.seed = float(val_fraction), bool(stratified), int(seed)
        self.limit = int(limit) if limit is not None else None
        self.test_limit = int(test_limit) if test_limit is not None else None
        self.augment_cfg = augment
        self.train_generator = torch.Generator().manual_seed(self.seed)  # shuffling and worker seeds
        self.vocab = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.collate: Callable = collate_with_target
        self.augment: Callable | None = None

    # built once, in the first ``setup`` (train.py calls it before building the network: text models need
    # the vocabulary); Lightning's later calls are no-ops
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.dataset_cfg.get("read") is not None:
            self._setup_rows()
        else:
            self._setup_items()

    def _pool_and_split(self, labels: Sequence[int]) -> tuple[list[int], list[int]]:
        pool = balanced_indices(labels, self.limit, self.seed) if self.limit else list(range(len(labels)))
        tr, va = split_indices([labels[i] for i in pool], self.val_fraction, self.stratified, self.seed,
                               self.val_split)
        if not tr or not va:
            per = " per class" if self.stratified else ""
            raise XattrConfigError(
                f"data.val_fraction={self.val_fraction:g}{per} of {len(pool)} training items leaves "
                f"{len(tr)} for training and {len(va)} for validation; raise data.limit or change data.val_fraction")
        return [pool[i] for i in tr], [pool[i] for i in va]

    def _setup_items(self) -> None:
        ds = self.dataset_cfg
        base = instantiate(ds.train, preprocess=self.preprocess)
        train_idx, val_idx = self._pool_and_split(labels_of(base))
        # a dataset whose training items differ from its validation ones (ROAR's uint8 training fill) says so
        train_view = base.training_view() if hasattr(base, "training_view") else base
        train: Dataset = Subset(train_view, train_idx)
        augment = self.augment_cfg
        if augment is not None and not callable(augment):
            augment = instantiate(augment, preprocess=self.preprocess)
        if augment is not None:
            train = Augmented(train, augment)
        self.train_set, self.val_set = train, Subset(base, val_idx)
        test = instantiate(ds.test, preprocess=self.preprocess)
        if self.test_limit:
            test = Subset(test, balanced_indices(labels_of(test), self.test_limit, self.seed))
        self.test_set = test
        self.collate = getattr(base, "collate", None) or collate_with_target
        self.augment = augment

    def _setup_rows(self) -> None:
        ds = self.dataset_cfg
        if self.augment_cfg is not None:
            raise XattrConfigError("data.augment works on image datasets; set data.augment=null for text")
        rows = instantiate(ds.read, split="train")
        train_idx, val_idx = self._pool_and_split([int(r["label"]) for r in rows])
        train_rows, val_rows = [rows[i] for i in train_idx], [rows[i] for i in val_idx]
        self.vocab = instantiate(ds.build_vocab, rows=train_rows)  # from the training rows only
        self.train_set = instantiate(ds.train, rows=train_rows, vocab=self.vocab)
        self.val_set = instantiate(ds.train, rows=val_rows, vocab=self.vocab)
        test_rows = instantiate(ds.read, split="test")
        if self.test_limit:
            picks = balanced_indices([int(r["label"]) for r in test_rows], self.test_limit, self.seed)
            test_rows = [test_rows[i] for i in picks]
        self.test_set = instantiate(ds.test, rows=test_rows, vocab=self.vocab)
        self.collate = getattr(self.train_set, "collate", None) or collate_with_target
        self.augment = None

    def sizes(self) -> dict[str, int]:
        self.setup()
        return {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set)}

    def generators(self) -> dict[str, torch.Generator]:
        """The generators the loaders draw from (checkpointed by :class:`xattr.training.resume.RandomState`)."""
        return {"train": self.train_generator}

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        """No loader draws from torch's global generator (a resumed run draws what the uninterrupted one
        drew): the training order and augmentation seeds come from :attr:`train_generator`
        (:class:`SeededSampler`), the workers' base seeds from a fixed generator of each loader's own."""
        sampler = SeededSampler(len(ds), self.train_generator, seeds=isinstance(ds, Augmented)) if shuffle else None
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=self.collate, persistent_workers=self.num_workers > 0,
                          worker_init_fn=worker_ignores_interrupts if self.num_workers else None,
                          pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
