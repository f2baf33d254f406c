"""timm image classifiers (``model=timm model.arch=<name>``; optional extra ``.[timm]``; docs/transformers.md).

Nothing is downloaded: ``model.weights`` is ``random`` (the architecture, timm's initialisation), a local
weights file (``.safetensors``, ``.pth``: ``timm.models.load_checkpoint``, strict), or ``pretrained``: the
model's default weights from the local HuggingFace cache only (``HF_HUB_OFFLINE=1`` while loading; a missing file is one line saying where to put it).
Preprocessing comes from the model's own pretrained config (``timm.data.resolve_data_config``: mean, std, input
size; resize = size / crop_pct). The token-grid layouts of timm ViT / DeiT / Swin are declared in
:mod:`xattr.core.tokens`; layer names are module paths (``blocks.5``, ``blocks.11.norm1``, ``layers.2``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from xattr.core.preprocess import Preprocess
from xattr.errors import XattrConfigError, missing_file

RANDOM = ("random", "none", "null", "")


def timm_module():
    """``timm``, or one line saying how to install it."""
    try:
        import timm
    except ImportError:
        raise XattrConfigError("model=timm needs the timm package: pip install -e '.[timm]'") from None
    return timm


@contextmanager
def _offline():
    """huggingface_hub in offline mode inside the block (its flag is read at import: set on the module too)."""
    import huggingface_hub.constants as hc

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), hc.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], hc.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def check_timm(node: Mapping) -> str:
    """The node's architecture name (one line when timm lacks it or the weights file is missing)."""
    timm = timm_module()
    arch = str(node.get("arch"))
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
        raise XattrConfigError(f"unknown model.arch {arch!r} for model=timm; valid choices: a timm model name "
                               f"(timm.list_models()), e.g. {', '.join(close) or 'vit_small_patch16_224'}")
    weights = str(node.get("weights") or "random")
    if weights.lower() not in RANDOM + ("pretrained", "imagenet") and not Path(weights).is_file():
        raise missing_file(f"timm {arch} weights (model.weights)", Path(weights),
                           "a .safetensors / .pth file of the model, model.weights=pretrained (the local HF "
                           "cache) or random")
    return arch


def build_timm(node: Mapping) -> tuple[nn.Module, Preprocess, int]:
    """``(net, preprocess, num_classes)`` of the node (see the module docstring)."""
    timm = timm_module()
    arch = check_timm(node)
    weights = str(node.get("weights") or "random")
    kwargs: dict[str, Any] = dict(node.get("kwargs") or {})
    if node.get("num_classes") is not None:
        kwargs["num_classes"] = int(node["num_classes"])
    if weights.lower() not in ("pretrained", "imagenet"):
        net = timm.create_model(arch, pretrained=False, **kwargs)
        if weights.lower() not in RANDOM:  # a local file, loaded strictly (timm's load_checkpoint: .safetensors / .pth)
            try:
                timm.models.load_checkpoint(net, weights, strict=True)
            except Exception as e:  # noqa: BLE001 - unreadable, another architecture, another head
                raise XattrConfigError(f"bad model.weights {weights!r}: it does not load into timm {arch} "
                                       f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                                       "valid choices: a .safetensors / .pth state dict of this arch and kwargs") from None
    else:
        try:
            with _offline():
                net = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - not in the local cache
            cfg = getattr(timm.models, "get_pretrained_cfg", lambda a: None)(arch)
            hub = getattr(cfg, "hf_hub_id", None) or f"timm/{arch}"
            home = os.environ.get("HF_HOME", "~/.cache/huggingface")
            raise XattrConfigError(
                f"cannot load timm {arch} weights 'pretrained' offline ({type(e).__name__}); valid choices: its "
                f"files in the HuggingFace cache ({home}/hub, repo {hub}: huggingface-cli download {hub} on a "
                "machine with network, then copy the cache), model.weights=<a local .safetensors / .pth file>, "
                "or random") from None
    cfg = timm.data.resolve_data_config({}, model=net)
    size = int(kwargs.get("img_size") or cfg["input_size"][-1])
    pre = Preprocess(tuple(cfg["mean"]), tuple(cfg["std"]), size, max(size, round(size / float(cfg.get("crop_pct") or 1.0))))
    return net, pre, int(getattr(net, "num_classes", kwargs.get("num_classes", 1000)))
