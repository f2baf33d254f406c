"""The one Lightning ``Trainer`` factory and the loggers, used by ``python -m xattr.run`` (predict),
``python -m xattr.train`` (fit) and the methods that train something themselves (Readout IBA).

Defaults that every xattr Trainer shares: no logger unless given, quiet model summary, the accelerator of
the device the caller works on. Everything else comes from the ``trainer`` config group or the caller.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from xattr.errors import unknown

LOGGER_KINDS = ("csv", "wandb", "none")


def quiet_lightning() -> None:
    """Silence Lightning's start-up chatter (GPU/TPU availability, tips) and known harmless warnings, so a
    run's console shows its own progress only."""
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (".*does not have many workers.*", ".*predict_dataloader.*num_workers.*",
                ".*train_dataloader.*num_workers.*", ".*val_dataloader.*num_workers.*",
                ".*LeafSpec.*", ".*treespec.*", ".*isinstance.*treespec.*",
                ".*test_dataloader.*num_workers.*", ".*smaller than the logging interval.*",
                ".*predict returned None.*"):
        warnings.filterwarnings("ignore", message=msg)


def accelerator_of(device: torch.device | str) -> str:
    """Lightning's accelerator name for a torch device."""
    return "gpu" if torch.device(device).type == "cuda" else "cpu"


def make_trainer(config: Mapping[str, Any] | None = None, **overrides: Any) -> pl.Trainer:
    """A ``pl.Trainer`` from a ``trainer`` config node (or dict) and keyword overrides (which win).

    ``logger`` defaults to ``False`` and ``enable_model_summary`` to ``False``; pass ``logger=[...]`` from
    :func:`build_loggers`. Unknown keys fail in Lightning with its own message.
    """
    quiet_lightning()
    kw: dict[str, Any] = {"logger": False, "enable_model_summary": False}
    if config is not None:
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(config, DictConfig):
                config = OmegaConf.to_container(config, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        kw.update(dict(config))
    kw.update(overrides)
    if kw.get("logger") in (None, []):
        kw["logger"] = False
    callbacks = list(kw.get("callbacks") or [])
    if kw.get("enable_progress_bar", True) and not any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks):
        # Lightning picks its rich bar whenever ``rich`` is installed (transformers' CLI brings it): keep one bar
        kw["callbacks"] = [*callbacks, pl.callbacks.TQDMProgressBar()]
    return pl.Trainer(**kw)


def build_loggers(kind: str, run_dir: str | Path, name: str = "xattr", project: str = "xattr",
                  config: dict | None = None, group: str | None = None) -> list:
    """Lightning loggers for a run folder: ``csv`` (``logs/metrics.csv``), ``wandb`` (offline unless
    ``WANDB_MODE`` says otherwise; ``group``: W&B's run group, the runs of one sweep share it), ``none``."""
    if kind not in LOGGER_KINDS:
        raise unknown("logger kind", kind, LOGGER_KINDS)
    if kind == "none":
        return []
    if kind == "csv":
        return [pl.loggers.CSVLogger(save_dir=str(run_dir), name="logs", version="")]
    if not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    return [pl.loggers.WandbLogger(project=project, name=name, save_dir=str(run_dir),
                                   offline=os.environ["WANDB_MODE"] == "offline", config=config, group=group)]


class LastEveryEpoch(pl.callbacks.ModelCheckpoint):
    """``<dirpath>/last.ckpt`` at the end of every training epoch (after its validation), independent of the
    monitored value; the best epoch is another callback's (``best.ckpt``). (Lightning's own ``save_last`` writes
    ``last.ckpt`` only when a top-k checkpoint was saved in the same step: never with ``save_top_k=0``.) Used by
    ``python -m xattr.train`` and Readout IBA's read-out training, so a stopped training resumes from its last
    finished epoch."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                         save_on_train_epoch_end=True, auto_insert_metric_name=False, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        return "xattr.LastEveryEpoch"
