"""Randomness that does not depend on batching: a forked global RNG for library calls, one generator
per image seeded from ``seed`` and the image's bytes, and noise drawn per image."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Sequence

import torch


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global generators forked and seeded with ``seed`` (CPU and ``device``);
    the caller's random state is restored on exit. ``seed=None``: no seeding, no fork."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def image_seeds(x: torch.Tensor, seed: int) -> list[int]:
    """One seed per image from ``seed`` and the image's bytes (CRC-32), so that an image draws the same
    noise wherever it sits in a batch (batched == one at a time)."""
    flat = x.detach().float().reshape(x.shape[0], -1).cpu().numpy()
    return [(zlib.crc32(row.tobytes()) ^ (seed * 2654435761)) & 0x7FFFFFFFFFFF for row in flat]


def make_generators(seeds: Sequence[int] | None, device: torch.device) -> list[torch.Generator] | None:
    """One ``torch.Generator`` per seed on ``device`` (``None`` stays ``None``: the global RNG)."""
    if seeds is None:
        return None
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def image_generators(x: torch.Tensor, seed: int | None) -> list[torch.Generator] | None:
    """Generators seeded per image of ``x`` (``seed=None``: ``None``, the global RNG)."""
    return None if seed is None else make_generators(image_seeds(x, seed), x.device)


def token_generators(x: torch.Tensor, seed: int | None, pad_index: int) -> list[torch.Generator] | None:
    """Generators seeded per text of the token ids ``x`` ``(B, L)`` from its ids *without the padding*, so a
    text draws the same noise alone (unpadded) as in a padded batch; a draw of shape ``(L, ...)`` then agrees on
    the real positions (row-major: the first rows of a longer draw are the shorter draw)."""
    if seed is None:
        return None
    return make_generators([image_seeds(row[row != pad_index][None], seed)[0] for row in x], x.device)


def draw_noise(
    shape: tuple[int, ...], n: int, generators: Sequence[torch.Generator] | None, device: torch.device
) -> torch.Tensor:
    """Standard normal noise ``(n, *shape)``; image ``i`` draws from ``generators[i]`` when given."""
    if generators is None:
        return torch.randn((n, *shape), device=device)
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])
