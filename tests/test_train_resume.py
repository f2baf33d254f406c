"""Exact training resume (``xattr.training.resume``): a training killed after an epoch and resumed with
``ckpt_path=last`` ends bitwise equal to the uninterrupted one on CPU (final weights, optimizer state, test
scores), killed after epoch 0 and after epoch 1, an epoch that did not improve the monitored value (so
``last.ckpt`` must not wait for a better epoch). A tiny synthetic chest X-ray run with shuffling and a
random crop + flip, so the data order and every generator matter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tests.helpers import compose_train
from xattr.train import train

EPOCHS = 3
# monitor the training loss with mode=max: epoch 0 is the best and every later epoch does not improve
ARGS = ["recipe=synthetic_cxr", "dataset.n_train=24", "dataset.n_test=8", "dataset.size=32", "batch_size=8",
        "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "logger=none", "dataset.num_workers=0", f"trainer.max_epochs={EPOCHS}", "monitor=train_loss_epoch",
        "monitor_mode=max",
        "data.augment={_target_: xattr.training.data.RandomCropFlip, size: 32, padding: 4, flip: true}"]
TIMING = ("fit_minutes", "resumed_from", "started_at", "best_ckpt", "last_ckpt", "weights")


class Killed(Exception):
    """Stands for SIGKILL: the training stops before any batch of epoch ``after + 1``."""


class KillAfter(pl.Callback):
    def __init__(self, after: int) -> None:
        self.after = after

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.after + 1:
            raise Killed(f"after epoch {self.after}")


def _train(run: Path, extra: list[str] = (), kill_after: int | None = None, monkeypatch=None) -> dict:
    if kill_after is not None:
        import xattr.core.trainer as factory

        make = factory.make_trainer

        def with_kill(*a, callbacks=(), **kw):
            return make(*a, callbacks=[*callbacks, KillAfter(kill_after)], **kw)

        monkeypatch.setattr(factory, "make_trainer", with_kill)
        with pytest.raises(Killed):
            train(compose_train([*ARGS, *extra], run))
        monkeypatch.setattr(factory, "make_trainer", make)
        return {}
    train(compose_train([*ARGS, *extra], run))
    return json.loads((run / "results.json").read_text())


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_a_killed_training_resumes_bitwise_equal(tmp_path: Path, monkeypatch) -> None:
    whole = _train(tmp_path / "whole")
    ref = _last(tmp_path / "whole")
    assert ref["epoch"] == EPOCHS - 1 and whole["best_epoch"] == 0  # later epochs did not improve
    for after in (0, 1):
        run = tmp_path / f"killed{after}"
        _train(run, kill_after=after, monkeypatch=monkeypatch)
        assert not (run / "results.json").exists()
        saved = _last(run)
        assert saved["epoch"] == after, f"last.ckpt is epoch {saved['epoch']}, the last finished one is {after}"
        res = _train(run, ["ckpt_path=last"])
        assert res["started_at"]["epoch"] == after + 1
        got = _last(run)
        for k, v in ref["state_dict"].items():
            assert torch.equal(v, got["state_dict"][k]), (after, k)
        for (i, a), b in zip(ref["optimizer_states"][0]["state"].items(), got["optimizer_states"][0]["state"].values()):
            assert all(torch.equal(a[k], b[k]) for k in a), (after, i)
        assert {k: v for k, v in res.items() if k not in TIMING} == {k: v for k, v in whole.items() if k not in TIMING}
