"""Robustness of a method to small input perturbations: max- and average-sensitivity (Yeh et al.) and relative
input / output stability (Agarwal et al.). The method is re-run (extra ``method``, its ``attribute``) on
``n_samples`` perturbed copies of the batch, each a batched call; the perturbation is uniform noise in the
L-infinity ball of radius ``radius`` (Captum's ``default_perturb_func``), drawn from a generator seeded per
image (:mod:`xattr.core.seeding`), so batched equals one image at a time. Maps are compared as returned by the
method (``(B, 1, H, W)``).

Why hand-written: Captum's ``sensitivity_max`` and Quantus run an explanation function they are handed;
here the method object of the run is re-used and the noise is seeded per image. The tests compare both on
the same draws.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xattr.core.checks import check_positive, check_positive_int, module_device
from xattr.core.seeding import image_seeds
from xattr.errors import XattrConfigError
from xattr.metrics.base import Metric, MetricResult


def _method(extras: dict) -> Any:
    method = extras.get("method")
    if method is None:
        raise XattrConfigError("missing extra 'method'; valid choices: the run's Attribution (the engine passes it)")
    return method


class _Perturbed(Metric):
    needs = ("method",)

    def _init(self, n_samples: int, radius: float, seed: int) -> None:
        self.n_samples = check_positive_int("n_samples", n_samples)
        check_positive("radius", radius)
        self.radius, self.seed = float(radius), int(seed)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """``(n_samples, B, C, H, W)`` uniform noise in ``[-radius, radius]`` from per-image generators."""
        gens = [torch.Generator().manual_seed(s) for s in image_seeds(x, self.seed)]
        u = torch.stack([torch.rand((self.n_samples, *x.shape[1:]), generator=g, dtype=torch.float64) for g in gens])
        return ((2 * u - 1) * self.radius).transpose(0, 1).to(x)

    def explanations(self, method: Any, x: torch.Tensor, target: torch.Tensor):
        """Yields (perturbed input, its map) per sample."""
        for d in self.noise(x):
            xp = x + d
            yield xp, method.attribute(xp, target).detach().to(x.device).double()


class _Sensitivity(_Perturbed):
    """Shared by max- and average-sensitivity (Yeh et al., "On the (in)fidelity and sensitivity of
    explanations", NeurIPS 2019, def. 3.1): ``||Phi(x + d) - Phi(x)|| / ||Phi(x)||`` (Frobenius norm) over
    ``n_samples`` draws ``d`` uniform in the L-inf ball of ``radius``. Yeh et al. define the unnormalised
    difference; Captum's ``sensitivity_max`` and Quantus 0.6 divide by ``||Phi(x)||`` (scale-free), which
    ``relative: true`` (default) does too. Defaults: Captum's (10 samples, radius 0.02); Quantus: 200 samples.
    The map ``Phi(x)`` is the run's map (``maps``), as Quantus uses ``a_batch``; a zero map divides by 1
    (Captum)."""

    #: how the draws are combined, set by each public class: ``max`` or ``mean``
    reduce: str

    def __init__(self, n_samples: int = 10, radius: float = 0.02, relative: bool = True, seed: int = 0) -> None:
        self._init(n_samples, radius, seed)
        self.relative = bool(relative)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: the method on every perturbed copy: ``n_samples x method_cost``."""
        return self.n_samples * method_cost

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        method = _method(extras)
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        a = maps.to(device).double().reshape(x.shape[0], -1)
        norm = a.norm(dim=1)
        norm = torch.where(norm == 0, torch.ones_like(norm), norm) if self.relative else torch.ones_like(norm)
        sens = torch.stack([(m.reshape(x.shape[0], -1) - a).norm(dim=1) / norm
                            for _, m in self.explanations(method, x, target)], 1)
        value = {"max": torch.amax, "mean": torch.mean}[self.reduce](sens, 1)
        return MetricResult(scores={self.name: value.float()})


class MaxSensitivity(_Sensitivity):
    __doc__ = "Max-sensitivity: the largest of the draws. " + _Sensitivity.__doc__
    name = "max_sensitivity"
    paper = "Yeh et al., NeurIPS 2019, def. 3.1"
    reduce = "max"


class AvgSensitivity(_Sensitivity):
    __doc__ = "Average-sensitivity: the mean of the draws (Monte-Carlo). " + _Sensitivity.__doc__
    name = "avg_sensitivity"
    paper = "Yeh et al., NeurIPS 2019, def. 3.1 (its average form)"
    reduce = "mean"


class _Stability(_Perturbed):
    """Relative stability (Agarwal et al., "Rethinking stability for attribution-based explanations", 2022:
    RIS and ROS): over perturbed copies ``x'`` that keep the prediction (``argmax`` unchanged; others are
    skipped), the largest ``||(e_x - e_x') / e_x||_2 / max(||D||_2, eps_min)``, the division elementwise (a zero
    of ``e_x`` divided by ``eps_min``, as Quantus). ``D`` is ``(x - x') / x`` (RIS; zeros of ``x`` by
    ``eps_min``) or the logits' change ``h(x) - h(x')`` (ROS). NaN when every copy changed the prediction.

    Departures of Quantus 0.6: it takes ``np.max`` over draws where changed predictions are NaN (so one
    changed prediction makes the score NaN), and adds ``eps_min`` to a zero denominator instead of
    ``max(., eps_min)``. Defaults: ``eps_min`` 1e-6 (both), 10 draws in the L-inf ball of 0.02 (Quantus: 200
    uniform draws)."""

    def __init__(self, n_samples: int = 10, radius: float = 0.02, eps_min: float = 1e-6, seed: int = 0) -> None:
        self._init(n_samples, radius, seed)
        check_positive("eps_min", eps_min)
        self.eps_min = float(eps_min)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: the method and one forward (the prediction check) per copy, plus the clean forward:
        ``n_samples x (method_cost + 1) + 1``."""
        return self.n_samples * (method_cost + 1) + 1

    def denominator(self, x, xp, out, out_p) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        method = _method(extras)
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b = x.shape[0]
        e = maps.to(device).double().reshape(b, -1)
        e_safe = torch.where(e == 0, torch.full_like(e, self.eps_min), e)
        out = model(x).double()
        vals = []
        for xp, m in self.explanations(method, x, target):
            out_p = model(xp).double()
            num = ((e - m.reshape(b, -1)) / e_safe).norm(dim=1)
            v = num / self.denominator(x, xp, out, out_p).clamp_min(self.eps_min)
            vals.append(torch.where(out_p.argmax(1) == out.argmax(1), v, torch.full_like(v, float("nan"))))
        vals = torch.stack(vals, 1)
        best = torch.where(vals.isnan(), torch.full_like(vals, -torch.inf), vals).amax(1)
        best = torch.where(vals.isnan().all(1), torch.full_like(best, float("nan")), best)
        return MetricResult(scores={self.name: best.float()})


class RelativeInputStability(_Stability):
    __doc__ = "Relative input stability (RIS). " + _Stability.__doc__
    name = "relative_input_stability"
    paper = "Agarwal et al., 2022 (RIS)"

    def denominator(self, x, xp, out, out_p) -> torch.Tensor:
        xd = x.double()
        x_safe = torch.where(xd == 0, torch.full_like(xd, self.eps_min), xd)
        return ((xd - xp.double()) / x_safe).reshape(x.shape[0], -1).norm(dim=1)


class RelativeOutputStability(_Stability):
    __doc__ = "Relative output stability (ROS; h = the logits). " + _Stability.__doc__
    name = "relative_output_stability"
    paper = "Agarwal et al., 2022 (ROS)"

    def denominator(self, x, xp, out, out_p) -> torch.Tensor:
        return (out - out_p).norm(dim=1)
