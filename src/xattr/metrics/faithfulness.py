"""Faithfulness by random or segment-wise perturbation: faithfulness correlation (Bhatt et al.), IROF (Rieger &
Hansen) and infidelity (Yeh et al.). All perturbed inputs of a batch go through the model in ``chunk``-sized
forwards; random draws come from a generator seeded per image (:mod:`xattr.core.seeding`), so batched equals
one image at a time. Maps ``(B, 1|C, H, W)`` are per pixel (channels averaged); a perturbed pixel is perturbed
in all its channels.

Why hand-written: Quantus 0.6 and Captum perturb one sample per forward on numpy arrays (or, Captum, one image's
samples per call); the tests compare each class with them on the same draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from skimage.segmentation import slic
from torch import nn

from xattr.core.checks import bad, check_choice, check_positive, check_positive_int, module_device
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.seeding import image_seeds
from xattr.metrics._perturb import flat_map, pearson, readout
from xattr.metrics.base import Metric, MetricResult

BASELINES = ("zero", "min", "mean")
OUTPUTS = ("logit", "softmax")


def _generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in image_seeds(x, seed)]


def _run(model: nn.Module, n: int, build: Callable[[list[int]], torch.Tensor], rows: torch.Tensor,
         target: torch.Tensor, output: str, chunk: int | None) -> torch.Tensor:
    """Read-outs ``(n,)`` of ``n`` perturbed inputs built ``chunk`` at a time (``build(jobs) -> inputs``; job ``j``
    belongs to image ``rows[j]``)."""
    step = items_per_call(n, 1, chunk)
    out = torch.empty(n, dtype=torch.float64, device=target.device)
    for start in range(0, n, step):
        jobs = list(range(start, min(start + step, n)))
        out[jobs] = readout(model(build(jobs)), target[rows[jobs]], output).double()
    return out


def _baseline(x: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, C, 1, 1)`` fill: 0, the image's minimum over all its values, or its per-channel mean."""
    if how == "zero":
        return torch.zeros_like(x[:, :, :1, :1])
    if how == "min":
        return x.amin((1, 2, 3), keepdim=True).expand(-1, x.shape[1], 1, 1)
    return x.mean((2, 3), keepdim=True)


class FaithfulnessCorrelation(Metric):
    """Faithfulness correlation (Bhatt et al., "Evaluating and aggregating feature-based model explanations",
    IJCAI 2020, def. 3): over ``n_runs`` random pixel subsets ``S`` of size ``subset_size``, the Pearson
    correlation of ``sum_{i in S} a_i`` with ``f(x) - f(x_{S <- baseline})``.

    Defaults as Quantus 0.6 (the paper gives none): 100 runs of 224 pixels, the target's logit (``output``),
    ``baseline: min`` (Quantus' "black": the image's minimum). Quantus samples subsets of C x H x W features;
    here of pixels (all channels), equal on single-channel images (the test). NaN where a side is constant.
    """

    name = "faithfulness_correlation"
    paper = "Bhatt et al., IJCAI 2020, def. 3"
    memory_knob = "chunk"

    def __init__(self, n_runs: int = 100, subset_size: int = 224, baseline: str = "min", output: str = "logit",
                 seed: int = 0, chunk: int | str | None = "auto") -> None:
        self.n_runs = check_positive_int("n_runs", n_runs)
        self.subset_size = check_positive_int("subset_size", subset_size)
        check_choice("baseline", baseline, BASELINES)
        check_choice("output", output, OUTPUTS)
        self.baseline, self.output, self.seed, self.chunk = baseline, output, int(seed), check_chunk(chunk)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: one forward per run plus the clean one: ``n_runs + 1``."""
        return float(self.n_runs + 1)

    def subsets(self, x: torch.Tensor) -> torch.Tensor:
        """The pixel subsets ``(B, n_runs, subset_size)`` (without replacement, per-image generators)."""
        n = x.shape[-1] * x.shape[-2]
        if self.subset_size >= n:
            raise bad("subset_size", self.subset_size, f"an integer below {n} (the pixels)")
        return torch.stack([torch.stack([torch.randperm(n, generator=g)[: self.subset_size]
                                         for _ in range(self.n_runs)]) for g in _generators(x, self.seed)])

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, c, h, w = x.shape
        flat = flat_map(maps.to(device), x).double()
        sub = self.subsets(x).to(device)  # (B, R, S)
        fill = _baseline(x, self.baseline)
        rows = torch.arange(b, device=device).repeat_interleave(self.n_runs)
        sub_flat = sub.reshape(-1, self.subset_size)

        def build(jobs: list[int]) -> torch.Tensor:
            i = rows[jobs]
            m = torch.zeros(len(jobs), h * w, dtype=torch.bool, device=device)
            m.scatter_(1, sub_flat[jobs], True)
            return torch.where(m.view(-1, 1, h, w), fill[i], x[i])

        chunk = resolve_chunk(self.chunk, model, x[:1])
        clean = readout(model(x), target, self.output).double()
        pert = _run(model, b * self.n_runs, build, rows, target, self.output, chunk).view(b, self.n_runs)
        sums = flat.gather(1, sub.reshape(b, -1)).view(b, self.n_runs, -1).sum(-1)
        return MetricResult(scores={"faithfulness_correlation": pearson(sums, clean[:, None] - pert).float()})


class IROF(Metric):
    """IROF, Iterative Removal Of Features (Rieger & Hansen, "IROF: a low resource evaluation metric for
    explanation methods", ICLR-W 2020, sec. 2): the image is cut into superpixels (SLIC, scikit-image's
    defaults as Quantus: ``slic(image HWC, start_label=0)``, 100 segments asked), the segments are ranked by their
    mean relevance and removed one after another (replaced by ``baseline``); ``y_k`` is the target's softmax
    after removing ``k`` segments divided by the clean one. The score is the area over that curve on
    ``x = k / n`` from ``k = 0`` (``y_0 = 1``) to ``n``: ``IROF = 1 - trapz(y, x)`` in [0, 1] for probabilities
    that fall; higher = more faithful.

    ``baseline: mean`` (default, the paper: "the mean value") fills with the clean image's per-channel mean.
    Departures of Quantus 0.6 (``IROF``): its "mean" is the mean of the whole, already perturbed *batch*
    (it changes with the batch and after every removal), and its score is the un-normalised
    ``n - trapz(y_1..y_n, dx=1)``; with a fixed fill (``baseline: zero`` = Quantus' ``perturb_baseline=0.0``)
    the two agree after that conversion (the test).
    """

    name = "irof"
    paper = "Rieger & Hansen, ICLR-W 2020 (IROF), sec. 2"
    memory_knob = "chunk"
    #: the number of segments depends on the image (SLIC may return fewer than asked)
    cost_bounds = (0.05, 1.5)

    def __init__(self, n_segments: int = 100, baseline: str = "mean", chunk: int | str | None = "auto") -> None:
        self.n_segments = check_positive_int("n_segments", n_segments)
        check_choice("baseline", baseline, BASELINES)
        self.baseline, self.chunk = baseline, check_chunk(chunk)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: one forward per removed segment plus the clean one, ``n_segments + 1`` as asked. SLIC's
        count varies by image (``cost_bounds``): below the ask on photographs (58-79 segments of 100 on three
        224 px photos), above it on small images (144 of 100 on 12 x 12 noise, 116 on a smoothed 32 x 32)."""
        return float(self.n_segments + 1)

    def segments(self, x: torch.Tensor) -> np.ndarray:
        """SLIC labels ``(B, H, W)`` of the images as given (model space), as Quantus computes them."""
        imgs = np.moveaxis(x.detach().cpu().double().numpy(), 1, -1)
        return np.stack([slic(im, n_segments=self.n_segments, start_label=0) for im in imgs])

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, c, h, w = x.shape
        flat = flat_map(maps.to(device), x).double()
        seg = torch.from_numpy(self.segments(x)).to(device).reshape(b, -1)
        n_i = (seg.amax(1) + 1).tolist()
        order = []
        for i in range(b):  # segments by mean relevance, highest first (stable on ties)
            k = n_i[i]
            sums = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, seg[i], flat[i])
            cnt = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, seg[i], torch.ones_like(flat[i]))
            order.append(torch.sort(sums / cnt.clamp_min(1), descending=True, stable=True).indices)
        seg_rank = torch.stack([torch.empty_like(order[i]).scatter_(0, order[i], torch.arange(n_i[i], device=device))
                                [seg[i]] for i in range(b)])  # (B, N): the step at which each pixel goes
        fill = _baseline(x, self.baseline)
        rows = torch.tensor([i for i in range(b) for _ in range(n_i[i])], device=device)
        steps = torch.tensor([k for i in range(b) for k in range(1, n_i[i] + 1)], device=device)

        def build(jobs: list[int]) -> torch.Tensor:
            i = rows[jobs]
            m = (seg_rank[i] < steps[jobs, None]).view(-1, 1, h, w)
            return torch.where(m, fill[i], x[i])

        clean = readout(model(x), target, "softmax").double()
        pert = _run(model, len(rows), build, rows, target, "softmax", resolve_chunk(self.chunk, model, x[:1]))
        longest = max(n_i)
        curves = torch.full((b, longest + 1), float("nan"), dtype=torch.float64, device=device)
        scores = torch.empty(b, dtype=torch.float64, device=device)
        start = 0
        for i in range(b):
            y = torch.cat([torch.ones(1, dtype=torch.float64, device=device), pert[start:start + n_i[i]] / clean[i]])
            start += n_i[i]
            curves[i, : n_i[i] + 1] = y
            scores[i] = 1 - torch.trapezoid(y, dx=1.0 / n_i[i])
        axis = torch.arange(longest + 1, dtype=torch.float32)
        return MetricResult(scores={"irof": scores.float()}, curves={"irof": curves.float()}, x_axis={"irof": axis})


class Infidelity(Metric):
    """Infidelity (Yeh et al., "On the (in)fidelity and sensitivity of explanations", NeurIPS 2019, def. 2.1):
    ``INFD = E_I[(I^T a - (f(x) - f(x - I)))^2]`` over random perturbations ``I``, here Gaussian noise
    ``I ~ N(0, std^2)`` per input value (the paper's "noisy baseline" perturbation, sec. 3), ``n_samples`` draws,
    ``f`` the target's logit. ``I^T a`` sums ``I`` over channels times the per-pixel map.

    ``normalise: true`` (default, as the authors' code ``chihkuanyeh/saliency_evaluation``, ``infid_sen_utils``:
    the explanation is first scaled by the optimal ``beta = E[I^T a . df] / E[(I^T a)^2]``, so the score does not
    depend on the map's scale); ``false`` is def. 2.1 as written. This is Captum's
    ``captum.metrics.infidelity`` (``normalize=True|False``) on the same perturbations (the test compares them);
    it is not used directly because it runs one image's samples per call through ``perturb_func`` and cannot seed
    per image. Quantus 0.6's ``Infidelity`` instead replaces fixed square patches by a baseline (deterministic,
    patch size 4) and uses no beta scaling: another protocol.
    """

    name = "infidelity"
    paper = "Yeh et al., NeurIPS 2019, def. 2.1"
    memory_knob = "chunk"

    def __init__(self, n_samples: int = 10, std: float = 0.1, normalise: bool = True, output: str = "logit",
                 seed: int = 0, chunk: int | str | None = "auto") -> None:
        self.n_samples = check_positive_int("n_samples", n_samples)
        check_positive("std", std)
        check_choice("output", output, OUTPUTS)
        self.std, self.normalise, self.output = float(std), bool(normalise), output
        self.seed, self.chunk = int(seed), check_chunk(chunk)

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: one forward per sample plus the clean one: ``n_samples + 1``."""
        return float(self.n_samples + 1)

    def perturbations(self, x: torch.Tensor) -> torch.Tensor:
        """``I`` ``(B, n_samples, C, H, W)``, ``std * N(0, 1)`` from per-image generators."""
        gens = _generators(x, self.seed)
        return torch.stack([torch.randn((self.n_samples, *x.shape[1:]), generator=g) for g in gens]).to(x) * self.std

    def evaluate(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 **extras: Any) -> MetricResult:
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, c, h, w = x.shape
        a = flat_map(maps.to(device), x).double()
        pert = self.perturbations(x)  # (B, S, C, H, W)
        rows = torch.arange(b, device=device).repeat_interleave(self.n_samples)
        flat_p = pert.reshape(-1, c, h, w)

        def build(jobs: list[int]) -> torch.Tensor:
            return x[rows[jobs]] - flat_p[jobs]

        clean = readout(model(x), target, self.output).double()
        out = _run(model, len(rows), build, rows, target, self.output, resolve_chunk(self.chunk, model, x[:1]))
        df = clean[:, None] - out.view(b, self.n_samples)
        ia = (pert.double().sum(2).reshape(b, self.n_samples, -1) * a[:, None]).sum(-1)  # I^T a
        if self.normalise:
            beta = (ia * df).mean(1) / (ia * ia).mean(1)
            ia = ia * beta[:, None]
        return MetricResult(scores={"infidelity": ((ia - df) ** 2).mean(1).float()})
