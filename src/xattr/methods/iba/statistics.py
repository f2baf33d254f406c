"""Per-neuron feature statistics of a layer (mean, std, share of non-zero activations), cached on disk.

Schulz et al., ICLR 2020, sec. 3.1: ``mu_R`` and ``sigma_R`` are estimated empirically per feature
(C x h x w). The reference (BioroboticsLab/IBA) runs Welford's algorithm one sample at a time; here each
batch's mean and sum of squares are merged with Chan et al.'s parallel update, which is Welford's
update for a block of samples (same result up to rounding, accumulated in float64).
"Active neurons": non-zero in more than ``threshold`` (1%) of the samples.

Token models (``tokens=True``): a review has no fixed positions, so the statistics are per hidden unit,
pooled over the real tokens (``batch["mask"]``, else ``x != model.pad_index``) of the estimation reviews,
with a leading position axis of 1 (``(1, H)``) that broadcasts over any length.

The cache file name shows the key: ``{model}-{weights}-{layer}-{dataset}-n{n}-{hash}.pt`` where the
hash covers the key fields plus a fingerprint of the weights. The key is stored in the file and checked on
load; a mismatch (stale file) is reported and recomputed, never reused silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xattr.core.checks import module_device
from xattr.core.hooks import hooked_many
from xattr.core.layers import layer_path, resolve
from xattr.core.progress import progress
from xattr.errors import XattrConfigError, missing_file, unknown

MIN_SAMPLES_WARN = 1000


@dataclass
class FeatureStats:
    """``mean``, ``std`` (unbiased, not floored) and ``nonzero`` (share of samples != 0) per neuron."""

    mean: torch.Tensor
    std: torch.Tensor
    nonzero: torch.Tensor
    n: int

    def active(self, threshold: float = 0.01) -> torch.Tensor:
        """0/1 float mask of neurons non-zero in more than ``threshold`` of the samples."""
        return (self.nonzero > threshold).float()

    def to(self, device: torch.device | str) -> FeatureStats:
        return FeatureStats(self.mean.to(device), self.std.to(device), self.nonzero.to(device), self.n)

    def state(self) -> dict:
        return {"mean": self.mean.cpu(), "std": self.std.cpu(), "nonzero": self.nonzero.cpu(), "n": self.n}


class Welford:
    """Running per-neuron mean / variance / non-zero count over batches ``(B, ...)``."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.nz: torch.Tensor | None = None

    def update(self, batch: torch.Tensor) -> None:
        xb = batch.detach().double()
        nb = xb.shape[0]
        if nb == 0:
            return
        mb = xb.mean(0)
        m2b = ((xb - mb) ** 2).sum(0)
        nzb = (xb != 0).sum(0).double()
        if self.mean is None:
            self.n, self.mean, self.m2, self.nz = nb, mb, m2b, nzb
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.nz = self.nz + nzb
        self.n = n

    def result(self) -> FeatureStats:
        if self.mean is None or self.n < 2:
            raise ValueError(f"need at least 2 samples to estimate feature statistics, got {self.n}")
        std = (self.m2 / (self.n - 1)).sqrt()
        return FeatureStats(self.mean.float(), std.float(), (self.nz / self.n).float(), self.n)


def batch_images(batch) -> torch.Tensor:
    """The images of a loader batch: a dict with ``x``, a tuple/list (first item) or a tensor."""
    if isinstance(batch, dict):
        return batch["x"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


def token_mask(model: nn.Module, batch, x: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool real tokens of a text batch (its ``mask``, else ``x != model.pad_index``)."""
    if isinstance(batch, dict) and "mask" in batch:
        return batch["mask"].to(x.device)
    return x != model.pad_index


@torch.no_grad()
def estimate(
    model: nn.Module, layers: Sequence[str], loader: Iterable, n_samples: int = 10_000,
    device: torch.device | None = None, tokens: bool = False, warn: bool = True,
) -> dict[str, FeatureStats]:
    """Statistics of the outputs of ``layers`` over the first ``n_samples`` images (reviews) of ``loader``
    (``tokens``: pooled over real tokens, see the module docstring)."""
    device = device or module_device(model)
    modules = {name: resolve(model, name).module for name in layers}
    est = {name: Welford() for name in layers}
    seen = 0
    mask: list[torch.Tensor] = []

    def update(name: str, out) -> None:
        out = out[0] if isinstance(out, (tuple, list)) else out
        est[name].update(out[mask[0]] if tokens else out)

    with hooked_many(modules, update):
        bar = progress(total=min(n_samples, _available(loader)), desc="feature statistics", unit="img")
        for batch in loader:
            x = batch_images(batch).to(device)
            take = min(x.shape[0], n_samples - seen)
            if take <= 0:
                break
            bar.update(take)
            mask[:] = [token_mask(model, batch, x)[:take]] if tokens else []
            model(x[:take])
            seen += take
        bar.close()
    if warn and seen < MIN_SAMPLES_WARN:
        warnings.warn(f"feature statistics from only {seen} samples; at least {MIN_SAMPLES_WARN} are "
                      "recommended (reference: 10 000)", stacklevel=3)  # 3: torch.no_grad's wrapper is a frame
    out = {name: est[name].result() for name in layers}
    if tokens:
        out = {k: FeatureStats(s.mean[None], s.std[None], s.nonzero[None], s.n) for k, s in out.items()}
    return out


def _available(loader: Iterable) -> int | float:
    """How many images (reviews) ``loader`` holds: its dataset's length (inf when it does not say)."""
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return float("inf")


def weights_fingerprint(model: nn.Module) -> str:
    """Short hash of the model's parameters and buffers (values, not just shapes)."""
    h = hashlib.sha1()
    for name, t in list(model.state_dict().items()):
        if not torch.is_tensor(t) or not t.is_floating_point():
            continue
        t = t.detach().double()
        h.update(f"{name}{tuple(t.shape)}{float(t.sum()):.10e}{float(t.abs().sum()):.10e}".encode())
        h.update(f"{float((t * torch.arange(t.numel(), dtype=t.dtype, device=t.device).view(t.shape).sin()).sum()):.10e}".encode())
    return h.hexdigest()[:12]


def _slug(s: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", str(s))[:48]


def cache_key(model: nn.Module, layers: Sequence[str], n_samples: int, model_name: str | None = None,
              weights: str | None = None, dataset: str | None = None, tokens: bool = False) -> tuple[str, dict]:
    """(file name, key dict) of the statistics of ``layers`` of ``model``; see module docstring."""
    key = {
        "model": model_name or type(model).__name__,
        "weights": weights or "unnamed",
        "layers": [layer_path(model, name) for name in layers],
        "dataset": dataset or "unnamed",
        "n_samples": int(n_samples),
        "fingerprint": weights_fingerprint(model),
    }
    if tokens:
        key["pooled"] = "tokens"
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    layer_s = "+".join(key["layers"])
    name = f"{_slug(key['model'])}-{_slug(key['weights'])}-{_slug(layer_s)}-{_slug(key['dataset'])}-n{n_samples}-{digest}.pt"
    return name, key


def _read(path: Path) -> dict:
    """A statistics file, read with ``weights_only=True`` (tensors, numbers, strings): a file holding anything
    else (a pickle that could run code) or no statistics is one error naming it."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, another format, or pickled code: refused alike
        raise XattrConfigError(f"bad feature statistics {path}: cannot load it as data ({type(e).__name__}); valid "
                               "choices: a file written by an IBA run into <cache_dir>/iba_stats/ (delete a cached "
                               "one to estimate again)") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("stats"), dict):
        raise XattrConfigError(f"bad feature statistics {path}: no 'stats' in it; valid choices: a file written by "
                               "an IBA run into <cache_dir>/iba_stats/")
    return blob


def is_cached(model: nn.Module, layers: Sequence[str], cache_dir: Path | str | None, n_samples: int = 10_000,
              model_name: str | None = None, weights: str | None = None, dataset: str | None = None,
              tokens: bool = False) -> bool:
    """Whether :func:`load_or_estimate` would read these statistics from ``cache_dir`` (a file of the same name
    exists; a stale one, re-estimated there, also counts: this only sizes the duration estimate)."""
    if cache_dir is None:
        return False
    return _cache_file(cache_dir, model, layers, n_samples, model_name, weights, dataset, tokens)[0].is_file()


def _cache_file(cache_dir: Path | str, model: nn.Module, layers: Sequence[str], n_samples: int,
                model_name: str | None, weights: str | None, dataset: str | None, tokens: bool) -> tuple[Path, dict]:
    """(path, key) of these statistics' cache file in ``cache_dir``."""
    fname, key = cache_key(model, layers, n_samples, model_name, weights, dataset, tokens)
    return Path(cache_dir) / "iba_stats" / fname, key


def load_or_estimate(
    model: nn.Module, layers: Sequence[str], loader: Iterable, cache_dir: Path | str | None,
    n_samples: int = 10_000, model_name: str | None = None, weights: str | None = None,
    dataset: str | None = None, tokens: bool = False, warn: bool = True,
) -> dict[str, FeatureStats]:
    """Statistics from ``cache_dir`` when a file with the same key exists, else estimated (and saved)."""
    device = module_device(model)
    if cache_dir is None:
        return estimate(model, layers, loader, n_samples, device, tokens, warn)
    path, key = _cache_file(cache_dir, model, layers, n_samples, model_name, weights, dataset, tokens)
    if path.is_file():
        blob = _read(path)
        if blob.get("key") == key:
            return {name: FeatureStats(**blob["stats"][name]).to(device) for name in layers}
        warnings.warn(f"stale IBA statistics cache {path} (key {blob.get('key')} != {key}); re-estimating",
                      stacklevel=2)
    stats = estimate(model, layers, loader, n_samples, device, tokens, warn)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "stats": {k: v.state() for k, v in stats.items()}}, tmp)
    tmp.replace(path)
    return stats


def load_file(path: Path | str, model: nn.Module, layers: Sequence[str]) -> dict[str, FeatureStats]:
    """Statistics saved by :func:`load_or_estimate` (a cache file), given explicitly (e.g. shipped with the
    repository for the demo). The file must hold every layer and match the model's weights fingerprint."""
    path = Path(path)
    if not path.is_file():
        raise missing_file("feature statistics", path, "a file written by an IBA run into <cache_dir>/iba_stats/")
    blob = _read(path)
    key = blob.get("key", {})
    if key.get("fingerprint") != weights_fingerprint(model):
        raise XattrConfigError(f"feature statistics {path} belong to other weights (model {key.get('model')!r}, "
                               f"weights {key.get('weights')!r}); valid choices: a file estimated with this model")
    paths = {name: layer_path(model, name) for name in layers}
    missing = [n for n, p in paths.items() if p not in key.get("layers", [])]
    if missing:
        raise unknown("layer of the statistics file", missing[0], key.get("layers", []))
    by_path = dict(zip(key["layers"], blob["stats"].values()))
    device = module_device(model)
    return {name: FeatureStats(**by_path[p]).to(device) for name, p in paths.items()}
