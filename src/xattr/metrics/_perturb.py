"""Shared pieces of the perturbation metrics: ranking maps, tiles, boxes, chunked forwards, read-outs,
trapezoid areas and correlations. Everything works on whole batches on the model's device.

Why hand-written: Quantus and Captum perturb one step per forward pass on numpy arrays (see
/work/shared/STYLE.md); the metrics here build the perturbed inputs of many (image, step) pairs as one
tensor per forward pass, which no library offers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from xattr.core.checks import check_choice, check_positive_int
from xattr.core.progress import progress
from xattr.errors import XattrConfigError

OUTPUTS = ("softmax", "logit", "sigmoid")
TIES = ("stable", "random")
PRECISIONS = ("fp32", "bf16", "fp16")


def readout(out: torch.Tensor, target: torch.Tensor, how: str) -> torch.Tensor:
    """The scalar each metric tracks per forward: ``softmax`` probability of ``target``, its ``logit``,
    or ``sigmoid`` (multi-label: sigmoid of the target logit; one output unit: p for target 1, 1-p for 0,
    as the InputIBA text code does)."""
    out = out.float()
    if how == "softmax":
        return out.softmax(-1).gather(1, target[:, None])[:, 0]
    if how == "logit":
        return out.gather(1, target[:, None])[:, 0]
    if out.shape[1] == 1:
        p = out[:, 0].sigmoid()
        return torch.where(target == 1, p, 1 - p)
    return out.gather(1, target[:, None])[:, 0].sigmoid()


def chunked_readout(
    model: nn.Module,
    n_jobs: int,
    build: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    chunk: int,
    device: torch.device,
    output: str,
    precision: str = "fp32",
    forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    desc: str = "metric forwards",
) -> torch.Tensor:
    """Run ``n_jobs`` perturbed forwards, ``chunk`` per pass; ``build(job_ids) -> (inputs, target)``.

    Returns the read-out ``(n_jobs,)``. The result does not depend on ``chunk`` (up to float
    non-determinism of batched convolutions).
    """
    scores = torch.empty(n_jobs, device=device)
    amp = _amp(device, precision)
    for start in progress(range(0, n_jobs, chunk), desc=desc, unit="call"):
        jobs = torch.arange(start, min(start + chunk, n_jobs), device=device)
        inputs, tgt = build(jobs)
        with amp:
            out = model(inputs) if forward is None else forward(model, inputs, jobs)
        scores[start : start + len(jobs)] = readout(out, tgt, output)
    return scores


CPU_CHUNK = 256
"""``chunk: auto`` off CUDA: forwards per call (the default; larger calls gain nothing on a CPU)."""


def check_chunk(chunk: int | str) -> int | str:
    """A positive int, or ``auto`` (sized from the free GPU memory, see :func:`resolve_chunk`)."""
    if chunk == "auto":
        return chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise XattrConfigError(f"bad chunk {chunk!r}; valid choices: a positive integer, or auto")
    return chunk


def _amp(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def resolve_chunk(chunk: int | str, model: nn.Module, sample: torch.Tensor, precision: str = "fp32",
                  share: float = 0.6, probe: int = 8, most: int = 8192) -> int:
    """``chunk`` itself when it is an int; ``auto``: on CUDA, the forwards per call that fill ``share`` of the
    free memory, from the peak memory of a ``probe``-row forward of ``sample`` ``(1, ...)`` (a multiple
    of 8, at most ``most``); elsewhere :data:`CPU_CHUNK`. The result of a metric never depends on it."""
    if chunk != "auto":
        return int(chunk)
    device = sample.device
    if device.type != "cuda" or not torch.cuda.is_available():
        return CPU_CHUNK
    torch.cuda.synchronize(device)
    free, _total = torch.cuda.mem_get_info(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), _amp(device, precision):
        model(sample.expand(probe, *sample.shape[1:]).contiguous())
    per_row = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    rows = int(share * free // (2 * per_row))  # x2: the perturbed inputs and their build are alive too
    return max(8, min(most, rows // 8 * 8))


@contextlib.contextmanager
def channels_last_on(model: nn.Module, enabled: bool | None, device: torch.device):
    """Run the block with ``model``'s 4-d parameters in channels-last format (``enabled=None``: on CUDA
    only, where cuDNN's channels-last kernels are faster, esp. in bf16), restoring the format after."""
    on = device.type == "cuda" if enabled is None else bool(enabled)
    if not on:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def ranks(values: torch.Tensor, descending: bool = True, ties: str = "stable", seed: int = 0) -> torch.Tensor:
    """Rank of every entry of ``values`` ``(B, N)`` (0 = first to perturb), int32 ``(B, N)``.

    Ties: ``stable`` keeps raster order among equal values (lower flat index first); ``random`` breaks
    them by a seeded random permutation per row. NaN entries come last.
    """
    check_choice("ties", ties, TIES)
    v = values.float() if descending else -values.float()
    v = v.nan_to_num(nan=-math.inf)  # NaN last in either direction
    b, n = v.shape
    if ties == "random":
        g = torch.Generator(device="cpu").manual_seed(seed)
        perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)]).to(v.device)
        order = perm.gather(1, torch.sort(v.gather(1, perm), dim=1, descending=True, stable=True).indices)
    else:
        order = torch.sort(v, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order, dtype=torch.int32)
    rank.scatter_(1, order, torch.arange(n, device=v.device, dtype=torch.int32).expand(b, n).contiguous())
    return rank


def tile_index(h: int, w: int, tile: int, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """Tile id of every pixel ``(H*W,)`` and the number of tiles. As the IBA paper code's ``GridView``:
    ``H // tile`` rows of tiles, the last row/column absorbing the remainder."""
    check_positive_int("tile", tile)
    rows, cols = max(h // tile, 1), max(w // tile, 1)
    r = (torch.arange(h, device=device) // tile).clamp(max=rows - 1)
    c = (torch.arange(w, device=device) // tile).clamp(max=cols - 1)
    return (r[:, None] * cols + c[None, :]).reshape(-1), rows * cols


def tile_sums(maps: torch.Tensor, tid: torch.Tensor, n_tiles: int) -> torch.Tensor:
    """Sum of ``maps`` ``(B, H*W)`` within each tile -> ``(B, n_tiles)``."""
    out = torch.zeros(maps.shape[0], n_tiles, device=maps.device, dtype=torch.float64)
    return out.index_add_(1, tid, maps.double()).to(maps.dtype)


def flat_map(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B, 1|C, H, W)`` or ``(B, H, W)`` maps -> ``(B, H*W)`` (channels averaged), checking the size."""
    if maps.dim() == 4:
        maps = maps.mean(1)
    if maps.dim() != 3 or tuple(maps.shape[-2:]) != tuple(x.shape[-2:]):
        raise XattrConfigError(
            f"bad maps shape {tuple(maps.shape)}; valid choices: (B, 1, H, W) with H, W = {tuple(x.shape[-2:])}"
        )
    return maps.reshape(maps.shape[0], -1).float()


def box_masks(boxes: list | None, b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Union of each image's xyxy boxes as a bool ``(B, H*W)``: pixel (i, j) is inside when its centre
    (j + 0.5, i + 0.5) lies in [x1, x2) x [y1, y2) (integer boxes give ``mask[y1:y2, x1:x2]`` as the
    reference codes do)."""
    if boxes is None:
        raise XattrConfigError("missing extra 'boxes'; valid choices: a list of (N_i, 4) xyxy tensors per image")
    if len(boxes) != b:
        raise XattrConfigError(f"bad boxes length {len(boxes)}; valid choices: one entry per image ({b})")
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    masks = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    for i, bx in enumerate(boxes):
        bx = torch.as_tensor(bx, dtype=torch.float32, device=device).reshape(-1, 4)
        for x1, y1, x2, y2 in bx:
            masks[i] |= ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
    return masks.reshape(b, -1)


def trapezoid(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under ``y`` ``(B, T)`` over ``x`` ``(T,)`` or ``(B, T)``."""
    x = x.to(y) if x.dim() == 2 else x.to(y).expand_as(y)
    return ((y[:, 1:] + y[:, :-1]) * (x[:, 1:] - x[:, :-1])).sum(-1) / 2


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson correlation along ``dim`` (float64); NaN where either side is constant."""
    a, b = a.double(), b.double()
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    den = (a.square().sum(dim) * b.square().sum(dim)).sqrt()
    r = (a * b).sum(dim) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan")))
