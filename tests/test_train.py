"""``python -m xattr.train``: a tiny CIFAR-10 run end to end, a killed run resumed, bad input, the splits,
the IMDB LSTM recipe (its checkpoint format)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.helpers import compose_train, sigkill_once_written
from xattr.config import check_overrides, group_options
from xattr.errors import XattrConfigError
from xattr.models.zoo import ZOO, load_model
from xattr.train import train
from xattr.training.data import Augmented, ClassificationData, balanced_indices, labels_of, split_indices

REPO = Path(__file__).resolve().parents[1]
# a few dozen CIFAR-10 images, CPU, no worker processes, no sanity pass
TINY = ["model=cifar_resnet20", "model.weights=random", "data.limit=40", "data.test_limit=20", "batch_size=10",
        "data.val_fraction=0.25", "dataset.num_workers=0", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0"]


def cli(args: list[str], **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "xattr.train", *args]
    if kw.pop("background", False):
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, **kw)


def plain_state(ckpt: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("net."): v for k, v in sd.items()}


# ---------------------------------------------------------------- (a) one epoch from the command line
@pytest.mark.shared
def test_cli_trains_tiny_model_and_exports_weights(shared_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = cli([*TINY, f"paths.data_dir={shared_data}", "trainer.max_epochs=1", f"hydra.run.dir={run}"])
    assert p.returncode == 0, p.stderr[-3000:]
    for f in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "results.json", "config.yaml", "logs/metrics.csv"):
        assert (run / f).is_file(), f
    res = json.loads((run / "results.json").read_text())
    assert 0.0 <= res["test_acc"] <= 1.0 and res["epochs"] == 1 and res["best_epoch"] == 0
    assert (res["train_size"], res["val_size"], res["test_size"]) == (30, 10, 20)
    assert f"test accuracy {res['test_acc']:.4f}" in p.stdout
    # console: a progress bar, no library chatter or warnings
    assert "Epoch 0: 100%" in p.stdout  # Lightning's bar writes to stdout
    for noise in ("GPU available", "TPU available", "Warning", "warn(", "💡", "LOCAL_RANK"):
        assert noise not in p.stderr + p.stdout, noise
    # the exported plain state dict = the best epoch, and the zoo loads it for `xattr.run`
    weights = run / "cifar_resnet20.pt"
    assert res["weights"] == str(weights)
    zoo = load_model("cifar_resnet20", weights=str(weights))
    best = plain_state(run / "checkpoints" / "best.ckpt")
    for k, v in zoo.net.state_dict().items():
        assert torch.equal(v, best[k]), k


# ---------------------------------------------------------------- (b) killed, then resumed
@pytest.mark.shared
def test_killed_run_resumes_from_last_checkpoint(shared_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY, f"paths.data_dir={shared_data}", "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false"]
    proc = cli([*args, f"hydra.run.dir={run}"], background=True)
    last = run / "checkpoints" / "last.ckpt"
    sigkill_once_written(proc, last)  # written atomically at the end of epoch 0
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "results.json").exists()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["epoch"] < 2 and saved["global_step"] > 0, (saved["epoch"], saved["global_step"])

    res = json.loads((train(compose_train([*args, "ckpt_path=last"], run)) / "results.json").read_text())
    assert res["resumed_from"] == str(last)
    # it went on from the checkpoint (next epoch, same optimizer step), not from zero, and finished
    assert res["started_at"] == {"epoch": saved["epoch"] + 1, "global_step": saved["global_step"]}
    steps_per_epoch = saved["global_step"] // (saved["epoch"] + 1)
    assert res["epochs"] == 3 and res["global_step"] == 3 * steps_per_epoch
    assert (run / "logs" / "metrics.0.csv").is_file()  # the killed run's log is kept


@pytest.mark.shared
def test_sigterm_to_the_process_group_stops_with_one_line(shared_data: Path, tmp_path: Path) -> None:
    """``timeout`` or a scheduler signals the whole group, loader workers included: the training stops with
    one line saying how to resume (no worker traceback), exit 130."""
    run = tmp_path / "run"
    args = [*TINY, f"paths.data_dir={shared_data}", "trainer.max_epochs=50", "dataset.num_workers=1",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "xattr.train", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    try:
        while not (run / "checkpoints" / "last.ckpt").is_file():  # training is under way
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() - t0 < 240, "no last.ckpt"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"interrupted: finished epochs are kept in {run}/checkpoints/last.ckpt; "
                                            "the same command with ckpt_path=last resumes")
    assert "Traceback" not in err


# ---------------------------------------------------------------- (c) bad input: one line
def test_unknown_recipe_from_the_command_line() -> None:
    p = cli(["recipe=cifar_resnt"])
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        "error: unknown recipe 'cifar_resnt'; valid choices: " + ", ".join(sorted(group_options("recipe"))))
    assert "cifar_resnet, cifar_vit, cxr_brixia" in p.stderr  # the real list, sorted


@pytest.mark.parametrize("arg,msg", [("optimizer=adamx", "unknown optimizer 'adamx'; valid choices: adam, adamw, sgd"),
                                     ("scheduler=cosine", "unknown scheduler 'cosine'; valid choices: none, step, warmup_cosine"),
                                     ("net=bert", "unknown net 'bert'; valid choices: imdb_lstm, imdb_transformer, resnet8, zoo")])
def test_unknown_group_option_is_one_line(arg: str, msg: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        check_overrides([arg])
    err = capsys.readouterr().err.strip()
    assert err == f"error: {msg}"


def test_resume_without_checkpoint_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(XattrConfigError, match=f"missing checkpoint to resume from: put it at "
                                               f"{tmp_path}/checkpoints/last.ckpt"):
        train(compose_train(["ckpt_path=last"], tmp_path))
    with pytest.raises(XattrConfigError, match=f"put it at {tmp_path}/nope.ckpt"):
        train(compose_train([f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path))
    with pytest.raises(XattrConfigError, match="unknown monitor 'val_accuracy'; valid choices: val_acc"):
        train(compose_train(["monitor=val_accuracy"], tmp_path))
    with pytest.raises(XattrConfigError, match=r"val_fraction must be in \(0, 1\)"):
        split_indices([0, 1], 1.0)


def test_every_training_option_composes() -> None:
    for group in ("net", "optimizer", "scheduler", "recipe"):
        for opt in group_options(group):
            assert compose_train([f"{group}={opt}"]).model.name
    cfg = compose_train(["recipe=cifar_resnet", "model=cifar_resnet56"])  # the command line wins
    assert cfg.model.name == "cifar_resnet56" and cfg.model.weights == "random"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.scheduler.step_size == 4
    assert cfg.data.augment._target_.endswith("RandomCropFlip")
    cfg = compose_train(["recipe=imdb_lstm"])
    assert (cfg.optimizer.lr, cfg.trainer.gradient_clip_val, cfg.dataset.max_len) == (0.002, 1.0, 128)
    assert (cfg.net.hidden_size, cfg.net.num_layers, cfg.net.pool, cfg.dataset.build_vocab.max_size) == (64, 4, "max",
                                                                                                          20000)


# ---------------------------------------------------------------- (d) the splits
def test_split_indices_stratified_and_balanced_subsets() -> None:
    labels = [0] * 80 + [1] * 16 + [2] * 40  # unbalanced classes: 1/8 of each
    tr, va = split_indices(labels, 1 / 8, stratified=True, seed=3)
    assert Counter(labels[i] for i in va) == {0: 10, 1: 2, 2: 5}
    assert not set(tr) & set(va) and sorted(tr + va) == list(range(len(labels)))
    assert split_indices(labels, 1 / 8, True, seed=3) == (tr, va) and split_indices(labels, 1 / 8, True, 4) != (tr, va)
    assert len(split_indices(labels, 0.25, stratified=False)[1]) == 34
    sub = balanced_indices(labels, 30, seed=0)
    assert Counter(labels[i] for i in sub) == {0: 10, 1: 10, 2: 10}


@pytest.mark.shared
def test_datamodule_stratified_validation_split(shared_data: Path) -> None:
    cfg = compose_train([f"paths.data_dir={shared_data}"])
    dm = ClassificationData(cfg.dataset, ZOO["cifar_resnet20"].preprocess, batch_size=8, limit=160,
                            test_limit=30, val_fraction=1 / 8, stratified=True, augment=cfg.data.augment, seed=0)
    dm.setup()
    assert isinstance(dm.train_set, Augmented) and dm.sizes() == {"train": 140, "val": 20, "test": 30}
    train_idx, val_idx = dm.train_set.base.indices, dm.val_set.indices
    labels = dm.val_set.dataset.labels
    assert Counter(labels[i] for i in val_idx) == {c: 2 for c in range(10)}  # 1/8 of every class
    assert Counter(labels[i] for i in train_idx) == {c: 14 for c in range(10)}
    assert not set(train_idx) & set(val_idx)
    assert Counter(labels_of(dm.test_set)) == {c: 3 for c in range(10)}
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 3, 32, 32) and torch.equal(batch["target"], batch["label"])
    assert {"id", "index"} <= set(batch)
    val = next(iter(dm.val_dataloader()))  # validation is not augmented: the dataset's own image
    assert torch.equal(val["x"][0], dm.val_set.dataset[int(val["index"][0])]["x"])
    with pytest.raises(XattrConfigError, match="leaves 40 for training and 0 for validation"):
        ClassificationData(cfg.dataset, limit=40, val_fraction=0.1).setup()  # 4 per class: 0.4 rounds to 0


def test_training_imports_only_lower_layers() -> None:
    import re

    allowed = {"core", "errors", "models", "data", "training"}
    for f in (REPO / "src" / "xattr" / "training").glob("*.py"):
        used = set(re.findall(r"^\s*(?:from|import) xattr\.(\w+)", f.read_text(), flags=re.M))
        assert used <= allowed, (f.name, used - allowed)


# ---------------------------------------------------------------- (e) the IMDB LSTM recipe
@pytest.mark.shared
def test_imdb_lstm_recipe_writes_save_imdb_lstm_checkpoint(shared_data: Path, tmp_path: Path) -> None:
    from xattr.models.text import LSTMClassifier, load_imdb_lstm

    cfg = compose_train(["recipe=imdb_lstm", f"paths.data_dir={shared_data}", "data.limit=40", "data.test_limit=16",
                         "batch_size=8", "dataset.max_len=24", "dataset.build_vocab.max_size=300", "net.hidden_size=16",
                         "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
                         "trainer.enable_progress_bar=false", "logger=none"], tmp_path)
    res = json.loads((train(cfg) / "results.json").read_text())
    assert res["weights"] == str(tmp_path / "imdb_lstm.pt") and (res["train_size"], res["val_size"]) == (36, 4)
    net, vocab = load_imdb_lstm(tmp_path / "imdb_lstm.pt")
    assert isinstance(net, LSTMClassifier) and len(vocab) == net.hparams["vocab_size"] <= 302
    assert (net.hparams["hidden_size"], net.hparams["num_layers"], net.hparams["pool"]) == (16, 4, "max")
    assert net.meta["test_acc"] == res["test_acc"] and net.meta["max_len"] == 24 and net.meta["glove_found"] > 100
    assert load_model("imdb_lstm", weights=str(tmp_path / "imdb_lstm.pt")).net.hparams == net.hparams

