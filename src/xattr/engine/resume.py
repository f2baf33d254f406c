"""Resuming a run folder: the settings that decide its results must be the ones that made it.

A run folder keeps the images it finished, and the same command resumes it (``RunStore``). A command with
other *result* settings behind the same ``hydra.run.dir`` would otherwise add images made another way to
the finished ones, and the summary would average the two silently (a method's ``beta``, a metric's
normalisation, the model's weights). :func:`check_resume` compares the folder's ``config.yaml`` with the
new configuration and refuses such a resume in one line naming each changed key.

What may change on a resume (it changes how a run goes, not what it computes): the devices and processes
(``trainer``, ``threads``), ``batch_size``, logging, paths, the number of images (``dataset.limit``: a run
extends to more images), where the data lies and how it loads (``dataset.root``, ``num_workers``,
``on_error``) and every ``chunk`` (memory only: maps unchanged, tested per method). Keys that only one of
the two configurations has are not compared (a newer xattr adds options with their defaults). The images
themselves are checked one by one as they come (``AttributionModule._check_same_images``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xattr.core.store import RunStore
from xattr.errors import XattrConfigError

#: top-level groups that do not decide results (``demo``: the demo's list of every method, each run has its own)
FREE_GROUPS = ("trainer", "logger", "paths", "hydra", "batch_size", "threads", "list_images", "name", "demo")
#: dotted keys that do not decide results (``root``: where the data lies; the images are checked one by one)
FREE_KEYS = ("dataset.limit", "dataset.num_workers", "dataset.on_error", "dataset.root", "dataset.attribution.limit",
             "dataset.attribution.on_error", "dataset.attribution.root", "dataset.estimation.on_error",
             "dataset.estimation.root")
#: leaf names that do not decide results wherever they are (memory only)
FREE_LEAVES = ("chunk",)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for every leaf of nested mappings; lists are leaves."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _free(key: str) -> bool:
    return (key.split(".", 1)[0] in FREE_GROUPS or key in FREE_KEYS
            or key.rsplit(".", 1)[-1] in FREE_LEAVES)


def changed_settings(old: Mapping, new: Mapping) -> list[str]:
    """``"key=old (here new)"`` for each result setting both configurations have with different values."""
    a, b = flatten(old), flatten(new)
    return [f"{k}={short(a[k])} (here {short(b[k])})" for k in sorted(a.keys() & b.keys())
            if not _free(k) and a[k] != b[k]]


def short(value: object) -> str:
    """``repr(value)``, cut to 60 characters (for one-line messages)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def stale_settings(run_dir, cfg) -> list[str]:
    """The result settings of ``cfg`` that differ from those that made the finished images of ``run_dir``
    (:func:`changed_settings`); empty for a folder without finished work or without ``config.yaml``."""
    from omegaconf import OmegaConf

    store = RunStore(run_dir)
    old = store.config() if store.has_finished_work() else None
    if old is None:
        return []
    new = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return changed_settings(OmegaConf.to_container(old, resolve=True), new)


def check_resume(run_dir, cfg) -> None:
    """Refuse to add images to ``run_dir`` when its finished ones were made with other result settings
    (module docstring): one line naming each changed key."""
    changed = stale_settings(run_dir, cfg)
    if changed:
        store = RunStore(run_dir)
        n = len(store.done_indices())
        raise XattrConfigError(
            f"bad run folder {store.dir}: its {n} finished image{'s' if n != 1 else ''} were made with "
            f"{'; '.join(changed)}; valid choices: the settings that made the folder, or a new folder "
            "(hydra.run.dir=...)")
