"""Chest X-ray networks (dissertation ch. 8 L1520, ch. 9 L1765): DenseNet-121 with a new head, and the small
CPU network of the synthetic stand-in.

- ``densenet121_nih``: torchvision DenseNet-121, classifier ``Linear(1024, 14)`` for NIH ChestX-ray8's 14
  findings (the paper's Table 1/3 evaluate the 8 with boxes); ``weights=imagenet`` starts from torchvision's
  ImageNet weights with a new random head (the training start), a path loads a trained state dict.
- ``densenet121_brixia``: the same with one output (global severity 0-18, regression).
- ``densenet121_brixia_detector``: three outputs (a region of score 3 / 2 / 0-1 exists).
- ``synthetic_cxr_resnet8``: the CIFAR ResNet shape (:mod:`xattr.models.cifar_resnet`, depth 8, 16/32/64 channels)
  with a stride-2 stem with 4 outputs for ``dataset=synthetic_cxr``'s findings, 64 px input: trains on a CPU in
  minutes (``python -m xattr.train recipe=synthetic_cxr``). ``weights`` must be ``random`` or a trained file.

Layer names: DenseNet-121's (``denseblock1``..``denseblock4``) and the CIFAR ResNet's (``stage1``..``stage3``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from xattr.core.preprocess import Preprocess
from xattr.errors import XattrConfigError, missing_file
from xattr.models import custom
from xattr.models.cifar_resnet import cifar_resnet

NIH_PRE = Preprocess(size=224, resize=224)  # Resize / CenterCrop 224, ImageNet normalisation (ch. 8 recipe)
SYNTHETIC_PRE = Preprocess((0.5,) * 3, (0.25,) * 3, size=64, resize=64)


def load_state(net: nn.Module, path: Path, what: str) -> None:
    """A state dict saved by ``torch.save`` (or a dict holding ``state_dict``), loaded strictly."""
    if not path.is_file():
        raise missing_file(f"{what} weights", path, "a state_dict saved by python -m xattr.train; or model.weights=random")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    net.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})


def densenet121_head(outputs: int) -> Callable[[str, Path], nn.Module]:
    """Builder of a DenseNet-121 whose classifier is ``Linear(1024, outputs)``."""

    def build(weights: str, weights_dir: Path) -> nn.Module:
        net = torchvision.models.densenet121(weights=None)
        if weights in ("imagenet", "pretrained"):
            w = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1
            custom.torchvision_checkpoint("densenet121 ImageNet weights", w)
            net = torchvision.models.densenet121(weights=w)
        net.classifier = nn.Linear(net.classifier.in_features, int(outputs))
        if weights not in ("random", "imagenet", "pretrained"):
            load_state(net, Path(weights), f"DenseNet-121 ({outputs} outputs)")
        return net

    return build


def synthetic_resnet8(weights: str, weights_dir: Path) -> nn.Module:
    """The CIFAR ResNet-8 shape with 4 outputs (the synthetic findings) and a stride-2 stem: at 64 px the
    stages are 32 / 16 / 8 px, so ``stage2`` (16 x 16) has the resolution of DenseNet-121's ``denseblock3``
    at 224 px (14 x 14), where ch. 8 puts the bottleneck; a CPU trains it in a few minutes."""
    net = cifar_resnet(8, num_classes=4)
    net.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight)
    if weights in ("imagenet", "pretrained"):
        raise XattrConfigError(f"synthetic_cxr_resnet8 has no pretrained weights ({weights!r}); valid choices: "
                               "random, or the file python -m xattr.train recipe=synthetic_cxr wrote")
    if weights != "random":
        load_state(net, Path(weights), "synthetic_cxr_resnet8")
    return net
