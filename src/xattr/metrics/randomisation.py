"""Randomisation checks beside the cascading one (:mod:`xattr.metrics.sanity_check`): random logit (Sixt et
al.), smooth MPRT and efficient MPRT (Hedström et al.). The method is re-run through the extras ``method`` /
``method_factory`` (as the cascading check: a factory rebuilds it on a randomised copy of the model).

Layer randomisation of both MPRTs (as Quantus 0.6, ``PyTorchModel.get_random_layer_generator``, which the
authors' Quantus code uses): the modules that have ``reset_parameters`` in definition order (``bottom_up``, the
papers' default: input first) or reversed (``top_down``), cascading; before each module,
``torch.manual_seed(seed + 1)`` and ``module.reset_parameters()`` (PyTorch's default initialisation), on a deep
copy of the model, under a forked RNG (the caller's random state is left as it was).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.stats
import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive, check_positive_int
from xattr.core.derived import DerivedCache
from xattr.core.layers import layer_path
from xattr.core.seeding import image_seeds
from xattr.errors import XattrConfigError, unknown
from xattr.metrics.base import Metric, MetricResult
from xattr.metrics.sanity_check import _method_factory, spearman, ssim

ORDERS = ("bottom_up", "top_down")


def resettable(model: nn.Module) -> list[str]:
    """Paths of the modules with ``reset_parameters``, in definition order (Quantus' layer list)."""
    return [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")]


class _Randomised(Metric):
    needs = ("method", "method_factory")

    def _init_layers(self, layers: Sequence[str] | None, layer_order: str, seed: int) -> None:
        check_choice("layer_order", layer_order, ORDERS)
        self.layers = None if layers is None else list(layers)
        self.layer_order, self.seed = layer_order, int(seed)

    def plan(self, model: nn.Module) -> list[str]:
        """The module paths randomised, in order (``layers``: a subset of the resettable ones, kept in order)."""
        every = resettable(model)
        if self.layer_order == "top_down":
            every = every[::-1]
        if self.layers is None:
            return every
        chosen = {layer_path(model, n) for n in self.layers}
        for path in chosen:
            if path not in every:
                raise unknown("layer with reset_parameters", path, every)
        return [p for p in every if p in chosen]

    def randomised(self, model: nn.Module):
        """Yields (module path, the copy with every module up to it reset), cascading."""
        net = copy.deepcopy(model).eval()
        mods = dict(net.named_modules())
        on_cpu = all(t.device.type == "cpu" for t in net.parameters())
        # on a CPU model: torch.manual_seed's CPU part, without its device and tracing overhead (1 ms a call)
        reseed = torch.default_generator.manual_seed if on_cpu else torch.manual_seed
        with torch.random.fork_rng(devices=[]):
            for path in self.plan(model):
                reseed(self.seed + 1)
                mods[path].reset_parameters()
                yield path, net

    def fully_randomised(self, model: nn.Module) -> nn.Module:
        """The copy with every planned module reset (the last step of :meth:`randomised`; ``model`` itself when
        the plan is empty), kept between calls while ``model`` is the same object with the same parameter and
        buffer tensors at the same in-place versions: a run randomises once, not once per batch (the copy and
        the resets of a ResNet-18 cost about as much as its gradient on 32 small images here)."""
        if getattr(self, "_full", None) is None:
            self._full = DerivedCache()

        def build() -> nn.Module:
            steps = list(self.randomised(model))  # one copy, reset module after module
            return steps[-1][1] if steps else model

        return self._full.get(model, (self.layer_order, tuple(self.layers or ()), self.seed), build)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the kept randomised copy behind (a weak reference does not pickle)."""
        state = self.__dict__.copy()
        state.pop("_full", None)
        return state

    def _n_layers(self) -> int:
        return len(self.layers) if self.layers else 10


class RandomLogit(Metric):
    """Random logit test (Sixt et al., "When explanations lie: why many modified BP attributions fail", ICML 2020): the SSIM between the map for the target and the map for a random other class; a class-sensitive
    method scores low, a map that ignores the class scores 1.

    The other class is drawn per image (uniform over the classes other than the target, a generator seeded per
    image). SSIM of the 2-D maps (scikit-image, window ``win_size`` 7, its default, ``data_range`` = the two
    maps' joint range, no normalisation: Quantus' ``ssim``). Quantus 0.6 reshapes the maps to 1-D rows before
    SSIM (neighbours across row ends; a hand case in the tests) and by default max-normalises them first.
    """

    name = "random_logit"
    needs = ("method",)
    paper = "Sixt et al., ICML 2020 (random logit test)"

    def __init__(self, win_size: int = 7, seed: int = 0) -> None:
        self.win_size = check_positive_int("win_size", win_size)
        self.seed = int(seed)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: the method once more (for the other class) and one forward for the class count:
        ``method_cost + 1``."""
        return method_cost + 1

    def other_class(self, x: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in image_seeds(x, self.seed)]
        r = torch.stack([torch.randint(n_classes - 1, (1,), generator=g)[0] for g in gens]).to(target)
        return r + (r >= target).long()

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        method = extras.get("method")
        if method is None:
            raise XattrConfigError("missing extra 'method'; valid choices: the run's Attribution")
        n_classes = model(x[:1]).shape[1]
        other = self.other_class(x, target, n_classes)
        a = maps.detach().double().cpu().numpy().reshape(x.shape[0], *maps.shape[-2:])
        b = method.attribute(x, other).detach().double().cpu().numpy().reshape(a.shape)
        values = torch.tensor([ssim(p, q, "none", False, self.win_size) for p, q in zip(a, b)])
        return MetricResult(scores={"random_logit": values.float()})


class SmoothMPRT(_Randomised):
    """Smooth model parameter randomisation test (sMPRT; Hedström et al., "Sanity checks revisited: an
    exploration to repair the model parameter randomisation test", XAI in Action workshop, NeurIPS 2023):
    the cascading MPRT (layers reset bottom-up) where each explanation is denoised by averaging it over
    ``n_samples`` noisy copies of the input, ``x + N(0, (noise_magnitude (max x - min x))^2)`` per image (as
    Quantus' ``SmoothMPRT``, whose last copy is the clean input). Per layer, the Spearman rank correlation of
    the absolute smoothed maps of the original and the randomised model (flattened); the score is their
    mean over layers (Quantus' ``return_average_correlation``); the curve is per layer. Lower = the method
    depends on the parameters (passes). Defaults as Quantus / the paper: 50 samples, noise 0.1, seed 42;
    ``layers`` (module paths or paper names, null = all) restricts the layers reset.

    The original's smoothed map is recomputed (the run's ``maps`` are not smoothed). Noise is drawn per image
    (torch generators), not from numpy's global generator.
    """

    name = "smooth_mprt"
    paper = "Hedström et al., NeurIPS-W 2023 (Sanity checks revisited), sMPRT"

    def __init__(self, n_samples: int = 50, noise_magnitude: float = 0.1, layers: Sequence[str] | None = None,
                 layer_order: str = "bottom_up", seed: int = 42) -> None:
        self.n_samples = check_positive_int("n_samples", n_samples)
        check_positive("noise_magnitude", noise_magnitude)
        self.noise_magnitude = float(noise_magnitude)
        self._init_layers(layers, layer_order, seed)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: the smoothed method on the original and after each layer: ``(layers + 1) x n_samples x
        method_cost`` (``layers: null`` = every resettable module, taken as 10 without the model)."""
        return (self._n_layers() + 1) * self.n_samples * method_cost

    def smoothed(self, method: Any, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        gens = [torch.Generator().manual_seed(s) for s in image_seeds(x, self.seed)]
        std = self.noise_magnitude * (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).double().cpu()
        total = 0.0
        for k in range(self.n_samples):
            if k == self.n_samples - 1:
                eps = torch.zeros_like(x)
            else:
                eps = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float64) * s
                                   for g, s in zip(gens, std)]).to(x)
            total = total + method.attribute(x + eps, target).detach().double().cpu().numpy() / self.n_samples
        return np.abs(total.reshape(x.shape[0], -1))

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        factory = _method_factory(extras.get("method"), extras.get("method_factory"))
        base = self.smoothed(factory(model), x, target)
        rows = []
        for _, net in self.randomised(model):
            rand = self.smoothed(factory(net), x, target)
            rows.append([spearman(p, q) for p, q in zip(base, rand)])
        curve = torch.tensor(rows, dtype=torch.float64).T  # (B, L)
        steps = torch.arange(1, curve.shape[1] + 1, dtype=torch.float32)
        return MetricResult(scores={"smooth_mprt": curve.mean(1).float()}, curves={"smooth_mprt": curve.float()},
                            x_axis={"smooth_mprt": steps})


def discrete_entropy(a: np.ndarray, n_bins: int = 100) -> float:
    """Entropy of the histogram of ``a`` over ``n_bins`` equal bins (``np.histogram``, ``scipy.stats.entropy``:
    natural log), eMPRT's complexity measure."""
    hist, _ = np.histogram(a, bins=n_bins)
    return float(scipy.stats.entropy(hist))


def discrete_entropies(a: np.ndarray, n_bins: int = 100) -> np.ndarray:
    """:func:`discrete_entropy` of every row of ``a`` ``(B, N)`` at once, the same numbers: ``np.histogram``'s
    equal-bin rule (edges by ``np.linspace`` over the row's range, widened by 0.5 when constant; the index by
    scaling, then moved by one where a value falls on the other side of an edge; the last bin closed) on all rows,
    counted by one ``np.bincount``. Why hand-written: ``np.histogram`` takes one row per call (0.7 ms each for
    1 024 values here, the larger part of eMPRT's time after the method). Non-finite rows go to ``np.histogram``
    (its error)."""
    a = np.asarray(a, dtype=np.float64)
    b = a.shape[0]
    if b == 0:
        return np.zeros(0)
    if not np.isfinite(a).all():
        return np.array([discrete_entropy(row, n_bins) for row in a])
    lo, hi = a.min(1), a.max(1)
    same = lo == hi
    lo, hi = np.where(same, lo - 0.5, lo), np.where(same, hi + 0.5, hi)
    edges = np.linspace(lo, hi, n_bins + 1, axis=1)  # (B, n_bins + 1)
    idx = (((a - lo[:, None]) / (hi - lo)[:, None]) * n_bins).astype(np.intp)
    idx[idx == n_bins] -= 1
    idx[a < np.take_along_axis(edges, idx, 1)] -= 1
    idx[(a >= np.take_along_axis(edges, idx + 1, 1)) & (idx != n_bins - 1)] += 1
    hist = np.bincount((idx + n_bins * np.arange(b)[:, None]).ravel(), minlength=b * n_bins).reshape(b, n_bins)
    return scipy.stats.entropy(hist, axis=1)


class EfficientMPRT(_Randomised):
    """Efficient model parameter randomisation test (eMPRT; Hedström et al., NeurIPS-W 2023): the
    complexity of the explanation of the fully randomised model (every layer reset, bottom-up) over that of the
    original, complexity = the discrete entropy of the map's histogram (100 bins). Above 1: randomising the model
    made the explanation more complex (passes); a method that ignores the parameters scores exactly 1. The
    original's explanation is the run's map (``maps``, as Quantus with ``a_batch``). Quantus 0.6 returns
    ``ratio - 1``; this returns the paper's ratio. The randomised copy is kept between the batches of a run
    (:meth:`fully_randomised`; Quantus builds it per call: the same weights, seeded alike).
    """

    name = "efficient_mprt"
    paper = "Hedström et al., NeurIPS-W 2023 (Sanity checks revisited), eMPRT"

    def __init__(self, n_bins: int = 100, layers: Sequence[str] | None = None, layer_order: str = "bottom_up",
                 seed: int = 42) -> None:
        self.n_bins = check_positive_int("n_bins", n_bins)
        self._init_layers(layers, layer_order, seed)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: the method once, on the fully randomised model: ``method_cost``."""
        return method_cost

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        factory = _method_factory(extras.get("method"), extras.get("method_factory"))
        rand = factory(self.fully_randomised(model)).attribute(x, target).detach().double().cpu().numpy().reshape(x.shape[0], -1)
        orig = maps.detach().double().cpu().numpy().reshape(x.shape[0], -1)
        ratio = discrete_entropies(rand, self.n_bins) / discrete_entropies(orig, self.n_bins)
        return MetricResult(scores={"efficient_mprt": torch.from_numpy(ratio).float()})
