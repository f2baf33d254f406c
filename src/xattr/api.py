"""xattr from Python: models, methods, metrics and run folders in a notebook, as Captum and Quantus are used.

Everything the command line builds, the same way and with the same defaults: a method or metric is built
from its ``conf/method/<name>.yaml`` / ``conf/metric/<name>.yaml`` (the one source of defaults; the tests
check that ``xattr.method(name, model)`` and ``python -m xattr.run method=<name> model=<model>`` build the same
class with the same parameters), keyword overrides are checked as the CLI checks them, and bad input raises
the CLI's one-line :class:`~xattr.errors.XattrConfigError` (a ``ValueError``) naming the valid choices.

>>> import xattr
>>> model = xattr.load_model("efficientnet_lite0")                # a zoo name, a torchvision arch, an nn.Module
>>> x, ids = xattr.load_images("assets/samples", model)           # (B, 3, 224, 224), normalised
>>> iba = xattr.method("iba", model, beta=10)                     # PerSampleIBA, defaults of conf/method/iba.yaml
>>> xattr.fit(iba, "assets/stats/efficientnet_lite0-block_4-imagenet1000.pt")  # or a DataLoader / images
>>> expl = iba.explain(x, target=xattr.top1(model, x))            # Explanation: maps (B, 1, H, W), aux
>>> scores = xattr.evaluate(model, x, expl.maps, target="top1", metrics=["insertion_deletion"])  # DataFrame
>>> run = xattr.open_run("outputs/runs/...")                      # a run folder as data

Numpy works wherever tensors do (images ``(B, C, H, W)``, targets ``(B,)``, maps ``(B, H, W)`` or
``(B, 1, H, W)``), and :func:`quantus_explain` makes any xattr method a Quantus ``explain_func``.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from xattr.config import CONF_DIR, check_values, group_options
from xattr.core.checks import module_device, naming
from xattr.core.hf import is_model_folder
from xattr.core.preprocess import Preprocess
from xattr.core.store import RunStore
from xattr.errors import XattrConfigError, missing_file, unknown
from xattr.methods.base import Attribution, Explanation
from xattr.metrics.base import Metric, MetricResult
from xattr.models.zoo import ZOO, ZooModel, check_layer_names, model_kind

ModelLike = ZooModel | nn.Module
ArrayLike = torch.Tensor | np.ndarray | Sequence


# ----------------------------------------------------------------------------------------------- what exists
def list_methods() -> list[str]:
    """The method names (``conf/method/*.yaml``): what :func:`method` and ``method=<name>`` accept."""
    return group_options("method")


def list_metrics() -> list[str]:
    """The metric names (``conf/metric/*.yaml``): what :func:`metric` and ``metric=[<name>]`` accept."""
    return group_options("metric")


def list_models() -> list[str]:
    """The zoo's model names (``conf/model/*.yaml`` with weights the zoo knows). Any torchvision
    classification architecture name and any ``nn.Module`` work too (:func:`load_model`)."""
    return sorted(set(ZOO) | {m for m in group_options("model") if m not in ("torchvision", "custom")})


# ----------------------------------------------------------------------------------------------- models
def load_model(model: str | nn.Module, weights: str | Path | None = None, device: str | torch.device = "cpu", *,
               layers: Mapping[str, Any] | None = None, aliases: Mapping[str, str] | None = None,
               preprocess: Preprocess | Mapping[str, Any] | None = None, num_classes: int | None = None,
               labels: Sequence[str] | None = None, name: str | None = None) -> ZooModel:
    """A model ready for every method: ``.net`` (eval mode, no parameter gradients, in-place activations off),
    ``.preprocess`` (mean, std, size), ``.labels``, ``.roles`` (default layer per role).

    Args:
        model: a zoo name (:func:`list_models`; ``mobilenet_v2``, ``efficientnet_lite0``, ``vgg16``, ...), a
            torchvision classification architecture (``"resnet18"``), or your own ``nn.Module`` taking
            normalised ``(B, C, H, W)`` images (or ``(B, L)`` tokens) and returning ``(B, classes)`` logits.
        weights: ``None`` (the model config's weights: the real ones where xattr has them), ``imagenet``
            (nothing is downloaded: a missing file is one error saying where to put it), ``random``, or a
            state-dict file. Ignored for an ``nn.Module`` (it keeps its own).
        device: where the network lives; inputs are moved there by :func:`explain` / :func:`evaluate`.
        layers: default layer per role, overriding the model config's ``layers`` (``{"bottleneck": "layer2",
            "cam": "layer4"}``): what ``layer: ${model.layers.<role>}`` of a method config reads. An
            ``nn.Module`` has none unless given: methods then need ``layer=...``.
        aliases: paper name -> module path (``{"conv4_1": "features.17"}``), usable wherever a layer is named.
        preprocess: an ``nn.Module``'s input encoding (``Preprocess`` or ``{mean, std, size, resize}``;
            default ImageNet's mean/std, 224 px) for :func:`load_images` and figures.
        num_classes, labels: an ``nn.Module``'s classes (default: its ``num_classes`` attribute, else one
            forward pass) and their names (default ``class <i>``).
        name: what runs and statistics files call an ``nn.Module`` (default its class name).
    """
    from xattr.models.zoo import load_model as zoo_load

    if isinstance(model, nn.Module):
        node = {"kind": "custom", "factory": _ModuleFactory(model), "weights": None, "num_classes": num_classes,
                "labels": list(labels) if labels is not None else None,
                "preprocess": _preprocess_node(preprocess), "aliases": dict(aliases or {})}
        zoo = zoo_load(name or type(model).__name__, weights="random", device=device, spec=node)
        zoo.weights = "own"
        zoo.roles = dict(layers or {})
        return zoo
    if isinstance(model, Path) or (isinstance(model, str) and is_model_folder(model)):
        model, weights = "hf", (str(model) if weights is None else weights)  # a HuggingFace model folder
    if not isinstance(model, str):
        raise XattrConfigError(f"bad model {type(model).__name__}; valid choices: a zoo name ({', '.join(list_models())}), "
                               "a torchvision architecture name, a HuggingFace model folder, or an nn.Module")
    option = _model_option(model)
    if preprocess is not None or num_classes is not None or labels is not None:
        raise XattrConfigError(f"preprocess/num_classes/labels describe your own module; {model!r} is a zoo "
                               "model with its own")
    if option == "hf" and weights is None:
        raise XattrConfigError("missing the model folder: xattr.load_model('<folder>') or load_model('hf', "
                               "weights='<folder>') (a transformers classifier saved with save_pretrained)")
    hf_path = [f"model.path={weights}"] if option == "hf" else []
    node = _compose([f"model={option}", *hf_path]).model if option in group_options("model") else None
    if weights is None and node is not None:
        weights = node.get("weights")
    spec = node if node is not None and node.get("kind") == "hf" else None
    zoo = zoo_load(model, weights=str(weights if weights is not None else "imagenet"), device=device, spec=spec)
    if aliases:
        zoo.net.xattr_layers = {**zoo.net.xattr_layers, **dict(aliases)}
        check_layer_names(zoo.net)
    roles = OmegaConf.to_container(node.layers, resolve=True) if node is not None and node.get("layers") else {}
    if option == "torchvision" and not model.startswith(("resnet", "resnext", "wide_resnet")):
        roles = {}  # conf/model/torchvision.yaml's roles fit the ResNets only
    zoo.roles = {**roles, **dict(layers or {})}
    return zoo


class _ModuleFactory:
    """``kind: custom``'s factory for a module that already exists (``xattr.models.custom`` calls it)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> nn.Module:
        return self.module

    def __repr__(self) -> str:
        return f"<your {type(self.module).__name__}>"


def _preprocess_node(pre: Preprocess | Mapping[str, Any] | None) -> dict | None:
    if pre is None:
        return None
    if isinstance(pre, Preprocess):
        return {"mean": list(pre.mean), "std": list(pre.std), "size": pre.size, "resize": pre.resize}
    return dict(pre)


def _model_option(model: str) -> str:
    """The ``conf/model`` option describing ``model``: its own, ``torchvision`` for an architecture name, or
    the name itself for a zoo entry without one."""
    if model in group_options("model") and model not in ("torchvision", "custom"):
        return model
    try:
        kind = model_kind(model)
    except XattrConfigError:
        kind = None
    if kind in ("zoo", "torchvision"):
        return model if kind == "zoo" else "torchvision"
    raise unknown("model", model, list_models() + ["<a torchvision architecture>", "<an nn.Module>"])


def _zoo(model: ModelLike) -> ZooModel:
    return model if isinstance(model, ZooModel) else load_model(model)


# ----------------------------------------------------------------------------------------------- composing
def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: compose from its own search path
        cfg = compose("config", overrides=overrides)
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.name = "api"
        cfg.method_name = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "gradient")
        cfg.paths.output_dir = "."
        # files named relative to the repository (assets/...) are found from any working directory
        cfg.paths.root = os.environ.get("XATTR_ROOT", str(CONF_DIR.parent))
    return cfg


def _config_for(zoo: ZooModel, group: str, option: str) -> DictConfig:
    """The composed config of ``python -m xattr.run <group>=<option> model=<zoo's option>``, with the model
    node describing ``zoo`` (its name, weights and roles)."""
    model_option = zoo.name if zoo.name in group_options("model") else (
        "torchvision" if zoo.weights != "own" and model_kind(zoo.name) == "torchvision" else "custom")
    value = f"[{option}]" if group in ("metric", "analysis") else option
    overrides = [f"{group}={value}", f"model={model_option}"]
    if group != "metric":
        overrides.append("metric=[]")
    cfg = _compose(overrides)
    with open_dict(cfg):
        if model_option != zoo.name:
            cfg.model.name = zoo.name
            cfg.model.arch = zoo.name if model_option == "torchvision" else cfg.model.get("arch")
            cfg.model.layers = OmegaConf.create(zoo.roles)
        elif zoo.roles:
            cfg.model.layers = OmegaConf.merge(cfg.model.layers, OmegaConf.create(zoo.roles))
        cfg.model.weights = zoo.weights
        if cfg.model.get("kind") == "hf":
            cfg.model.path = zoo.weights
    return cfg


def _resolved(node: DictConfig, kind: str, option: str, given: Mapping[str, Any], net: nn.Module) -> dict[str, Any]:
    """The node's values, resolved; a value that cannot be resolved (a role the model lacks: ``${model.layers.
    bottleneck}`` of your own module) or is mandatory (``???``) must be among ``given``: else one error."""
    out: dict[str, Any] = {}
    for key in node:
        key = str(key)
        if key in ("_target_", "_partial_", "defaults"):
            continue
        if key in given:
            continue
        try:
            value = OmegaConf.select(node, key, throw_on_missing=True)
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:
            layers = [n for n, _ in net.named_modules() if n]
            names = list(dict.fromkeys([*getattr(net, "xattr_layers", {}), *layers]))
            hint = f"; valid choices: {', '.join(names[:30])}" if "layer" in key else ""
            raise XattrConfigError(f"{kind} {option!r} needs {key}=... (the model config has no default for it)"
                                   f"{hint}") from None
    return out


def _check_overrides(kind: str, option: str, node: DictConfig, given: Mapping[str, Any], cls: type) -> None:
    accepted = {p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "model"}
    known = {str(k) for k in node if str(k) not in ("_target_", "_partial_", "defaults")} | accepted
    for key in given:
        if key not in known:
            raise unknown(f"parameter of {kind} {option!r}", key, sorted(known))


def _checked(cfg: DictConfig, group: str, option: str, values: Mapping[str, Any]) -> None:
    """The CLI's value checks (``xattr.config.check_values``) on the values that fit in a config."""
    plain = {k: v for k, v in values.items() if _config_value(v)}
    with open_dict(cfg):
        if group == "method":
            for k, v in plain.items():
                cfg.method[k] = v
        else:
            for k, v in plain.items():
                cfg[group][option][k] = v
    check_values(cfg)


def _config_value(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_config_value(i) for i in v)
    if isinstance(v, Mapping):
        return all(isinstance(k, str) and _config_value(i) for k, i in v.items())
    return False


# ----------------------------------------------------------------------------------------------- methods
def method(name: str, model: ModelLike, **overrides: Any) -> Attribution:
    """The attribution method ``name`` (:func:`list_methods`) for ``model``, as ``method=<name>`` builds it.

    Defaults come from ``conf/method/<name>.yaml`` (layers from the model's roles: ``load_model(...,
    layers=...)``); ``overrides`` set any of its parameters (``beta=1``, ``layer="features.17"``,
    ``statistics="stats.pt"``); an unknown parameter or a bad value is one ``ValueError`` naming the valid
    choices. On a text model (one with an ``embedding`` role) the method's text form is built, as on the CLI.

    The result is the method object itself (Captum style): ``attribute(x, target) -> maps``,
    ``explain(x, target) -> Explanation(maps, aux)``, ``fit(loader)`` when it needs estimation (IBA family;
    or :func:`fit`), ``hparams`` (its parameters), ``forwards_per_image(shape)`` where declared.
    """
    from hydra.utils import get_class

    zoo = _zoo(model)
    if name not in list_methods():
        raise unknown("method", name, list_methods())
    if zoo.roles.get("embedding"):  # a text model: only methods with a text form (one line naming them)
        from xattr.methods.text import check_text_method

        check_text_method(name)
    cfg = _config_for(zoo, "method", name)
    node = cfg.method
    cls = get_class(str(node._target_))
    if not zoo.roles.get("embedding"):  # a text model: text_form checks the keys (the image class's and its own)
        _check_overrides("method", name, node, overrides, cls)
    values = {**_resolved(node, "method", name, overrides, zoo.net), **overrides}
    _checked(cfg, "method", name, values)
    factory: Callable[..., Attribution] = functools.partial(cls, **values)
    if zoo.roles.get("embedding"):  # a text model: the method's text form (tokens), as the CLI's run does
        from xattr.methods.text import text_form

        factory = text_form(factory, zoo.roles["embedding"], cfg.model.get("pad_index"), cfg.model.get("unk_index"))
    with naming("method."):  # a bad hyper-parameter is named as on the command line (method.beta)
        return factory(model=zoo.net)


def fit(method: Attribution, data: Any, cache_dir: str | Path | None = None, n_samples: int | None = None) -> Attribution:
    """Estimate what ``method`` needs before attributing (IBA's feature statistics, a read-out network).

    ``data``: a statistics file (``.pt``, written by an IBA run into ``<cache_dir>/iba_stats/`` or shipped in
    ``assets/stats/``), a ``DataLoader`` / iterable of batches (dicts with ``x``, or ``(x, y)`` tuples, or
    tensors), or one tensor / array of normalised images. ``cache_dir``: where estimates are cached under a
    visible key (none by default); ``n_samples``: at most this many images are read (default: the method's
    own ``n_samples``). Returns the method, fitted. A method that needs nothing is returned as is.
    """
    if n_samples is not None and hasattr(method, "n_samples"):
        method.n_samples = int(n_samples)
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise missing_file("feature statistics", path, "a file written by an IBA run into <cache_dir>/iba_stats/")
        if not hasattr(method, "statistics"):
            raise XattrConfigError(f"method {getattr(method, 'name', type(method).__name__)!r} reads no statistics "
                                   "file; valid choices: a DataLoader or images")
        method.statistics = str(path)
        method.fit([], cache_dir)
        return method
    if not method.needs_fit:
        return method
    method.fit(_Batches(data, module_device(method.model)), None if cache_dir is None else Path(cache_dir))
    return method


class _Batches:
    """Any data source as the dict batches ``Attribution.fit`` reads (re-iterable)."""

    def __init__(self, data: Any, device: torch.device) -> None:
        self.data, self.device = data, device

    def __iter__(self):
        data = self.data
        if torch.is_tensor(data) or isinstance(data, np.ndarray):
            x = _tensor(data, self.device)
            for i in range(0, x.shape[0], 16):
                yield {"x": x[i:i + 16]}
            return
        for batch in data:
            if isinstance(batch, Mapping):
                yield batch
            elif isinstance(batch, (tuple, list)):
                yield {"x": _tensor(batch[0], self.device)}
            else:
                yield {"x": _tensor(batch, self.device)}

    def __len__(self) -> int:
        if torch.is_tensor(self.data) or isinstance(self.data, np.ndarray):
            return -(-len(self.data) // 16)
        return len(self.data)


def explain(model: ModelLike, x: ArrayLike, target: ArrayLike | int | str = "top1", method: str | Attribution = "gradient",
            **overrides: Any) -> Explanation:
    """One call: build ``method`` (a name, with ``overrides``; or a method object) and explain ``x`` for
    ``target`` (class indices, one int, or ``"top1"``: the model's prediction). Numpy or tensors in;
    an :class:`~xattr.methods.base.Explanation` (``maps`` ``(B, 1, H, W)`` tensors, ``aux``) out
    (``.maps.numpy()`` for numpy). Methods that need fitting must be fitted first (:func:`fit`)."""
    zoo = _zoo(model)
    m = method if isinstance(method, Attribution) else globals()["method"](method, zoo, **overrides)
    xt = _tensor(x, module_device(zoo.net))
    return m.explain(xt, _targets(zoo, xt, target))


def top1(model: ModelLike, x: ArrayLike) -> torch.Tensor:
    """The model's predicted class per image ``(B,)`` (what ``target="top1"`` explains)."""
    zoo = _zoo(model)
    xt = _tensor(x, module_device(zoo.net))
    with torch.no_grad():
        return zoo.net(xt).argmax(1)


def _targets(zoo: ZooModel, x: torch.Tensor, target: Any) -> torch.Tensor:
    if isinstance(target, str):
        if target not in ("top1", "label"):
            raise unknown("target", target, ["top1", "a class index", "a (B,) array of class indices"])
        if target == "label":
            raise XattrConfigError("bad target 'label': tensors carry no labels; valid choices: top1, a class "
                                   "index, a (B,) array of class indices")
        return top1(zoo, x)
    if isinstance(target, (int, np.integer)):
        return torch.full((x.shape[0],), int(target), dtype=torch.long, device=x.device)
    t = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target).long().reshape(-1)
    if t.numel() != x.shape[0]:
        raise XattrConfigError(f"bad target: {t.numel()} entries for {x.shape[0]} images; valid choices: one class "
                               "index per image, one int, or 'top1'")
    return t.to(x.device)


def _tensor(a: Any, device: torch.device) -> torch.Tensor:
    t = a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t.to(device)


# ----------------------------------------------------------------------------------------------- metrics
def metric(name: str, **overrides: Any) -> Metric:
    """The evaluation metric ``name`` (:func:`list_metrics`), as ``metric=[<name>]`` builds it: defaults from
    ``conf/metric/<name>.yaml``, ``overrides`` for any of its parameters (``points=50``). Called on batches:
    ``metric(model.net, x, target, maps, **extras) -> MetricResult(scores, curves, x_axis)``."""
    from hydra.utils import get_class

    if name not in list_metrics():
        raise unknown("metric", name, list_metrics())
    cfg = _compose([f"metric=[{name}]"])
    node = cfg.metric[name]
    cls = get_class(str(node._target_))
    _check_overrides("metric", name, node, overrides, cls)
    values = {**_resolved(node, "metric", name, overrides, nn.Identity()), **overrides}
    _checked(cfg, "metric", name, values)
    return cls(**values)


def evaluate(model: ModelLike, x: ArrayLike, maps: ArrayLike, target: ArrayLike | int | str = "top1",
             metrics: Iterable[str | Metric] = ("insertion_deletion",), method: Attribution | None = None,
             ids: Sequence[str] | None = None, fit_data: Any = None, **extras: Any) -> pd.DataFrame:
    """Score ``maps`` for ``x`` with each metric; one row per image, one column ``<metric>/<score>``.

    ``target``: the explained classes (as :func:`explain`: indices, one int, or ``"top1"``); ``ids``: the
    images' names for the ``id`` column (default ``0..B-1``). ``maps``: ``(B, H, W)`` or ``(B, 1, H, W)`` (tokens ``(B, L)``), numpy or tensors, as a method returned
    them or as you have them (Quantus' ``a_batch``). ``metrics``: names (defaults of their yaml) or metric
    objects (:func:`metric` with overrides). ``extras``: what a metric declares in ``needs`` (``boxes``: a list
    of ``(N_i, 4)`` xyxy boxes per image; ``method_factory``: ``model -> fitted method`` for the sanity check;
    auxiliary results by name); ``method``: the method that made the maps (metrics that re-run it; the
    sanity check rebuilds it with its ``hparams`` on randomised copies of the model and fits each copy on
    ``fit_data``, anything :func:`fit` takes, when the method needs fitting).
    The per-image curves are in ``df.attrs["curves"]`` (``<metric>/<curve>`` -> ``(B, T)`` array) with their
    x axes in ``df.attrs["x_axis"]``; ``xattr.metrics.base.Metric.summarise`` gives a table's numbers."""
    zoo = _zoo(model)
    device = module_device(zoo.net)
    xt = _tensor(x, device)
    t = _targets(zoo, xt, target)
    m = _tensor(maps, device).float()
    if xt.dim() == 4 and m.dim() == 3:
        m = m[:, None]
    if xt.dim() == 4 and m.dim() == 4 and m.shape[1] != 1:  # Quantus' (B, C, H, W) maps: summed over channels
        m = m.sum(1, keepdim=True)
    if m.shape[0] != xt.shape[0]:
        raise XattrConfigError(f"bad maps: {m.shape[0]} maps for {xt.shape[0]} images; valid choices: one map per image")
    context = dict(extras)
    if method is not None:
        context.setdefault("method", method)
        context.setdefault("method_factory", functools.partial(_rebuilt, method, fit_data))
    with torch.no_grad():
        probs = torch.softmax(zoo.net(xt).float(), 1)
    rows: dict[str, Any] = {"id": list(ids) if ids is not None else [str(i) for i in range(xt.shape[0])],
                            "target": t.cpu().numpy(), "prob": probs.gather(1, t[:, None])[:, 0].cpu().numpy(),
                            "top1": probs.argmax(1).cpu().numpy()}
    curves: dict[str, np.ndarray] = {}
    x_axis: dict[str, np.ndarray] = {}
    for spec in metrics:
        obj = metric(spec) if isinstance(spec, str) else spec
        name = spec if isinstance(spec, str) else obj.name
        given = {k: v for k, v in context.items() if k in obj.needs}
        res: MetricResult = obj(zoo.net, xt, t, m, **given).cpu()
        for k, v in res.scores.items():
            rows[f"{name}/{k}"] = v.numpy().reshape(-1)
        for k, v in res.curves.items():
            curves[f"{name}/{k}"] = v.numpy()
            if k in res.x_axis:
                x_axis[f"{name}/{k}"] = res.x_axis[k].numpy()
    df = pd.DataFrame(rows)
    df.attrs["curves"], df.attrs["x_axis"] = curves, x_axis
    return df


def summary_table(results: pd.DataFrame | Mapping[str, pd.DataFrame], scores: Sequence[str] | None = None,
                  sem: bool = False) -> pd.DataFrame:
    """A table from :func:`evaluate`'s per-image frames: one row per entry of ``results`` (e.g. per method),
    one column per score (``scores``; default every ``<metric>/<score>`` column), the mean over the images a
    metric kept (NaN = filtered); ``sem=True`` adds ``<score> s.e.`` columns (standard error)."""
    from xattr.core.summary import mean_and_sem

    frames = {"": results} if isinstance(results, pd.DataFrame) else dict(results)
    rows = {}
    for name, df in frames.items():
        cols = list(scores) if scores is not None else [c for c in df.columns if "/" in c]
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise unknown("score", missing[0], [c for c in df.columns if "/" in c])
        row = {}
        for c in cols:
            mean, se, _ = mean_and_sem(torch.as_tensor(df[c].to_numpy(dtype=np.float64)))
            row[c] = mean
            if sem:
                row[f"{c} s.e."] = se
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _rebuilt(method: Attribution, fit_data: Any, net: nn.Module) -> Attribution:
    """``method`` built again for another network (a randomised copy), fitted on ``fit_data`` if it needs it."""
    m = type(method)(net, **method.hparams)
    if m.needs_fit:
        if fit_data is None:
            raise XattrConfigError(f"method {method.name!r} needs fitting on each randomised copy: pass fit_data=... "
                                   "to evaluate (a DataLoader or images, as xattr.fit takes)")
        fit(m, fit_data)
    return m


# ----------------------------------------------------------------------------------------------- images
def load_images(source: str | Path | Sequence[str | Path], model: ModelLike, limit: int | None = None
                ) -> tuple[torch.Tensor, list[str]]:
    """Photos as the model's input: ``(x, ids)``, ``x`` ``(B, 3, S, S)`` (resized, centre-cropped, normalised
    with ``model.preprocess``) on the model's device, ``ids`` the file stems. ``source``: a folder (its
    .jpg/.png files, sorted) or a list of files; ``limit``: the first ``limit`` of them only."""
    from xattr.data.folder import ImageFolderFlat
    from xattr.data.transforms import ImageTransform, read_image

    zoo = _zoo(model)
    device = module_device(zoo.net)
    if isinstance(source, (str, Path)):
        ds = ImageFolderFlat(source, zoo.preprocess, limit=limit)
        items = [ds[i] for i in range(len(ds))]
        return torch.stack([it["x"] for it in items]).to(device), [it["id"] for it in items]
    files = [Path(f) for f in source][:limit]
    tf = ImageTransform(zoo.preprocess)
    xs = []
    for f in files:
        if not f.is_file():
            raise missing_file("image", f, "a .jpg or .png file")
        xs.append(tf(read_image(f, "stop"))[0])
    return torch.stack(xs).to(device), [f.stem for f in files]


def plot(model: ModelLike, x: ArrayLike, maps: Mapping[str, ArrayLike], path: str | Path,
         titles: Sequence[str] | None = None, suptitle: str = "") -> Path:
    """A heatmap grid saved to ``path`` (PNG): one row per image of ``x`` (the photo, de-normalised with
    ``model``'s preprocessing, then each map overlaid), one column per entry of ``maps`` (title -> ``(B, H, W)``
    or ``(B, 1, H, W)``). ``titles``: one per row (default: ``model``'s top-1 label and probability);
    ``suptitle``: over the figure. Returns the file's path."""
    from xattr.viz.heatmaps import comparison_grid

    zoo = _zoo(model)
    xt = _tensor(x, module_device(zoo.net))
    images = zoo.preprocess.denormalise(xt).permute(0, 2, 3, 1).cpu().numpy()
    if titles is None:
        with torch.no_grad():
            p = torch.softmax(zoo.net(xt), 1).max(1)
        names = zoo.labels or [f"class {i}" for i in range(int(p.indices.max()) + 1)]
        titles = [f"{names[int(c)]} ({float(v):.2f})" for v, c in zip(p.values, p.indices)]
    columns = {}
    for title, m in maps.items():
        a = (m.detach().float().cpu().numpy() if torch.is_tensor(m) else np.asarray(m, dtype=np.float32))
        columns[title] = list(a[:, 0] if a.ndim == 4 else a)
    return comparison_grid(list(images), columns, list(titles), Path(path), suptitle=suptitle)


# ----------------------------------------------------------------------------------------------- Quantus
def quantus_explain(method_name: str, **overrides: Any) -> Callable[..., np.ndarray]:
    """The xattr method ``method_name`` (:func:`list_methods`) as Quantus' ``explain_func``: ``f(model, inputs, targets, **kwargs) -> (B, 1, H, W)``
    numpy maps, numpy in (Quantus passes the raw ``nn.Module``). The method is built once per model with
    ``overrides`` (and ``fit_data=`` for methods that need fitting: anything :func:`fit` takes)."""
    fit_data = overrides.pop("fit_data", None)
    built: dict[int, Attribution] = {}

    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        key = id(model)
        if key not in built:
            zoo = model if isinstance(model, ZooModel) else load_model(model)
            m = method(method_name, zoo, **overrides)
            if fit_data is not None:
                fit(m, fit_data)
            built[key] = m
        m = built[key]
        xt = _tensor(inputs, module_device(m.model))
        maps = m.attribute(xt, _tensor(np.asarray(targets).reshape(-1), xt.device).long())
        return maps.detach().float().cpu().numpy()

    explain_func.__name__ = f"xattr_{method_name}"
    return explain_func


# ----------------------------------------------------------------------------------------------- run folders
class Run:
    """A run folder of ``python -m xattr.run`` as data (read only; opening it writes nothing).

    ``config`` (the resolved config), ``per_image`` (one row per image: id, index, label, target, prob, top1,
    ``<metric>/<score>``), ``summary`` (each score's mean, s.e., count; of the images finished so far while the
    run is going), ``maps`` (id -> ``(H, W)`` map),
    ``curves`` (``<metric>/<curve>`` -> ``(N, T)``, with ``.../x``), ``aux`` (id -> {name: array}),
    ``analyses`` (name -> DataFrame)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.store = RunStore(self.path)
        if not (RunStore.is_run(self.path) or self.store.has_finished_work()):
            raise missing_file("run folder", self.path, "a folder written by python -m xattr.run (it holds heatmaps/)")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}: {len(self.store.done_keys())} finished batches)"

    @property
    def config(self) -> DictConfig:
        return self.store.config() or OmegaConf.create({})

    @property
    def method_name(self) -> str:
        return str(self.config.get("method_name", ""))

    @property
    def per_image(self) -> pd.DataFrame:
        return self.store.per_image()

    @property
    def summary(self) -> pd.DataFrame:
        """Each score's mean, s.e. and count: the finished run's ``summary.csv``; for a run still going (or
        stopped) the same summary of the images finished so far (each metric of its config summarises its own
        scores, as the run's report will)."""
        done = self.store.summary()
        if len(done) or not self.store.has_finished_work():
            return done
        from xattr.config import build
        from xattr.metrics.summary import summarise_run_scores

        metrics = {name: build(node) for name, node in (self.config.get("metric") or {}).items()}
        return summarise_run_scores(self.store.per_image(), metrics)

    @property
    def maps(self) -> dict[str, np.ndarray]:
        return self.store.heatmaps()

    @property
    def curves(self) -> dict[str, np.ndarray]:
        return self.store.curves()

    @property
    def aux(self) -> dict[str, dict[str, np.ndarray]]:
        return self.store.aux()

    @property
    def analyses(self) -> dict[str, pd.DataFrame]:
        return self.store.analyses()


def open_run(path: str | Path) -> Run:
    """The run folder at ``path`` as data (:class:`Run`); a folder that is not a run is one error saying what
    it needs."""
    return Run(path)


__all__ = ["Run", "evaluate", "explain", "fit", "list_methods", "list_metrics", "list_models", "load_images",
           "load_model", "method", "metric", "open_run", "plot", "quantus_explain", "summary_table", "top1"]
