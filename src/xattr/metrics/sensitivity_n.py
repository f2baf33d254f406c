"""Sensitivity-n (Ancona et al., ICLR 2018), eq. 16 of Schulz et al., ICLR 2020 (appendix G.1):
``corr( sum_{i in T_n} R_i(x),  S_c(x) - S_c(x_[x_{T_n} = 0]) )`` for random index sets ``T_n`` of ``n``
pixels (or ``tile x tile`` tiles), the target *logit* ``S_c``, and the Pearson correlation.

Two protocols (REFERENCE.md, "Evaluations"):

- ``inputiba`` (InputIBA @5f03549e, Fig. 4 of ch. 6): single pixels, ``n = unique(int(logspace(0, 4.5, 45)))``,
  100 masks per n, correlation over the masks *per image*, then averaged over images
  (curve ``sensitivity_n`` (B, N_n), averaged over images by the run's summary);
- ``iba`` (IBA-paper-code @6bac54a8, Fig. 6): tiles of 8 (or 14) pixels, 16 n log-spaced from 1 tile to 80%
  of the tiles, 100 masks per n, *one* correlation pooled over all (image, mask) pairs per n. For that the
  metric returns the raw pairs per sample as curves ``attr_sum`` and ``output_drop`` ``(B, N_n * M)``
  (x axis: the n of each column, in pixels) and the analysis :class:`xattr.analyses.sensitivity_n.PooledSensitivityN` pools them over the dataset.

Masks are drawn once per call from ``seed`` and shared by all images (and by every batch, since the seed
is fixed), as both reference codes do. Masked pixels are set to ``fill`` (0 in normalised space). The n
axis (``x_axis``) is in pixels: ``n_tiles * tile**2``.

Tokens (InputIBA Fig. 4b, ch. 6 L931: "texts have different lengths ... perturb a fixed percentage of
words"): for ``x`` ``(B, L)`` long, each review's ``round(f * n_real)`` (at least 1) real tokens are replaced
by ``unk_index`` for every fraction ``f`` of ``fractions`` (log-spaced, :func:`default_fractions`), with
``n_masks`` random token sets per fraction; Pearson over the masks per review and fraction, averaged over
fractions for the review's score (curve ``sensitivity_n`` ``(B, N_f)``, x axis: the fractions in percent).
A review's masks come from a generator seeded by ``seed`` and its number of real tokens, so reviews of one
length share masks (as images share theirs) and a review gets the same ones in any batch.

Departure: the IBA paper code drew single-pixel index sets *with* replacement (``np.random.choice``
without ``replace=False``); here every index set has exactly n distinct pixels/tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive_int, module_device
from xattr.core.chunk import check_chunk, resolve_chunk, token_chunk
from xattr.errors import XattrConfigError
from xattr.metrics._perturb import (
    PRECISIONS,
    channels_last_on,
    chunked_readout,
    flat_map,
    folded,
    pearson,
    tile_index,
    tile_sums,
    token_unk_index,
    use_channels_last,
)
from xattr.metrics.base import Metric, MetricResult

PROTOCOLS = ("inputiba", "iba")


def default_n(protocol: str, n_units: int) -> list[int]:
    """The protocol's n values (in units: pixels or tiles), clipped to ``n_units - 1``."""
    if protocol == "inputiba":
        n = np.unique(np.logspace(0, 4.5, 45).astype(int))
    else:
        n = np.unique(np.round(np.exp(np.linspace(np.log(1), np.log(0.8 * n_units), 16))).astype(int))
    return [int(v) for v in n if 1 <= v < n_units]


def default_fractions(start: float = 0.01, stop: float = 0.8, num: int = 12) -> list[float]:
    """Log-spaced shares of a review's tokens (1% to 80%, 12 values) for the token protocol."""
    return [round(float(v), 4) for v in np.geomspace(start, stop, num)]


class SensitivityN(Metric):
    """Sensitivity-n, batched over (image, mask) pairs.

    Args:
        protocol: ``inputiba`` or ``iba`` (sets the defaults of ``tile``, ``n``, ``return_pairs``).
        tile: side of the masked squares (inputiba: 1; iba: 8).
        n: numbers of masked *units* (pixels or tiles); ``None`` = the protocol's list.
        n_masks: random index sets per n (100; the InputIBA text says 200).
        seed: seed of the masks (shared across images and batches).
        fill: value of masked pixels in normalised space (0).
        output: ``logit`` (eq. 16) or ``softmax``.
        return_pairs: also return the raw (attribution sum, output drop) pairs per sample
            (``None``: only for the ``iba`` protocol, which pools them).
        chunk: forward passes per model call (int >= 1, null: all at once, auto: sized for the device);
            precision: ``fp32`` | ``bf16`` | ``fp16``.
        fractions: tokens only: shares of each review's real tokens replaced (``None``: 1% .. 80%,
            12 log-spaced values, :func:`default_fractions`).
        unk_index: tokens only: the replacement token (the vocabulary's ``<unk>``, 1; ``None``: the model's
            ``unk_index``).
        channels_last: images: run the forwards in channels-last memory format (``None``: on CUDA and CPU), as
            :class:`~xattr.metrics.insertion_deletion.InsertionDeletion`; same scores up to float rounding.
        fold_bn: images: the forwards run a copy of the model with conv + eval BatchNorm folded
            (:func:`~xattr.metrics._perturb.folded`; same scores up to float rounding).
    """

    name = "sensitivity_n"
    paper = "Ancona et al., ICLR 2018; Schulz et al., ICLR 2020, eq. 16 and Fig. 6; InputIBA Fig. 4"
    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...], method_cost: float) -> float:
        """Cost rule: ``n_masks`` perturbed forwards per ``n`` (images: the protocol's ``n`` values for this
        size when ``n`` is null; tokens: per fraction), plus the clean one."""
        if len(shape) == 3:
            n_units = tile_index(shape[-2], shape[-1], self.tile)[1]
            values = len(default_n(self.protocol, n_units) if self.n is None else self.n)
        else:
            values = len(self.fractions or default_fractions())
        return float(self.n_masks * values + 1)

    needs = ("mask",)  # text: the real tokens

    def __init__(
        self,
        protocol: str = "inputiba",
        tile: int | None = None,
        n: Sequence[int] | None = None,
        n_masks: int = 100,
        seed: int = 0,
        fill: float = 0.0,
        output: str = "logit",
        return_pairs: bool | None = None,
        chunk: int | str | None = "auto",
        precision: str = "fp32",
        fractions: Sequence[float] | None = None,
        unk_index: int | None = None,
        channels_last: bool | None = None,
        fold_bn: bool = True,
    ) -> None:
        check_choice("protocol", protocol, PROTOCOLS)
        check_choice("output", output, ("logit", "softmax"))
        check_choice("precision", precision, PRECISIONS)
        self.protocol = protocol
        self.tile = check_positive_int("tile", tile if tile is not None else (1 if protocol == "inputiba" else 8))
        self.n = None if n is None else [check_positive_int("n", int(v)) for v in n]
        self.n_masks = check_positive_int("n_masks", n_masks)
        self.seed = seed
        self.fill = float(fill)
        self.output = output
        self.return_pairs = (protocol == "iba") if return_pairs is None else bool(return_pairs)
        self.chunk = check_chunk(chunk)
        self.precision = precision
        self.fractions = None if fractions is None else [float(f) for f in fractions]
        bad = [f for f in self.fractions or [] if not 0 < f <= 1]
        if bad or self.fractions == []:
            raise XattrConfigError(f"bad fractions {bad or fractions!r}; valid choices: shares in (0, 1]")
        self.unk_index = unk_index
        self.channels_last = channels_last
        self.fold_bn = bool(fold_bn)

    def masks(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The shared masks: unit masks ``(N_n, M, U)`` bool, tile ids ``(H*W,)``, n values ``(N_n,)``."""
        tid, n_units = tile_index(h, w, self.tile, device)
        n = default_n(self.protocol, n_units) if self.n is None else self.n
        bad = [v for v in n if v >= n_units]
        if bad or not n:
            raise XattrConfigError(f"bad n {bad or n!r}; valid choices: integers in 1..{n_units - 1} for this image")
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        draws = [torch.rand(self.n_masks, n_units, generator=g) for _ in n]  # exactly v smallest per row
        units = torch.stack([r <= r.kthvalue(v, dim=1, keepdim=True).values for r, v in zip(draws, n)])
        return units.to(device), tid, torch.tensor(n, device=device)

    def evaluate(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **extras: Any
    ) -> MetricResult:
        if not x.is_floating_point():
            return self._evaluate_tokens(model, x, target, maps, extras.get("mask"))
        device = module_device(model, x.device)
        x, target = x.to(device), target.to(device)
        b, c, h, w = x.shape
        flat = flat_map(maps.to(device), x)  # (B, H*W)
        units, tid, n = self.masks(h, w, device)  # (N_n, M, U)
        nn_, m, n_units = units.shape
        per_unit = tile_sums(flat, tid, n_units).double()  # (B, U)
        attr_sum = torch.stack([per_unit @ units[k].double().T for k in range(nn_)], 1)  # (B, N_n, M)
        flat_units = units.view(nn_ * m, n_units)
        per = nn_ * m
        cl = use_channels_last(self.channels_last, device)
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = folded(model, x[:1]) if self.fold_bn else model
        xf = x.contiguous(memory_format=fmt)  # rows gathered from it keep the format: no copy per call

        def build(jobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            i, k = jobs // per, jobs % per
            pix = flat_units[k][:, tid].view(-1, 1, h, w)  # (J, 1, H, W)
            return torch.where(pix, self.fill, xf[i]), target[i]

        chunk = resolve_chunk(self.chunk, model, x[:1], self.precision)
        with channels_last_on(net, cl, device):
            clean = chunked_readout(net, b, lambda j: (xf[j], target[j]), chunk, device, self.output, self.precision)
            pert = chunked_readout(net, b * per, build, chunk, device, self.output, self.precision)
        drop = clean[:, None, None].double() - pert.view(b, nn_, m).double()  # (B, N_n, M)
        corr = pearson(attr_sum, drop, dim=-1).float()  # (B, N_n)
        n_pixels = (n * self.tile * self.tile).float()
        res = MetricResult(
            scores={"sensitivity_n": corr.nanmean(1)},
            curves={"sensitivity_n": corr},
            x_axis={"sensitivity_n": n_pixels},
        )
        if self.return_pairs:
            col_n = n_pixels.repeat_interleave(m)
            res.curves["attr_sum"] = attr_sum.reshape(b, -1).float()
            res.curves["output_drop"] = drop.reshape(b, -1).float()
            res.x_axis["attr_sum"] = res.x_axis["output_drop"] = col_n
        return res


    def token_masks(self, n_real: int, device: torch.device) -> torch.Tensor:
        """``(N_f, M, n_real)`` bool: for each fraction, ``n_masks`` random sets of ``round(f * n_real)``
        (>= 1) of a review's real tokens, from a generator seeded by ``seed`` and ``n_real``."""
        g = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + n_real)
        out = []
        for f in self.fractions or default_fractions():
            k = min(n_real, max(1, round(f * n_real)))
            r = torch.rand(self.n_masks, n_real, generator=g)
            out.append(r <= r.kthvalue(k, dim=1, keepdim=True).values)
        return torch.stack(out).to(device)

    def _evaluate_tokens(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                         mask: Any) -> MetricResult:
        unk_index = token_unk_index(self.unk_index, model)
        device = module_device(model, x.device)
        x, target, maps = x.to(device), target.to(device), maps.to(device).double()
        if maps.shape != x.shape:
            raise XattrConfigError(f"bad maps shape {tuple(maps.shape)}; valid choices: {tuple(x.shape)} for tokens")
        mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.to(device).bool()
        fractions = self.fractions or default_fractions()
        b, nf, m = x.shape[0], len(fractions), self.n_masks
        per = nf * m
        masks, attr_sum = [], torch.zeros(b, nf, m, dtype=torch.float64, device=device)
        for i in range(b):
            idx = mask[i].nonzero().squeeze(1)
            sets = self.token_masks(len(idx), device)  # (N_f, M, n_real)
            full = torch.zeros(nf, m, x.shape[1], dtype=torch.bool, device=device)
            full[:, :, idx] = sets
            masks.append(full)
            attr_sum[i] = sets.double() @ maps[i, idx]
        masks_t = torch.stack(masks).view(b * per, x.shape[1])
        unk = torch.full_like(x[:1], unk_index)

        def build(jobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            i = jobs // per
            return torch.where(masks_t[jobs], unk, x[i]), target[i]

        chunk = token_chunk(self.chunk)
        clean = chunked_readout(model, b, lambda j: (x[j], target[j]), chunk, device, self.output, self.precision)
        pert = chunked_readout(model, b * per, build, chunk, device, self.output, self.precision)
        drop = clean[:, None, None].double() - pert.view(b, nf, m).double()
        corr = pearson(attr_sum, drop, dim=-1).float()  # (B, N_f)
        return MetricResult(scores={"sensitivity_n": corr.nanmean(1)}, curves={"sensitivity_n": corr},
                            x_axis={"sensitivity_n": torch.tensor(fractions, device=device) * 100})


