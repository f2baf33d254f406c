"""The Lightning classifier: cross-entropy on ``batch["label"]``, loss and accuracy logged per split.

The optimizer and the LR scheduler come from config as factories (``_partial_: true`` nodes of
``conf/optimizer/`` and ``conf/scheduler/``): ``optimizer(params)`` and ``scheduler(optimizer)``; gradient
clipping is the Trainer's (``trainer.gradient_clip_val``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

SPLITS = ("train", "val", "test")


class Classifier(pl.LightningModule):
    """Trains ``net`` (logits ``(B, K)`` from ``batch["x"]``) with cross-entropy on ``batch["label"]``.

    Logs ``<split>_loss`` and ``<split>_acc`` per epoch (``train_loss`` per step too), weighted by batch
    size. ``val_acc`` is what the checkpoint of the best epoch watches by default.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
                 scheduler_interval: str = "epoch") -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.started_at: dict[str, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: dict, split: str) -> torch.Tensor:
        logits = self.net(batch["x"])
        label = batch["label"]
        loss = F.cross_entropy(logits, label)
        acc = (logits.argmax(1) == label).float().mean()
        n = len(label)
        sync = split != "train"
        self.log(f"{split}_loss", loss, on_step=split == "train", on_epoch=True, prog_bar=split == "train",
                 batch_size=n, sync_dist=sync)
        self.log(f"{split}_acc", acc, on_step=False, on_epoch=True, prog_bar=split != "test", batch_size=n,
                 sync_dist=sync)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_start(self) -> None:
        # where this process starts training: (0, 0) from scratch, the checkpoint's position on resume
        self.started_at = {"epoch": int(self.trainer.current_epoch), "global_step": int(self.trainer.global_step)}

    def configure_optimizers(self):
        opt = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": self.scheduler_interval}}
