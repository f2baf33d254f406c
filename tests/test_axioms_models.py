"""ResNet-18 in the zoo (the model of ch. 7) and the four stages Table 2 reads on ResNet-18 and MobileNet-V2."""

from __future__ import annotations

import torch

from tests.helpers import compose_cfg
from xattr.core.layers import resolve, resolve_layer
from xattr.models.zoo import load_model


def test_resnet18_from_the_zoo_with_random_weights():
    cfg = compose_cfg(["model=resnet18", "model.weights=random"])
    zoo = load_model("resnet18", "random")
    assert zoo.net.num_classes == 1000 and zoo.preprocess.size == 224
    assert sum(p.numel() for p in zoo.net.parameters()) == 11_689_512  # torchvision's ResNet-18
    paths = {k: resolve(zoo.net, v).path for k, v in cfg.model.layers.stages.items()}
    assert paths == {"layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}
    assert resolve(zoo.net, "conv3_2").path == "layer2" and resolve(zoo.net, "conv4_1").path == "layer3.0"
    with torch.no_grad():
        assert zoo.net(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_mobilenet_v2_stages_end_each_resolution_like_resnet_layers():
    cfg = compose_cfg(["model=mobilenet_v2", "model.weights=random"])
    net = load_model("mobilenet_v2", "random").net
    sizes = {}
    for name, layer in cfg.model.layers.stages.items():
        module = resolve_layer(net, layer)
        h = module.register_forward_hook(lambda m, i, o, n=name: sizes.__setitem__(n, o.shape[-1]))
        with torch.no_grad():
            net(torch.zeros(1, 3, 224, 224))
        h.remove()
    assert sizes == {"layer1": 56, "layer2": 28, "layer3": 14, "layer4": 7}  # strides 4, 8, 16, 32
