"""Insertion / deletion (Petsiuk et al., BMVC 2018), as evaluated in InputIBA (dissertation ch. 6,
sec. 4.4.2 and appendix D.3; Table 3).

Pixels (or tokens) are ranked by the map, highest first. *Deletion* replaces the top ``s * per_step``
of them by ``deletion_value`` (0 in normalised space, "black" in the paper); *insertion* starts from a
Gaussian-blurred copy of the image (kernel ``2 sigma - 1`` = 29, sigma 15, torchvision's
``gaussian_blur`` with reflection padding, on the normalised image as the reference code) and puts the
top pixels back. At each step the softmax probability of the target is read; the score is the trapezoid
area under that curve, ``AUC = trapz(curve, x_axis)``.

The curve's x axis (``x_axis``):

- ``reference`` (default, InputIBA @5f03549e ``evaluation/vision/insertion_deletion.py`` and
  ``evaluation/nlp/insertion_deletion.py``): T = ceil(N / per_step) points, the k-th after ``min(k per_step, N)``
  perturbed pixels (k = 1..T, no unperturbed point), integrated with ``dx = 1 / T``, i.e. at
  ``x = (k - 1) / T``; published AUCs and ours are comparable;
- ``xattr``: T + 1 points from step 0 (nothing perturbed), at ``x`` = the fraction of perturbed pixels,
  exactly 0..1. It differs from ``reference`` by about 1e-4 AUC at 10 px per step on 224 x 224, more with
  coarse steps.

Departures from the reference code, both deliberate:

- the reference appends the *same* in-place-modified tensor for each of the 80 steps of a chunk, so every
  point of a chunk equals its last state; here each step is its own image (curves are exact);
- the reference ranked 8-bit PNG maps with ``torch.topk`` (ties in arbitrary order); here float maps are
  ranked by a *stable* sort (equal values: lower raster index first) or, with ``ties="random"``, by a
  seeded random permutation.

Fewer forwards (``points``): the full curve has T = ceil(N / per_step) points (5 018 on 224 x 224 at 10 px
per step: 10 036 forwards per image for both games). With ``points: P`` the curve is evaluated only at
P steps spread evenly over 1..T (``xattr`` axis: 0..T), first and last always included, each at its exact
x of the full curve, and the AUC is the trapezoid over those points. Where the curve is linear between
the chosen steps (e.g. a linear model with equal pixel contributions) the two AUCs are equal; on real
models ``scripts/bench_metrics.py --tolerance`` prints the measured AUC differences (README, "Speed": CIFAR-10
ResNet-20, 1 024-step curves, P = 100: mean |diff| 0.004-0.005 per image, 95th percentile ~0.01; the error
about halves from P = 50 to 100). ``points: all`` (``None``) is the full protocol, used by the published
tables; ``conf/metric/insertion_deletion.yaml`` uses 100 for ordinary runs (50x fewer forwards at 224 px).

Images whose original target probability is below ``min_prob`` (0.6 in the paper) get NaN scores (their
curves are still returned). Tokens: ``x`` ``(B, L)`` long, ``maps`` ``(B, L)`` and the extra ``mask``
``(B, L)`` of valid tokens; perturbed tokens become ``unk_index`` (insertion starts from all-``<unk>``);
each sample's curve runs over its own valid tokens (up to ``max_fraction``; 0.4 in the reference text code),
so curves of short texts end flat (repeated last point, no area); their ``x_axis`` is the number of tokens
perturbed at each step.

>>> metric = InsertionDeletion(per_step=10, chunk=512)
>>> res = metric(model, x, target, maps)            # res.scores["insertion"], res.curves["deletion"]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from xattr.core.checks import check_choice, check_positive_int, module_device
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import (
    OUTPUTS,
    PRECISIONS,
    TIES,
    channels_last_on,
    check_chunk,
    chunked_readout,
    flat_map,
    ranks,
    readout,
    resolve_chunk,
    trapezoid,
)
from xattr.metrics.base import Metric, MetricResult

MODES = ("insertion", "deletion")
X_AXES = ("reference", "xattr")


class InsertionDeletion(Metric):
    """Insertion and deletion curves and AUCs, batched over (image, step) pairs.

    Args:
        per_step: pixels (tokens) perturbed per step (10 in the paper).
        modes: which games to play (``insertion``, ``deletion``).
        blur_sigma: sigma of the insertion canvas' Gaussian blur (15).
        blur_kernel: kernel size; ``None`` = ``int(2 * sigma - 1)`` (29), as the reference code.
        deletion_value: fill of deleted pixels in normalised space (0).
        output: ``softmax`` (paper), ``logit`` or ``sigmoid`` read-out of the target.
        min_prob: images with a lower original target probability (same read-out) get NaN scores;
            ``None`` keeps all (paper: 0.6).
        ties: ``stable`` or ``random`` tie-breaking in the ranking (see module docstring).
        seed: seed of the random tie-break.
        chunk: forward passes per model call (memory knob; the result does not depend on it).
        precision: ``fp32`` (default), ``bf16`` or ``fp16`` autocast for the perturbed forwards.
        unk_index: replacement token for token inputs (required for them).
        max_fraction: share of pixels/tokens the curves run to (1.0; reference text code: 0.4).
        pass_mask: token models called as ``model(x, mask=mask)`` instead of ``model(x)``.
        x_axis: ``reference`` (no step 0, ``dx = 1 / T``) or ``xattr`` (step 0, fraction perturbed; see the
            module docstring).
        points: ``all`` / ``None`` (every step: the paper's protocol) or an int >= 2: the curve is evaluated at
            that many evenly spread steps only (see the module docstring).
        channels_last: run the perturbed forwards in channels-last memory format (``None``: on CUDA only;
            the model's parameters are converted for the call and restored after it).
    """

    name = "insertion_deletion"
    needs = ("mask",)  # text: the real tokens
    higher_is_better = {"insertion": True, "deletion": False, "prob": True}
    paper = "Petsiuk et al., BMVC 2018; Khakzar et al., CVPR 2021 (InputIBA), Table 3"

    def __init__(
        self,
        per_step: int = 10,
        modes: tuple[str, ...] | list[str] = MODES,
        blur_sigma: float = 15.0,
        blur_kernel: int | None = None,
        deletion_value: float = 0.0,
        output: str = "softmax",
        min_prob: float | None = 0.6,
        ties: str = "stable",
        seed: int = 0,
        chunk: int | str = 256,
        precision: str = "fp32",
        unk_index: int | None = None,
        max_fraction: float = 1.0,
        pass_mask: bool = False,
        x_axis: str = "reference",
        points: int | str | None = "all",
        channels_last: bool | None = None,
    ) -> None:
        check_choice("x_axis", x_axis, X_AXES)
        self.points = check_points(points)
        self.channels_last = channels_last
        self.x_axis = x_axis
        self.per_step = check_positive_int("per_step", per_step)
        self.modes = tuple(modes)
        for m in self.modes:
            check_choice("mode", m, MODES)
        check_choice("output", output, OUTPUTS)
        check_choice("ties", ties, TIES)
        check_choice("precision", precision, PRECISIONS)
        self.blur_sigma = float(blur_sigma)
        self.blur_kernel = int(2 * blur_sigma - 1) if blur_kernel is None else int(blur_kernel)
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise XattrConfigError(f"bad blur_kernel {self.blur_kernel!r}; valid choices: an odd integer >= 1")
        if not 0 < max_fraction <= 1:
            raise XattrConfigError(f"bad max_fraction {max_fraction!r}; valid choices: a number in (0, 1]")
        self.deletion_value = float(deletion_value)
        self.output = output
        self.min_prob = min_prob
        self.ties = ties
        self.seed = seed
        self.chunk = check_chunk(chunk)
        self.precision = precision
        self.unk_index = unk_index
        self.max_fraction = float(max_fraction)
        self.pass_mask = pass_mask

    # ------------------------------------------------------------------ public
    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        tokens = not x.is_floating_point()
        if tokens:
            return self._evaluate_tokens(model, x, target, maps, extras.get("mask"))
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, c, h, w = x.shape
        n = h * w
        flat = flat_map(maps.to(device), x)  # (B, N)
        rank = ranks(flat, True, self.ties, self.seed)  # (B, N)
        cap = torch.full((b,), max(1, round(self.max_fraction * n)), device=device)
        counts, x_frac = self._counts(cap)  # (B, T), (B, T)
        res = MetricResult()
        t = counts.shape[1]
        chunk = resolve_chunk(self.chunk, model, x[:1], self.precision)
        cl = device.type == "cuda" if self.channels_last is None else bool(self.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format
        for mode in self.modes:
            start, fill = self._canvas(x) if mode == "insertion" else (x, torch.full_like(x, self.deletion_value))

            def build(jobs: torch.Tensor, start=start, fill=fill) -> tuple[torch.Tensor, torch.Tensor]:
                i, s = jobs // t, jobs % t
                m = (rank[i] < counts[i, s, None]).view(-1, 1, h, w)  # (J, 1, H, W)
                return torch.where(m, fill[i], start[i]).contiguous(memory_format=fmt), target[i]

            with channels_last_on(model, cl, device):
                curve = chunked_readout(model, b * t, build, chunk, device, self.output, self.precision)
            res.curves[mode] = curve.view(b, t)
            res.scores[mode] = trapezoid(res.curves[mode].double(), x_frac).float()
            res.x_axis[mode] = x_frac[0].float()
        self._filter(res, model(x), target)
        return res

    # ----------------------------------------------------------------- helpers
    def _canvas(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, fill) of insertion: the blurred image, then the original pixels."""
        if self.blur_kernel // 2 >= min(x.shape[-2:]):
            raise XattrConfigError(
                f"bad blur_kernel {self.blur_kernel} for {tuple(x.shape[-2:])} images; valid choices: an odd "
                f"size below {2 * min(x.shape[-2:]) - 1} (set blur_sigma / blur_kernel)"
            )
        return gaussian_blur(x, [self.blur_kernel] * 2, [self.blur_sigma] * 2), x

    def _steps(self, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The steps ``k`` evaluated per sample ``(B, P)`` and each sample's T_i = ceil(cap_i / per_step).

        Steps run over ``first..T_i`` (``first`` = 0 on the ``xattr`` axis, 1 on ``reference``); with ``points``
        only P of them, ``k_j = first + round(j (n_i - 1) / (P - 1))`` (n_i = T_i - first + 1 steps), so the
        first and last are always kept. A sample with fewer points than the batch's most repeats its last one."""
        steps_i = torch.div(cap + self.per_step - 1, self.per_step, rounding_mode="floor").clamp_min(1)  # T_i
        first = 0 if self.x_axis == "xattr" else 1
        n_i = steps_i - first + 1  # steps of the full curve
        p_i = n_i if self.points is None else n_i.clamp_max(self.points)
        j = torch.arange(int(p_i.max()), device=cap.device)[None, :]
        j = torch.minimum(j, p_i[:, None] - 1).double()
        spacing = (n_i - 1).double() / (p_i - 1).clamp_min(1).double()
        k = first + torch.floor(j * spacing[:, None] + 0.5).long()
        return k, steps_i

    def _counts(self, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturbed counts per (sample, evaluated step) ``(B, P)`` and each sample's x axis ``(B, P)``.

        ``xattr``: steps 0..T, x = counts / cap. ``reference``: steps 1..T_i with T_i = ceil(cap_i / per_step),
        x = (k - 1) / T_i; a sample with fewer steps than the batch's longest repeats its last point at its
        last x (no area), so its AUC is the reference's ``trapz(curve[:T_i], dx=1 / T_i)``."""
        k, steps_i = self._steps(cap)
        counts = torch.minimum(k * self.per_step, cap[:, None])
        if self.x_axis == "xattr":
            return counts, counts / cap[:, None].clamp_min(1)
        return counts, (k - 1).double() / steps_i[:, None].double()

    def _filter(self, res: MetricResult, out: torch.Tensor, target: torch.Tensor) -> None:
        prob = readout(out, target, self.output if self.output != "logit" else "softmax")
        res.scores["prob"] = prob
        if self.min_prob is not None:
            keep = prob >= self.min_prob
            for mode in self.modes:
                res.scores[mode] = torch.where(keep, res.scores[mode], torch.full_like(prob, float("nan")))

    def _evaluate_tokens(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, mask: Any
    ) -> MetricResult:
        if self.unk_index is None:
            raise XattrConfigError("missing unk_index for token inputs; valid choices: the vocabulary's <unk> id")
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, length = x.shape
        mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.to(device).bool()
        if maps.shape != x.shape:
            raise XattrConfigError(f"bad maps shape {tuple(maps.shape)}; valid choices: {tuple(x.shape)} for tokens")
        scores = maps.to(device).float().masked_fill(~mask, float("nan"))  # padding ranked last
        rank = ranks(scores, True, self.ties, self.seed)
        cap = (mask.sum(1).float() * self.max_fraction).round().clamp_min(1).long()
        counts, x_frac = self._counts(cap)
        steps = self._steps(cap)[0]
        unk = torch.full_like(x, self.unk_index)
        canvases = {"deletion": (x, unk), "insertion": (torch.where(mask, unk, x), x)}
        t = counts.shape[1]

        def forward(net: nn.Module, inputs: torch.Tensor, jobs: torch.Tensor) -> torch.Tensor:
            return net(inputs, mask=mask[jobs // t]) if self.pass_mask else net(inputs)

        res = MetricResult()
        for mode in self.modes:
            start, fill = canvases[mode]

            def build(jobs: torch.Tensor, start=start, fill=fill) -> tuple[torch.Tensor, torch.Tensor]:
                i, s = jobs // t, jobs % t
                m = rank[i] < counts[i, s, None]
                return torch.where(m, fill[i], start[i]), target[i]

            chunk = self.chunk if isinstance(self.chunk, int) else 256
            curve = chunked_readout(model, b * t, build, chunk, device, self.output, self.precision, forward)
            res.curves[mode] = curve.view(b, t)
            res.scores[mode] = trapezoid(res.curves[mode].double(), x_frac).float()
            longest = int(torch.argmax(cap))
            res.x_axis[mode] = steps[longest].float() * float(self.per_step)  # tokens perturbed (longest text)
        out = model(x, mask=mask) if self.pass_mask else model(x)
        self._filter(res, out, target)
        return res


def check_points(points: int | str | None) -> int | None:
    """``all`` / ``None`` -> ``None`` (every step); an int >= 2 -> itself; anything else: one clear error."""
    if points is None or points == "all":
        return None
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise XattrConfigError(f"bad points {points!r}; valid choices: all, or an integer >= 2")
    return points
