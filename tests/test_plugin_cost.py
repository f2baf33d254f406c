"""Plugins describe themselves: every method of ``conf/method`` and every metric of ``conf/metric`` states its
cost (``forwards_per_image``) and memory knob, and the stated cost is what a forward counter measures on a tiny
model; ``chunk`` means one thing (:mod:`xattr.core.chunk`).

Counting rule: forward rows and backward rows through the network's last layer (its classifier head: every
forward that yields logits passes it, the IBA tail's included), per image; a backward counts 2 (forward +
backward = 3). A class states in its docstring when its count is not exact (early stops) and why.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from xattr.config import CONF_DIR, build
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.errors import XattrConfigError
from xattr.methods.base import Attribution
from xattr.metrics.axioms import DOUBLE
from xattr.metrics.base import Metric
from xattr.models.text import LSTMClassifier
from xattr.models.tiny import TinyCNN

S, B, V, L = 16, 1, 12, 6  # one image: per-batch work (a layout forward) is per image
SHAPE = (3, S, S)
ROOT = {  # what the yamls interpolate, for the tiny models
    "model": {"name": "tiny", "weights": "random", "layers": {"bottleneck": "conv3", "cam": "conv3",
                                                              "readout": ["conv2", "conv3"],
                                                              "multilayer": ["conv2", "conv3"]}},
    "dataset": {"name": "tiny"},
}
#: cheap settings per ``conf/method`` option (the rest of the yaml as it is)
CHEAP = {
    "deepshap": {"n_baselines": 3},
    "dgr": {"iterations": 3, "max_retries": 2}, "dgr_uniform": {"iterations": 3, "max_retries": 2},
    "extremal_perturbation": {"max_iter": 3, "areas": [0.1, 0.3], "step": 3, "sigma": 3.0},
    "greedy_pruning": {"max_iterations": 5, "prune_step": 0.2},
    "iba": {"steps": 3, "copies": 2, "n_samples": 4}, "inverse_iba": {"steps": 3, "copies": 2, "n_samples": 4},
    "regression_iba": {"steps": 3, "copies": 2, "n_samples": 4, "output": 0},
    "multilayer_iba": {"steps": 3, "copies": 2, "n_samples": 4},
    "readout_iba": {"epochs": 1, "train_batch_limit": 1, "train_batch_size": 2, "n_samples": 4, "copies": 2},
    "input_iba": {"feat_steps": 2, "feat_copies": 2, "epochs": 1, "n_targets": 4, "n_groups": 2, "gan_batch": 2,
                  "critic": 1, "steps": 3, "copies": 2, "n_samples": 4},
    "input_iba_text": {"layer": "rnn_2", "feat_steps": 2, "feat_copies": 2, "epochs": 1, "n_targets": 4,
                       "n_groups": 2, "gan_batch": 2, "critic": 1, "steps": 3, "copies": 2, "n_samples": 4},
    "input_intgrad": {"n_steps": 4}, "integrated_gradients": {"n_steps": 4},
    "lime": {"n_samples": 8, "segmentation": "grid", "cell": 8},
    "neuron_intgrad": {"n_steps": 3}, "neuron_intgrad_star": {"n_steps": 3},
    "semantic_attribution": {"n_steps": 3},
    "smoothgrad": {"n_samples": 4},
}
METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
TEXT_ONLY = ("input_iba_text",)  # text classes of their own (on the tiny LSTM below)
TRANSFORMER_ONLY = ("attention_rollout", "chefer")  # need attention maps: a tiny ViT, and a tiny BERT (text forms)
METRICS = sorted(p.stem for p in (CONF_DIR / "metric").glob("*.yaml"))
TEXT = ("gradient", "input_x_gradient", "integrated_gradients", "deepshap", "lime", "random", "iba", "input_iba")


def yaml_node(group: str, name: str, **cheap):
    """The option's own node (its ``defaults`` merged), interpolated against the tiny models' ``ROOT``."""
    raw = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    parents = [d for d in raw.pop("defaults", []) if d != "_self_"]
    node = OmegaConf.merge(*[yaml_node(group, p) for p in parents], raw) if parents else raw
    root = OmegaConf.create({**ROOT, "node": node})
    node = OmegaConf.to_container(root.node, resolve=True)
    node.update(cheap)
    return OmegaConf.create(node)


def images(seed: int = 0) -> tuple[TinyCNN, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return TinyCNN(num_classes=4).eval(), torch.randn(B, *SHAPE), torch.tensor([1, 3])[:B]


def tokens() -> tuple[LSTMClassifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = LSTMClassifier(V, 6, 6, num_layers=2, dropout=0.0).eval()
    x = torch.randint(2, V, (B, L), generator=torch.Generator().manual_seed(3))
    return net, x, torch.tensor([0, 1])[:B]


class Counter:
    """Forward and backward rows through ``net``'s last ``nn.Linear`` (its head): ``rows = fwd + 2 * bwd``.

    The head's class is swapped for a counting subclass (restored by :meth:`close`), so copies of the model
    (``fixed_copy``, which drops hooks; the IBA tail; a sanity check's randomised copy) count here too; it
    claims ``torch.nn``'s module so that ``torch.fx`` keeps it a leaf."""

    def __init__(self, net: nn.Module) -> None:
        self.head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        self.base = type(self.head)
        counts = self.counts = [0, 0]

        def backward(g: torch.Tensor) -> None:
            counts[1] += g.shape[0]

        def forward(module, x):
            out = self.base.forward(module, x)
            counts[0] += x.shape[0]
            if out.requires_grad:
                out.register_hook(backward)
            return out

        self.head.__class__ = type("Linear", (self.base,), {"forward": forward, "__module__": self.base.__module__})

    @property
    def rows(self) -> int:
        return self.counts[0] + 2 * self.counts[1]

    def close(self) -> None:
        self.head.__class__ = self.base


def loader(x: torch.Tensor, n: int = 2):
    return [{"x": x.repeat(n, *[1] * (x.dim() - 1)), "target": torch.zeros(x.shape[0] * n, dtype=torch.long)}]


def saved_run(tmp: Path, x: torch.Tensor) -> Path:
    from xattr.core.store import RunStore

    batch = {"id": [f"im{i}" for i in range(x.shape[0])], "index": torch.arange(x.shape[0]),
             "label": torch.zeros(x.shape[0], dtype=torch.long), "x": x}
    t = torch.zeros(x.shape[0], dtype=torch.long)
    RunStore(tmp).write("0", batch, t, torch.rand(x.shape[0], 1, *x.shape[-2:]), torch.rand(x.shape[0], 4))
    return tmp


def build_method(name: str, net: nn.Module, x: torch.Tensor, tmp: Path, text: bool = False) -> Attribution:
    cheap = dict(CHEAP.get(name, {}))
    if name == "saved":
        cheap["run_dir"] = str(saved_run(tmp, x))
    if name == "input_iba_text":
        text = False  # a text class already
    if text and name in ("iba", "input_iba"):
        cheap.update(layer="rnn_2")
    factory = build(yaml_node("method", name, **cheap))
    if text:
        from xattr.methods.text import text_form

        factory = text_form(factory, embedding="embedding", pad_index=0, unk_index=1)
        if name == "input_iba":  # the image config's steps are not the text form's (its own default: 30)
            factory = functools.partial(factory, steps=3)
    method = factory(model=net)
    if method.needs_fit:
        method.fit(loader(x), tmp / "cache")
    return method


def measure_method(method: Attribution, net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> float:
    """Rows per image of one ``explain``; the library wrappers' model copy (one probe forward per model and
    input size, cached) is made first, uncounted."""
    from xattr.methods.baselines.model_fixes import RELU6_MODES, fixed_copy

    counter = Counter(net)  # first: the copies made below count here too
    try:
        if x.is_floating_point():
            for mode in RELU6_MODES:
                fixed_copy(net, x, relu6=mode)
        counter.counts[:] = [0, 0]
        if method.name == "saved":
            method.explain_batch({"x": x, "id": [f"im{i}" for i in range(x.shape[0])]}, t)
        else:
            method.explain(x, t)
    finally:
        counter.close()
    return counter.rows / x.shape[0]


def head_cost(obj, shape: tuple[int, ...], *args) -> float:
    """The stated cost less the stages a class declares its head never sees (InputIBA's WGAN)."""
    declared = obj.forwards_per_image(shape, *args)
    free = getattr(obj, "head_free_stages", ())
    return declared - sum(v for k, v in obj.forwards_by_stage(shape).items() if k in free) if free else declared


def check(declared: float, measured: float, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    assert lo * declared - 1e-9 <= measured <= hi * declared + 1e-9, (declared, measured, bounds)


def overrides(cls: type, name: str, base: type) -> bool:
    """``cls`` defines ``name`` itself or below ``base`` (not only the base class's default)."""
    return any(name in k.__dict__ for k in cls.__mro__ if k is not base and issubclass(k, base))


# --------------------------------------------------------------------------------------------- methods
@pytest.mark.parametrize("name", [n for n in METHODS if n not in TEXT_ONLY + TRANSFORMER_ONLY])
def test_every_image_method_states_its_cost_and_the_counter_agrees(name, tmp_path):
    net, x, t = images()
    method = build_method(name, net, x, tmp_path)
    assert overrides(type(method), "forwards_per_image", Attribution), f"{type(method).__name__} states no cost"
    knob = type(method).memory_knob
    params = inspect.signature(type(method).__init__).parameters
    assert knob is None or knob in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    assert ("chunk" in params) <= (knob == "chunk"), f"{type(method).__name__} takes chunk: memory_knob = 'chunk'"
    check(head_cost(method, SHAPE), measure_method(method, net, x, t), method.cost_bounds)


@pytest.mark.parametrize("name", TEXT)
def test_every_text_form_states_its_cost_and_the_counter_agrees(name, tmp_path):
    net, x, t = tokens()
    method = build_method(name, net, x, tmp_path, text=True)
    assert overrides(type(method), "forwards_per_image", Attribution), f"{type(method).__name__} states no cost"
    check(head_cost(method, (L,)), measure_method(method, net, x, t), method.cost_bounds)


@pytest.mark.parametrize("name", TRANSFORMER_ONLY)
def test_every_transformer_method_states_its_cost_and_the_counter_agrees(name, tmp_path):
    pytest.importorskip("transformers")
    from xattr.models.hf import load_hf

    from .helpers import tiny_bert_folder

    net = load_hf(tiny_bert_folder(tmp_path / "bert"))
    x, t = torch.randint(5, 25, (B, L), generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1])[:B]
    method = build_method(name, net, x, tmp_path, text=True)
    assert overrides(type(method), "forwards_per_image", Attribution), f"{type(method).__name__} states no cost"
    check(head_cost(method, (L,)), measure_method(method, net, x, t), method.cost_bounds)


@pytest.mark.parametrize("name", TRANSFORMER_ONLY)
def test_every_vision_transformer_method_states_its_cost_and_the_counter_agrees(name, tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=S, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                               mlp_dim=8, num_classes=4).eval()
    x, t = torch.randn(B, *SHAPE), torch.tensor([1, 3])[:B]
    method = build_method(name, net, x, tmp_path)
    assert overrides(type(method), "forwards_per_image", Attribution), f"{type(method).__name__} states no cost"
    check(head_cost(method, SHAPE), measure_method(method, net, x, t), method.cost_bounds)


def test_input_iba_text_config_is_covered(tmp_path):
    net, x, t = tokens()
    method = build_method("input_iba_text", net, x, tmp_path)
    check(head_cost(method, (L,)), measure_method(method, net, x, t), method.cost_bounds)


# --------------------------------------------------------------------------------------------- metrics
def metric_extras(name: str, net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[dict, float]:
    """The extras a metric declares (tiny stand-ins) and the cost of the method it is given."""
    from xattr.methods.baselines.gradient import Gradient

    b = x.shape[0]
    extras = {"method": Gradient(net), "method_factory": Gradient,
              "boxes": [torch.tensor([[2.0, 2.0, 10.0, 10.0]])] * b,
              "concept_masks": torch.rand(b, 1, S, S) > 0.5, "severity": torch.rand(b, S, S),
              "feature_boxes": torch.tensor([[[0, 0, 8, 8], [8, 8, 16, 16]]] * b), "other": torch.tensor([2] * b),
              "scenario": torch.tensor([DOUBLE] * b),
              **{f"bottleneck/{p}{k}": torch.rand(b) for p in ("", "initial_") for k in ("info_per_k", "top1", "top5")}}
    return extras, Gradient(net).forwards_per_image(SHAPE)


CHEAP_METRIC = {
    "insertion_deletion": {"per_step": 16, "min_prob": None},
    "sensitivity_n": {"n_masks": 3, "n": [4, 16]},
    "degradation": {"n_points": 5, "tile": 4},
    "sanity_check": {"layers": ["fc", "conv3"]},
    "top_k_intersection": {"k": 16},
    "faithfulness_correlation": {"n_runs": 5, "subset_size": 16},
    "irof": {"n_segments": 20},
    "smooth_mprt": {"n_samples": 2, "layers": ["conv3", "fc"]},
    "efficient_mprt": {"layers": ["conv1", "fc"]},
    "road": {"percentages": [20, 60]},
}


@pytest.mark.parametrize("name", METRICS)
def test_every_metric_states_its_cost_and_the_counter_agrees(name):
    net, x, t = images()
    metric = build(yaml_node("metric", name, **CHEAP_METRIC.get(name, {})))
    assert overrides(type(metric), "forwards_per_image", Metric), f"{type(metric).__name__} states no cost"
    params = inspect.signature(type(metric).__init__).parameters
    assert ("chunk" in params) == (type(metric).memory_knob == "chunk")
    extras, method_cost = metric_extras(name, net, x, t)
    maps = torch.rand(B, 1, S, S)
    declared = metric.forwards_per_image(SHAPE, method_cost)
    counter = Counter(net)
    try:
        metric(net, x, t, maps, **{k: v for k, v in extras.items() if k in metric.needs})
    finally:
        counter.close()
    check(declared, counter.rows / B, metric.cost_bounds)


def test_a_class_without_a_stated_cost_is_caught():
    class Silent(Attribution):
        def _attribute(self, x, target):
            return x

    class SilentMetric(Metric):
        def evaluate(self, model, x, target, maps, **extras):
            return None

    assert not overrides(Silent, "forwards_per_image", Attribution)
    assert not overrides(SilentMetric, "forwards_per_image", Metric)


def _fits(name: str) -> bool:
    from hydra.utils import get_class

    return get_class(yaml_node("method", name)._target_).fit is not Attribution.fit


FITTED = [n for n in METHODS if n not in TEXT_ONLY + TRANSFORMER_ONLY and _fits(n)]


@pytest.mark.parametrize("name", FITTED)
def test_every_fitted_method_states_its_fit_cost_and_the_counter_agrees(name, tmp_path):
    """What ``fit`` costs (feature statistics, a read-out's training) is stated before it runs, so the
    duration said up front includes it; the counter measures the same; once cached it costs nothing."""
    net, x, _ = images()
    cheap = {**CHEAP.get(name, {}), **({"train_batch_limit": None} if name == "readout_iba" else {})}  # 2 batches
    method = build(yaml_node("method", name, **cheap))(model=net)
    n = 3  # estimation images: fewer than n_samples (4), so the statistics take them all
    declared = method.fit_forwards(n, tmp_path / "cache")
    counter = Counter(net)
    try:
        method.fit(loader(x, n), tmp_path / "cache")
    finally:
        counter.close()
    assert counter.rows == declared, (declared, counter.rows)
    again = build(yaml_node("method", name, **cheap))(model=net)
    assert again.fit_forwards(n, tmp_path / "cache") == 0
    assert again.fit_forwards(n, None) == declared


def test_the_text_input_iba_states_its_fit_cost_and_the_counter_agrees(tmp_path):
    """The text form's statistics pool over real tokens (its own cache key): one forward per review."""
    net, x, _ = tokens()
    cheap = {k: v for k, v in CHEAP["input_iba_text"].items()}
    method = build(yaml_node("method", "input_iba_text", **cheap))(model=net)
    data = [{"x": x.repeat(3, 1), "mask": torch.ones(3 * x.shape[0], x.shape[1], dtype=torch.bool)}]
    declared = method.fit_forwards(3, tmp_path / "cache")
    counter = Counter(net)
    try:
        method.fit(data, tmp_path / "cache")
    finally:
        counter.close()
    assert declared == counter.rows == 3
    again = build(yaml_node("method", "input_iba_text", **cheap))(model=net)
    assert again.fit_forwards(3, tmp_path / "cache") == 0


def test_the_duration_said_up_front_counts_the_fit():
    from xattr.engine.cost import estimate
    from xattr.methods.baselines.integrated_gradients import IntegratedGradients

    net, x, _ = images()
    method = IntegratedGradients(net, n_steps=7)
    plain, _ = estimate(method, {}, net, x[:1], 10, per_forward=0.5)
    fitted, text = estimate(method, {}, net, x[:1], 10, per_forward=0.5, fit=1000)
    assert (plain, fitted) == (10 * 21 * 0.5, (10 * 21 + 1000) * 0.5)
    assert text.startswith("~1,000 forwards once to fit integrated_gradients (cached after), then ")


def test_engine_estimate_asks_the_objects():
    from xattr.engine.cost import estimate
    from xattr.methods.baselines.integrated_gradients import IntegratedGradients
    from xattr.metrics.insertion_deletion import InsertionDeletion

    net, x, _ = images()
    method = IntegratedGradients(net, n_steps=7)
    sec, text = estimate(method, {"insertion_deletion": InsertionDeletion(per_step=16)}, net, x[:1], 10)
    assert sec > 0 and "integrated_gradients ~21" in text and "insertion_deletion ~33" in text


# ----------------------------------------------------------------------------------------------- chunk
@pytest.mark.parametrize("bad", [0, -1, "abc", 1.5, True])
def test_the_one_chunk_validator_refuses_with_one_line(bad):
    with pytest.raises(XattrConfigError) as e:
        check_chunk(bad)
    msg = str(e.value)
    assert "\n" not in msg and repr(bad) in msg and "an integer >= 1, null (all at once), auto" in msg


def test_chunk_forms_and_items_per_call():
    net, x, _ = images()
    assert [check_chunk(c) for c in (1, 7, None, "auto")] == [1, 7, None, "auto"]
    assert resolve_chunk(None, net, x[:1]) is None and resolve_chunk(5, net, x[:1]) == 5
    assert resolve_chunk("auto", net, x[:1]) >= 4
    assert items_per_call(10, 3, None) == 10 and items_per_call(10, 3, 7) == 2 and items_per_call(10, 30, 7) == 1
    assert items_per_call(2, 1, 64) == 2


@pytest.mark.parametrize("chunk", [1, None, "auto"])
def test_int_null_auto_give_the_same_results(chunk):
    from xattr.methods.baselines.integrated_gradients import IntegratedGradients
    from xattr.metrics.sensitivity_n import SensitivityN

    net, x, t = images()
    ref = IntegratedGradients(net, n_steps=4, chunk=3).attribute(x, t)
    assert torch.allclose(IntegratedGradients(net, n_steps=4, chunk=chunk).attribute(x, t), ref, atol=1e-5)
    maps = torch.rand(B, 1, S, S, generator=torch.Generator().manual_seed(1))
    kw = dict(n=[4, 16], n_masks=3)
    a = SensitivityN(chunk=5, **kw)(net, x, t, maps).scores
    b = SensitivityN(chunk=chunk, **kw)(net, x, t, maps).scores
    assert all(torch.allclose(a[k], b[k], atol=1e-5, equal_nan=True) for k in a)


@pytest.mark.parametrize("name", [n for n in METHODS if "chunk" in yaml_node("method", n)])
def test_every_method_with_chunk_takes_all_three_forms(name, tmp_path):
    net, x, _ = images()
    for c in (1, None, "auto"):
        factory = build(yaml_node("method", name, **{**CHEAP.get(name, {}), "chunk": c}))
        method = factory(model=net)
        assert all(m.chunk == c for m in getattr(method, "methods", [method]))  # multi-layer IBA: its IBAs
    with pytest.raises(XattrConfigError, match="valid choices: an integer >= 1, null"):
        build(yaml_node("method", name, **{**CHEAP.get(name, {}), "chunk": 0}))(model=net)


@pytest.mark.parametrize("name", [n for n in METRICS if "chunk" in yaml_node("metric", n)])
def test_every_metric_with_chunk_takes_all_three_forms(name):
    for c in (1, None, "auto"):
        assert build(yaml_node("metric", name, chunk=c)).chunk == c
    with pytest.raises(XattrConfigError, match="valid choices: an integer >= 1, null"):
        build(yaml_node("metric", name, chunk="abc"))



# ------------------------------------------------------------------------------------- values, by the classes
@pytest.mark.parametrize("override,named", [
    ("metric.insertion_deletion.chunk=0", "bad metric.insertion_deletion.chunk 0; valid choices: an integer >= 1"),
    ("metric.insertion_deletion.per_step=0", "bad metric.insertion_deletion.per_step 0; valid choices: an integer"),
    ("+metric.sensitivity_n.chunk=abc", "bad metric.sensitivity_n.chunk 'abc'; valid choices: an integer >= 1"),
    ("method.beta=abc", "bad method.beta 'abc'; valid choices: a number (default 10.0)"),
])
def test_check_values_refuses_with_one_line_naming_the_key(override, named):
    from tests.helpers import compose_cfg
    from xattr.config import check_values

    extra = ["metric=[insertion_deletion,sensitivity_n]"] if "sensitivity_n" in override else []
    cfg = compose_cfg(["method=iba", *extra, override.lstrip("+")])
    with pytest.raises(XattrConfigError) as e:
        check_values(cfg)
    assert str(e.value).startswith(named) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,key,value,named", [
    ("iba", "beta", -1, "bad beta -1; valid choices: a number > 0"),
    ("iba", "steps", 0, "bad steps 0; valid choices: an integer >= 1"),
    ("input_iba", "feat_copies", 2.5, "bad feat_copies 2.5; valid choices: an integer >= 1"),
    ("input_iba", "lr_disc", 0, "bad lr_disc 0; valid choices: a number > 0"),
    ("integrated_gradients", "n_steps", 2.5, "bad n_steps 2.5; valid choices: an integer >= 1"),
    ("smoothgrad", "n_samples", 0, "bad n_samples 0; valid choices: an integer >= 1"),
    ("readout_iba", "epochs", 0, "bad epochs 0; valid choices: an integer >= 1"),
    ("lime", "chunk", 1.5, "bad chunk 1.5; valid choices: an integer >= 1, null (all at once), auto"),
])
def test_building_a_method_refuses_its_bad_values_with_one_line(name, key, value, named):
    net, _, _ = images()
    with pytest.raises(XattrConfigError) as e:
        build(yaml_node("method", name, **{key: value}))(model=net)
    assert str(e.value) == named if "(default" not in named else str(e.value).startswith(named)


# ------------------------------------------------------------------------------------------------ text forms
def test_input_iba_text_shares_the_image_keys_its_signature_does_not_redeclare():
    from xattr.methods.input_iba import InputIBA, InputIBAText
    from xattr.methods.text import TEXT_FORMS, shared_keys

    assert TEXT_FORMS["input_iba"] is InputIBAText and TEXT_FORMS["input_iba_text"] is InputIBAText
    keys = shared_keys(InputIBAText)
    image = set(inspect.signature(InputIBA.__init__).parameters) - {"self", "model"}
    text_own = {"feat_beta", "beta", "steps", "lr", "sigma", "lr_mask"}  # text defaults of the reference
    assert keys == image - text_own and {"layer", "feat_steps", "epochs", "chunk", "seed"} <= keys


def test_input_iba_imports_nothing_of_the_text_methods():
    import subprocess
    import sys

    code = ("import sys, xattr.methods.input_iba.text; "
            "assert not [m for m in sys.modules if m.startswith('xattr.methods.text')], sorted(sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert p.returncode == 0, p.stderr[-1500:]


def test_a_run_says_the_fit_before_its_first_image(tmp_path, capsys):
    """``python -m xattr.run`` says up front what fitting costs when it is not cached (a read-out trained on
    ten million estimation images, 4 statistics + 2 probe + 4 x 2 for the split + 4 x 10^7 training rows:
    hours even on the tiny network), and nothing without a fit."""
    from types import SimpleNamespace

    from xattr.run import _say_duration

    net, x, _ = images()
    method = build(yaml_node("method", "readout_iba", **{**CHEAP["readout_iba"], "train_batch_limit": None}))(model=net)
    est = SimpleNamespace(dataset=range(10_000_000))
    _say_duration(method, {}, net, [{"x": x[0]}], tmp_path / "run", est, tmp_path / "cache")
    out = capsys.readouterr().out
    assert "for 1 image (" in out
    assert "~40,000,014 forwards once to fit readout_iba (cached after), then readout_iba ~1 forwards per image" in out
    _say_duration(method, {}, net, [{"x": x[0]}], tmp_path / "run", None, tmp_path / "cache")
    assert capsys.readouterr().out == ""  # one image, no fit: under a minute, nothing to say
