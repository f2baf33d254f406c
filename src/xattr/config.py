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
          "net", "optimizer", "scheduler", "recipe", "loss", "roar", "axioms", "row", "half")


def group_options(group: str) -> list[str]:
    d = CONF_DIR / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


SWEEP_SYNTAX = (",", "range(", "choice(", "glob(", "interval(")


def _unknown_key(argv: list[str], config_name: str) -> XattrConfigError | None:
    """An override of a key the composed config does not have (``method.betta=10``), as one error naming it
    and the keys that exist there; None when the overrides compose (or fail for another reason: Hydra says)."""
    import re

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    args = [a for a in argv if not a.startswith("-") and "=" in a]
    if any(t in a.split("=", 1)[1] for a in args for t in SWEEP_SYNTAX):
        return None  # a sweep: each job composes on its own
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            compose(config_name, overrides=args)
        return None
    except Exception as e:  # Hydra: "Could not override 'method.betta'. To append to your config use +..."
        m = re.search(r"Could not override '([^']+)'", str(e))
        if m is None:
            return None
        key = m.group(1)
    parent, _, leaf = key.rpartition(".")
    rest = [a for a in args if a.split("=", 1)[0] != key]
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose(config_name, overrides=rest)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = sorted(str(k) for k in node.keys() if not str(k).startswith("_")) if OmegaConf.is_dict(node) else []
    except Exception:
        keys = []
    hint = f" (or +{key}=... to add a new key)"
    return XattrConfigError(f"unknown key '{key}'; valid choices: {', '.join(keys) or 'none here'}{hint}")


def check_overrides(argv: list[str], config_name: str | None = "config") -> None:
    """Validate ``group=option`` command-line overrides against ``conf/<group>/*.yaml`` and that overridden
    keys exist in the composed ``config_name``; exit with one line."""
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
        err = _unknown_key(argv, config_name) if config_name else None
        if err is not None:
            raise err
    except XattrConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def validate(cfg: DictConfig) -> None:
    """Checks that need the composed config (names are checked again when objects are built)."""
    from xattr.models.zoo import check_model

    check_model(cfg.model.name, cfg.model)  # a zoo name, or kind torchvision | custom: arch, factory, files
    check_batch_size(cfg.batch_size)
    for name in cfg.get("metric") or {}:
        if name not in group_options("metric"):
            raise unknown("metric", name, group_options("metric"))


def check_batch_size(value: object, key: str = "batch_size") -> int:
    """``value`` if it is an integer >= 1, else the one-line error naming ``key`` (``batch_size=abc``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise XattrConfigError(f"bad {key} {value!r}; valid choices: an integer >= 1")
    return value


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


# ----------------------------------------------------------------------------- values, before any work
SKIP = ("_target_", "_partial_")


def _raw_defaults(group: str, option: str) -> dict:
    """The option file's own top-level values (before interpolation), or {} when there is no such file."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {k: v for k, v in raw.items() if k not in SKIP and k != "defaults"} if isinstance(raw, dict) else {}


def _takes_text(target: object, key: str) -> bool:
    """Whether ``target``'s ``__init__`` annotates ``key`` with ``str`` (a number option that also takes a
    word: ``chunk: int | str | None`` for ``auto``). Unknown targets or keys: True (the class checks)."""
    import inspect

    from hydra.utils import get_class

    try:
        cls = get_class(str(target))
        param = inspect.signature(cls.__init__).parameters.get(key)
    except Exception:  # noqa: BLE001 - not importable here: the class checks when it is built
        return True
    if param is None or param.annotation is inspect.Parameter.empty:
        return True
    return "str" in str(param.annotation)


def _check_keys(prefix: str, target: object, keys, given_later: int) -> None:
    """A key the class does not take (``+method.betta=10``) as one error naming it and the keys it takes;
    ``given_later``: leading arguments passed when it is built (a method's model), not from the config."""
    import inspect

    from hydra.utils import get_class

    try:
        params = list(inspect.signature(get_class(str(target)).__init__).parameters.values())[1 + given_later:]
    except Exception:  # noqa: BLE001 - not importable here: building it names that error
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in keys:
        if key not in SKIP and key not in valid:
            raise XattrConfigError(f"unknown key '{prefix}.{key}'; valid choices: {', '.join(valid) or 'none'}")


def _check_node(prefix: str, node, defaults: dict, given_later: int = 0, check_keys: bool = True) -> None:
    """The generic checks: a key the class does not take, a yaml number given as text (unless the class takes
    a word there), a yaml boolean given as anything else. Ranges and choices are the classes' own (checked when
    built)."""
    from omegaconf import OmegaConf

    if node is None:
        return
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    target = values.get("_target_")
    if target and check_keys:
        _check_keys(prefix, target, values, given_later)
    for key, value in values.items():
        if key in SKIP:
            continue
        name = f"{prefix}.{key}"
        default = defaults.get(key)
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if (number and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)))
                and not (isinstance(value, str) and _takes_text(target, key))):
            raise XattrConfigError(f"bad {name} {value!r}; valid choices: a number (default {default})")
        if isinstance(default, bool) and value is not None and not isinstance(value, bool):
            raise XattrConfigError(f"bad {name} {value!r}; valid choices: true, false")


def check_values(cfg: DictConfig) -> None:
    """Values that would otherwise fail late or pass silently: ``dataset.limit``, numbers given as text, a GPU
    trainer on a machine without one; each metric is built once here (its constructor checks
    its own arguments: ``bad metric.<name>.<key> <value>; valid choices: ...``). The method's arguments are
    checked by its class when ``run`` builds the probe (it needs the model)."""
    from xattr.core.checks import naming

    limit = cfg.dataset.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise XattrConfigError(f"bad dataset.limit {limit!r}; valid choices: an integer >= 1, or null for all images")
    method_option = str(cfg.get("method_name") or "")
    text = bool((cfg.model.get("layers") or {}).get("embedding"))  # a text model: xattr.methods.text.text_form
    # checks the keys against the image class and its text form (text-only keys: +method.token_reduce=l2)
    _check_node("method", cfg.get("method"), _raw_defaults("method", method_option), given_later=1,
                check_keys=not text)
    for group in ("metric", "analysis"):
        for name, node in (cfg.get(group) or {}).items():
            _check_node(f"{group}.{name}", node, _raw_defaults(group, name))
            if group == "metric":
                with naming(f"{group}.{name}."):
                    build(node)
    acc = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if acc in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise XattrConfigError(
                f"bad trainer.accelerator {acc!r}: this machine has no GPU; valid choices: trainer=cpu, or DDP on "
                "CPU processes: trainer=cpu trainer.strategy=ddp trainer.devices=2")


def run_dirname(overrides: str) -> str:
    """A run folder name that can be typed back on the command line: the overrides made shell- and
    Hydra-safe (no ``=``, ``,``, ``[]``), cut to 60 characters, plus a hash of the full overrides (which
    are kept in the folder's ``.hydra/overrides.yaml``). ``default`` when there are none."""
    import hashlib
    import re

    if not overrides:
        return "default"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", overrides.replace("=", "-")).strip("_")[:60]
    return f"{slug}-{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("xattr_dirname"):
        OmegaConf.register_new_resolver("xattr_dirname", run_dirname)


register_resolvers()
