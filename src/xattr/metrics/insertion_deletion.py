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
    chunked_readout,
    flat_map,
    ranks,
    readout,
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
        chunk: int = 256,
        precision: str = "fp32",
        unk_index: int | None = None,
        max_fraction: float = 1.0,
        pass_mask: bool = False,
        x_axis: str = "reference",
    ) -> None:
        check_choice("x_axis", x_axis, X_AXES)
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
        self.chunk = check_positive_int("chunk", chunk)
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
        for mode in self.modes:
            start, fill = self._canvas(x) if mode == "insertion" else (x, torch.full_like(x, self.deletion_value))

            def build(jobs: torch.Tensor, start=start, fill=fill) -> tuple[torch.Tensor, torch.Tensor]:
                i, s = jobs // t, jobs % t
                m = (rank[i] < counts[i, s, None]).view(-1, 1, h, w)  # (J, 1, H, W)
                return torch.where(m, fill[i], start[i]), target[i]

            curve = chunked_readout(model, b * t, build, self.chunk, device, self.output, self.precision)
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

    def _counts(self, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Perturbed counts per (sample, step) ``(B, T)`` and each sample's x axis ``(B, T)``.

        ``xattr``: steps 0..T, x = counts / cap. ``reference``: steps 1..T_i with T_i = ceil(cap_i / per_step),
        x = (k - 1) / T_i; a sample with fewer steps than the batch's longest repeats its last point at its
        last x (no area), so its AUC is the reference's ``trapz(curve[:T_i], dx=1 / T_i)``."""
        steps_i = torch.div(cap + self.per_step - 1, self.per_step, rounding_mode="floor").clamp_min(1)  # T_i
        t = int(steps_i.max())
        k = torch.arange(t + 1, device=cap.device) if self.x_axis == "xattr" else torch.arange(1, t + 1, device=cap.device)
        counts = torch.minimum(k[None, :] * self.per_step, cap[:, None])
        if self.x_axis == "xattr":
            return counts, counts / cap[:, None].clamp_min(1)
        x = torch.minimum(k[None, :] - 1, steps_i[:, None] - 1).double() / steps_i[:, None].double()
        return counts, x

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

            curve = chunked_readout(model, b * t, build, self.chunk, device, self.output, self.precision, forward)
            res.curves[mode] = curve.view(b, t)
            res.scores[mode] = trapezoid(res.curves[mode].double(), x_frac).float()
            first = 0 if self.x_axis == "xattr" else 1
            res.x_axis[mode] = (torch.arange(t, device=device) + first) * float(self.per_step)  # tokens perturbed
        out = model(x, mask=mask) if self.pass_mask else model(x)
        self._filter(res, out, target)
        return res
