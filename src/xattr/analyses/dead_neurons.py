"""Dead neurons in pathways and the overlap between pathways (dissertation ch. 5, sec. 3.4, Fig. 1, 2, 8-11;
L468, L525; PathwayGrad ``path_analysis.py`` @d59b16d6).

A pathway ``e`` (0/1 per neuron, from any :mod:`xattr.methods.pathways` method, read from its auxiliaries
``pathway/mask`` and ``pathway/layer_sizes``) and the image's originally dead neurons
``dead = 1[a_orig <= 0]`` (the unpruned network's ReLU-family outputs, recomputed here) give

    ``share = <e, dead> / sum e``

per image (the reference's ``dead_path_analysis``), averaged over the images (Fig. 1: "the percentage of
originally dead neurons in the selected pathways", at 90% sparsity the pathway is the top 10%). The same
per layer (Fig. 8-9 in the appendix code). Images whose pathway is empty are left out (NaN).

:class:`DeadNeurons` streams these over a run (``analysis=[dead_neurons]``): ``compute()`` gives one row
for the whole network (``layer = all``) and one per layer (call order), with the share (mean, s.e., images),
the mean fraction of neurons kept and the mean fraction originally dead.

The Jaccard overlap between the pathways of two methods (Fig. 2, the reference's ``iou_path_analysis``:
``|e1 & e2| / |e1 | e2|``, per image, then averaged), network-wide and per layer, needs the pathways of
several runs of one multirun: :func:`pathway_jaccard` reads their stored ``pathway/mask`` auxiliaries
(``python -m xattr.table pathways_f1_dead <multirun>`` calls it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from xattr.analyses.base import Analysis
from xattr.core.store import RunStore
from xattr.errors import XattrConfigError
from xattr.methods.pathways.neurons import DEFAULT_ACTIVATIONS, Neurons, unpack_bits

MASK, SIZES = "pathway/mask", "pathway/layer_sizes"


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


def dead_shares(e: torch.Tensor, dead: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Network-wide ``(B,)`` and per-layer ``(B, L)`` shares of originally dead neurons in the pathways
    ``e`` ``(B, N)`` bool (NaN where the pathway, or its part in the layer, is empty)."""
    both = e & dead
    net = _ratio(both.sum(1), e.sum(1))
    per_e = torch.stack([p.sum(1) for p in torch.split(e, list(sizes), 1)], 1)
    per_both = torch.stack([p.sum(1) for p in torch.split(both, list(sizes), 1)], 1)
    return net, _ratio(per_both, per_e)


class DeadNeurons(Analysis):
    """Share of originally dead neurons in each image's pathway (see module docstring).

    Args:
        activations: the ReLU family counted as neurons (must match the method's).
    """

    name = "dead_neurons"
    needs = (MASK, SIZES)
    paper = "Khakzar et al., CVPR 2021 (dissertation ch. 5), Fig. 1 and 2"

    def __init__(self, activations: Sequence[str] = DEFAULT_ACTIVATIONS) -> None:
        self.activations = list(activations)
        self.layers: list[str] | None = None
        self.sizes: list[int] | None = None
        self.stats: dict[str, torch.Tensor] = {}

    def _init(self, layers: list[str], sizes: list[int]) -> None:
        n = len(sizes)
        self.layers, self.sizes = layers, sizes
        z = lambda: torch.zeros(n + 1, dtype=torch.float64)  # noqa: E731  (index 0: the whole network)
        self.stats = {"n": z(), "sum": z(), "sq": z(), "kept": z(), "dead": z(), "images": z()}

    def update(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               **extras: Any) -> None:
        if MASK not in extras or SIZES not in extras:
            raise XattrConfigError("dead_neurons needs a pathway method's auxiliaries 'pathway/mask' and "
                                   "'pathway/layer_sizes'; valid choices: method=neuron_mct, neuron_intgrad, "
                                   "greedy_pruning, dgr, dgr_uniform")
        sizes = [int(s) for s in torch.as_tensor(extras[SIZES])[0].tolist()]
        neurons = Neurons(model, self.activations)
        layout = neurons.layout(x)
        if layout.sizes != sizes:
            raise XattrConfigError(f"bad pathway layer sizes {sizes[:4]}...; valid choices: the network's "
                                   f"{layout.sizes[:4]}... (set analysis.dead_neurons.activations as the method's)")
        if self.sizes is None:
            self._init(list(layout.names), sizes)
        e = unpack_bits(torch.as_tensor(extras[MASK]).cpu(), sum(sizes))
        _, acts = neurons.activations_of(x)
        dead = (layout.flatten(acts) <= 0).cpu()
        net, per_layer = dead_shares(e, dead, sizes)
        shares = torch.cat([net[:, None], per_layer], 1)  # (B, L + 1)
        kept = torch.cat([e.double().mean(1, keepdim=True),
                          torch.stack([p.double().mean(1) for p in torch.split(e, sizes, 1)], 1)], 1)
        dfrac = torch.cat([dead.double().mean(1, keepdim=True),
                           torch.stack([p.double().mean(1) for p in torch.split(dead, sizes, 1)], 1)], 1)
        ok = torch.isfinite(shares)
        s = self.stats
        s["n"] += ok.sum(0)
        s["sum"] += torch.where(ok, shares, 0).sum(0)
        s["sq"] += torch.where(ok, shares**2, 0).sum(0)
        s["kept"] += kept.sum(0)
        s["dead"] += dfrac.sum(0)
        s["images"] += x.shape[0]

    def compute(self) -> pd.DataFrame:
        cols = ["layer", "neurons", "share", "sem", "n", "kept", "dead"]
        if self.sizes is None:
            return pd.DataFrame(columns=cols)
        s = self.stats
        n = s["n"].clamp_min(1)
        mean = torch.where(s["n"] > 0, s["sum"] / n, torch.full_like(n, float("nan")))
        var = (s["sq"] / n - mean**2).clamp_min(0) * s["n"] / (s["n"] - 1).clamp_min(1)
        sem = torch.where(s["n"] > 1, (var / n).sqrt(), torch.full_like(n, float("nan")))
        images = s["images"].clamp_min(1)
        return pd.DataFrame({
            "layer": ["all", *self.layers],
            "neurons": [sum(self.sizes), *self.sizes],
            "share": mean.numpy(), "sem": sem.numpy(), "n": s["n"].numpy().astype(int),
            "kept": (s["kept"] / images).numpy(), "dead": (s["dead"] / images).numpy(),
        }, columns=cols)

    def state_dict(self) -> dict[str, Any]:
        return {"activations": self.activations, "layers": self.layers, "sizes": self.sizes,
                "stats": {k: v.clone() for k, v in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layers, self.sizes = state["layers"], state["sizes"]
        self.stats = {k: v.clone() for k, v in state["stats"].items()}

    def merge(self, other: DeadNeurons) -> None:
        if other.sizes is None:
            return
        if self.sizes is None:
            self.load_state_dict(other.state_dict())
            return
        if self.sizes != other.sizes:
            raise ValueError("cannot merge dead-neuron states of different networks")
        for k in self.stats:
            self.stats[k] += other.stats[k]


# ------------------------------------------------------------------------------- Jaccard between runs
def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """``|a & b| / |a | b|`` of two bool vectors (NaN when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else float("nan")


def _pathways(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``id -> (pathway bool (N,), layer sizes (L,))`` of a run's stored auxiliaries."""
    out = {}
    for i, aux in RunStore(run_dir).aux("pathway/").items():
        if "mask" in aux and "layer_sizes" in aux:
            sizes = np.asarray(aux["layer_sizes"]).astype(np.int64)
            out[i] = (np.unpackbits(np.asarray(aux["mask"], dtype=np.uint8))[: sizes.sum()].astype(bool), sizes)
    return out


def pathway_jaccard(runs: Mapping[str, str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean Jaccard overlap of the pathways of every pair of runs (``label -> run folder``) over the images
    both hold: a symmetric ``label x label`` frame (network-wide, Fig. 2a) and a long frame
    ``a, b, layer, jaccard, images`` per layer (Fig. 2b; layers in call order)."""
    paths = {label: _pathways(d) for label, d in runs.items()}
    labels = [k for k, v in paths.items() if v]
    net = pd.DataFrame(np.nan, index=labels, columns=labels)
    rows = []
    for a, b in combinations_with_replacement(labels, 2):
        ids = sorted(set(paths[a]) & set(paths[b]))
        if not ids:
            continue
        vals, layer_vals = [], []
        for i in ids:
            (ea, sa), (eb, sb) = paths[a][i], paths[b][i]
            if not np.array_equal(sa, sb):
                raise ValueError(f"runs {a!r} and {b!r} have pathways of different networks")
            vals.append(jaccard(ea, eb))
            bounds = np.cumsum(sa)[:-1]
            layer_vals.append([jaccard(x, y) for x, y in zip(np.split(ea, bounds), np.split(eb, bounds))])
        net.loc[a, b] = net.loc[b, a] = float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan
        lv = np.asarray(layer_vals, dtype=np.float64)
        for k in range(lv.shape[1]):
            col = lv[:, k]
            rows.append({"a": a, "b": b, "layer": k,
                         "jaccard": float(np.nanmean(col)) if np.isfinite(col).any() else np.nan,
                         "images": int(np.isfinite(col).sum())})
    return net, pd.DataFrame(rows, columns=["a", "b", "layer", "jaccard", "images"])
