"""``python -m xattr.demo`` (what ``make demo`` runs): the shipped photos explained by several methods with
a real pretrained network from PyPI (EfficientNet-Lite0), one row per photo and one column per method.

Each method is an ordinary run (``outputs/demo/<method>/``: heatmaps, per-image table, its own figure;
re-running skips finished work); the comparison figure ``outputs/demo/demo.png`` is drawn from the stored
maps. The methods and their overrides are ``demo.methods`` of ``conf/experiment/demo.yaml``; command-line
overrides apply to every run (``python -m xattr.demo dataset.limit=2``). Needs no ``../shared``: the IBA
family reads the feature statistics shipped in ``assets/stats/``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from xattr.cli import HELP_FLAGS, Stop, checked, command, help_text, parents_to_outputs
from xattr.config import CONF_DIR, build, check_values, validate
from xattr.core.store import RunStore
from xattr.core.threads import apply_threads
from xattr.engine.cost import estimate, own_seconds
from xattr.engine.resume import stale_settings
from xattr.models.zoo import load_model
from xattr.run import run
from xattr.viz.heatmaps import comparison_grid


def compose_demo(overrides: list[str]) -> DictConfig:
    """The demo's base config (``experiment=demo`` plus ``overrides``) outside a Hydra run."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["experiment=demo", *overrides])
    with open_dict(cfg):
        cfg.paths.root = str(Path(cfg.paths.root).resolve())
    return cfg


def method_config(base: DictConfig, method: str, overrides: list[str]) -> DictConfig:
    """``base`` with the method group set to ``method`` and the run's overrides applied."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        node = compose("config", overrides=[f"method={method}"]).method
    cfg = base.copy()
    with open_dict(cfg):
        cfg.method = node
        for o in overrides:
            key, value = o.split("=", 1)
            OmegaConf.update(cfg, key, value if "${" in value else yaml.safe_load(value), merge=False)
        cfg.name = f"demo-{method}"
        cfg.list_images = 0  # the labels are printed once, with the figure
        cfg.method_name = method
        cfg.paths.output_dir = str(Path(cfg.demo.out_dir) / method)
    return cfg


def _start_over_if_stale(cfg: DictConfig) -> None:
    """A demo folder made with other settings (an older xattr, other overrides) is made again, not refused:
    the demo's folders are its own cache."""
    changed = stale_settings(cfg.paths.output_dir, cfg)
    if changed:
        print(f"  {cfg.paths.output_dir} was made with other settings ({'; '.join(changed)}): made again", flush=True)
        shutil.rmtree(cfg.paths.output_dir)


def demo(cfg: DictConfig, set_threads: bool = False) -> Path:
    """Run every method of ``cfg.demo.methods`` and draw the comparison; returns the figure's path.
    ``set_threads``: apply ``cfg.threads`` to torch (the command line does; a caller keeps its threads)."""
    methods = dict(cfg.demo.methods)
    out = Path(cfg.demo.out_dir)
    configs = {m: method_config(cfg, m, list(spec.overrides)) for m, spec in methods.items()}
    validate(cfg)
    for c in configs.values():  # every run's values before any work: a bad one is one line, nothing written
        check_values(c)
    zoo = load_model(cfg.model.name, weights=cfg.model.weights, spec=cfg.model)
    ds = build(cfg.dataset.attribution, preprocess=zoo.preprocess)
    n = len(ds)
    built = {m: build(c.method)(zoo.net) for m, c in configs.items()}  # a bad layer or setting: before any work
    metrics = {name: build(node) for name, node in (cfg.get("metric") or {}).items()}
    if set_threads:  # after every check: a bad input stays one line
        apply_threads(cfg.get("threads", "auto"))
    sec = _seconds(built, metrics, zoo.net, ds, out)
    cores = torch.get_num_threads()
    print(f"demo: {n} photos x {len(methods)} methods ({', '.join(methods)}) with {cfg.model.name}; "
          f"about {max(1, round(sec / 60))} min on {cores} CPU core{'s' * (cores > 1)}", flush=True)
    runs = {}
    for m, spec in methods.items():
        t0 = time.time()
        print(f"\n[{m}] {spec.title}")
        _start_over_if_stale(configs[m])
        runs[m] = run(configs[m])
        print(f"[{m}] done in {time.time() - t0:.0f} s")
    per_image = RunStore(next(iter(runs.values()))).rows()
    images, titles = [], []
    for r in per_image.itertuples():
        x = ds[int(r.index)]["x"]
        images.append(zoo.preprocess.denormalise(x[None])[0].permute(1, 2, 0).numpy())
        titles.append(f"{r.id}: {zoo.labels[int(r.top1)]} ({r.top1_prob:.2f})")
    maps = {}
    for m, spec in methods.items():
        stored = RunStore(runs[m]).heatmaps()
        maps[spec.title] = [stored[str(i)].astype(np.float32) for i in per_image["id"]]
    path = comparison_grid(images, maps, titles, out / "demo.png",
                           suptitle=f"{cfg.model.name} ({cfg.model.weights} weights): top-1 class and its probability")
    table = pd.DataFrame({"photo": per_image["id"], "prediction": [zoo.labels[int(t)] for t in per_image["top1"]],
                          "probability": per_image["top1_prob"].round(3)})
    table.to_csv(out / "demo.csv", index=False)
    (out / "methods.txt").write_text("\n".join(f"{m}\t{spec.title}\t{runs[m]}" for m, spec in methods.items()) + "\n")
    print(f"\ndemo: {n} photos x {len(methods)} methods -> {path}")
    for r in table.itertuples():
        print(f"  {r.photo}: {r.prediction} ({r.probability:.2f})")
    return path


def seconds_per_equivalent(net, x: torch.Tensor) -> float:
    """Seconds of one forward equivalent as the demo's costly methods spend them: a third of one row's forward
    and input-gradient backward (a backward counts 2 in every stated cost), on a CPU in channels-last pieces of
    ``chunk: auto``'s rows (InputIBA's and IBA's passes; :func:`xattr.core.chunk.resolve_chunk`), the best of 3
    after a warm-up, each :func:`~xattr.engine.cost.own_seconds` (the cores' time, not other jobs'). Why not
    ``engine.cost.seconds_per_forward`` (one plain forward of 4 rows): on this CPU a backward costs about one
    forward, not two, and the pieces run ~1.3x faster, so that estimate said 3x the measured time for InputIBA
    (docs/speed.md, InputIBA)."""
    from xattr.core.chunk import resolve_chunk
    from xattr.core.hooks import frozen

    rows = resolve_chunk("auto", net, x[:1]) if x.device.type == "cpu" else 4
    xb = x[:1].expand(rows, *x.shape[1:]).contiguous(memory_format=torch.channels_last)
    times = []
    with frozen(net), torch.enable_grad():
        for _ in range(4):
            z = xb.clone().requires_grad_(True)
            times.append(own_seconds(lambda z=z: net(z).sum().backward()))
    return min(times[1:]) / (3 * rows)


def _seconds(methods: dict, metrics: dict, net, ds, out: Path) -> float:
    """The demo's estimated CPU seconds (``xattr.engine.cost``: each built method's forwards per image x one
    measured forward equivalent, :func:`seconds_per_equivalent`), counting only the images each method's run
    has not finished yet."""
    if not len(ds):
        return 0.0
    x = ds[0]["x"][None]
    per_forward = seconds_per_equivalent(net, x)  # the same network for every method: measured once
    total = 0.0
    for m, method in methods.items():
        todo = len(ds) - sum(1 for i in RunStore(out / m).done_indices() if i < len(ds))
        if todo > 0:
            total += estimate(method, metrics, net, x, todo, per_forward)[0]
    return total


def _has_finished_runs(out: Path) -> bool:
    return (out / "demo.png").is_file() or any(RunStore(d).has_finished_work() for d in out.iterdir() if d.is_dir())


def main(argv: list[str] | None = None) -> int:
    """``python -m xattr.demo [overrides]``: :func:`demo` in the CLI shell (:mod:`xattr.cli`); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in HELP_FLAGS for a in argv):  # the groups an override of every method's run may use
        print(help_text("python -m xattr.demo", __doc__, "config", ["experiment=demo", *argv],
                        omit=("method", "experiment", "row", "half")))
        return 0
    code = checked(["experiment=demo", *argv], "config")  # overrides apply to every method's run
    if code:
        return code
    stop = Stop(interrupted="each method's finished batches are kept in its folder; the same command resumes",
                has_finished_work=_has_finished_runs, writable="a writable folder (demo.out_dir=...)")

    def work() -> Path:
        cfg = compose_demo(argv)
        stop.folder = Path(cfg.demo.out_dir)
        stop.empty_parents = parents_to_outputs(stop.folder)
        stop.interrupted = (f"each method's finished batches are kept in {stop.folder}/<method>; the same command "
                            "resumes")
        return demo(cfg, set_threads=True)

    return command(work, stop)


if __name__ == "__main__":
    raise SystemExit(main())
