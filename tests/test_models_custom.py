"""Bring your own model: any torchvision classification architecture by name with a weights file
(``model=torchvision``), any ``nn.Module`` from a factory (``model=custom``); bad input is one line naming
the key and the value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

from tests.helpers import compose_cfg
from xattr.config import validate
from xattr.errors import XattrConfigError
from xattr.models import load_model
from xattr.run import run

REPO = Path(__file__).resolve().parents[1]
FAST = ["dataset=samples", "dataset.limit=2", "target=top1", "batch_size=2", "trainer=cpu", "logger=none",
        "trainer.enable_progress_bar=false", "metric=[insertion_deletion]", "metric.insertion_deletion.per_step=12000",
        "metric.insertion_deletion.min_prob=0"]
LABELS = ["cat", "dog", "bird", "fish", "frog"]


class SmallNet(nn.Module):
    """A user's own network: two conv blocks and a linear head, its own module names."""

    def __init__(self, width: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(width, classes)
        self.seen_sizes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_sizes.append(tuple(x.shape[-2:]))
        return self.head(self.body(x).mean((2, 3)))


BUILT: list[SmallNet] = []


def make_net(width: int = 4, classes: int = 5) -> SmallNet:
    """The factory of ``model.factory=tests.test_models_custom:make_net``."""
    BUILT.append(SmallNet(width, classes))
    return BUILT[-1]


def not_a_module(**kwargs):
    return 42


NOT_CALLABLE = 3


def _custom(extra=()):
    return ["model=custom", "model.name=small_net", "model.factory=tests.test_models_custom:make_net", *extra]


def _run(tmp_path, overrides):
    return run(compose_cfg(FAST + overrides, output_dir=tmp_path / "run"))


# ------------------------------------------------------------------------------------------------ torchvision
def test_torchvision_resnet18_from_a_state_dict_file_runs_grad_cam(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), weights)
    run_dir = _run(tmp_path, ["model=torchvision", "model.arch=resnet18", f"model.weights={weights}",
                              "method=grad_cam", "model.layers.cam=layer4",
                              "model.preprocess.size=64", "model.preprocess.resize=64"])
    df = pd.read_parquet(run_dir / "per_image.parquet")
    assert len(df) == 2 and df["insertion_deletion/insertion"].notna().all()
    with np.load(sorted((run_dir / "heatmaps").glob("*.npz"))[0]) as z:
        assert z["maps"].shape == (2, 64, 64) and np.isfinite(z["maps"].astype(np.float32)).all()
    assert "name: resnet18" in (run_dir / "config.yaml").read_text()
    # the file's weights were loaded, the ImageNet labels and torchvision preprocessing come with the arch
    zoo = load_model("resnet18", str(weights), spec=compose_cfg(["model=torchvision"]).model)
    assert torch.equal(zoo.net.fc.weight, ref.fc.weight)
    assert zoo.labels[1] == "goldfish" and zoo.preprocess.size == 224 and zoo.preprocess.resize == 256
    assert zoo.net.xattr_layers["conv3_2"] == "layer2"  # paper names of every torchvision ResNet (2 blocks here)
    assert not any(getattr(m, "inplace", False) for m in zoo.net.modules()) and not zoo.net.training


def test_torchvision_arch_by_name_and_its_options(tmp_path):
    zoo = load_model("squeezenet1_1", "random")  # not in the zoo: a torchvision architecture by name
    assert zoo.net.num_classes == 1000 and len(zoo.labels) == 1000
    node = {"kind": "torchvision", "arch": "resnet18", "num_classes": 3, "labels": ["a", "b", "c"],
            "preprocess": {"size": 32}, "aliases": {"stem": "conv1"}}
    zoo = load_model("resnet18", "random", spec=node)
    assert zoo.net.fc.out_features == 3 and zoo.labels == ["a", "b", "c"]
    assert (zoo.preprocess.size, zoo.preprocess.resize) == (32, 37)  # torchvision's 224 -> 256 ratio
    assert zoo.net.xattr_layers["stem"] == "conv1"


def test_torchvision_weights_names_read_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    node = {"kind": "torchvision", "arch": "resnet18"}
    with pytest.raises(XattrConfigError, match=r"^missing resnet18 IMAGENET1K_V1 weights: put it at "
                                               r".*hub/checkpoints/resnet18-.*\.pth \(download https://"):
        load_model("resnet18", "IMAGENET1K_V1", spec=node)
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    ckpt = tmp_path / "hub" / "checkpoints" / Path(w.url).name
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), ckpt)  # stands in for the downloaded file (its hash is not checked offline)
    for name in ("IMAGENET1K_V1", "imagenet", "DEFAULT"):
        zoo = load_model("resnet18", name, spec=node)
        assert torch.equal(zoo.net.fc.bias, ref.fc.bias), name
    assert zoo.labels[0] == "tench"


# ------------------------------------------------------------------------------------------------ custom
def test_custom_factory_runs_gradient_end_to_end_with_its_preprocessing_and_labels(tmp_path, capsys):
    BUILT.clear()
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(LABELS))
    run_dir = _run(tmp_path, _custom(["method=gradient", "model.preprocess.size=32", "model.preprocess.resize=40",
                                      "model.preprocess.mean=[0.5,0.5,0.5]", "model.preprocess.std=[0.25,0.25,0.25]",
                                      f"model.labels={labels}", "+model.kwargs.width=6"]))
    net = BUILT[-1]
    assert net.body[0].out_channels == 6  # model.kwargs reached the factory
    assert set(net.seen_sizes) == {(32, 32)}  # every forward saw the configured input size
    df = pd.read_parquet(run_dir / "per_image.parquet")
    assert len(df) == 2 and df["top1"].between(0, 4).all()
    with np.load(sorted((run_dir / "heatmaps").glob("*.npz"))[0]) as z:
        assert z["maps"].shape == (2, 32, 32)
    out = capsys.readouterr().out
    assert any(f": {name} (" in out for name in LABELS)  # the per-image lines use the labels
    zoo = load_model("small_net", "random", spec=compose_cfg(_custom([f"model.labels={labels}",
                                                                      "model.preprocess.size=32"])).model)
    assert zoo.labels == LABELS and zoo.net.num_classes == 5
    assert (zoo.preprocess.mean, zoo.preprocess.size, zoo.preprocess.resize) == ((0.485, 0.456, 0.406), 32, 37)


def test_custom_weights_aliases_and_default_labels(tmp_path):
    torch.manual_seed(2)
    ref = SmallNet(4, 5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "w.pt")
    node = {"kind": "custom", "factory": "tests.test_models_custom:make_net", "aliases": {"block2": "body.2"},
            "preprocess": {"size": 16}}
    zoo = load_model("small_net", str(tmp_path / "w.pt"), spec=node)
    assert torch.equal(zoo.net.head.weight, ref.head.weight)  # {"state_dict": ...} and module. prefix accepted
    assert zoo.labels == [f"class {i}" for i in range(5)] and zoo.net.num_classes == 5  # one forward pass
    assert zoo.net.xattr_layers == {"block2": "body.2"}
    assert not any(getattr(m, "inplace", False) for m in zoo.net.modules())
    assert load_model("custom", "random").net.xattr_layers["conv3"] == "features.5"  # the shipped example


def test_custom_example_config_runs_grad_cam(tmp_path):
    """The shipped example (TinyCNN, random weights drawn after the run's seed) through the CLI's run: the saved
    maps are Grad-CAM at its conv3 computed here on the same network and photos (the model rebuilt under the
    same seed, the photos loaded by the API), up to the float16 of the files; targets are the top-1 classes."""
    import pytorch_lightning as pl

    import xattr
    from xattr.core.store import RunStore
    from xattr.methods.baselines.cam import GradCAM
    from xattr.models.tiny import TinyCNN

    overrides = ["model=custom", "method=grad_cam", "model.preprocess.size=32"]
    run_dir = _run(tmp_path, overrides)
    df = pd.read_parquet(run_dir / "per_image.parquet")
    assert len(df) == 2 and (df["target"] == df["top1"]).all()
    cfg = compose_cfg(FAST + overrides)
    pl.seed_everything(cfg.seed, verbose=False)
    model = xattr.load_model(TinyCNN(), preprocess={"size": 32})  # the example's factory, under the run's seed
    x, ids = xattr.load_images(REPO / "assets" / "samples", model, limit=2)
    target = model.net(x).argmax(1)
    assert df.set_index("id").loc[ids, "target"].tolist() == target.tolist()
    expected = GradCAM(model.net, layer="conv3").attribute(x, target)
    saved = RunStore(run_dir).heatmaps()
    assert expected.amax() > 0
    for i, image_id in enumerate(ids):  # random weights give maps of ~1e-5: tolerances relative to the map's max
        scale = float(expected[i].amax())
        np.testing.assert_allclose(saved[image_id].astype(np.float32) / scale, expected[i, 0].numpy() / scale,
                                   rtol=1e-2, atol=5e-3)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("overrides,msg", [
    (["model=torchvision", "model.arch=resnet19", "model.weights=random"],
     r"^unknown model\.arch 'resnet19'; valid choices: alexnet, .*resnet18, .*vit_b_16"),
    (["model=torchvision", "model.weights=IMAGENET1K_V9"],
     r"^unknown model\.weights for resnet18 'IMAGENET1K_V9'; valid choices: random, <a state-dict file>, IMAGENET1K_V1"),
    (["model=torchvision", "model.weights=/no/such/resnet18.pth"],
     r"^missing resnet18 weights \(model\.weights\): put it at /no/such/resnet18\.pth"),
    (["model=custom", "model.factory=nope:nothing"],
     r"^model\.factory 'nope:nothing': cannot import 'nope' \(No module named 'nope'\)"),
    (["model=custom", "model.factory=tests.test_models_custom"],
     r"^model\.factory 'tests\.test_models_custom' must be 'package\.module:function'"),
    (["model=custom", "model.factory=tests.test_models_custom:no_such"],
     r"^model\.factory 'tests\.test_models_custom:no_such': module 'tests\.test_models_custom' has no 'no_such'"),
    (["model=custom", "model.factory=tests.test_models_custom:NOT_CALLABLE"],
     r"^model\.factory 'tests\.test_models_custom:NOT_CALLABLE' is not callable \(int\)"),
    (["model=custom", "model.factory=tests.test_models_custom:make_net", "+model.kwargs.depth=3"],
     r"^model\.factory 'tests\.test_models_custom:make_net' does not take model\.kwargs \{'depth': 3\}"),
    (["model=custom", "model.factory=tests.test_models_custom:make_net", "model.weights=/no/such/net.pth"],
     r"^missing tests\.test_models_custom:make_net weights \(model\.weights\): put it at /no/such/net\.pth"),
])
def test_bad_input_is_one_line_naming_key_and_value(overrides, msg):
    cfg = compose_cfg(overrides)
    for check in (lambda: validate(cfg), lambda: load_model(cfg.model.name, cfg.model.weights, spec=cfg.model)):
        with pytest.raises(XattrConfigError, match=msg) as e:
            check()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("node,msg", [
    ({"factory": "tests.test_models_custom:not_a_module"},
     r"^model\.factory 'tests\.test_models_custom:not_a_module' returned int, not a torch\.nn\.Module$"),
    ({"factory": "tests.test_models_custom:make_net", "labels": ["a", "b"]},
     r"^model\.labels has 2 names for model\.num_classes 5$"),
    ({"factory": "tests.test_models_custom:make_net", "aliases": {"block9": "body.9"}},
     r"^unknown module path for model\.aliases\.block9 'body\.9'; valid choices: body, body\.0"),
    ({"factory": "tests.test_models_custom:make_net", "preprocess": {"mean": [0.5], "std": [0.2, 0.2]}},
     r"^model\.preprocess mean \[0\.5\], std \[0\.2, 0\.2\]"),
])
def test_bad_custom_model_found_when_built(node, msg):
    with pytest.raises(XattrConfigError, match=msg) as e:
        load_model("x", "random", spec={"kind": "custom", **node})
    assert "\n" not in str(e.value)


def test_state_dict_of_another_network_is_one_line(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(XattrConfigError, match=r"^model\.weights '.*r18\.pth' does not fit resnet34 \(\d+ missing: "):
        load_model("resnet34", str(tmp_path / "r18.pth"), spec={"kind": "torchvision", "arch": "resnet34"})


def test_bad_factory_from_the_command_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "xattr.run", "model=custom", "model.factory=nope:nothing",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.strip()]
    assert errors == ["error: model.factory 'nope:nothing': cannot import 'nope' (No module named 'nope')"], p.stderr
