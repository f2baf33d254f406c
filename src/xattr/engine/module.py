"""The Lightning module of an attribution run: ``predict_step`` attributes a batch, evaluates it with every
configured metric and writes it (``RunStore``), skipping batches a previous run finished.

Lightning predicts under ``torch.inference_mode`` by default, which per-sample optimisation cannot use:
the Trainer is built with ``inference_mode=False`` and methods enable gradients themselves
(``Attribution.attribute``). With ``trainer.devices=4 trainer.strategy=ddp`` the dataset is sharded over GPUs
with no other change: each rank writes its own batch files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from xattr.engine.store import RunStore, batch_key
from xattr.engine.targets import resolve_target
from xattr.methods.base import Attribution
from xattr.metrics.base import Metric


class AttributionModule(pl.LightningModule):
    """Wraps the frozen network, the method (built in ``setup`` on the right device) and the metrics."""

    def __init__(self, net: nn.Module, method_factory: Callable[[nn.Module], Attribution],
                 metrics: dict[str, Metric], run_dir: str | Path, target: str | int = "label",
                 estimation_loader: Any = None, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        self.net = net
        self.method_factory = method_factory
        self.metrics = metrics
        self.store = RunStore(run_dir)
        self.target_spec = target
        self.estimation_loader = estimation_loader
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.method: Attribution | None = None
        self.skipped = 0
        self.computed = 0

    def setup(self, stage: str) -> None:
        self.net.eval().requires_grad_(False)
        self.method = self.method_factory(self.net)

    def _ensure_fit(self) -> None:
        if self.method.needs_fit and not getattr(self.method, "_xattr_fitted", False):
            if self.estimation_loader is None:
                raise RuntimeError(f"method {self.method.name} needs an estimation split; dataset has none")
            self.method.fit(self.estimation_loader, self.cache_dir)
            self.method._xattr_fitted = True

    def fitted_method(self, net: nn.Module) -> Attribution:
        """A method for another network (sanity checks randomise a copy), fitted on the estimation split.

        Not cached: statistics of a randomised network differ from the original's under the same key."""
        method = self.method_factory(net)
        if method.needs_fit:
            method.fit(self.estimation_loader, None)
        return method

    def predict_step(self, batch: dict, batch_idx: int) -> dict | None:
        key = batch_key(batch["index"])
        if self.store.done(key):
            self.skipped += 1
            return None
        self._ensure_fit()
        x = batch["x"]
        with torch.no_grad():
            logits = self.net(x)
        target = resolve_target(self.target_spec, batch["label"], logits)
        maps = self.method.attribute_batch(batch, target)
        extras = {k: v for k, v in batch.items() if k in ("boxes", "mask")}
        if "boxes" in extras:
            extras["boxes"] = [b.to(x.device) for b in extras["boxes"]]
        results = {name: m(self.net, x, target, maps, method=self.method, method_factory=self.fitted_method,
                           **extras) for name, m in self.metrics.items()}
        stages = getattr(self.method, "last_stages", None)  # InputIBA's three stages, for the figure
        self.store.write(key, batch, target, maps, logits.float().softmax(1), results,
                         stages if stages and next(iter(stages.values())).shape[0] == x.shape[0] else None)
        self.computed += 1
        return None
