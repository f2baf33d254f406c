"""The Lightning module of an attribution run: ``predict_step`` explains a batch, evaluates it with every
configured metric, updates the dataset-level analyses and writes it (:class:`~xattr.core.store.RunStore`),
skipping batches a previous run finished.

Data flows one way: the method returns an :class:`~xattr.methods.base.Explanation` (maps and named
auxiliary tensors); the store keeps every auxiliary generically; each metric and analysis receives exactly
the extras it declares in ``needs`` (batch keys such as ``boxes`` and ``mask``, the run's ``method`` and
``method_factory``, auxiliary results by name, and for analyses this batch's metric ``results``).

Lightning predicts under ``torch.inference_mode`` by default, which per-sample optimisation cannot use:
the Trainer is built with ``inference_mode=False`` and methods enable gradients themselves. With
``trainer.devices=4 trainer.strategy=ddp`` the dataset is sharded over GPUs with no other change: each
rank writes its own batch files and its own analysis state, merged at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from xattr.analyses.base import Analysis
from xattr.core.store import RunStore, batch_key, take
from xattr.engine.targets import resolve_target
from xattr.errors import XattrConfigError
from xattr.methods.base import Attribution, Explanation
from xattr.metrics.base import Metric, MetricResult

CONTEXT = ("method", "method_factory", "results")


def select_extras(needs: tuple[str, ...], batch: Mapping, explanation: Explanation, context: Mapping,
                  device: torch.device) -> dict[str, Any]:
    """The extras named in ``needs`` that exist: batch keys, context entries, auxiliary results."""
    out: dict[str, Any] = {}
    for name in needs:
        if name in CONTEXT:
            if name in context:
                out[name] = context[name]
        elif name in explanation.aux:
            out[name] = explanation.aux[name]
        elif name in batch:
            v = batch[name]
            out[name] = [t.to(device) for t in v] if isinstance(v, list) else v.to(device) if torch.is_tensor(v) else v
    return out


class AttributionModule(pl.LightningModule):
    """Wraps the frozen network, the method (built in ``setup`` on the right device), the metrics and the
    analyses."""

    def __init__(self, net: nn.Module, method_factory: Callable[[nn.Module], Attribution],
                 metrics: dict[str, Metric], run_dir: str | Path, target: str | int = "label",
                 estimation_loader: Any = None, cache_dir: str | Path | None = None,
                 analyses: dict[str, Analysis] | None = None) -> None:
        super().__init__()
        self.net = net
        self.method_factory = method_factory
        self.metrics = metrics
        self.analyses = analyses or {}
        self.store = RunStore(run_dir)
        self.target_spec = target
        self.estimation_loader = estimation_loader
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.method: Attribution | None = None
        self.fitted = False
        self.skipped = 0
        self.computed = 0
        #: dataset index -> image id of the images finished before this run (read in ``setup``): not recomputed
        self.done_before: dict[int, str] = {}
        #: keys of the batches each analysis holds (saved with its state)
        self.analysis_keys: dict[str, list[str]] = {}
        needed = {n for m in metrics.values() for n in m.needs} | {n for a in self.analyses.values() for n in a.needs}
        #: auxiliary results asked of the method (the names that are neither batch keys nor context)
        self.aux_wanted = frozenset(n for n in needed if "/" in n)

    def state_name(self, name: str) -> str:
        rank = self.global_rank if self._trainer is not None else 0
        return name if rank == 0 else f"{name}.rank{rank}"

    def setup(self, stage: str) -> None:
        self.net.eval().requires_grad_(False)
        self.method = self.method_factory(self.net)
        self.done_before = self.store.done_ids()
        for name, analysis in self.analyses.items():
            saved = self.store.load_state(self.state_name(name))
            if saved is not None:
                analysis.load_state_dict(saved["state"])
            self.analysis_keys[name] = list(saved["keys"]) if saved is not None else []

    def _ensure_fit(self) -> None:
        if self.method.needs_fit and not self.fitted:
            if self.estimation_loader is None:
                raise RuntimeError(f"method {self.method.name} needs an estimation split; dataset has none")
            self.method.fit(self.estimation_loader, self.cache_dir)
            self.fitted = True

    def fitted_method(self, net: nn.Module) -> Attribution:
        """A method for another network (sanity checks randomise a copy), fitted on the estimation split.

        Not cached: statistics of a randomised network differ from the original's under the same key."""
        method = self.method_factory(net)
        if method.needs_fit:
            method.fit(self.estimation_loader, None)
        return method

    def _check_same_images(self, batch: dict) -> None:
        """A resumed run's dataset must give the finished indices the images they held: one error otherwise
        (another ``dataset.root``, ``limit`` order or ``max_box_coverage`` behind the same folder would
        silently skip the wrong images)."""
        for i, n in zip(batch["index"], batch["id"]):
            was = self.done_before.get(int(i))
            if was is not None and was != str(n):
                raise XattrConfigError(
                    f"bad run folder {self.store.dir}: it holds image {was!r} at dataset index {int(i)}, the "
                    f"dataset now gives {str(n)!r} there (dataset settings changed); valid choices: the settings "
                    "that made the folder, or a new folder (hydra.run.dir=...)")

    def predict_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:  # every image of the batch was unreadable and skipped (dataset.on_error=skip)
            return None
        if self.done_before:  # a resumed run: leave out images finished before, whatever their batching was
            self._check_same_images(batch)
            keep = torch.tensor([int(i) not in self.done_before for i in batch["index"]], dtype=torch.bool)
            if not keep.any():
                self.skipped += 1
                return None
            if not keep.all():
                batch = take(batch, keep)
        key = batch_key(batch["index"])
        if self.store.done(key):
            self.skipped += 1
            return None
        self._ensure_fit()
        x = batch["x"]
        with torch.no_grad():
            logits = self.net(x)
        target = resolve_target(self.target_spec, batch["label"], logits)
        explanation = self.method.explain_batch(batch, target, self.aux_wanted)
        context = {"method": self.method, "method_factory": self.fitted_method}
        results: dict[str, MetricResult] = {
            name: m(self.net, x, target, explanation.maps, **select_extras(m.needs, batch, explanation, context, x.device))
            for name, m in self.metrics.items()}
        context["results"] = results
        for name, analysis in self.analyses.items():
            if key in self.analysis_keys[name]:
                continue  # counted before the run was killed (state written, heatmaps not yet)
            analysis.update(self.net, x, target, explanation.maps,
                            **select_extras(analysis.needs, batch, explanation, context, x.device))
            self.analysis_keys[name].append(key)
            self.store.save_state(self.state_name(name), {"state": analysis.state_dict(),
                                                          "keys": self.analysis_keys[name]})
        scores, curves, x_axis = {}, {}, {}
        for mname, res in results.items():
            res = res.cpu()
            scores.update({f"{mname}/{k}": v for k, v in res.scores.items()})
            curves.update({f"{mname}/{k}": v for k, v in res.curves.items()})
            x_axis.update({f"{mname}/{k}": v for k, v in res.x_axis.items()})
        self.store.write(key, batch, target, explanation.maps, logits.float().softmax(1), scores, curves, x_axis,
                         explanation.aux)
        self.computed += 1
        return None
