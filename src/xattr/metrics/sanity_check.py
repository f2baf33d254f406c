"""Cascading parameter randomisation (Adebayo et al., NeurIPS 2018), as used by the IBA paper (sec. 4.3,
appendix G.3, Fig. 6), InputIBA (ch. 6, sec. 4.3, Fig. 3) and the critical-pathways chapter (ch. 5,
appendix C.1, Fig. 6).

Step 0 re-attributes on an unchanged deep copy of the model (SSIM 1 for a deterministic method); step k
re-initialises every parametric leaf module from the network's last one up to and including
``layers[k-1]`` (cascading, last layer towards the input) and re-attributes with the *same* method
rebuilt on the randomised copy. Each step's map is compared with the original ``maps`` by

- SSIM (scikit-image ``structural_similarity``, window 5) after clamping each map to its 1st/99th
  percentiles and rescaling to [0, 1] (IBA paper, G.3); ``to_8bit=True`` quantises to 8 bits as the
  InputIBA code did (``data_range`` 255); ``normalise: max_abs`` divides each map by its max ``|.|`` instead,
  keeping the sign (to [-1, 1], ``data_range`` 2; the critical-pathways chapter, appendix C.1 L1978);
- Spearman rank correlation of the raw maps (signed) and of their absolute values (ch. 5).

Initialisation (``init``): ``inputiba`` = conv weights xavier-uniform, linear weights N(0, 0.05), biases 0,
other modules untouched (InputIBA @5f03549e ``weights_init``); ``normal`` = every parameter of the module
N(0, ``std``) (PathwayGrad: 0.1; the ch. 5 text says variance 0.01, i.e. the same std 0.1). The default
``layers`` (``None``) are all parametric leaf modules, last first; InputIBA's VGG-16 run stops at
``classifier.6`` ... ``features.7``; layer names may be paper names (``conv4_1``) or module paths.

The method is rebuilt by the extra ``method_factory`` (a callable ``model -> Attribution``) when given;
otherwise from the extra ``method`` as ``type(method)(copy, **{p: method.p})`` for every constructor
parameter ``p`` stored under its own name (methods that need ``fit`` require a factory).

>>> res = CascadingRandomisation(layers=["fc", "conv3"])(model, x, target, maps, method=Gradient(model))
>>> res.curves["ssim"]            # (B, 3): original, fc randomised, fc + conv3 randomised
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from xattr.core.checks import check_choice
from xattr.core.layers import layer_path
from xattr.errors import XattrConfigError, unknown
from xattr.metrics.base import Metric, MetricResult

INITS = ("inputiba", "normal")
NORMALISE = ("percentile", "minmax", "none", "max_abs")


def parametric_leaves(model: nn.Module) -> list[str]:
    """Module paths of the modules that own parameters, in definition order."""
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


def normalise_map(a: np.ndarray, how: str = "percentile", to_8bit: bool = False) -> np.ndarray:
    """Clamp to the 1st/99th percentile and rescale to [0, 1] (``percentile``), or min-max, or nothing, or
    divide by the max ``|.|`` (``max_abs``: [-1, 1], sign kept); optionally quantised to 8 bits (``max_abs``:
    [-1, 1] mapped onto 0..255)."""
    a = a.astype(np.float64)
    if how == "max_abs":
        m = np.abs(a).max()
        a = a / m if m > 0 else np.zeros_like(a)
        return np.round((a + 1) / 2 * 255).astype(np.uint8) if to_8bit else a
    if how == "percentile":
        lo, hi = np.percentile(a, [1, 99])
        a = np.clip(a, lo, hi)
    if how != "none":
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.round(a * 255).astype(np.uint8) if to_8bit else a


def ssim(a: np.ndarray, b: np.ndarray, how: str = "percentile", to_8bit: bool = False, win_size: int = 5) -> float:
    """SSIM of two 2-D maps after :func:`normalise_map` (scikit-image, window ``win_size``)."""
    a, b = normalise_map(a, how, to_8bit), normalise_map(b, how, to_8bit)
    if to_8bit:
        data_range = 255
    elif how == "max_abs":
        data_range = 2.0
    else:
        data_range = 1.0 if how != "none" else float(max(a.max(), b.max()) - min(a.min(), b.min())) or 1.0
    return float(structural_similarity(a, b, win_size=win_size, data_range=data_range))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); NaN if either is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a.ravel(), b.ravel()).statistic)


class CascadingRandomisation(Metric):
    """Cascading randomisation sanity check: SSIM and Spearman per step, curves ``(B, K + 1)``.

    Args:
        layers: where each step stops, last layer first (paper names or module paths); ``None`` = every
            parametric leaf, last first.
        init: ``inputiba`` or ``normal`` (see module docstring); std: for ``normal``.
        linear_std: std of linear weights under ``inputiba`` (0.05).
        normalise: ``percentile`` (1st/99th clamp, IBA paper), ``minmax``, ``none`` or ``max_abs`` (divided by
            the max ``|.|``, the pathways chapter) before SSIM.
        to_8bit: quantise normalised maps to 8 bits before SSIM (InputIBA code).
        win_size: SSIM window (5).
        seed: seed of the random weights.
    """

    name = "sanity_check"
    needs = ("method", "method_factory")
    paper = "Adebayo et al., NeurIPS 2018; Schulz et al., ICLR 2020, Fig. 6; InputIBA Fig. 3; pathways Fig. 6"
    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: the method again on the original and on each randomised step: ``(steps + 1) x
        method_cost`` (``layers: null`` steps through every parametric leaf, which the cost, without the
        model, takes as 10: a deeper model costs proportionally more)."""
        return (len(self.layers) if self.layers else 10) * method_cost + method_cost


    def __init__(
        self,
        layers: Sequence[str] | None = None,
        init: str = "inputiba",
        std: float = 0.1,
        linear_std: float = 0.05,
        normalise: str = "percentile",
        to_8bit: bool = False,
        win_size: int = 5,
        seed: int = 0,
    ) -> None:
        check_choice("init", init, INITS)
        check_choice("normalise", normalise, NORMALISE)
        self.layers = None if layers is None else list(layers)
        self.init, self.std, self.linear_std = init, float(std), float(linear_std)
        self.normalise, self.to_8bit, self.win_size, self.seed = normalise, to_8bit, int(win_size), seed

    # ------------------------------------------------------------- layer plan
    def step_names(self, model: nn.Module) -> list[str]:
        """Label of each step: ``original``, then the module path each step stops at."""
        return ["original"] + [layer_path(model, n) for n in self._stops(model)]

    def _stops(self, model: nn.Module) -> list[str]:
        return list(reversed(parametric_leaves(model))) if self.layers is None else self.layers

    def plan(self, model: nn.Module) -> list[list[str]]:
        """For each step k >= 1, the parametric leaves newly randomised at that step (cumulative)."""
        leaves = parametric_leaves(model)
        done: set[str] = set()
        steps = []
        for name in self._stops(model):
            path = layer_path(model, name)
            first = [i for i, leaf in enumerate(leaves) if leaf == path or leaf.startswith(path + ".")]
            if not first:
                raise unknown("layer with parameters", name, leaves)
            new = [leaf for leaf in leaves[first[0] :] if leaf not in done]
            done.update(new)
            steps.append(new)
        return steps

    def _randomise(self, module: nn.Module, g: torch.Generator) -> None:
        def draw(p: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> None:
            buf = torch.empty(p.shape, dtype=torch.float32)
            fn(buf)
            p.data.copy_(buf.to(p.device, p.dtype))

        if self.init == "normal":
            for p in module.parameters(recurse=False):
                draw(p, lambda t: nn.init.normal_(t, 0.0, self.std, generator=g))
            return
        if isinstance(module, nn.modules.conv._ConvNd):
            draw(module.weight, lambda t: nn.init.xavier_uniform_(t, generator=g))
        elif isinstance(module, nn.Linear):
            draw(module.weight, lambda t: nn.init.normal_(t, 0.0, self.linear_std, generator=g))
        else:
            return
        if module.bias is not None:
            module.bias.data.zero_()

    # ---------------------------------------------------------------- metric
    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        factory = _method_factory(extras.get("method"), extras.get("method_factory"))
        plan = self.plan(model)
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        net = copy.deepcopy(model)
        net.eval()
        original = _as_2d(maps)
        rows: list[list[tuple[float, float, float]]] = []
        for k in range(len(plan) + 1):
            if k:
                mods = dict(net.named_modules())
                for path in plan[k - 1]:
                    self._randomise(mods[path], g)
            new = _as_2d(factory(net).attribute(x, target))
            rows.append([self._compare(o, r) for o, r in zip(original, new)])
        vals = torch.tensor(rows, dtype=torch.float32).permute(1, 0, 2)  # (B, K+1, 3)
        steps = torch.arange(len(plan) + 1, dtype=torch.float32)
        curves = {"ssim": vals[..., 0], "spearman": vals[..., 1], "spearman_abs": vals[..., 2]}
        scores = {k: v[:, 1:].nanmean(1) if v.shape[1] > 1 else v[:, 0] for k, v in curves.items()}
        return MetricResult(scores=scores, curves=curves, x_axis={k: steps for k in curves})

    def _compare(self, o: np.ndarray, r: np.ndarray) -> tuple[float, float, float]:
        return (
            ssim(o, r, self.normalise, self.to_8bit, self.win_size),
            spearman(o, r),
            spearman(np.abs(o), np.abs(r)),
        )


def _as_2d(maps: torch.Tensor) -> list[np.ndarray]:
    m = maps.detach().float().cpu()
    if m.dim() == 4:
        m = m.mean(1)
    return list(m.numpy())


def _method_factory(method: Any, factory: Callable[[nn.Module], Any] | None) -> Callable[[nn.Module], Any]:
    """The callable ``model -> method`` that rebuilds the method on a randomised copy."""
    if factory is not None:
        return factory
    if method is None:
        raise XattrConfigError("missing extra 'method'; valid choices: an Attribution or a 'method_factory' callable")
    if getattr(method, "needs_fit", False):
        raise XattrConfigError(
            f"method {type(method).__name__!r} needs fit(); valid choices: pass a 'method_factory' that fits it"
        )
    cls = type(method)
    kwargs = {}
    for name, p in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if name == "model" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(method, name):
            kwargs[name] = getattr(method, name)
        elif p.default is p.empty:
            raise XattrConfigError(
                f"cannot rebuild {cls.__name__}: argument {name!r} is not stored on the method; "
                "valid choices: pass a 'method_factory' callable"
            )
    return lambda net: cls(net, **kwargs)
