"""Shared pieces of the perturbation metrics: ranking maps, tiles, boxes, chunked forwards, read-outs,
trapezoid areas and correlations. Everything works on whole batches on the model's device.

Why hand-written: Quantus and Captum perturb one step per forward pass on numpy arrays (see
/work/shared/STYLE.md); the metrics here build the perturbed inputs of many (image, step) pairs as one
tensor per forward pass, which no library offers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from xattr.core.boxes import box_masks, uncounted  # noqa: F401  (the metrics' names for them)
from xattr.core.checks import check_positive_int
from xattr.core.chunk import autocast, items_per_call
from xattr.core.derived import DerivedCache
from xattr.core.progress import progress
from xattr.core.ranking import TIES, ranks  # noqa: F401  (the metrics' names for them)
from xattr.errors import XattrConfigError

OUTPUTS = ("softmax", "logit", "sigmoid")
PRECISIONS = ("fp32", "bf16", "fp16")


def token_unk_index(given: int | None, model: nn.Module) -> int:
    """The replacement token of the token metrics: ``given``, else the model's own ``unk_index`` (a HuggingFace
    classifier's ``[UNK]``, :class:`xattr.models.hf.HFClassifier`; the LSTM's ``<unk>``), else one error."""
    if given is not None:
        return int(given)
    found = getattr(model, "unk_index", None)
    if found is None:
        raise XattrConfigError("missing unk_index for token inputs; valid choices: the vocabulary's <unk> id "
                               f"({type(model).__name__} names none)")
    return int(found)


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
    chunk: int | None,
    device: torch.device,
    output: str,
    precision: str = "fp32",
    forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    desc: str = "metric forwards",
) -> torch.Tensor:
    """Run ``n_jobs`` perturbed forwards, ``chunk`` per pass (resolved: an int or ``None`` for all at once;
    :mod:`xattr.core.chunk`); ``build(job_ids) -> (inputs, target)``.

    Returns the read-out ``(n_jobs,)``. The result does not depend on ``chunk`` (up to float
    non-determinism of batched convolutions).
    """
    scores = torch.empty(n_jobs, device=device)
    amp = autocast(device, precision)
    chunk = items_per_call(n_jobs, 1, chunk)
    for start in progress(range(0, n_jobs, chunk), desc=desc, unit="call"):
        jobs = torch.arange(start, min(start + chunk, n_jobs), device=device)
        inputs, tgt = build(jobs)
        with amp:
            out = model(inputs) if forward is None else forward(model, inputs, jobs)
        scores[start : start + len(jobs)] = readout(out, tgt, output)
    return scores


def use_channels_last(enabled: bool | None, device: torch.device) -> bool:
    """A metric's ``channels_last`` setting resolved: ``None`` is on for CUDA (cuDNN's channels-last kernels are
    faster, esp. in bf16) and CPU (oneDNN's NHWC convolutions: MobileNet-V2 at 224 px 1.5-2x, CIFAR ResNet-20
    ~1.8x faster per forward, 1 thread, docs/speed.md), off for other devices."""
    return device.type in ("cuda", "cpu") if enabled is None else bool(enabled)


@contextlib.contextmanager
def channels_last_on(model: nn.Module, enabled: bool | None, device: torch.device):
    """Run the block with ``model``'s 4-d parameters in channels-last format, restoring the format after
    (``enabled``: :func:`use_channels_last`)."""
    if not use_channels_last(enabled, device):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def folded(model: nn.Module, sample: torch.Tensor, rtol: float = 1e-4) -> nn.Module:
    """A copy of ``model`` with every eval-mode BatchNorm that follows a convolution folded into it (one conv
    instead of conv + batch norm per forward: ~1/3 of a MobileNet-V2 forward on a CPU was its batch norms),
    or ``model`` itself where that does not apply: no eval BatchNorm, a module in training mode, forward
    hooks (an fx graph would drop those of non-leaf modules), a model ``torch.fx`` cannot trace, or a copy
    whose output on ``sample`` differs from the model's by more than ``rtol`` (relative to the output's largest
    magnitude). The folding is ``torch.fx.experimental.optimization.fuse`` (deep copy, the model untouched),
    exact up to float rounding, as the IBA tail's (:mod:`xattr.methods.iba.tail`). The copy is kept for the
    next call while the model's parameters and buffers are the same tensors, unmodified (their version
    counters), so a metric called batch by batch folds once."""
    mods = list(model.modules())
    if model.training or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods):
        return model
    if any(m.training or m._forward_hooks or m._forward_pre_hooks for m in mods):
        return model
    return _FOLDED.get(model, (), lambda: _fold(model, sample, rtol))


_FOLDED = DerivedCache()  # model -> its folded copy


def _fold(model: nn.Module, sample: torch.Tensor, rtol: float) -> nn.Module:
    try:
        from torch.fx.experimental.optimization import fuse

        copy = fuse(model, inplace=False).eval()
        with torch.no_grad():
            ref, got = model(sample), copy(sample)
    except Exception:  # noqa: BLE001 - any tracing or folding failure: the model as it is
        return model
    if not isinstance(got, torch.Tensor) or got.shape != ref.shape:
        return model
    scale = ref.abs().max().clamp_min(1e-12)
    return copy if bool(((got - ref).abs().max() / scale) <= rtol) else model


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
    given = tuple(maps.shape)  # the error names the shape as passed, before the channel mean
    if maps.dim() == 4:
        maps = maps.mean(1)
    if maps.dim() != 3 or tuple(maps.shape[-2:]) != tuple(x.shape[-2:]):
        raise XattrConfigError(
            f"bad maps shape {given}; valid choices: (B, 1, H, W) with H, W = {tuple(x.shape[-2:])}"
        )
    return maps.reshape(maps.shape[0], -1).float()


def trapezoid(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Trapezoid area under ``y`` ``(B, T)`` over ``x`` ``(T,)`` or ``(B, T)``."""
    x = x.to(y) if x.dim() == 2 else x.to(y).expand_as(y)
    return ((y[:, 1:] + y[:, :-1]) * (x[:, 1:] - x[:, :-1])).sum(-1) / 2


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson correlation along ``dim`` (float64); NaN where either side is constant (as scipy's ``pearsonr``)
    or empty. Each side is shifted by its first value before the mean is taken: equal values become exactly 0
    (their rounded mean could differ from them: 1.1 x 11 left a spread of 1e-16 whose correlation came out as
    0.0), and values far from 0 with a small spread are centred on a mean rounded at the spread's scale, not
    at theirs (scipy's two-pass value was 3e-3 off on sums around 1e9 varying by 1e-6)."""
    a, b = a.double(), b.double()
    if a.shape[dim] == 0:  # no pairs: no correlation
        return a.sum(dim) * float("nan")
    a = a - a.narrow(dim, 0, 1)
    b = b - b.narrow(dim, 0, 1)
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    den = (a.square().sum(dim) * b.square().sum(dim)).sqrt()
    r = (a * b).sum(dim) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan")))
