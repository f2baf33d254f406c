"""The metric base class (``xattr.metrics.base``): the call's checks and casts, the recorded arguments, the
defaults every metric inherits, and ``summarise``'s mean / standard error / count, each against a hand value."""

from __future__ import annotations

import math

import pytest
import torch

from xattr.metrics.base import Metric, MetricResult


class Probe(Metric):
    """Records what ``evaluate`` is handed; returns the maps' per-image sum as its score."""

    def __init__(self, alpha: float = 0.5, mode: str = "mean", **rest) -> None:
        self.alpha, self.mode = alpha, mode
        self.seen: dict = {}

    def evaluate(self, model, x, target, maps, **extras):
        self.seen = {"target": target, "maps": maps, "grad": torch.is_grad_enabled(), "extras": extras}
        return MetricResult({"s": maps.flatten(1).sum(1)})


def test_call_checks_the_batch_casts_target_and_maps_and_runs_without_grad():
    m = Probe()
    x = torch.zeros(2, 1, 3, 3)
    target = torch.tensor([1.0, 0.0])  # float targets come out long
    maps = torch.ones(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    out = m(None, x, target, maps, boxes=[1, 2])
    seen = m.seen
    assert seen["target"].dtype == torch.long and seen["target"].tolist() == [1, 0]
    assert seen["maps"].dtype == torch.float32 and not seen["grad"] and seen["extras"] == {"boxes": [1, 2]}
    assert out.scores["s"].tolist() == [9.0, 9.0] and not out.scores["s"].requires_grad
    with pytest.raises(ValueError) as err:
        m(None, x, target, torch.ones(3, 1, 3, 3))
    assert str(err.value) == "maps batch 3 != images batch 2"
    m(None, torch.zeros(3, 1, 3, 3), torch.tensor([0, 1, 2]), torch.ones(3, 1, 3, 3))  # equal batches pass


def test_hparams_are_the_arguments_with_defaults_filled_and_a_copy():
    m = Probe(0.25, extra=3)
    assert m.hparams == {"alpha": 0.25, "mode": "mean", "extra": 3}
    assert Probe(mode="sum").hparams == {"alpha": 0.5, "mode": "sum"}
    m.hparams["alpha"] = 9.0  # a copy: the recorded arguments stay
    assert m.hparams["alpha"] == 0.25
    bare = object.__new__(Probe)  # built around ``__new__``: nothing recorded, an empty dict
    assert bare.hparams == {}


def test_inherited_defaults():
    m = Probe()
    assert (Probe.name, Probe.needs, Probe.memory_knob, Probe.cost_bounds) == ("metric", (), None, (1.0, 1.0))
    assert m.forwards_per_image((3, 8, 8), 12.0) == 0.0

    class NoEvaluate(Metric):
        pass

    with pytest.raises(TypeError, match="abstract"):  # a metric must say how it evaluates
        NoEvaluate()


def test_metric_result_cpu_is_detached_float_per_field():
    r = MetricResult({"a": torch.tensor([1, 2], dtype=torch.float64, requires_grad=True)},
                     {"c": torch.tensor([[1, 2]])}, {"c": torch.tensor([0, 5])})
    c = r.cpu()
    assert set(c.scores) == {"a"} and set(c.curves) == {"c"} and set(c.x_axis) == {"c"}
    for t in (c.scores["a"], c.curves["c"], c.x_axis["c"]):
        assert t.dtype == torch.float32 and not t.requires_grad and t.device.type == "cpu"
    assert c.scores["a"].tolist() == [1.0, 2.0] and c.curves["c"].tolist() == [[1.0, 2.0]]
    assert c.x_axis["c"].tolist() == [0.0, 5.0]
    one, two = MetricResult(), MetricResult()
    one.scores["x"] = torch.zeros(1)
    assert two.scores == {} and two.curves == {} and two.x_axis == {}  # fresh dicts per result


def test_summarise_is_mean_sem_and_count_of_the_finite_values_by_hand():
    nan = float("nan")
    out = Probe().summarise({"a": torch.tensor([1.0, 2.0, 4.0, nan]), "b": torch.tensor([5.0, nan]),
                             "c": torch.tensor([nan, nan]), "d": torch.tensor([1.0, float("inf"), 3.0])})
    assert set(out) == {"a", "b", "c", "d"}
    mean, sem, n = out["a"]
    # 1, 2, 4: mean 7/3; deviations -4/3, -1/3, 5/3; unbiased variance (16 + 1 + 25) / 9 / 2 = 7/3; s.e. sqrt(7/3 / 3)
    assert n == 3 and mean == pytest.approx(7 / 3, abs=1e-12) and sem == pytest.approx(math.sqrt(7) / 3, abs=1e-12)
    assert out["b"][0] == 5.0 and math.isnan(out["b"][1]) and out["b"][2] == 1  # one value: no s.e.
    assert math.isnan(out["c"][0]) and math.isnan(out["c"][1]) and out["c"][2] == 0
    assert out["d"] == pytest.approx((2.0, 1.0, 2))  # inf is filtered too: 1, 3 -> s.d. sqrt(2), s.e. 1
