"""Common interface of dataset-level analyses (as torchmetrics' ``update`` / ``compute``).

An analysis is configured at construction, then

- ``update(model, x, target, maps, **extras)`` once per finished batch (``extras``: what it declares in
  ``needs``, the same vocabulary as :attr:`xattr.metrics.base.Metric.needs`, plus ``results``: this
  batch's ``{metric name: MetricResult}``);
- ``compute() -> pandas.DataFrame`` once at the end (the engine writes ``analyses/<name>.csv`` and ``.md``);
- ``state_dict()`` / ``load_state_dict(state)``: everything ``update`` accumulated, as tensors and plain
  values. The engine saves it with every finished batch (before the batch's done marker), together with
  the keys of the batches it holds, so a killed run resumes without losing or double-counting a batch;
- ``merge(other)``: add another shard's state (DDP ranks each accumulate their own shard).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn


class Analysis(ABC):
    """Base of all dataset-level analyses."""

    name: ClassVar[str] = "analysis"
    needs: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""

    @abstractmethod
    def update(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               **extras: Any) -> None: ...

    @abstractmethod
    def compute(self) -> pd.DataFrame: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def merge(self, other: Analysis) -> None: ...
