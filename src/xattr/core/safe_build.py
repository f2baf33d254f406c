"""Building objects from a config that a file gave (a run folder's ``config.yaml``): only xattr's own classes.

A run folder may come from anywhere (a colleague's archive, a download); its ``config.yaml`` is read as data.
:func:`build_known` instantiates a node only when every ``_target_`` in it (nested ones included) names a
class of the given xattr packages (``xattr.metrics.``, ``xattr.data.``); any other target (``os.system``,
``builtins.eval``, a module of the folder's own) is one error naming it, before anything is imported or called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xattr.errors import XattrConfigError


def targets(node: Any) -> list[str]:
    """Every ``_target_`` in a config node (dicts and lists walked, OmegaConf nodes read as plain data)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                out.append(str(v))
            else:
                out += targets(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            out += targets(v)
    return out


def check_known(node: Any, packages: Sequence[str], what: str, source: object) -> None:
    """Raise the one-line error when a ``_target_`` of ``node`` is not a class of ``packages``."""
    import importlib
    import inspect

    for target in targets(node):
        module, _, name = target.rpartition(".")
        ok = any(target.startswith(p) for p in packages) and module and name
        if ok:
            try:
                ok = inspect.isclass(getattr(importlib.import_module(module), name, None))
            except ImportError:
                ok = False
        if not ok:
            raise XattrConfigError(f"refused {what} _target_ {target!r} in {source}: it builds only xattr's own "
                                   f"classes; valid choices: a class of {', '.join(packages)}")


def build_known(node: Any, packages: Sequence[str], what: str, source: object, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` after :func:`check_known`."""
    from hydra.utils import instantiate

    check_known(node, packages, what, source)
    return instantiate(node, **kwargs)
