"""Layer names both ways for every zoo model; bad names fail with the valid choices; TF padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xattr.core.layers import layer_path, paper_name, resolve_layer
from xattr.errors import XattrConfigError
from xattr.models import ZOO, load_model
from xattr.models.tf_padding import TFSameConv2d, tf_same_pad
from xattr.models.zoo import check_layer_names

# models whose random init is cheap enough for every test run
PAPER_LAYERS = {
    "vgg16": {"conv4_1": "features.17", "conv5_3": "features.28", "fc8": "classifier.6", "conv1_1": "features.0"},
    "resnet18": {"conv3_2": "layer2", "conv2_x": "layer1", "conv5_x": "layer4", "conv4_1": "layer3.0"},
    "resnet50": {"conv3_4": "layer2", "conv2_x": "layer1", "conv5_x": "layer4", "conv4_2": "layer3.1"},
    "densenet121": {"denseblock3": "features.denseblock3", "transition1": "features.transition1"},
    "mobilenet_v2": {"block_0": "features.1", "last_conv": "features.18"},
    "efficientnet_lite0": {"block_4": "_blocks.4", "head": "_conv_head"},
    "cifar_resnet20": {"stage2": "layer2", "fc": "linear"},
    "cifar_resnet56": {"stage3": "layer3"},
    "cifar_resnet8": {"stage1": "layer1", "stage3": "layer3", "fc": "linear"},
    "imdb_lstm": {"rnn_4": "rnn_4", "embedding": "embedding"},
    "densenet121_nih": {"denseblock3": "features.denseblock3", "fc": "classifier"},
    "densenet121_brixia": {"denseblock1": "features.denseblock1"},
    "densenet121_brixia_detector": {"denseblock2": "features.denseblock2"},
    "synthetic_cxr_resnet8": {"stage2": "layer2", "fc": "linear"},
    "cifar_vit": {"block2": "encoder.layers.encoder_layer_1", "ln1_4": "encoder.layers.encoder_layer_3.ln_1",
                  "gelu1": "encoder.layers.encoder_layer_0.mlp.1", "patch_embed": "conv_proj", "head": "heads.head"},
}


@pytest.fixture(scope="module", params=sorted(ZOO))
def random_model(request):
    return load_model(request.param, weights="random")


def test_every_zoo_model_has_a_layer_table(random_model):
    check_layer_names(random_model.net)
    assert random_model.net.xattr_layers


def test_layer_names_both_ways(random_model):
    net = random_model.net
    for name, path in PAPER_LAYERS[random_model.name].items():
        assert layer_path(net, name) == path
        assert resolve_layer(net, name) is net.get_submodule(path)
        # module path works too, and maps back to the paper name
        assert resolve_layer(net, path) is net.get_submodule(path)
        assert layer_path(net, paper_name(net, path)) == path  # aliases may share a path (conv3_x, conv3_4)


def test_vgg16_layer_types():
    net = load_model("vgg16", "random").net
    for k in range(1, 6):
        assert isinstance(resolve_layer(net, f"conv{k}_1"), nn.Conv2d)
    assert isinstance(resolve_layer(net, "fc6"), nn.Linear)
    assert resolve_layer(net, "fc6").in_features == 25088


def test_unknown_layer_lists_choices():
    net = load_model("vgg16", "random").net
    with pytest.raises(XattrConfigError, match=r"unknown layer 'conv9_9'; valid choices: conv1_1, .*conv4_1"):
        resolve_layer(net, "conv9_9")


def test_unknown_model_lists_choices():
    with pytest.raises(XattrConfigError, match=r"unknown model 'vgg61'; valid choices: .*mobilenet_v2.*vgg16"):
        load_model("vgg61")


def test_missing_weights_file_names_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(XattrConfigError, match=r"missing resnet50 ImageNet weights: put it at .*resnet50-.*\.pth"):
        load_model("resnet50", weights="imagenet")
    with pytest.raises(XattrConfigError, match=r"missing MobileNet-V2 \(coral\) weights: put it at .*mobilenet_v2"):
        load_model("mobilenet_v2", weights="imagenet", weights_dir=tmp_path)


def test_model_is_frozen_and_has_no_inplace_activations(random_model):
    net = random_model.net
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert not any(getattr(m, "inplace", False) for m in net.modules())


@pytest.mark.parametrize("size,k,s,expect", [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (112, 1, 1, (0, 0)),
                                               (7, 3, 1, (1, 1))])
def test_tf_same_padding_formula(size, k, s, expect):
    assert tf_same_pad(size, k, s) == expect


def test_tf_same_conv_matches_explicit_pad():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 16, 16)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    conv.__class__ = TFSameConv2d
    assert torch.allclose(conv(x), ref, atol=1e-6)
    assert ref.shape[-1] == 8


def test_mobilenet_v2_strided_convs_use_tf_padding():
    net = load_model("mobilenet_v2", "random").net
    strided = [m for m in net.modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
    assert strided and all(type(m) is TFSameConv2d for m in strided)
    assert "features.1.conv.0.0.weight" in net.state_dict()  # paths unchanged


def test_model_preprocess_replaces_a_zoo_entrys_fields_and_keeps_its_fits_apart():
    """``model.preprocess`` on a zoo model (the IBA paper's bbox script fed its networks [0, 1] images: mean 0,
    std 1): the loaded model's preprocessing, the images the dataset gives, and a cache folder of its own for
    what methods fit (feature statistics depend on the input); without it, the zoo's as before."""
    from tests.helpers import compose_cfg
    from xattr.config import build
    from xattr.core.preprocess import Preprocess
    from xattr.run import cache_dir_for

    raw = ["dataset=samples", "model.preprocess.mean=[0,0,0]", "model.preprocess.std=[1,1,1]"]
    plain, unnorm = compose_cfg(["dataset=samples"]), compose_cfg(raw)
    assert load_model("mobilenet_v2", "random", spec=plain.model).preprocess == Preprocess((0.5,) * 3, (0.5,) * 3)
    zoo = load_model("mobilenet_v2", "random", spec=unnorm.model)
    assert zoo.preprocess == Preprocess((0.0,) * 3, (1.0,) * 3, 224, 256)
    ds = build(unnorm.dataset.attribution, preprocess=zoo.preprocess)
    ref = build(plain.dataset.attribution, preprocess=load_model("mobilenet_v2", "random", spec=plain.model).preprocess)
    x, x_ref = ds[0]["x"], ref[0]["x"]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x_ref.min()) < 0.0
    torch.testing.assert_close(x, x_ref * 0.5 + 0.5, rtol=0, atol=1e-6)  # the same pixels, not normalised
    assert cache_dir_for(plain) == Path(plain.paths.cache_dir)
    other = compose_cfg([*raw[:2], "model.preprocess.std=[0.5,0.5,0.5]"])
    dirs = {cache_dir_for(unnorm), cache_dir_for(other), cache_dir_for(plain)}
    assert len(dirs) == 3 and cache_dir_for(unnorm).parent == Path(plain.paths.cache_dir)
    with pytest.raises(XattrConfigError, match=r"std \[0.0, 0.0, 0.0\].*std > 0"):
        load_model("mobilenet_v2", "random", spec=compose_cfg(["model.preprocess.std=[0,0,0]"]).model)
