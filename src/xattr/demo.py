"""``python -m xattr.demo`` (what ``make demo`` runs): the shipped photos explained by several methods with
a real pretrained network from PyPI (EfficientNet-Lite0), one row per photo and one column per method.

Each method is an ordinary run (``outputs/demo/<method>/``: heatmaps, per-image table, its own figure;
re-running skips finished work); the comparison figure ``outputs/demo/demo.png`` is drawn from the stored
maps. The methods and their overrides are ``demo.methods`` of ``conf/experiment/demo.yaml``; command-line
overrides apply to every run (``python -m xattr.demo dataset.limit=2``). Needs no ``../shared``: the IBA
family reads the feature statistics shipped in ``assets/stats/``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from xattr.config import CONF_DIR, build, check_overrides, root_config_error
from xattr.core.store import RunStore
from xattr.models.zoo import load_model
from xattr.run import run
from xattr.viz.heatmaps import comparison_grid

#: rough CPU seconds per image of each method in the demo (2 cores), for the up-front estimate
CPU_SECONDS = {"gradient": 0.2, "grad_cam": 0.3, "iba": 4.0, "input_iba": 26.0}


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


def demo(cfg: DictConfig) -> Path:
    """Run every method of ``cfg.demo.methods`` and draw the comparison; returns the figure's path."""
    methods = dict(cfg.demo.methods)
    out = Path(cfg.demo.out_dir)
    zoo = load_model(cfg.model.name, weights=cfg.model.weights, spec=cfg.model)
    ds = build(cfg.dataset.attribution, preprocess=zoo.preprocess)
    n = len(ds)
    est = sum(CPU_SECONDS.get(m, 1.0) for m in methods) * n
    print(f"demo: {n} photos x {len(methods)} methods ({', '.join(methods)}) with {cfg.model.name}; "
          f"about {max(1, round(est / 60))} min on 2 CPU cores")
    runs = {}
    for m, spec in methods.items():
        t0 = time.time()
        print(f"\n[{m}] {spec.title}")
        runs[m] = run(method_config(cfg, m, list(spec.overrides)))
        print(f"[{m}] done in {time.time() - t0:.0f} s")
    per_image = pd.read_parquet(next(iter(runs.values())) / "per_image.parquet")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check_overrides(argv, None)  # demo keys are checked when it composes each method's run
    try:
        demo(compose_demo(argv))
    except Exception as e:  # bad input: one line, no traceback
        err = root_config_error(e)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
