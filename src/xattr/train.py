"""``python -m xattr.train [recipe=<r>] model=<m> dataset=<d>``: train a classifier, keep its best epoch.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` only hands it to the CLI
shell (``xattr.cli``: ``@hydra.main(config_name="train")``, one-line errors, Ctrl-C / SIGTERM). Flow:
checks -> splits (``xattr.training.data``) -> network (``net`` group) -> Lightning ``fit`` (``checkpoints/best.ckpt`` on ``monitor``, ``checkpoints/last.ckpt``
every epoch; ``ckpt_path=last`` resumes) -> test accuracy of the best epoch (``results.json``) -> the trained
weights exported where ``python -m xattr.run model=<name> model.weights=<file>`` reads them.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xattr.cli import Stop, hydra_command, parents_to_outputs
from xattr.config import build
from xattr.core.threads import apply_threads
from xattr.errors import XattrConfigError, missing_file, unknown

# torch, Lightning and the training package are imported in `train`: a bad override fails in a second

MONITORS = ("val_acc", "val_loss", "train_acc", "train_loss_epoch")
MODES = ("max", "min")


def resolve_ckpt_path(ckpt_path: str | None, ckpt_dir: Path) -> Path | None:
    """``None`` (from scratch), ``last`` (``<ckpt_dir>/last.ckpt``) or a file; a missing file is one error."""
    if ckpt_path in (None, "", "null", "none"):
        return None
    path = ckpt_dir / "last.ckpt" if str(ckpt_path) == "last" else Path(str(ckpt_path))
    if not path.is_file():
        hint = ("no earlier run of this command saved one; drop ckpt_path to start from scratch"
                if str(ckpt_path) == "last" else "a Lightning checkpoint of python -m xattr.train")
        raise missing_file("checkpoint to resume from", path, hint)
    return path


def check_checkpoint(path: Path) -> dict:
    """A checkpoint's ``epoch`` and ``global_step``, read with ``weights_only=True`` (a checkpoint is never
    trusted to run code); a file that is not a checkpoint of ``python -m xattr.train`` is one line."""
    import torch

    try:
        info = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, another format, or pickled code: all refused alike
        raise XattrConfigError(f"bad ckpt_path {str(path)!r}: cannot load it as a checkpoint ({type(e).__name__}); "
                               f"valid choices: {CKPT_CHOICES}") from None
    if not isinstance(info, dict) or "state_dict" not in info or "epoch" not in info:
        raise XattrConfigError(f"bad ckpt_path {str(path)!r}: not a Lightning checkpoint (no state_dict and epoch); "
                               f"valid choices: {CKPT_CHOICES}")
    return {"epoch": info.get("epoch"), "global_step": info.get("global_step")}


CKPT_CHOICES = "last (this run's checkpoints/last.ckpt), or a .ckpt file written by python -m xattr.train"


def check_train_values(cfg: DictConfig) -> None:
    """Values Lightning or torch would take silently or refuse with a traceback, as one line each."""
    from xattr.config import check_batch_size

    check_batch_size(cfg.batch_size)
    for key in ("limit", "test_limit"):
        value = (cfg.get("data") or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise XattrConfigError(f"bad data.{key} {value!r}; valid choices: an integer >= 1, or null for all items")
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise XattrConfigError(f"bad trainer.max_epochs {epochs!r}; valid choices: an integer >= 1")
    for key in ("lr", "weight_decay", "momentum"):
        value = (cfg.get("optimizer") or {}).get(key)
        if value is None:
            continue
        low = "> 0" if key == "lr" else ">= 0"
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not (value > 0 if key == "lr" else value >= 0)):
            raise XattrConfigError(f"bad optimizer.{key} {value!r}; valid choices: a number {low}")


def train(cfg: DictConfig, set_threads: bool = False) -> Path:
    """Train the configured model; returns the run directory (holding ``results.json``). ``set_threads``: apply
    ``cfg.threads`` to torch (the command line does; a caller in its own process keeps its threads)."""
    import pytorch_lightning as pl
    import torch

    from xattr.core.trainer import LastEveryEpoch, build_loggers, make_trainer, quiet_lightning
    from xattr.training.data import ClassificationData
    from xattr.training.module import Classifier
    from xattr.training.resume import RandomState

    quiet_lightning()
    if cfg.monitor not in MONITORS:
        raise unknown("monitor", cfg.monitor, MONITORS)
    if cfg.monitor_mode not in MODES:
        raise unknown("monitor_mode", cfg.monitor_mode, MODES)
    check_train_values(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt_dir = run_dir / "checkpoints"
    if cfg.get("roar") is not None:  # one ROAR unit: finished -> skipped, killed -> resumed (xattr.training.roar)
        from xattr.training.roar import prepare_unit

        if prepare_unit(cfg, run_dir):
            return run_dir
    resume = resolve_ckpt_path(cfg.get("ckpt_path"), ckpt_dir)
    info = check_checkpoint(resume) if resume is not None else None
    net_recipe = build(cfg.net)
    optimizer = build(cfg.optimizer)
    scheduler, interval = _scheduler(cfg.scheduler)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    from xattr.core.store import RunStore

    RunStore(run_dir).write_config(cfg)
    knobs = cfg.data
    if cfg.get("roar") is not None and cfg.roar.get("device_data"):  # ROAR on a GPU: splits in device memory
        from xattr.training.roar import device_data

        data = device_data(cfg, net_recipe.preprocess)
    else:
        data = ClassificationData(cfg.dataset, preprocess=net_recipe.preprocess, batch_size=cfg.batch_size,
                                  num_workers=knobs.num_workers, val_fraction=knobs.val_fraction,
                                  stratified=knobs.stratified, limit=knobs.limit, test_limit=knobs.test_limit,
                                  augment=knobs.get("augment"), seed=cfg.seed,
                                  val_split=knobs.get("val_split", "random"))
    data.setup("fit")  # before the network: a text model needs the vocabulary of the training split
    loss = build(cfg.loss) if cfg.get("loss") is not None else None
    if loss is not None and loss.task != "multiclass":  # chest X-ray: multi-label / regression (training.tasks)
        from xattr.training.tasks import task_module

        module = task_module(loss, net_recipe.build(data), optimizer, scheduler, interval, data,
                             findings=cfg.dataset.get("concepts") or ())
    else:
        module = Classifier(net_recipe.build(data), optimizer, scheduler, interval)

    if resume is None and (ckpt_dir / "last.ckpt").is_file():
        print(f"note: training from scratch over the checkpoints in {ckpt_dir} (ckpt_path=last resumes them)")
    if resume is not None:
        print(f"resuming from {resume} (saved in epoch {info.get('epoch')}, global step {info.get('global_step')})")
        _keep_old_csv_log(run_dir)
    loggers = build_loggers(cfg.logger.get("kind", "csv"), run_dir, name=cfg.name,
                            project=cfg.logger.get("project", "xattr"),
                            config=OmegaConf.to_container(cfg, resolve=True))
    ckpt_cb = pl.callbacks.ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="best", monitor=cfg.monitor, mode=cfg.monitor_mode, save_top_k=1,
        save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
    )  # fmt: skip
    # last.ckpt after every epoch whatever `monitor` says, with every generator's state: an exact resume
    generators = data.generators() if hasattr(data, "generators") else {}
    callbacks: list[pl.Callback] = [ckpt_cb, LastEveryEpoch(str(ckpt_dir)), RandomState(generators)]
    if loggers and scheduler is not None:
        callbacks.append(pl.callbacks.LearningRateMonitor(logging_interval=interval))
    trainer = make_trainer(cfg.trainer, logger=loggers, callbacks=callbacks, default_root_dir=str(run_dir),
                           enable_checkpointing=True)
    sizes = data.sizes()
    with warnings.catch_warnings():  # resuming into the run's own folder is the point
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        if set_threads:  # after every check: a bad input stays one line
            apply_threads(cfg.get("threads", "auto"))
        t0 = time.time()
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
        fit_minutes = (time.time() - t0) / 60
        # read before testing: loading best.ckpt for the test restores the callback's older state
        best, score = ckpt_cb.best_model_path or None, ckpt_cb.best_model_score
        test = trainer.test(module, datamodule=data, ckpt_path=best, verbose=False, weights_only=True)[0]
    if not trainer.is_global_zero:
        return run_dir

    best_epoch = None
    if best and Path(best).is_file():
        best_epoch = int(torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    results = {
        "name": cfg.name, "model": cfg.model.name, "dataset": cfg.dataset.name,
        "test_acc": float(test["test_acc"]) if "test_acc" in test else None, "test_loss": float(test["test_loss"]),
        **{k: float(v) for k, v in test.items() if k not in ("test_acc", "test_loss")},
        f"best_{cfg.monitor}": float(score) if score is not None else None, "best_epoch": best_epoch,
        "epochs": int(trainer.current_epoch), "global_step": int(trainer.global_step),
        "started_at": module.started_at, "resumed_from": str(resume) if resume else None,
        "train_size": sizes["train"], "val_size": sizes["val"], "test_size": sizes["test"],
        "fit_minutes": round(fit_minutes, 3), "best_ckpt": best,
        "last_ckpt": str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else None,
    }  # fmt: skip
    export = Path(cfg.export_path) if cfg.get("export_path") else run_dir / f"{cfg.model.name}.pt"
    meta = {"val_acc": results.get("best_val_acc"), "test_acc": results["test_acc"], "epochs_run": results["epochs"],
            "best_epoch": best_epoch, "train_minutes": results["fit_minutes"]}
    results["weights"] = str(net_recipe.export(export, module.net, data, **meta))
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    val = f", {cfg.monitor} {results[f'best_{cfg.monitor}']:.4f}" if score is not None else ""
    quality = (f"test accuracy {results['test_acc']:.4f}" if "test_auc" not in results else
               f"test AUC {results['test_auc']:.4f}, AP {results['test_ap']:.4f}")
    if "test_mae" in results:
        quality = f"test MAE {results['test_mae']:.4f}"
    print(f"\n{cfg.name}: {quality} on {sizes['test']} (best epoch {best_epoch}{val}) -> {run_dir}")
    key = "model.path" if cfg.model.get("kind") == "hf" else "model.weights"  # a HuggingFace folder: its path
    print(f"  weights: {results['weights']}  (python -m xattr.run model={cfg.model.name} "
          f"{key}={results['weights']})")
    return run_dir


def _scheduler(node: DictConfig):
    """``(factory or None, interval)`` from a ``scheduler`` node (``_target_: null`` is none)."""
    if node is None or node.get("_target_") is None:
        return None, "epoch"
    node = OmegaConf.to_container(node, resolve=True)
    interval = node.pop("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise unknown("scheduler interval", interval, ("epoch", "step"))
    return build(node), interval


def _keep_old_csv_log(run_dir: Path) -> None:
    """Resuming: the killed run's ``logs/metrics.csv`` becomes ``logs/metrics.<k>.csv`` (the CSV logger
    would otherwise delete it); the resumed run writes a new ``metrics.csv``."""
    old = run_dir / "logs" / "metrics.csv"
    if old.is_file():
        k = 0
        while (old.parent / f"metrics.{k}.csv").exists():
            k += 1
        old.rename(old.parent / f"metrics.{k}.csv")


def _stop(cfg: DictConfig) -> Stop:
    """What an interrupted or failed training keeps: its checkpoints (``last.ckpt`` resumes with ``ckpt_path=last``;
    a ROAR unit resumes by itself), in the Hydra run folder."""
    run_dir = Path(cfg.paths.output_dir)
    again = "the same command" if cfg.get("roar") is not None else "the same command with ckpt_path=last"
    return Stop(interrupted=f"finished epochs are kept in {run_dir}/checkpoints/last.ckpt; {again} resumes",
                folder=run_dir, has_finished_work=_has_checkpoints, empty_parents=parents_to_outputs(run_dir))


def _has_checkpoints(run_dir: Path) -> bool:
    return (run_dir / "results.json").is_file() or any((run_dir / "checkpoints").glob("*.ckpt"))


def main(argv: list[str] | None = None) -> int:
    """``python -m xattr.train [overrides]``: :func:`train` in the CLI shell (:mod:`xattr.cli`); the exit code."""
    return hydra_command("train", lambda cfg: train(cfg, set_threads=True), _stop, argv)


if __name__ == "__main__":
    raise SystemExit(main())
