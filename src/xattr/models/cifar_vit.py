"""The project's CIFAR-10 vision transformer: a torchvision ``VisionTransformer`` (Dosovitskiy et al., 2021)
with 4x4 patches on 32x32 images (an 8x8 patch grid plus the class token, 65 tokens), trained here from
scratch with ``python -m xattr.train recipe=cifar_vit`` and shipped as ``assets/cifar_vit.pt`` (fp16 state
dict; ``model.weights=pretrained`` reads it).

Size (width 96, 4 blocks, 4 heads, MLP 192: 0.31 M parameters) was chosen for the training budget here,
one CPU core for about 1.5 hours (the shipped weights: 20 epochs, 73.5% test accuracy): a 128-image step takes ~0.5 s on a free core, against ~2 s for the
1.8 M-parameter width-192 / 6-block ViT, so the small one sees ~4x more images in the same time, which
matters more than width at this budget (the ViT-lite results of Hassani et al., 2021, "Escaping the big
data paradigm with compact transformers", show ~0.3 M-parameter ViTs reaching 70-80% on CIFAR-10 given
enough epochs). The architecture is torchvision's own class, so everything that handles
``model=torchvision model.arch=vit_*`` (the token-grid layout of ``xattr.core.tokens``) handles this one.
"""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn

from xattr.errors import missing_file
from xattr.models.vision_transformers import vit_layers

# the trained model's hyper-parameters (conf/recipe/cifar_vit.yaml trains exactly this)
CIFAR_VIT = dict(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=96, mlp_dim=192,
                 num_classes=10)
ASSET = Path(__file__).resolve().parents[3] / "assets" / "cifar_vit.pt"
CIFAR_VIT_LAYERS = vit_layers(CIFAR_VIT["num_layers"])


def build_cifar_vit(weights: str, weights_dir: Path) -> nn.Module:
    """``random``: the architecture untrained; ``pretrained`` / ``cifar10``: ``assets/cifar_vit.pt``; else a
    state-dict path (fp16 or fp32: loading casts to the model's float32)."""
    from xattr.models.custom import load_state

    net = torchvision.models.VisionTransformer(**CIFAR_VIT)
    if weights == "random":
        return net
    path = ASSET if weights in ("pretrained", "cifar10", "imagenet") else Path(weights)
    if not path.is_file():
        raise missing_file("CIFAR-10 ViT weights", path,
                           "assets/cifar_vit.pt of the repository, or train one: python -m xattr.train recipe=cifar_vit")
    load_state(net, path, "CIFAR-10 ViT")
    return net
