"""Layer addressing: the papers' names (``conv4_1``, ``conv3_4``, ``denseblock3``) or module paths
(``features.17``), both ways, resolved once.

Each zoo model carries ``xattr_layers``: an ordered dict ``paper name -> module path``. A name that is
neither a paper name nor a module path raises one error listing both kinds of valid choices. Methods
resolve their layers at construction (:func:`resolve`) and keep the :class:`Layer`, so a bad name fails
before any work and no forward pass looks a name up again.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from xattr.errors import unknown


@dataclass(frozen=True)
class Layer:
    """A resolved layer: the name it was given, its module path and the module itself."""

    name: str
    path: str
    module: nn.Module


def layer_aliases(model: nn.Module) -> dict[str, str]:
    """The model's ``paper name -> module path`` table (empty for models without one)."""
    return dict(getattr(model, "xattr_layers", {}) or {})


def layer_path(model: nn.Module, name: str) -> str:
    """Module path of ``name`` (a paper name or a module path) in ``model``."""
    aliases = layer_aliases(model)
    if name in aliases:
        return aliases[name]
    paths = dict(model.named_modules())
    if name in paths and name != "":
        return name
    choices = list(aliases) + [p for p in paths if p and p not in aliases.values()][:40]
    raise unknown("layer", name, choices + (["..."] if len(paths) > 41 else []))


def resolve(model: nn.Module, name: str) -> Layer:
    """The :class:`Layer` of ``model`` addressed by ``name`` (paper name or module path)."""
    path = layer_path(model, name)
    return Layer(name, path, model.get_submodule(path))


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule of ``model`` addressed by ``name`` (paper name or module path)."""
    return resolve(model, name).module


def paper_name(model: nn.Module, path: str) -> str | None:
    """The paper name of a module path, or ``None`` when it has none (the other way round)."""
    for k, v in layer_aliases(model).items():
        if v == path:
            return k
    return None
