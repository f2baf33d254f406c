"""Where the configs live and the checks made before any work.

Hydra reports an unknown config-group option in several lines; ``check_overrides`` catches it first
and stops with one line naming the bad value and the valid choices (``model=vgg61`` ->
``unknown model 'vgg61'; valid choices: cifar_resnet20, ...``). Unknown layers, class indices and missing
files are caught when the model, target, dataset and method are built, before the first batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from xattr.errors import XattrConfigError, unknown

CONF_DIR = Path(os.environ.get("XATTR_CONF", Path(__file__).resolve().parents[2] / "conf"))
GROUPS = ("model", "dataset", "method", "metric", "analysis", "logger", "trainer", "experiment",
          "net", "optimizer", "scheduler", "recipe")


def group_options(group: str) -> list[str]:
    d = CONF_DIR / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def check_overrides(argv: list[str]) -> None:
    """Validate ``group=option`` command-line overrides against ``conf/<group>/*.yaml``; exit with one line."""
    try:
        for arg in argv:
            if arg.startswith("-") or "=" not in arg:
                continue
            key, value = arg.split("=", 1)
            key = key.lstrip("+~")
            if key.startswith("override "):
                key = key.split()[1]
            key = key.split("@")[0]
            if key not in GROUPS or value in ("null", ""):
                continue
            options = group_options(key)
            values = value.strip("[]").split(",")
            for v in values:
                if v and v not in options:
                    raise unknown(key, v, options)
    except XattrConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def validate(cfg: DictConfig) -> None:
    """Checks that need the composed config (names are checked again when objects are built)."""
    from xattr.models.zoo import ZOO

    if cfg.model.name not in ZOO:
        raise unknown("model", cfg.model.name, sorted(ZOO))
    if int(cfg.batch_size) < 1:
        raise XattrConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    for name in cfg.get("metric") or {}:
        if name not in group_options("metric"):
            raise unknown("metric", name, group_options("metric"))


def root_config_error(exc: BaseException) -> XattrConfigError | None:
    """The :class:`XattrConfigError` behind ``exc`` (Hydra wraps errors raised while instantiating)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, XattrConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def build(node, *args, **kwargs):
    """``hydra.utils.instantiate`` that re-raises our one-line config errors unwrapped."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, *args, **kwargs)
    except Exception as e:
        err = root_config_error(e)
        if err is not None:
            raise err from None
        raise
