"""Every method of issue 29 on random-weight vision transformers (torchvision ViT / Swin, timm ViT / DeiT /
Swin): each runs and returns (B, 1, H, W), or stops with its one line. Tiny configurations of the same
classes here; the full-size vit_b_16 / swin_t under @slow."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from xattr.core.hooks import capture
from xattr.core.tokens import token_layout
from xattr.errors import XattrConfigError
from xattr.methods.baselines.attention import AttentionRollout, Chefer
from xattr.methods.baselines.cam import FullGrad, GradCAM, GradCAMPlusPlus, GuidedGradCAM
from xattr.methods.baselines.gradient import Gradient
from xattr.methods.baselines.guided_backprop import GuidedBackprop
from xattr.methods.baselines.input_x_gradient import InputXGradient
from xattr.methods.baselines.integrated_gradients import IntegratedGradients
from xattr.methods.baselines.lime import LIME
from xattr.methods.baselines.lrp import LRP
from xattr.methods.baselines.occlusion import Occlusion
from xattr.methods.baselines.random import RandomAttribution
from xattr.methods.baselines.smoothgrad import SmoothGrad
from xattr.methods.iba import PerSampleIBA
from xattr.methods.iba.statistics import FeatureStats
from xattr.methods.input_iba import InputIBA
from xattr.methods.pathways.dgr import DGR

torch.set_num_threads(1)


def _ready(net: nn.Module, classes: int = 5) -> nn.Module:
    net.num_classes = classes
    for p in net.parameters():  # random weights everywhere (torchvision starts its ViT head at 0)
        if p.dim() > 1 and p.abs().sum() == 0:
            nn.init.normal_(p, std=0.2)
    return net.eval().requires_grad_(False)


def tv_vit():
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=5)
    return _ready(net), "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1.ln_1", 32


def tv_swin():
    torch.manual_seed(0)
    net = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                             window_size=[2, 2], num_classes=5)
    return _ready(net), "features.1", "features.3", 32


def _timm(name: str, **kw):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return _ready(timm.create_model(name, pretrained=False, num_classes=5, **kw))


def timm_vit():
    net = _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=16, num_heads=2)
    return net, "blocks.0", "blocks.1.norm1", 32


def timm_deit():
    net = _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=16, num_heads=2)
    return net, "blocks.0", "blocks.1.norm1", 32


def timm_swin():
    net = _timm("swin_tiny_patch4_window7_224", img_size=32, window_size=2, depths=(1, 1), num_heads=(2, 2),
                embed_dim=16)
    return net, "layers.0", "layers.1", 32


MODELS = {"torchvision_vit": tv_vit, "torchvision_swin": tv_swin, "timm_vit": timm_vit, "timm_deit": timm_deit,
          "timm_swin": timm_swin}
GLOBAL_ATTENTION = ("torchvision_vit", "timm_vit", "timm_deit")


def _stats(net, layer, x):
    r = capture(net, net.get_submodule(layer), x)
    return {layer: FeatureStats(r.mean(0), r.std(0) + 0.1, torch.ones(r.shape[1:]), x.shape[0])}


def run_every_method(net, bottleneck, cam, size, family, iba_kw=None, input_iba_kw=None):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 3])
    assert token_layout(net, bottleneck) is not None and token_layout(net, cam) is not None
    methods = {
        "gradient": Gradient(net), "input_x_gradient": InputXGradient(net),
        "integrated_gradients": IntegratedGradients(net, n_steps=4),
        "smoothgrad": SmoothGrad(net, n_samples=2), "occlusion": Occlusion(net, window=size // 2, stride=size // 2),
        "lime": LIME(net, n_samples=8), "random": RandomAttribution(net),
        "grad_cam": GradCAM(net, layer=cam), "grad_cam_pp": GradCAMPlusPlus(net, layer=cam),
        "iba": PerSampleIBA(net, layer=bottleneck, **(iba_kw or {"steps": 2, "copies": 2})),
        "input_iba": InputIBA(net, layer=bottleneck, **(input_iba_kw or dict(
            feat_steps=2, feat_copies=2, epochs=1, n_targets=2, n_groups=1, gan_batch=2, critic=1, steps=2,
            copies=2))),
    }
    methods["iba"].set_statistics(_stats(net, bottleneck, x))
    methods["input_iba"].set_statistics(_stats(net, bottleneck, x))
    if family in GLOBAL_ATTENTION:
        methods.update(attention_rollout=AttentionRollout(net), chefer=Chefer(net))
    else:
        for cls in (AttentionRollout, Chefer):
            with pytest.raises(XattrConfigError, match="windowed"):
                cls(net)
    for name, method in methods.items():
        maps = method.attribute(x, t)
        assert maps.shape == (2, 1, size, size), name
        assert torch.isfinite(maps).all(), name
        if name not in ("random", "occlusion", "lime"):  # (lime: 8 samples may fit an all-zero model)
            assert maps.abs().sum() > 0, name
    for make in (lambda: LRP(net), lambda: GuidedBackprop(net), lambda: GuidedGradCAM(net, layer=cam),
                 lambda: FullGrad(net), lambda: DGR(net)):
        with pytest.raises(XattrConfigError, match="no vision-transformer form"):
            make()


@pytest.mark.parametrize("family", list(MODELS))
def test_every_method_runs_on_random_vision_transformers(family) -> None:
    net, bottleneck, cam, size = MODELS[family]()
    run_every_method(net, bottleneck, cam, size, family)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t"])
def test_every_method_on_full_size_torchvision_models(arch) -> None:
    net = _ready(getattr(torchvision.models, arch)(weights=None), 1000)
    layers = {"vit_b_16": ("encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_11.ln_1"),
              "swin_t": ("features.5", "features.7")}[arch]
    run_every_method(net, *layers, 224, "torchvision_" + arch.split("_")[0].replace("vit", "vit"))


def test_model_timm_weights_from_a_local_file_only_and_one_line_otherwise(tmp_path) -> None:
    pytest.importorskip("timm")
    from xattr.models.zoo import load_model

    spec = {"kind": "timm", "arch": "vit_tiny_patch16_224", "weights": "random", "num_classes": 5,
            "kwargs": {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}}
    first = load_model("timm", "random", spec=spec)
    assert (first.preprocess.mean, first.preprocess.size) == ((0.5, 0.5, 0.5), 32)  # the model's own config
    path = tmp_path / "w.pth"
    torch.save(first.net.state_dict(), path)
    again = load_model("timm", str(path), spec={**spec, "weights": str(path)})
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(first.net(x), again.net(x))  # the file's weights, head included
    with pytest.raises(XattrConfigError, match="missing timm .* put it at"):
        load_model("timm", str(tmp_path / "none.pth"), spec={**spec, "weights": str(tmp_path / "none.pth")})
    with pytest.raises(XattrConfigError, match="offline .*HuggingFace cache"):
        load_model("timm", "pretrained", spec={**spec, "weights": "pretrained", "kwargs": {}, "num_classes": None})


@pytest.mark.slow
@pytest.mark.shared
def test_the_shipped_cifar_vit_reaches_its_stated_accuracy(shared_data) -> None:
    """assets/cifar_vit.pt (fp16) loads and reaches the test accuracy assets/cifar_vit.json (and the README)
    states, on the 10 000 CIFAR-10 test images of the shared JPEG zip."""
    import json
    from pathlib import Path

    import xattr
    from xattr.data.cifar10 import Cifar10

    assets = Path(__file__).resolve().parents[1] / "assets"
    stated = json.loads((assets / "cifar_vit.json").read_text())["test_acc"]
    zoo = xattr.load_model("cifar_vit")  # weights: pretrained = assets/cifar_vit.pt
    ds = Cifar10(shared_data / "cifar10" / "cifar10-jpeg.zip", split="test", preprocess=zoo.preprocess)
    right = 0
    with torch.no_grad():
        for i in range(0, len(ds), 500):
            items = [ds[j] for j in range(i, min(i + 500, len(ds)))]
            x = torch.stack([it["x"] for it in items])
            right += int((zoo.net(x).argmax(1) == torch.tensor([it["label"] for it in items])).sum())
    assert abs(right / len(ds) - stated) < 0.005, (right / len(ds), stated)
