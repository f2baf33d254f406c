"""ROAR (issue 12): removal count and ranking, the fill, augmentation after removal, the retraining units
(results per unit, re-run skips, killed run resumes), the synthetic known-region check, the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from tests.helpers import compose_train, sigkill_once_written
from xattr.config import CONF_DIR
from xattr.core.preprocess import Preprocess
from xattr.data.roar import (
    DeviceRoarBatches,
    RoarDataset,
    crop_flip_batch,
    load_maps,
    n_removed,
    normalised_fill,
    quantise_uint8,
    removal_mask,
    save_maps,
)
from xattr.data.roar_synthetic import RegionClasses
from xattr.errors import XattrConfigError
from xattr.tables.roar import roar_auc, summarise_units
from xattr.training.data import Augmented, ClassificationData, RandomCropFlip

REPO = Path(__file__).resolve().parents[1]
# a narrow ResNet-8, no worker processes, no sanity pass, CPU
TINY = ["net.widths=[4,8,8]", "dataset.num_workers=0", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false", "logger=none"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convolutions on a shared 2-core machine: one thread is many times faster than two contending."""
    yield


# ---------------------------------------------------------------- removal: count, ranking, fill
def test_n_removed_is_int_p_h_w_exactly() -> None:
    assert n_removed(30, 32, 32) == 307  # 307.2
    assert n_removed(10, 32, 32) == 102  # 102.4
    assert n_removed(70, 10, 100) == 700  # 0.7 * 1000 in floats is 699.999...
    assert n_removed(6.25, 32, 32) == 64
    assert n_removed(0, 32, 32) == 0 and n_removed(100, 32, 32) == 1024
    with pytest.raises(XattrConfigError, match=r"bad roar.percent 120; valid choices: a number in \[0, 100\]"):
        n_removed(120, 32, 32)


@pytest.mark.parametrize("percent", [10, 30, 50, 70, 90])
def test_removal_mask_takes_exactly_the_highest_ranked_pixels(percent: int) -> None:
    g = torch.Generator().manual_seed(percent)
    maps = torch.randn(6, 8, 8, generator=g)  # distinct values
    mask = removal_mask(maps, percent)
    k = int(percent * 64 / 100)
    assert mask.flatten(1).sum(1).tolist() == [k] * 6
    for m, r in zip(maps, mask):
        assert m[r].min() > m[~r].max()  # every removed pixel outranks every kept one


def test_removal_ranks_by_the_channel_max_and_breaks_ties_by_position() -> None:
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 2, 1, 1] = 5.0  # only channel 2 is high at (1, 1)
    maps[0, 0, 0, 1] = 3.0
    assert removal_mask(maps, 25)[0].tolist() == [[False, False], [False, True]]
    assert removal_mask(maps, 50)[0].tolist() == [[False, True], [False, True]]
    flat = torch.zeros(1, 2, 2)  # all tied: the lowest flat indices first
    assert removal_mask(flat, 50)[0].tolist() == [[True, True], [False, False]]


def test_uint8_quantisation_is_min_max_truncated() -> None:
    q = quantise_uint8(torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, -1.0, -1.0, -1.0]]))
    assert q.dtype == torch.uint8
    assert q.tolist() == [[0, 85, 170, 255], [0, 0, 0, 0]]
    q = quantise_uint8(torch.tensor([[0.1, 0.2, 0.3]]))  # 127.5 truncates to 127, as astype(uint8)
    assert q.tolist() == [[0, 127, 255]]


class _Images(torch.utils.data.Dataset):
    """Items whose every pixel value is distinct and positive: a removed value can be recognised anywhere."""

    def __init__(self, n: int = 4, size: int = 8, preprocess: Preprocess | None = None) -> None:
        self.n, self.size = n, size
        self.labels = [i % 2 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        s = self.size
        x = 1.0 + torch.arange(3 * s * s, dtype=torch.float32).view(3, s, s) + 1000.0 * i
        return {"x": x, "label": self.labels[i], "id": f"img{i}", "index": i, "boxes": torch.zeros(0, 4)}


def test_roar_dataset_replaces_exactly_the_top_pixels_with_the_dataset_mean() -> None:
    pre = Preprocess((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), size=8, resize=8)
    fill = (0.4914, 0.4822, 0.4465)
    maps = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))
    ds = RoarDataset(_Images(4), maps=maps, percent=30, fill=fill, preprocess=pre, quantise="none")
    want = normalised_fill(fill, pre)
    # the normalised fill, de-normalised, is the dataset mean
    assert torch.allclose(want * torch.tensor(pre.std) + torch.tensor(pre.mean), torch.tensor(fill))
    for i in range(4):
        x, orig = ds[i]["x"], _Images(4)[i]["x"]
        filled = (x == want.view(3, 1, 1)).all(0)
        assert int(filled.sum()) == n_removed(30, 8, 8) == 19
        assert torch.equal(filled, removal_mask(maps[i : i + 1], 30)[0])
        assert torch.equal(x[:, ~filled], orig[:, ~filled])  # the rest untouched
    assert ds.labels == [0, 1, 0, 1]
    assert torch.equal(RoarDataset(_Images(4), maps=maps, percent=0)[2]["x"], _Images(4)[2]["x"])


def test_augmentation_comes_after_removal_no_removed_pixel_reappears() -> None:
    torch.manual_seed(0)
    maps = torch.rand(4, 8, 8)
    ds = RoarDataset(_Images(4), maps=maps, percent=50, fill=(-7.0, -7.0, -7.0), quantise="none")
    aug = Augmented(ds, RandomCropFlip(size=8, padding=3, flip=True))  # what ClassificationData does
    for i in range(4):
        removed = set(_Images(4)[i]["x"][:, removal_mask(maps[i : i + 1], 50)[0]].flatten().tolist())
        kept = set(_Images(4)[i]["x"][:, ~removal_mask(maps[i : i + 1], 50)[0]].flatten().tolist())
        for _ in range(25):
            out = aug[i]["x"]
            values = set(out.flatten().tolist())
            assert not values & removed, "a removed pixel came back"
            assert values <= kept | {-7.0, 0.0}  # kept pixels, the fill, the crop's zero padding
            assert -7.0 in values


def test_datamodule_applies_removal_then_augmentation_to_train_only() -> None:
    node = {"_target_": "xattr.data.roar.RoarDataset",
            "base": {"_target_": "xattr.data.roar_synthetic.RegionClasses", "_partial_": True, "n_train": 16,
                     "n_test": 8}, "maps": None, "percent": 0, "quantise": "none"}
    dataset = OmegaConf.create({"name": "region", "train": {**node, "part": "train"}, "test": {**node, "part": "test"}})
    data = ClassificationData(dataset, batch_size=4, val_fraction=0.25, augment=RandomCropFlip(size=32, padding=4))
    data.setup()
    assert isinstance(data.train_set, Augmented) and isinstance(data.train_set.base.dataset, RoarDataset)
    assert data.sizes() == {"train": 12, "val": 4, "test": 8}


# ---------------------------------------------------------------- maps from a run folder
def test_load_maps_by_index_and_missing_or_foreign_maps_fail_clearly(tmp_path: Path) -> None:
    maps = torch.arange(4 * 4 * 4, dtype=torch.float32).view(4, 4, 4)
    save_maps(tmp_path / "run", maps[2:], ["img2", "img3"], index=[2, 3], method="gradient")
    save_maps(tmp_path / "run", maps[:2], ["img0", "img1"], index=[0, 1])
    got, ids, present = load_maps(tmp_path / "run", quantise="none")
    assert torch.equal(got, maps) and ids == ["img0", "img1", "img2", "img3"] and present.all()
    assert load_maps(tmp_path / "run")[0].dtype == torch.uint8

    save_maps(tmp_path / "half", maps[:2], ["img0", "img1"], index=[0, 1])
    with pytest.raises(XattrConfigError, match="has no map for 2 of the 4 images"):
        RoarDataset(_Images(4, size=4), maps=tmp_path / "half", percent=50)
    save_maps(tmp_path / "other", maps, ["a", "b", "c", "d"])
    with pytest.raises(XattrConfigError, match="ROAR maps do not belong to this dataset: index 0 is 'img0'"):
        RoarDataset(_Images(4, size=4), maps=tmp_path / "other", percent=50)[0]
    with pytest.raises(XattrConfigError, match="missing attribution maps"):
        load_maps(tmp_path / "nothing")


# ---------------------------------------------------------------- the synthetic known-region check
def _synthetic_unit(tmp_path: Path, name: str, maps: torch.Tensor | None, percent: float) -> float:
    data = RegionClasses(n_train=480, n_test=200)
    if maps is not None:
        save_maps(tmp_path / "maps" / name, maps, data.ids(), method=name)
    cfg = compose_train(["recipe=roar", f"roar.method={name}", f"roar.percent={percent}", f"roar.out_dir={tmp_path}",
                         f"roar.maps_root={tmp_path}/maps", "net.widths=[8,16,16]", "batch_size=32",
                         "trainer.max_epochs=4", "roar.quantise=none", *TINY[1:]],
                        tmp_path / name)
    with open_dict(cfg):
        for part in ("train", "test"):
            cfg.dataset[part].base = {"_target_": "xattr.data.roar_synthetic.RegionClasses", "_partial_": True,
                                      "n_train": 480, "n_test": 200}
        cfg.data.augment = None
    from xattr.train import train

    return json.loads((train(cfg) / "results.json").read_text())["test_acc"]


def test_removing_the_true_region_drops_to_chance_a_random_map_of_its_size_does_not(tmp_path: Path) -> None:
    data = RegionClasses(n_train=480, n_test=200)
    assert n_removed(6.25, 32, 32) == 8 * 8  # the region
    true_acc = _synthetic_unit(tmp_path, "region", data.true_maps(), 6.25)
    random_acc = _synthetic_unit(tmp_path, "scattered", data.random_maps(), 6.25)
    print("ROAR synthetic: region", true_acc, "scattered", random_acc)
    assert true_acc < 0.40, true_acc  # chance: 0.25 (4 classes, 200 test images)
    assert random_acc > 0.90, random_acc


# ---------------------------------------------------------------- units: one result each, re-run skips, resume
def _cli(args: list[str], background: bool = False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "xattr.train", *args]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _cifar_maps(shared_data: Path, run_dir: Path, per_class: int, method: str = "gradient") -> None:
    """Random maps for CIFAR-10 split=all (first ``per_class`` per class), keyed as xattr.run keys them."""
    from xattr.data.cifar10 import Cifar10

    ds = Cifar10(shared_data / "cifar10" / "cifar10-jpeg.zip", split="all", per_class=per_class)
    ids = [ds[i]["id"] for i in range(len(ds))]
    save_maps(run_dir, torch.rand(len(ds), 32, 32, generator=torch.Generator().manual_seed(0)), ids, method=method)


@pytest.mark.shared
def test_smoke_sweep_writes_one_result_per_unit_and_a_rerun_skips_them(shared_data: Path, tmp_path: Path) -> None:
    _cifar_maps(shared_data, tmp_path / "maps" / "gradient", per_class=20)
    args = ["--multirun", "recipe=roar", "roar=smoke", "dataset.per_class=20", "roar.method=gradient",
            "roar.percent=0,30", f"roar.out_dir={tmp_path}/units", f"roar.maps_root={tmp_path}/maps",
            f"paths.data_dir={shared_data}", "trainer.max_epochs=1", "batch_size=50", *TINY]
    p = _cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    results = {u: tmp_path / "units" / "gradient" / u / "results.json" for u in ("p0-r0", "p30-r0")}
    stamps = {}
    for u, f in results.items():
        res = json.loads(f.read_text())
        # val_split first (RoarTorch's): per class the first int(7/8 * 20) = 17 train, the other 3 validate
        assert res["train_size"] == 170 and res["val_size"] == 30 and res["test_size"] == 200, res
        assert res["epochs"] == 1 and 0.0 <= res["test_acc"] <= 1.0
        assert (f.parent / "cifar_resnet8.pt").is_file()
        stamps[u] = f.stat().st_mtime_ns

    p = _cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count(": done (test accuracy") == 2, p.stdout[-2000:]
    assert {u: f.stat().st_mtime_ns for u, f in results.items()} == stamps  # nothing retrained

    from xattr.table import main as table_main

    assert table_main(["pathways_t1_roar", str(tmp_path / "units"), "--out", str(tmp_path / "tables")]) == 0
    md = (tmp_path / "tables" / "pathways_t1_roar.md").read_text()
    assert "| Gradient" in md and "0.728" in md and (tmp_path / "tables" / "pathways_t1_roar.png").is_file()


@pytest.mark.shared
def test_killed_unit_resumes_from_its_last_checkpoint(shared_data: Path, tmp_path: Path) -> None:
    _cifar_maps(shared_data, tmp_path / "maps" / "gradient", per_class=20)
    args = ["recipe=roar", "dataset.per_class=20", "roar.method=gradient", "roar.percent=50",
            f"roar.out_dir={tmp_path}/units", f"roar.maps_root={tmp_path}/maps", f"paths.data_dir={shared_data}",
            "trainer.max_epochs=3", "batch_size=10", *TINY]
    unit = tmp_path / "units" / "gradient" / "p50-r0"
    last = unit / "checkpoints" / "last.ckpt"
    proc = _cli(args, background=True)
    sigkill_once_written(proc, last)  # written at the end of epoch 0; epoch 1 is then under way
    assert not (unit / "results.json").exists()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["epoch"] < 2

    from xattr.train import train

    res = json.loads((train(compose_train(args, unit)) / "results.json").read_text())  # the same command again
    assert res["resumed_from"] == str(last)
    assert res["started_at"] == {"epoch": saved["epoch"] + 1, "global_step": saved["global_step"]}
    assert res["epochs"] == 3 and res["global_step"] == 3 * (saved["global_step"] // (saved["epoch"] + 1))


# ---------------------------------------------------------------- configs, AUC, the fill constant
def test_roar_configs_compose_with_the_protocols() -> None:
    cfg = compose_train(["recipe=roar"], Path("/tmp/x"))
    assert cfg.model.name == "cifar_resnet8" and list(cfg.net.widths) == [64, 128, 256]
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.scheduler.step_size, cfg.scheduler.gamma) == (
        0.001, 0.0001, 10, 0.5)
    assert (cfg.batch_size, cfg.trainer.max_epochs, cfg.data.val_fraction, cfg.roar.quantise) == (256, 50, 0.125, "uint8")
    assert cfg.dataset.train._target_ == "xattr.data.roar.RoarDataset" and cfg.dataset.train.part == "train"
    assert cfg.dataset.test.part == "test" and cfg.dataset.base.split == "all"
    assert compose_train(["recipe=roar", "roar=paper"], Path("/tmp/x")).trainer.max_epochs == 30
    smoke = compose_train(["recipe=roar", "roar=smoke"], Path("/tmp/x"))
    assert (smoke.dataset.per_class, smoke.trainer.max_epochs) == (200, 2)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        params = {p: compose("train", overrides=["recipe=roar", f"roar={p}"], return_hydra_config=True)
                  .hydra.sweeper.params for p in ("default", "paper", "smoke")}
    assert params["default"]["roar.percent"] == "10,30,50,70,90" and params["default"]["roar.repeat"] == "0,1,2"
    assert params["paper"]["roar.percent"] == "30,50,70,90"
    assert params["smoke"]["roar.percent"] == "30,70" and params["smoke"]["roar.repeat"] == "0"
    assert len(params["default"]["roar.method"].split(",")) == 8


def test_roar_auc_is_the_normalised_trapezoid() -> None:
    # (0.8 + 0.6) / 2 * 0.2 + (0.6 + 0.5) / 2 * 0.2 + (0.5 + 0.3) / 2 * 0.2 = 0.33 over a range of 0.6
    assert roar_auc([30, 50, 70, 90], [0.8, 0.6, 0.5, 0.3]) == pytest.approx(0.33 / 0.6)
    assert roar_auc([90, 30], [0.3, 0.9]) == pytest.approx(0.6)  # order does not matter
    units = [{"method": "g", "percent": p, "repeat": r, "acc": a, "dir": ""}
             for r, accs in enumerate([(0.8, 0.4), (0.6, 0.2)]) for p, a in zip((30, 90), accs)]
    s = summarise_units(units, [30, 90])["g"]
    assert s["acc"][30.0][:2] == pytest.approx((0.7, 0.1))  # mean, s.e. of (0.8, 0.6)
    assert s["auc"][0] == pytest.approx(0.5) and s["auc"][1] == pytest.approx(0.1)  # AUCs 0.6 and 0.4
    assert "auc_with_10" not in s
    # with the 10% point (0.9): (0.9 + 0.7) / 2 * 0.2 + (0.7 + 0.3) / 2 * 0.6 = 0.46 over a range of 0.8
    s10 = summarise_units([*units, {"method": "g", "percent": 10, "repeat": 0, "acc": 0.9, "dir": ""}], [30, 90])["g"]
    assert s10["auc"][0] == pytest.approx(0.5) and s10["auc_with_10"] == pytest.approx(0.46 / 0.8)


@pytest.mark.shared
def test_configured_fill_is_the_cifar10_training_mean(shared_data: Path) -> None:
    from xattr.data.cifar10 import Cifar10

    ds = Cifar10(shared_data / "cifar10" / "cifar10-jpeg.zip", split="train", per_class=60,
                 preprocess=Preprocess((0.0,) * 3, (1.0,) * 3, size=32, resize=32))
    mean = torch.stack([ds[i]["x"] for i in range(len(ds))]).mean((0, 2, 3))
    fill = compose_train(["recipe=roar"], Path("/tmp/x")).roar.fill
    assert torch.allclose(mean, torch.tensor(list(fill)), atol=0.02), mean
    assert ds.parts == ["train"] * 600
    both = Cifar10(ds.root, split="all", per_class=3)  # the maps' split: training images, then test images
    assert both.parts == ["train"] * 30 + ["test"] * 30 and both.names[30].startswith("test/")
    assert len({both[i]["id"] for i in range(60)}) == 60  # ids unique across the two parts


def test_batched_crop_flip_equals_the_per_image_augmentation() -> None:
    x = torch.randn(5, 3, 8, 8)
    offsets = torch.tensor([[0, 0], [6, 6], [3, 1], [2, 5], [6, 0]])
    flips = torch.tensor([False, True, False, True, True])
    pad = torch.tensor([-1.0, -2.0, -3.0])
    out = crop_flip_batch(x, 3, pad, offsets, flips)
    for b in range(5):
        canvas = pad.view(3, 1, 1).expand(3, 14, 14).clone()
        canvas[:, 3:11, 3:11] = x[b]
        i, j = offsets[b].tolist()
        want = canvas[:, i : i + 8, j : j + 8]
        assert torch.equal(out[b], want.flip(-1) if flips[b] else want)


def test_device_batches_remove_the_same_pixels_as_the_dataset() -> None:
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    maps = torch.rand(6, 8, 8)
    mean, std, fill = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), (0.49, 0.48, 0.45)
    batches = DeviceRoarBatches(images, torch.arange(6), mean, std, fill, maps=maps, percent=30, batch_size=4,
                                augment=False, shuffle=False)
    xs = torch.cat([b["x"] for b in batches])
    pre = Preprocess(mean, std, size=8, resize=8)

    class Raw(_Images):
        def __getitem__(self, i):
            return {**super().__getitem__(i), "x": (images[i].float() / 255 - torch.tensor(mean).view(3, 1, 1))
                    / torch.tensor(std).view(3, 1, 1)}

    ds = RoarDataset(Raw(6), maps=maps, percent=30, fill=fill, preprocess=pre, quantise="none")
    assert len(batches) == 2
    for i in range(6):
        assert torch.allclose(xs[i], ds[i]["x"], atol=1e-6)


@pytest.mark.shared
def test_device_data_gives_the_per_item_splits_and_removal(shared_data: Path, tmp_path: Path) -> None:
    """roar.device_data=true (the GPU path of the training command) yields the same validation and test
    images, removed the same way, as the per-item RoarDataset path; its training unit runs end to end."""
    from xattr.training.roar import ResNet8Net, device_data

    _cifar_maps(shared_data, tmp_path / "maps" / "gradient", per_class=8)
    args = ["recipe=roar", "dataset.per_class=8", "roar.method=gradient", "roar.percent=50",
            f"roar.maps_root={tmp_path}/maps", f"paths.data_dir={shared_data}", f"paths.cache_dir={tmp_path}/cache",
            "batch_size=16"]
    cfg = compose_train(args, tmp_path / "unit")
    pre = ResNet8Net().preprocess
    items = ClassificationData(cfg.dataset, preprocess=pre, batch_size=16, val_fraction=cfg.data.val_fraction,
                               seed=cfg.seed, val_split=cfg.data.val_split)
    items.setup()
    dev = device_data(cfg, pre)
    assert dev.sizes() == items.sizes() == {"train": 70, "val": 10, "test": 80}
    for split, loader in (("val", items.val_dataloader()), ("test", items.test_dataloader())):
        want = torch.cat([b["x"] for b in loader])
        got = torch.cat([b["x"] for b in dev._batches(split)])
        assert torch.allclose(got, want, atol=1e-5), split
    assert (tmp_path / "cache").is_dir()  # the decoded images, cached for the next unit

    from xattr.train import train

    res = json.loads((train(compose_train([*args, "roar.device_data=true", "trainer.max_epochs=1", *TINY],
                                          tmp_path / "unit")) / "results.json").read_text())
    assert (res["train_size"], res["val_size"], res["test_size"], res["epochs"]) == (70, 10, 80, 1)


def test_resnet8_is_roartorchs_architecture_and_round_trips_through_the_zoo(tmp_path: Path) -> None:
    from torch import nn

    from xattr.models.zoo import load_model
    from xattr.training.roar import ResNet8Net

    net = ResNet8Net().build()
    # conv1 3*64*9 + bn 128; block1 2*(64*64*9) + 2 bn; block2 64*128*9 + 128*128*9 + 1x1 64*128 + 3 bn;
    # block3 128*256*9 + 256*256*9 + 1x1 128*256 + 3 bn; linear 256*10 + 10
    want = (1728 + 128) + (2 * 36864 + 2 * 128) + (73728 + 147456 + 8192 + 3 * 256) + \
           (294912 + 589824 + 32768 + 3 * 512) + 2570
    assert sum(p.numel() for p in net.parameters()) == want == 1_227_594
    assert isinstance(net.layer1[0].shortcut, nn.Sequential) and len(net.layer1[0].shortcut) == 0  # identity
    assert isinstance(net.layer2[0].shortcut[0], nn.Conv2d) and net.layer2[0].shortcut[0].stride == (2, 2)
    assert [net.layer2[0].conv1.stride, net.layer3[0].conv1.stride] == [(2, 2), (2, 2)]
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)
    narrow = ResNet8Net(widths=(4, 8, 8)).build().eval()
    path = ResNet8Net().export(tmp_path / "w.pt", narrow)
    loaded = load_model("cifar_resnet8", weights=str(path)).net
    assert torch.allclose(loaded(x), narrow(x), atol=1e-6)
    with pytest.raises(XattrConfigError, match="no pretrained weights ship for cifar_resnet8"):
        load_model("cifar_resnet8", weights="pretrained")


def test_roar_table_from_unit_folders_made_by_hand(tmp_path: Path) -> None:
    """Units are found by their config (Hydra's .hydra copies left out); unfinished ones are counted."""
    from xattr.tables.build import load_published
    from xattr.tables.roar import find_units, roar_table

    def unit(name: str, method: str, percent: float, repeat: int, acc: float | None) -> None:
        d = tmp_path / "units" / name
        (d / ".hydra").mkdir(parents=True)
        cfg = OmegaConf.create({"roar": {"method": method, "percent": percent, "repeat": repeat}})
        for f in (d / "config.yaml", d / ".hydra" / "config.yaml"):
            OmegaConf.save(cfg, f)
        if acc is not None:
            (d / "results.json").write_text(json.dumps({"test_acc": acc}))

    unit("base", "base", 0, 0, 0.9)
    for r, accs in enumerate([(0.8, 0.4), (0.6, 0.2)]):
        for p, a in zip((30, 90), accs):
            unit(f"g-p{p}-r{r}", "gradient", p, r, a)
    unit("g-p50-r0", "gradient", 50, 0, None)
    done, pending = find_units([tmp_path / "units"])
    assert len(done) == 5 and pending == 1
    spec = {**load_published()["pathways_t1_roar"], "percents": [30, 90]}
    df = roar_table("t", spec, [tmp_path / "units"], tmp_path / "out").set_index("")
    assert df.loc["Gradient", "30%"] == "0.700 ± 0.100 (n=2)" and df.loc["Gradient", "AUC (ours)"] == "0.500 ± 0.100"
    assert df.loc["Gradient", "0% (baseline)"] == "0.900 (n=1)"
    assert "1 unfinished" in (tmp_path / "out" / "t.md").read_text()


# ---------------------------------------------------------------- by hand: quantisation, errors, the map store
def test_uint8_quantisation_truncates_255_v_not_256_v() -> None:
    # 999 / 1000 of the range: 254.7 truncates to 254 (x 256 would give 255)
    assert quantise_uint8(torch.tensor([[0.0, 999.0, 1000.0]])).tolist() == [[0, 254, 255]]


def test_removal_and_store_errors_are_whole_lines(tmp_path: Path) -> None:
    import re

    def line(msg: str) -> str:
        return "^" + re.escape(msg) + "$"

    with pytest.raises(XattrConfigError, match=line("bad roar.percent 101; valid choices: a number in [0, 100]")):
        n_removed(101, 4, 4)
    with pytest.raises(XattrConfigError, match=line("unknown roar.ties 'torch'; valid choices: numpy, stable")):
        removal_mask(torch.rand(1, 4, 4), 50, ties="torch")
    with pytest.raises(XattrConfigError, match=line("ROAR maps must be (N, H, W) or (N, C, H, W), got shape (4, 4)")):
        removal_mask(torch.rand(4, 4), 50)
    with pytest.raises(XattrConfigError, match=line("unknown roar.quantise 'png'; valid choices: uint8, none")):
        load_maps(tmp_path, quantise="png")
    (tmp_path / "empty").mkdir()
    from xattr.core.store import RunStore

    hint = (f"missing attribution maps (heatmaps/*.npz) for ROAR: put it at {RunStore(tmp_path / 'empty').heatmaps_dir} "
            "(run python -m xattr.run experiment=pathways_t1_roar method=<m> first (dataset.attribution.split=all))")
    with pytest.raises(XattrConfigError, match=line(hint)):
        load_maps(tmp_path / "empty")


def test_saved_maps_carry_the_method_and_a_gap_in_the_index_has_no_id(tmp_path: Path) -> None:
    from xattr.core.store import RunStore

    maps = torch.rand(2, 4, 4)
    save_maps(tmp_path / "named", maps, ["a", "c"], index=[0, 2], method="gradient")
    assert RunStore(tmp_path / "named").config()["method_name"] == "gradient"
    save_maps(tmp_path / "anon", maps, ["a", "c"], index=[0, 2])
    assert RunStore(tmp_path / "anon").config() is None  # no method: no config written
    got, ids, present = load_maps(tmp_path / "named", quantise="none")
    assert ids == ["a", "", "c"] and present.tolist() == [True, False, True]
    assert torch.equal(got[1], torch.zeros(4, 4)) and torch.allclose(got[2], maps[1].half().float())


def test_roar_dataset_defaults_remove_nothing() -> None:
    maps = torch.rand(4, 8, 8)
    ds = RoarDataset(_Images(4), maps=maps)  # percent 0 by default: the unmodified baseline
    assert ds.percent == 0.0 and ds.maps is None
    assert torch.equal(ds[1]["x"], _Images(4)[1]["x"])


class _Unit(torch.utils.data.Dataset):
    """Images in [0, 1] on the 8-bit grid (k / 255), one pixel above 1 (saturates to 255), labels in `labels`,
    item reads counted, and an optional `parts` list."""

    def __init__(self, n: int = 4, parts: list[str] | None = None, labels: bool = True) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randint(0, 256, (n, 3, 4, 4), generator=g).float() / 255
        self.x[:, :, 3, 3] = 1.2
        self.reads = 0
        if parts is not None:
            self.parts = parts
        if labels:
            self.labels = [7] * n

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return {"x": self.x[i].clone(), "label": 7, "id": f"u{i}", "index": i}


def test_roar_dataset_defaults_fill_parts_limit_labels_and_channel_maps() -> None:
    """The default fill is CIFAR-10's training mean (RoarTorch's); ``part`` keeps that part's items, ``limit``
    a prefix of them; ``labels`` come from the base's ``labels`` without reading an item (or from the items);
    (N, C, H, W) maps rank by their channel max; tensor maps are quantised to uint8 unless ``quantise: none``;
    a percent below 1 still removes; maps without a percent, or a percent without maps, remove nothing."""
    import re

    maps = torch.rand(4, 16, generator=torch.Generator().manual_seed(0)).view(4, 4, 4)
    ds = RoarDataset(_Unit(), maps=maps, percent=50)
    removed = removal_mask(maps[1:2], 50)[0]
    assert torch.equal(ds[1]["x"][:, removed], torch.tensor([0.4914, 0.4822, 0.4465])[:, None].expand(-1, 8))
    assert torch.equal(ds.maps, quantise_uint8(maps)) and ds.maps.dtype == torch.uint8
    assert RoarDataset(_Unit(), maps=maps, percent=50, quantise="none").maps.dtype == torch.float32
    half = RoarDataset(_Images(1, size=16), maps=torch.rand(1, 16, 16), percent=0.5, fill=(0.0, 0.0, 0.0))
    assert int((half[0]["x"] == 0).all(0).sum()) == 1  # 0.5% of 256 pixels: one
    assert torch.equal(RoarDataset(_Unit(), maps=None, percent=50)[2]["x"], _Unit()[2]["x"])
    four = torch.zeros(4, 3, 4, 4)
    four[:, 2] = maps  # only channel 2 carries the ranking
    assert torch.equal(RoarDataset(_Unit(), maps=four, percent=25, quantise="none").mask(3), removal_mask(maps[3:4], 25)[0])
    parts = RoarDataset(_Unit(parts=["train", "test", "train", "test"]), maps=maps, percent=50, part="test")
    assert parts.indices == [1, 3] and [parts[i]["index"] for i in range(2)] == [1, 3]
    assert RoarDataset(_Unit(parts=["train"] * 4), part="train", limit=3).indices == [0, 1, 2]
    base = _Unit()
    assert RoarDataset(base).labels == [7] * 4 and base.reads == 0  # from `labels`: no image read
    assert RoarDataset(_Unit(labels=False)).labels == [7] * 4
    for kwargs, msg in (({"quantise": "png"}, "unknown roar.quantise 'png'; valid choices: uint8, none"),
                        ({"ties": "torch"}, "unknown roar.ties 'torch'; valid choices: numpy, stable"),
                        ({"train_fill": "int"}, "unknown roar.train_fill 'int'; valid choices: uint8, float"),
                        ({"part": "train"}, "roar part='train' needs a base dataset with `parts` (CIFAR-10 split=all)")):
        with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
            RoarDataset(_Unit(), **kwargs)
    with pytest.raises(XattrConfigError, match="^" + re.escape("unknown roar part 'val'; valid choices: test, train") + "$"):
        RoarDataset(_Unit(parts=["train", "test"] * 2), part="val")


def test_training_view_without_a_preprocess_truncates_to_8_bits_and_saturates() -> None:
    """train_fill uint8 (RoarTorch's training pipeline) on images already in [0, 1]: the image on the 8-bit grid
    (a value above 1 saturates at 255), the mean filled in, then truncated: ``floor(255 v) / 255`` by numpy."""
    import numpy as np

    base = _Unit()
    maps = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(1))
    ds = RoarDataset(base, maps=maps, percent=25, train_fill="uint8", quantise="none")
    train = ds.training_view()
    assert train.truncate and not ds.truncate
    fill = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
    for i in range(4):
        x01 = np.minimum(base.x[i].numpy(), np.float32(1.0))  # the 8-bit image: 1.2 saturates
        m = removal_mask(maps[i : i + 1], 25)[0].numpy()
        x01[:, m] = fill[:, None]
        expect = np.floor(x01 * np.float32(255)).astype(np.uint8).astype(np.float32) / np.float32(255)
        assert np.allclose(train[i]["x"].numpy(), expect, atol=1e-7)
        assert torch.equal(ds[i]["x"][:, ~torch.from_numpy(m)], base.x[i][:, ~torch.from_numpy(m)])  # float: as is


def test_the_mismatch_errors_of_a_map_run_are_whole_lines(tmp_path: Path) -> None:
    import re

    maps = torch.rand(4, 4, 4)
    save_maps(tmp_path / "half", maps[:2], ["img0", "img1"], index=[0, 1])
    msg = (f"the map run {tmp_path / 'half'} has no map for 2 of the 4 images (first missing dataset index 2); "
           "finish it (re-run the same xattr.run command: finished batches are skipped) or use the dataset the maps "
           "were made on")
    with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
        RoarDataset(_Images(4, size=4), maps=tmp_path / "half", percent=50)
    save_maps(tmp_path / "other", maps, ["a", "b", "c", "d"])
    msg = ("ROAR maps do not belong to this dataset: index 1 is 'img1' here but 'b' in the map run; compute the maps "
           "on the same dataset (split, per_class)")
    with pytest.raises(XattrConfigError, match="^" + re.escape(msg) + "$"):
        RoarDataset(_Images(4, size=4), maps=tmp_path / "other", percent=50)[1]


def test_crop_flip_pads_by_4_by_default() -> None:
    """RandomCrop(32, padding=4) (RoarTorch's): at offset (0, 0) the image moves 4 pixels down and right."""
    x = torch.rand(1, 3, 8, 8)
    out = crop_flip_batch(x, offsets=torch.zeros(1, 2, dtype=torch.long), flips=torch.zeros(1, dtype=torch.bool))
    assert torch.equal(out[..., 4:, 4:], x[..., :4, :4]) and (out[..., :4, :] == 0).all()


def test_crop_flip_draws_every_offset_in_0_to_2p_uniformly_and_flips_half() -> None:
    """RandomCrop's offsets are uniform over 0..2 padding (both ends included), the flip's probability 1/2:
    offsets read back from a 3 x 3 image of distinct values (padding 1: the output's centre is x[r, c]); the
    flip from a 1 x 2 image. 9 000 and 4 000 draws: each frequency within 5 standard errors."""
    g = torch.Generator().manual_seed(0)
    b = 9000
    x = torch.arange(9.0).view(1, 1, 3, 3).expand(b, 1, 3, 3)
    out = crop_flip_batch(x, 1, flips=torch.zeros(b, dtype=torch.bool), generator=g)
    counts = torch.bincount(out[:, 0, 1, 1].long(), minlength=9).double() / b
    assert (counts - 1 / 9).abs().max() < 5 * (1 / 9 * 8 / 9 / b) ** 0.5, counts
    two = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2).expand(4000, 1, 1, 2)
    flipped = crop_flip_batch(two, 0, offsets=torch.zeros(4000, 2, dtype=torch.long), generator=g)[:, 0, 0, 0] == 2
    assert abs(flipped.double().mean() - 0.5) < 5 * (0.25 / 4000) ** 0.5


def test_device_batches_defaults_order_augmentation_padding_and_keys_by_a_replay() -> None:
    """With its defaults (seed 0, shuffled, augmented, padding 4, batches of 256, no removal: percent 0) a
    DeviceRoarBatches pass equals the normalised images taken in ``randperm`` order of a generator seeded 0,
    cropped and flipped by :func:`crop_flip_batch` with the same generator and the normalised black pad
    ``-mean / std`` (torchvision pads before Normalize); the batch dict's keys; ``len`` is ceil(N / batch)."""
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (257, 3, 10, 10), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (257,), generator=g)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    maps = torch.rand(257, 10, 10, generator=g)  # given, but the default percent 0 removes nothing
    batches = DeviceRoarBatches(images, labels, mean, std, mean, maps=maps)
    assert len(batches) == 2
    got = list(batches)
    assert [len(b["x"]) for b in got] == [256, 1] and set(got[0]) == {"x", "label", "target", "index"}
    replay = torch.Generator().manual_seed(0)
    order = torch.randperm(257, generator=replay)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    black = -torch.tensor(mean) / torch.tensor(std)
    for batch, idx in zip(got, order.split(256)):
        x = (images[idx].float() / 255 - m) / s
        torch.testing.assert_close(batch["x"], crop_flip_batch(x, 4, black, generator=replay))
        assert torch.equal(batch["index"], idx) and torch.equal(batch["label"], labels[idx])
        assert torch.equal(batch["target"], labels[idx])
    assert got[0]["x"].is_contiguous()  # channels_last off by default
    seeded = next(iter(DeviceRoarBatches(images, labels, mean, std, mean, seed=3)))["index"]
    assert torch.equal(seeded, torch.randperm(257, generator=torch.Generator().manual_seed(3))[:256])
    assert [len(DeviceRoarBatches(images[:n], labels[:n], mean, std, mean, batch_size=2)) for n in (4, 5)] == [2, 3]


def test_device_batches_channels_last_a_percent_below_one_and_no_maps() -> None:
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    kw = dict(batch_size=2, augment=False, shuffle=False)
    cl = next(iter(DeviceRoarBatches(images, torch.zeros(2), mean, std, mean, channels_last=True, **kw)))["x"]
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    plain = next(iter(DeviceRoarBatches(images, torch.zeros(2), mean, std, mean, **kw)))["x"]
    assert torch.equal(plain, cl) and plain.is_contiguous()
    maps = torch.rand(2, 16, 16)
    half = next(iter(DeviceRoarBatches(images, torch.zeros(2), mean, std, (0.0, 0.0, 0.0), maps=maps, percent=0.5, **kw)))["x"]
    assert ((half != plain).any(1).flatten(1).sum(1) == 1).all()  # 0.5% of 256 pixels: one each
    none = next(iter(DeviceRoarBatches(images, torch.zeros(2), mean, std, (0.0, 0.0, 0.0), maps=None, percent=50, **kw)))
    assert torch.equal(none["x"], plain)
