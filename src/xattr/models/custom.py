"""Bring your own model: any torchvision classification architecture by name, or any ``nn.Module`` from a
factory function, described by its config node (``conf/model/torchvision.yaml``, ``conf/model/custom.yaml``).

The node's keys (both kinds):

- ``kind``: ``torchvision`` (``arch``: a name of ``torchvision.models.list_models(module=torchvision.models)``)
  or ``custom`` (``factory``: ``package.module:function``, called with ``**kwargs``, returning the module);
- ``weights``: ``random`` (the architecture's own initialisation; for ``custom`` also ``null``: as the factory
  returns it), a state-dict file, or (torchvision) a weights name of the architecture (``IMAGENET1K_V1``,
  ``DEFAULT``; ``imagenet`` = ``IMAGENET1K_V1``) whose file is in ``$TORCH_HOME/hub/checkpoints``;
- ``preprocess``: ``{mean, std, size, resize}``, null fields taken from the torchvision weights (or ImageNet's
  mean/std, 224/256);
- ``num_classes`` (null: the torchvision weights' classes, 1000; custom: the module's ``num_classes``, else
  the output size of one forward pass), ``labels`` (a list or a JSON file, one name per class; null: the
  torchvision weights' categories, else ``class <i>``);
- ``aliases``: paper name -> module path, added to the module's own ``xattr_layers``; the methods' default
  layers per role stay in the config's ``layers``.

Bad input raises one :class:`~xattr.errors.XattrConfigError` line naming the key and the value.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from xattr.core.preprocess import Preprocess
from xattr.errors import XattrConfigError, missing_file, unknown

KINDS = ("torchvision", "custom", "hf", "timm")
RANDOM = ("random", "none", "null", "")
PRETRAINED = {"imagenet": "IMAGENET1K_V1", "pretrained": "IMAGENET1K_V1"}


@dataclass
class Built:
    """What a kind's builder hands back to ``load_model``: the module and its description."""

    net: nn.Module
    preprocess: Preprocess
    labels: list[str]
    aliases: dict[str, str]


# ------------------------------------------------------------------------------------------------ torchvision
def torchvision_archs() -> list[str]:
    """The classification architectures of ``torchvision.models`` (not detection, segmentation, video)."""
    return list(torchvision.models.list_models(module=torchvision.models))


def _check_arch(arch: Any) -> str:
    if str(arch) not in torchvision_archs():
        raise unknown("model.arch", arch, torchvision_archs())
    return str(arch)


def _weights_enum(arch: str, weights: str):
    """The torchvision weights entry ``weights`` names for ``arch``, or ``None`` when it names a file."""
    entries = torchvision.models.get_model_weights(arch)
    members = entries.__members__
    if weights.lower() in PRETRAINED:  # the zoo's word: IMAGENET1K_V1 (else the architecture's default)
        name = PRETRAINED[weights.lower()]
        return entries[name if name in members else "DEFAULT"]
    if weights in members:
        return entries[weights]
    if weights.replace("_", "").isalnum() and weights.upper() == weights and not Path(weights).exists():
        raise unknown(f"model.weights for {arch}", weights, ["random", "<a state-dict file>", *members])
    return None


def _default_entry(arch: str):
    members = torchvision.models.get_model_weights(arch).__members__
    return members.get("DEFAULT")


def torchvision_checkpoint(what: str, w) -> Path:
    """The cached file of torchvision weights ``w`` under ``TORCH_HOME`` (nothing is downloaded), or one
    error naming ``what``, the path and the URL."""
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    if not ckpt.is_file():
        raise missing_file(
            what, ckpt,
            f"download {w.url} there, or set TORCH_HOME to a folder whose hub/checkpoints holds it; "
            "model.weights=random runs without it",
        )
    return ckpt


def _first(v: Any) -> int:
    return int(v[0] if isinstance(v, list | tuple) else v)


def _transforms(w) -> dict[str, Any]:
    """mean, std, size, resize of a torchvision weights entry (its ``transforms()``), or nothing."""
    if w is None:
        return {}
    t = w.transforms()
    if not all(hasattr(t, a) for a in ("mean", "std", "crop_size", "resize_size")):
        return {}
    return {"mean": tuple(t.mean), "std": tuple(t.std), "size": _first(t.crop_size), "resize": _first(t.resize_size)}


def _check_torchvision(node: Mapping) -> tuple[str, Any, str]:
    arch = _check_arch(node.get("arch"))
    weights = _weights_text(node.get("weights"))
    w = None if weights.lower() in RANDOM else _weights_enum(arch, weights)
    if w is not None:
        torchvision_checkpoint(f"{arch} {w.name} weights", w)
    elif weights.lower() not in RANDOM:
        _check_file(weights, arch)
    return arch, w, weights


def build_torchvision(node: Mapping, known_aliases: Callable[[str, nn.Module], dict[str, str]]) -> Built:
    """A torchvision classification network as the node describes it (see the module docstring)."""
    arch, w, weights = _check_torchvision(node)
    kwargs = dict(node.get("kwargs") or {})
    if node.get("num_classes") is not None:
        kwargs["num_classes"] = int(node["num_classes"])
    try:  # the weights entry itself when named: torchvision sets what it implies (e.g. Inception's transform_input)
        net = torchvision.models.get_model(arch, weights=w, **kwargs)
    except (TypeError, ValueError) as e:
        raise XattrConfigError(f"torchvision {arch} with model.weights {weights!r} does not take "
                               f"{kwargs} (model.num_classes, model.kwargs): {_first_line(e)}") from None
    if w is None and weights.lower() not in RANDOM:
        load_state(net, Path(weights), arch)
    entry = w or _default_entry(arch)
    num_classes = int(kwargs.get("num_classes") or (len(w.meta.get("categories") or []) if w is not None else 0)
                      or 1000)  # torchvision's default head
    categories = list(entry.meta.get("categories") or []) if entry is not None else []
    labels = _labels(node.get("labels"), num_classes, categories if len(categories) == num_classes else None)
    pre = _preprocess(node.get("preprocess"), _transforms(entry))
    net.num_classes = num_classes
    return Built(net, pre, labels, {**known_aliases(arch, net), **_aliases(node)})


# ------------------------------------------------------------------------------------------------ custom
def resolve_factory(ref: Any) -> Callable[..., Any]:
    """The callable named by ``package.module:function`` (``model.factory``); one error line if there is none.
    A callable is taken as it is (``xattr.load_model(my_module)`` hands one over)."""
    if callable(ref):
        return ref
    text = str(ref)
    mod_name, sep, attr = text.partition(":")
    if not sep or not mod_name or not attr:
        raise XattrConfigError(f"model.factory {text!r} must be 'package.module:function'")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or the module fails while importing
        raise XattrConfigError(f"model.factory {text!r}: cannot import {mod_name!r} ({_first_line(e)})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise XattrConfigError(f"model.factory {text!r}: module {mod_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise XattrConfigError(f"model.factory {text!r} is not callable ({type(obj).__name__})")
    return obj


def _check_custom(node: Mapping) -> tuple[Callable, dict, str]:
    fn = resolve_factory(node.get("factory"))
    kwargs = dict(node.get("kwargs") or {})
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise XattrConfigError(f"model.factory {str(node.get('factory'))!r} does not take model.kwargs "
                               f"{kwargs}: {_first_line(e)}") from None
    except ValueError:  # no signature to check (a builtin): calling it will tell
        pass
    weights = _weights_text(node.get("weights"))
    if weights.lower() not in RANDOM:
        _check_file(weights, str(node.get("factory")))
    return fn, kwargs, weights


def build_custom(node: Mapping) -> Built:
    """``factory(**kwargs)`` as the node describes it (see the module docstring)."""
    fn, kwargs, weights = _check_custom(node)
    ref = str(node.get("factory"))
    net = fn(**kwargs)
    if not isinstance(net, nn.Module):
        raise XattrConfigError(f"model.factory {ref!r} returned {type(net).__name__}, not a torch.nn.Module")
    if weights.lower() not in RANDOM:
        load_state(net, Path(weights), ref)
    pre = _preprocess(node.get("preprocess"), {})
    num_classes = node.get("num_classes")
    if num_classes is None:
        num_classes = getattr(net, "num_classes", None)
    if num_classes is None:
        num_classes = _classes_by_forward(net, pre, ref)
    net.num_classes = int(num_classes)
    return Built(net, pre, _labels(node.get("labels"), int(num_classes), None), _aliases(node))


def _classes_by_forward(net: nn.Module, pre: Preprocess, ref: str) -> int:
    x = torch.zeros(1, len(pre.mean), pre.size, pre.size)
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        net.train(training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise XattrConfigError(f"model.factory {ref!r}: cannot tell the number of classes from its output "
                               f"({type(out).__name__}); set model.num_classes")
    return int(out.shape[1])


# ------------------------------------------------------------------------------------------------ shared
def check(node: Mapping) -> None:
    """Cheap checks before any work (names, importability, files); building checks the rest."""
    kind = node.get("kind")
    if kind not in KINDS:
        raise unknown("model.kind", kind, KINDS)
    if kind == "torchvision":
        _check_torchvision(node)
    elif kind == "hf":
        from xattr.models.hf import check_folder

        check_folder(node.get("path"))
    elif kind == "timm":
        from xattr.models.timm_models import check_timm

        check_timm(node)
    else:
        _check_custom(node)
    _preprocess(node.get("preprocess"), {})
    if node.get("labels") is not None:
        _read_labels(node.get("labels"))


def build(node: Mapping, known_aliases: Callable[[str, nn.Module], dict[str, str]]) -> Built:
    """Build the model the node describes (``kind: torchvision | custom``)."""
    kind = node.get("kind")
    if kind == "torchvision":
        return build_torchvision(node, known_aliases)
    if kind == "custom":
        return build_custom(node)
    if kind == "hf":
        return build_hf(node)
    if kind == "timm":
        return build_timm(node)
    raise unknown("model.kind", kind, KINDS)


def build_timm(node: Mapping) -> Built:
    """A timm classifier (:mod:`xattr.models.timm_models`): weights from a local file or the local HF cache."""
    from xattr.models.timm_models import build_timm as _build

    net, pre, num_classes = _build(node)
    net.num_classes = num_classes
    pre = _preprocess(node.get("preprocess"), {"mean": pre.mean, "std": pre.std, "size": pre.size,
                                                 "resize": pre.resize})
    return Built(net, pre, _labels(node.get("labels"), num_classes, None), _aliases(node))


def build_hf(node: Mapping) -> Built:
    """A HuggingFace sequence classifier from the local folder ``model.path`` (:mod:`xattr.models.hf`);
    ``model.weights: random`` keeps its architecture (``config.json``) with fresh weights (tests)."""
    from xattr.models.hf import check_folder, labels_of, load_hf

    folder = check_folder(node.get("path"))
    net = load_hf(folder, random=_weights_text(node.get("weights")).lower() in RANDOM)
    labels = _labels(node.get("labels"), net.num_classes, labels_of(net.model))
    return Built(net, Preprocess(), labels, _aliases(node))


def _weights_text(weights: Any) -> str:
    return "random" if weights is None else str(weights)


def _check_file(path: str, what: str) -> None:
    if not Path(path).is_file():
        raise missing_file(f"{what} weights (model.weights)", path,
                           "a state_dict saved by torch.save; or model.weights=random")


STATE_DICT_CHOICES = "a state_dict file saved by torch.save (tensors only), or model.weights=random"


def load_state(net: nn.Module, path: Path, what: str) -> None:
    """Load a state-dict file (``{"state_dict": ...}`` and a DataParallel ``module.`` prefix accepted)."""
    _check_file(str(path), what)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch.save file (truncated, empty, another format) or one holding code
        raise XattrConfigError(f"bad model.weights {str(path)!r}: cannot load it as a state dict ({_kind(e)}); "
                               f"valid choices: {STATE_DICT_CHOICES}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise XattrConfigError(f"bad model.weights {str(path)!r}: not a state dict ({type(sd).__name__}); "
                               f"valid choices: {STATE_DICT_CHOICES}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    result = net.load_state_dict(sd, strict=False)
    bad = [f"{len(v)} {k}: {', '.join(v[:3])}{', ...' if len(v) > 3 else ''}"
           for k, v in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if v]
    if bad:
        raise XattrConfigError(f"model.weights {str(path)!r} does not fit {what} ({'; '.join(bad)})")


def _preprocess(spec: Mapping | None, defaults: Mapping[str, Any]) -> Preprocess:
    """``model.preprocess`` with null fields from ``defaults`` (else ImageNet's mean/std, 224/256). A size
    given without a resize keeps the defaults' resize / size ratio (224 -> 256, so 32 -> 37)."""
    base = Preprocess()
    d = {"mean": base.mean, "std": base.std, "size": base.size, "resize": base.resize, **defaults}
    given = {k: v for k, v in dict(spec or {}).items() if v is not None}
    bad = sorted(set(given) - {"mean", "std", "size", "resize"})
    if bad:
        raise unknown("model.preprocess key", bad[0], ["mean", "std", "size", "resize"])
    try:
        mean = tuple(float(v) for v in given.get("mean", d["mean"]))
        std = tuple(float(v) for v in given.get("std", d["std"]))
        size = int(given.get("size", d["size"]))
        if "resize" in given:
            resize = int(given["resize"])
        elif "size" in given:
            resize = max(size, round(size * int(d["resize"]) / int(d["size"])))
        else:
            resize = int(d["resize"])
    except (TypeError, ValueError):
        raise XattrConfigError(f"model.preprocess {dict(spec or {})}: mean, std must be lists of numbers, "
                               "size, resize integers") from None
    if len(mean) != len(std) or not mean or min(std) <= 0 or size < 1 or resize < size:
        raise XattrConfigError(f"model.preprocess mean {list(mean)}, std {list(std)}, size {size}, resize {resize}: "
                               "mean and std of one length, std > 0, 1 <= size <= resize")
    return Preprocess(mean, std, size, resize)


def _read_labels(spec: Any) -> list[str]:
    """``model.labels``: a list, or a JSON file holding a list or ``{"<i>": name | [id, name]}``."""
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise missing_file("class labels (model.labels)", path, "a JSON list of names, or {\"0\": name}")
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise XattrConfigError(f"model.labels {spec!r} is not JSON ({_first_line(e)})") from None
    else:
        data = spec
    if isinstance(data, Mapping):
        try:
            data = [data[k] for k in sorted(data, key=int)]
        except (TypeError, ValueError):
            raise XattrConfigError(f"model.labels {spec!r}: keys must be class indices 0..n-1") from None
    if not isinstance(data, list | tuple):
        raise XattrConfigError(f"model.labels {spec!r} must be a list of names or a JSON file of one")
    return [str(v[-1]) if isinstance(v, list | tuple) and v else str(v) for v in data]


def _labels(spec: Any, num_classes: int, fallback: list[str] | None) -> list[str]:
    if spec is None:
        return list(fallback) if fallback else [f"class {i}" for i in range(num_classes)]
    labels = _read_labels(spec)
    if len(labels) != num_classes:
        raise XattrConfigError(f"model.labels has {len(labels)} names for model.num_classes {num_classes}")
    return labels


def _aliases(node: Mapping) -> dict[str, str]:
    aliases = node.get("aliases") or {}
    if not isinstance(aliases, Mapping):
        raise XattrConfigError(f"model.aliases {aliases!r} must map paper names to module paths")
    return {str(k): str(v) for k, v in aliases.items()}


def _kind(e: BaseException) -> str:
    """An exception's class name, with its module when the name alone says nothing (``struct.error``)."""
    name = type(e).__name__
    return f"{type(e).__module__}.{name}" if name.islower() else name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
