"""``python -m xattr.run method=<m> model=<m> dataset=<d> metric=<m>``: one attribution run.

``run(cfg)`` is a plain function (tests call it with a composed config); ``main`` only hands it to the CLI
shell (``xattr.cli``: ``@hydra.main``, one-line errors, Ctrl-C / SIGTERM). Flow: validate config -> model
-> dataset -> method (+ fit on the estimation split) -> Lightning ``Trainer.predict`` (attribute + evaluate
+ write each batch) -> report (tables and figures).
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from xattr.cli import Stop, hydra_command, parents_to_outputs
from xattr.config import build, check_values, validate
from xattr.core.checks import naming
from xattr.core.signals import worker_ignores_interrupts
from xattr.core.store import RunStore
from xattr.core.threads import apply_threads, usable_cores
from xattr.core.trainer import build_loggers, make_trainer
from xattr.data.transforms import collate
from xattr.engine.cost import estimate, human
from xattr.engine.module import AttributionModule
from xattr.engine.report import finish_analyses, write_report
from xattr.engine.resume import check_resume, short
from xattr.engine.targets import parse_target
from xattr.errors import XattrConfigError
from xattr.models.zoo import load_model

log = logging.getLogger("xattr")
ANALYSIS_ROWS_SHOWN = 40  # the console shows a long analysis table's head; the CSV holds all rows


def run(cfg: DictConfig, set_threads: bool = False) -> Path:
    """Run the configured attribution experiment; returns the run directory. ``set_threads``: apply
    ``cfg.threads`` to torch (the command line does; a caller in its own process keeps its threads)."""
    if (cfg.model.get("layers") or {}).get("embedding"):  # a text model: only methods with a text form
        from xattr.methods.text import check_text_method

        check_text_method(str(cfg.get("method_name") or ""))
    validate(cfg)
    check_values(cfg)
    _record_source_method(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.paths.output_dir)
    check_resume(run_dir, cfg)
    RunStore(run_dir).write_config(cfg)

    zoo = load_model(cfg.model.name, weights=cfg.model.weights, weights_dir=cfg.paths.get("weights_dir"), spec=cfg.model)
    target = parse_target(cfg.target, zoo.net.num_classes)
    ds = build(cfg.dataset.attribution, preprocess=zoo.preprocess)
    loader = make_loader(ds, cfg.batch_size, cfg.dataset.num_workers)
    est_loader = None
    if cfg.dataset.get("estimation") is not None:
        est = partial(build(cfg.dataset.estimation, _partial_=True), preprocess=zoo.preprocess)
        est_loader = _LazyLoader(est, cfg.batch_size, cfg.dataset.num_workers)
    method_factory = build(cfg.method)  # partial: model given in setup, on the right device
    if (cfg.model.get("layers") or {}).get("embedding"):  # a text model: the method's text form (tokens)
        from xattr.methods.text import text_form

        method_factory = text_form(method_factory, cfg.model.layers.embedding, cfg.model.get("pad_index"),
                                   cfg.model.get("unk_index"))
    # build once on CPU now, so a bad layer/hyper-parameter fails before any work
    with naming("method."):  # a bad hyper-parameter is named as on the command line (method.beta)
        probe = method_factory(zoo.net)
    metrics = {name: build(node) for name, node in (cfg.get("metric") or {}).items()}
    analyses = {name: build(node) for name, node in (cfg.get("analysis") or {}).items()}
    cache_dir = cache_dir_for(cfg)
    module = AttributionModule(zoo.net, method_factory, metrics, run_dir, target, est_loader, cache_dir, analyses)
    group, swept = sweep_info(cfg)
    loggers = build_loggers(cfg.logger.get("kind", "csv"), run_dir, name=cfg.name,
                            project=cfg.logger.get("project", "xattr"),
                            config={**OmegaConf.to_container(cfg, resolve=True), "swept": swept}, group=group)
    trainer = make_trainer(cfg.trainer, logger=loggers, inference_mode=False, enable_checkpointing=False,
                           default_root_dir=str(run_dir))
    if set_threads:  # after every check: a bad input stays one line
        apply_threads(cfg.get("threads", "auto"))
    if trainer.is_global_zero and trainer.strategy.root_device.type == "cpu" and len(ds):
        _say_duration(probe, metrics, zoo.net, ds, run_dir, est_loader, cache_dir)
    trainer.predict(module, loader, return_predictions=False)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        summary = write_report(run_dir, ds, zoo.labels, zoo.preprocess, title=cfg.name, metrics=metrics)
        results = finish_analyses(module.store, analyses)
        log.info("run dir %s: %d batches computed, %d skipped (finished earlier)", run_dir, module.computed,
                 module.skipped)
        attributed = len(RunStore(run_dir).rows())  # what was attributed: unreadable skipped images are not
        unread = f" ({len(ds) - attributed} of {len(ds)} unreadable, skipped)" if attributed < len(ds) else ""
        print(f"\n{cfg.name}: {attributed} images{unread}, {module.computed} batches computed, "
              f"{module.skipped} skipped -> {run_dir}")
        if len(summary):
            print(summary.to_markdown(index=False, floatfmt=".4f"))
        for name, df in results.items():  # long tables (a dissection's row per unit): the head, the rest on disk
            shown = df.head(ANALYSIS_ROWS_SHOWN)
            more = f"\n... {len(df) - len(shown)} more rows in analyses/{name}.csv" if len(df) > len(shown) else ""
            print(f"\n{name} (analyses/{name}.csv):\n" + shown.to_markdown(index=False, floatfmt=".4f") + more)
        if len(ds) <= int(cfg.get("list_images", 20)):  # small runs: each image's top-1 label (and the target's)
            per_image = RunStore(run_dir).rows()
            for r in per_image.itertuples():
                line = f"  {r.id}: {zoo.labels[int(r.top1)]} ({getattr(r, 'top1_prob', r.prob):.2f})"
                if int(r.target) != int(r.top1):
                    line += f"; target {zoo.labels[int(r.target)]} ({r.prob:.2f})"
                print(line)
        for lg in loggers:
            lg.log_metrics({f"{r.score}/mean": r.mean for r in summary.itertuples()})
            if isinstance(lg, pl.loggers.WandbLogger):
                _wandb_extras(lg, run_dir, summary)
                lg.experiment.finish()  # the next job of a multirun (same process) starts its own W&B run
    return run_dir


def cache_dir_for(cfg: DictConfig) -> Path | None:
    """Where methods cache what they fit (feature statistics, read-outs): ``paths.cache_dir``, or a folder in it
    named for the given ``model.preprocess`` fields when there are any. A network fed otherwise (e.g. [0, 1]
    images) has other feature statistics, and the caches' keys (network, weights, layers, data) do not
    include the preprocessing."""
    base = cfg.paths.get("cache_dir")
    if base is None:
        return None
    node = cfg.model.get("preprocess")
    given = {k: v for k, v in (OmegaConf.to_container(node, resolve=True) if node is not None else {}).items()
             if v is not None}
    if not given:
        return Path(base)
    digest = hashlib.sha1(json.dumps(given, sort_keys=True).encode()).hexdigest()[:10]
    return Path(base) / f"preprocess-{digest}"


def _say_duration(method, metrics, net, ds, run_dir: Path, est_loader=None, cache_dir=None) -> None:
    """One line before a long CPU run: its estimated duration and what it is made of, with what the method
    fits once before the first image (feature statistics, a read-out network) when it is not cached."""
    todo = len(ds) - sum(1 for i in RunStore(run_dir).done_indices() if i < len(ds))
    if todo <= 0:
        return
    item = ds[0]
    if item is None or not torch.is_tensor(item.get("x") if isinstance(item, dict) else item[0]):
        return
    x = (item["x"] if isinstance(item, dict) else item[0])[None]
    fit = 0.0
    if method.needs_fit and est_loader is not None:
        fit = method.fit_forwards(len(est_loader.dataset), None if cache_dir is None else Path(cache_dir))
    sec, what = estimate(method, metrics, net, x, todo, fit=fit)
    if sec >= 60:
        images = f"{todo} image{'s' if todo != 1 else ''}"
        print(f"estimated CPU time: ~{human(sec)} for {images} ({what}); fewer with dataset.limit=N, faster on a GPU",
              flush=True)


def make_loader(ds, batch_size: int, num_workers: int) -> DataLoader:
    """In-order loader with the dataset's own ``collate`` (text) or the image one. Workers ignore Ctrl-C:
    the main process stops them (no traceback per worker). No more workers than the cores this process may
    use (``taskset``): more only compete for them, and torch warns about it once per loader."""
    num_workers = min(int(num_workers), usable_cores())
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=getattr(ds, "collate", collate),
                      worker_init_fn=worker_ignores_interrupts if num_workers else None)


SOURCE_KEYS = ("model.name", "model.weights", "model.preprocess", "dataset.name", "target")


def _record_source_method(cfg: DictConfig) -> None:
    """For a method that reads an earlier run's maps (``method=saved``: its class names the key holding that
    run, ``source_run_key``): check that the earlier run had this run's model, weights, preprocessing, dataset
    and target (``method.check_source=false`` scores its maps anyway), take its images when ``dataset.limit``
    is not given, and record its method name and settings (tables match on them)."""
    key = _source_run_key(cfg.method)
    if key is None or cfg.method.get(key) is None:
        return
    source = cfg.method[key]
    orig = RunStore(source).config()
    if orig is None:
        return  # building the method names what is missing
    if cfg.method.get("check_source", True):
        differ = []
        for k in SOURCE_KEYS:
            theirs, ours = OmegaConf.select(orig, k), OmegaConf.select(cfg, k)
            if theirs is None or ours is None:
                continue
            theirs, ours = (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                            for v in (theirs, ours))
            if theirs != ours:
                differ.append(f"{k}={short(theirs)} (here {short(ours)})")
        if differ:
            raise XattrConfigError(
                f"bad method.{key} {str(source)!r}: its maps were made with {'; '.join(differ)}; valid choices: the "
                f"same settings as that run, or method.check_source=false to score its maps anyway")
    limit = OmegaConf.select(orig, "dataset.limit")
    with open_dict(cfg):
        if cfg.dataset.get("limit") is None and limit is not None:
            print(f"method=saved: the {limit} images of {source} (dataset.limit={limit}; set dataset.limit to "
                  "choose)", flush=True)
            cfg.dataset.limit = int(limit)
        cfg.method_name = orig.get("method_name", cfg.method_name)
        cfg.source_method = orig.get("method")


def _source_run_key(node: DictConfig) -> str | None:
    """The method class's ``source_run_key`` (None for a method computing its own maps, or a target that does
    not import: building the method names that error)."""
    target = node.get("_target_") if node is not None else None
    if not target:
        return None
    try:
        cls = get_class(str(target))
    except Exception:
        return None
    return getattr(cls, "source_run_key", None)


def hydra_runtime():
    """Hydra's config of this job (mode, sweep dir, overrides, choices), or None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_info(cfg: DictConfig) -> tuple[str | None, dict[str, str]]:
    """W&B's group and the swept keys of this job: ``logger.group`` when set; in a multirun, the runs share the
    group ``<experiment or sweep>:<sweep dir>`` and each logs its command-line / sweeper overrides
    (``method.beta=10``, ``row=gradient``) as config columns ``swept.<key>`` (W&B's parallel coordinates and
    run tables compare them). A single run: no group, no swept keys."""
    hc = hydra_runtime()
    group = cfg.logger.get("group") if cfg.get("logger") else None
    mode = getattr(hc, "mode", None) if hc is not None else None
    if hc is None or not str(getattr(mode, "name", mode)).endswith("MULTIRUN"):
        return group, {}
    swept = {}
    for o in hc.overrides.task:
        if "=" in o:
            k, v = o.split("=", 1)
            swept[k.lstrip("+~")] = v
    experiment = (hc.runtime.choices or {}).get("experiment")
    return group or f"{experiment or 'sweep'}:{hc.sweep.dir}", swept


def _wandb_extras(lg, run_dir: Path, summary, max_rows: int = 64) -> None:
    """The summary table, a per-image table (heatmap thumbnail, target, probability and every score of the
    first ``max_rows`` images) and the run's figures."""
    import wandb

    lg.experiment.log({"summary": wandb.Table(dataframe=summary)})
    store = RunStore(run_dir)
    rows, maps = store.rows().head(max_rows), store.heatmaps()
    if len(rows):
        cols = [c for c in rows.columns if c not in ("index", "label", "top1_prob")]
        table = wandb.Table(columns=["heatmap", *cols])
        for r in rows.to_dict("records"):
            m = np.asarray(maps.get(str(r["id"])), dtype=np.float32)
            m = m.reshape(-1, *m.shape[-2:]).mean(0) if m.ndim >= 2 else m[None]
            lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
            img = wandb.Image((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m))
            table.add_data(img, *[r[c] for c in cols])
        lg.experiment.log({"images": table})  # W&B table of the first rows (not a run-folder file)
    for png in ("heatmaps.png", "curves.png"):
        if (run_dir / png).is_file():
            lg.experiment.log({png[:-4]: wandb.Image(str(run_dir / png))})


class _LazyLoader:
    """The estimation loader, built only if a method asks for it (most methods do not)."""

    def __init__(self, make_ds, batch_size: int, num_workers: int) -> None:
        self.make_ds, self.batch_size, self.num_workers = make_ds, batch_size, num_workers
        self._loader = None

    @property
    def dataset(self):
        return self._get().dataset

    def _get(self) -> DataLoader:
        if self._loader is None:
            self._loader = make_loader(self.make_ds(), self.batch_size, self.num_workers)
        return self._loader

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _stop(cfg: DictConfig) -> Stop:
    """What an interrupted or failed run keeps: its finished batches (``RunStore``), in the Hydra run folder."""
    run_dir = Path(cfg.paths.output_dir)

    def kept() -> str:
        return f"{len(RunStore(run_dir).done_keys())} finished batches kept in {run_dir}; the same command resumes"

    return Stop(interrupted=kept, folder=run_dir, has_finished_work=lambda d: RunStore(d).has_finished_work(),
                empty_parents=parents_to_outputs(run_dir))  # outputs/runs/<name>/ when this was its only run


def main(argv: list[str] | None = None) -> int:
    """``python -m xattr.run [overrides]``: :func:`run` in the CLI shell (:mod:`xattr.cli`); the exit code."""
    return hydra_command("config", lambda cfg: run(cfg, set_threads=True), _stop, argv)


if __name__ == "__main__":
    raise SystemExit(main())
