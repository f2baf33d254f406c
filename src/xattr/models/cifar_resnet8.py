"""ResNet-8 of the ROAR experiments (dissertation ch. 5, appendix C.3, L1988: "a ResNet-8 (three residual
blocks)"), as in the authors' RoarTorch code: ``ResNet(BasicBlock, [1, 1, 1])`` with strides 1/2/2,
64/128/256 channels, convolutional (1x1 conv + batch-norm) shortcuts where the shape changes, global average
pooling and a linear layer. Trained here (``python -m xattr.train recipe=roar roar.percent=0``); no weights
are shipped.

Every ReLU is its own ``nn.ReLU`` module (no functional ReLU), so hook-based methods (Guided BP, the
pathway methods) see each one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xattr.core.preprocess import Preprocess
from xattr.errors import XattrConfigError, missing_file

# CIFAR-10 training-set channel mean and std in [0, 1] (the RoarTorch / kuangliu normalisation); the ROAR
# fill (the dataset mean) is 0 after this normalisation
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_PRE = Preprocess(CIFAR10_MEAN, CIFAR10_STD, size=32, resize=32)
RESNET8_LAYERS = {"conv1": "conv1", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "fc": "linear"}


class ConvBlock(nn.Module):
    """BasicBlock with a convolutional shortcut (RoarTorch's ``BasicBlock``): two 3x3 conv + BN, ReLU after
    the sum; the shortcut is 1x1 conv (stride) + BN when stride != 1 or the width changes, else identity."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet8(nn.Module):
    """``ResNet(BasicBlock, [1, 1, 1])``, strides [1, 2, 2], widths ``widths`` (64/128/256), ``num_classes``."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        w1, w2, w3 = (int(w) for w in widths)
        self.conv1 = nn.Conv2d(3, w1, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(ConvBlock(w1, w1, 1))
        self.layer2 = nn.Sequential(ConvBlock(w1, w2, 2))
        self.layer3 = nn.Sequential(ConvBlock(w2, w3, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(w3, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out).flatten(1))


def build_resnet8(weights: str, weights_dir: Path | None = None) -> ResNet8:
    """The zoo builder: ``random`` (from scratch) or a state-dict file written by ``python -m xattr.train``."""
    if weights == "random":
        return ResNet8()
    if weights in ("pretrained", "cifar10", "imagenet"):
        raise XattrConfigError(f"no {weights} weights ship for cifar_resnet8; train one with `python -m xattr.train "
                               "recipe=roar roar.percent=0` and pass model.weights=<its cifar_resnet8.pt>, or "
                               "model.weights=random")
    path = Path(weights)
    if not path.is_file():
        raise missing_file("cifar_resnet8 weights", path, "python -m xattr.train recipe=roar roar.percent=0 writes one")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    sd = {k.removeprefix("module.").removeprefix("net."): v for k, v in sd.items()}
    try:  # the widths of the checkpoint (a narrow test model loads too)
        widths = tuple(int(sd[f"{k}.weight"].shape[0]) for k in ("conv1", "layer2.0.conv1", "layer3.0.conv1"))
        net = ResNet8(int(sd["linear.weight"].shape[0]), widths)
    except KeyError:
        raise XattrConfigError(f"{path} is not a cifar_resnet8 state dict (no conv1 / layer2.0.conv1 / "
                               "layer3.0.conv1 / linear weights)") from None
    net.load_state_dict(sd)
    return net
