"""The memory knob ``chunk``, one meaning everywhere: forward rows per device call.

``chunk`` is ``int | None | "auto"`` for every method and metric that takes it:

- an integer >= 1: at most that many forward rows (an image, a noisy copy, a path point, a perturbed
  input) per device call;
- ``None`` (``null`` in yaml): everything in one call;
- ``"auto"``: a size chosen for the device (:func:`resolve_chunk`: on CUDA from the free memory, on a CPU
  from the input size, small batches keeping its caches warm).

Results never depend on it. :func:`check_chunk` validates it (one line naming the bad value and the
choices), :func:`resolve_chunk` turns ``auto`` into a number before the work, and :func:`items_per_call`
is the one formula "how many items of ``rows_per_item`` rows each fit in ``chunk`` rows"; :func:`in_pieces`
runs a function on row pieces of a batch in one graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from xattr.core.checks import bad

CHOICES = "an integer >= 1, null (all at once), auto"

CPU_CHUNK = 64
"""``chunk: auto`` off CUDA: the most forwards per call. Fewer for large inputs (:data:`CPU_CHUNK_VALUES`):
on a CPU a large batch runs *slower* per image, its activations falling out of the caches (MobileNet-V2,
224 px, 1 thread, folded and channels-last: ~45 ms per image at 4-16 rows, 62-79 at 64; plain: 66-91 at
4-16, 188-208 at 64; CIFAR ResNet-20: 1.6 ms at 16 rows, 3.8 at 256; docs/speed.md)."""
CPU_CHUNK_VALUES = 2**21
"""``chunk: auto`` off CUDA: rows x values per input row at most this (8 MB of float32 inputs): 13 rows of
3 x 224 x 224, :data:`CPU_CHUNK` of 3 x 32 x 32; at least 4 rows."""


def check_chunk(chunk: object, kind: str = "chunk") -> int | str | None:
    """``chunk`` itself when it is an integer >= 1, ``None`` or ``"auto"``; else the one-line config error."""
    if chunk is None or chunk == "auto":
        return chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise bad(kind, chunk, CHOICES)
    return chunk


TOKEN_CHUNK = 256
"""``chunk: auto`` for token inputs: no probe forward (a text model may need a mask beside its ids), so a fixed
number of rows per call (the text metrics' default before ``auto``)."""


def token_chunk(chunk: int | str | None) -> int | None:
    """``chunk`` for a batch of token ids: :data:`TOKEN_CHUNK` for ``auto``, else ``chunk`` itself."""
    return TOKEN_CHUNK if check_chunk(chunk) == "auto" else chunk


def autocast(device: torch.device, precision: str = "fp32"):
    """Autocast to ``bf16`` / ``fp16`` on ``device``, or nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def resolve_chunk(chunk: int | str | None, model: nn.Module, sample: torch.Tensor, precision: str = "fp32",
                  share: float = 0.6, probe: int = 8, most: int = 8192, backward: bool = False) -> int | None:
    """``chunk`` itself when it is an int or ``None``; ``auto``: on CUDA, the forward rows per call that fill
    ``share`` of the free memory, from the peak memory of a ``probe``-row forward of ``sample`` ``(1, ...)``
    (a multiple of 8, at most ``most``; ``backward``: the probe keeps its graph, as a method that
    backpropagates does); elsewhere ``CPU_CHUNK_VALUES // sample.numel()`` rows within
    [4, :data:`CPU_CHUNK`] (small batches keep a CPU's caches warm). Results never depend on it."""
    check_chunk(chunk)
    if chunk != "auto":
        return chunk
    device = sample.device
    if device.type != "cuda" or not torch.cuda.is_available():
        return max(4, min(CPU_CHUNK, CPU_CHUNK_VALUES // max(1, sample[:1].numel())))
    torch.cuda.synchronize(device)
    free, _total = torch.cuda.mem_get_info(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.set_grad_enabled(backward), autocast(device, precision):
        out = model(sample[:1].expand(probe, *sample.shape[1:]).contiguous())
    del out
    per_row = max(1, (torch.cuda.max_memory_allocated(device) - base) // probe)
    rows = int(share * free // (2 * per_row))  # x2: the perturbed inputs and their build are alive too
    return max(8, min(most, rows // 8 * 8))


def in_pieces(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, rows: int | None) -> torch.Tensor:
    """``fn(z)`` computed on pieces of ``rows`` rows of ``z`` (a 4-d ``z`` in channels-last memory format), the
    outputs concatenated in one graph (gradients flow to every piece); ``rows=None``: ``fn(z)`` as is. For a
    network whose rows do not interact (eval mode), the same values up to float rounding. Why: on a CPU,
    oneDNN's channels-last kernels on pieces that fit the caches ran ~3x faster a row than one call on
    hundreds of rows (docs/speed.md, InputIBA); on a GPU one big call is best."""
    if rows is None:
        return fn(z)
    if z.dim() == 4:
        z = z.contiguous(memory_format=torch.channels_last)
    outs = [fn(z[i : i + rows]) for i in range(0, z.shape[0], rows)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def items_per_call(n_items: int, rows_per_item: int, chunk: int | None) -> int:
    """How many items (images, windows, jobs) of ``rows_per_item`` forward rows each fit in ``chunk`` rows
    per device call: between 1 and ``n_items`` (``chunk=None``: all of them). ``chunk`` is resolved
    (:func:`resolve_chunk`), never ``auto`` here."""
    if chunk is None:
        return max(1, n_items)
    if chunk == "auto":
        raise ValueError("items_per_call needs a resolved chunk (resolve_chunk), not 'auto'")
    return max(1, min(n_items, int(chunk) // max(1, rows_per_item)))
