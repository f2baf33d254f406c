"""``python -m xattr.generate axioms.scenario=null|single|double|saturation axioms.n=<N> model=<m>``: generate
the axiom samples of dissertation ch. 7 ("Do Explanations Explain? Model Knows Best") for a model.

Writes ``<axioms.out>/<model>/<scenario>/samples/<index>.pt`` sample by sample (a killed generation
resumes: the same command skips finished samples) and ``meta.json``; ``python -m xattr.run dataset=axioms
dataset.scenario=<s> metric=axioms method=<m>`` reads them back. ``generate(cfg)`` is a plain function
(tests call it); ``main`` hands it to the CLI shell (``xattr.cli``: ``@hydra.main(config_name="generate")``,
one-line errors, Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from xattr.cli import Stop, hydra_command, parents_to_outputs
from xattr.core.threads import apply_threads
from xattr.errors import XattrConfigError, unknown

DEVICES = ("auto", "cpu", "cuda")


def generate(cfg: DictConfig, set_threads: bool = False) -> Path:
    """Generate samples ``0..axioms.n-1`` of one scenario; returns the scenario's folder. ``set_threads``: apply
    ``cfg.threads`` to torch (the command line does; a caller in its own process keeps its threads)."""
    import torch

    from xattr.data.axioms_generation import SCENARIOS, AxiomGenerator, GenConfig
    from xattr.data.axioms_prior import PriorSpec
    from xattr.data.axioms_store import AxiomsStore
    from xattr.models.zoo import load_model

    ax = cfg.axioms
    scenario = "null" if ax.scenario is None else str(ax.scenario)  # `axioms.scenario=null` parses as None
    if scenario not in SCENARIOS:
        raise unknown("axioms.scenario", scenario, SCENARIOS)
    if not isinstance(ax.n, int) or ax.n < 1:
        raise XattrConfigError(f"bad axioms.n {ax.n!r}; valid choices: an integer >= 1")
    _check_numbers(cfg)
    if cfg.device not in DEVICES:
        raise unknown("device", cfg.device, DEVICES)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise XattrConfigError("bad device 'cuda': no GPU on this machine; valid choices: auto, cpu")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    zoo = load_model(cfg.model.name, weights=cfg.model.weights, weights_dir=cfg.paths.get("weights_dir"),
                     spec=cfg.model, device=device)
    prior = PriorSpec(**OmegaConf.to_container(ax.prior, resolve=True))
    gcfg = GenConfig(scenario=scenario, image_size=zoo.preprocess.size, lr=float(ax.lr), max_iters=int(ax.max_iters),
                     warmup=ax.warmup, min_main=int(ax.min_main), softmax_min=float(ax.softmax_min),
                     k_rem_max=float(ax.k_rem_max), max_restarts=ax.max_restarts,
                     positions=OmegaConf.to_container(ax.positions) if ax.positions is not None else None)
    out = Path(ax.out) / cfg.model.name / scenario
    store = AxiomsStore(out)
    store.check_meta({"scenario": scenario, "model": cfg.model.name, "weights": str(cfg.model.weights),
                      "image_size": gcfg.image_size, "patch_size": prior.patch_size, "seed": int(cfg.seed),
                      "prior": {k: list(v) if isinstance(v, (list, tuple)) else v
                                for k, v in dataclasses.asdict(prior).items() if k != "convs"},
                      "lr": gcfg.lr, "max_iters": gcfg.max_iters, "warmup": gcfg.warmup_iters,
                      "min_main": gcfg.min_main, "softmax_min": gcfg.softmax_min, "k_rem_max": gcfg.k_rem_max})
    todo = [i for i in range(ax.n) if not store.done(i)]
    if set_threads:  # after every check: a bad input stays one line
        apply_threads(cfg.get("threads", "auto"))
    print(f"generate {scenario}: {ax.n - len(todo)} of {ax.n} samples done, {len(todo)} to go "
          f"({cfg.model.name} on {device}, batch {cfg.batch_size}, {prior.patch_size}x{prior.patch_size} patches) "
          f"-> {out}", flush=True)
    gen = AxiomGenerator(zoo.net, zoo.preprocess.normalise, gcfg, prior, batch=int(cfg.batch_size),
                         seed=int(cfg.seed), device=device)
    t0 = time.perf_counter()
    made = gen.run(todo, store)
    sec = time.perf_counter() - t0
    if made:
        recs = [store.read(i) for i in todo if store.done(i)]
        ratio = torch.stack([r["ratio"] for r in recs]).mean().item()
        iters = sum(r["iterations"] for r in recs) / len(recs)
        restarts = sum(r["restarts"] for r in recs)
        print(f"{made} samples in {sec / 60:.1f} min ({made / sec * 60:.2f} samples/min, {gen.iterations} steps); "
              f"mean output-change ratio {ratio:.4f} (paper 0.0712), mean iterations {iters:.0f}, "
              f"{restarts} restarts", flush=True)
    return out


def _check_numbers(cfg: DictConfig) -> None:
    """``batch_size``, ``axioms.max_iters``, ``axioms.max_restarts``, ``axioms.lr``: one line each before any
    work (nothing written: ``meta.json`` comes after)."""
    def integer(value: object, low: int) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and value >= low

    ax = cfg.axioms
    if not integer(cfg.batch_size, 1):
        raise XattrConfigError(f"bad batch_size {cfg.batch_size!r}; valid choices: an integer >= 1")
    if not integer(ax.max_iters, 1):
        raise XattrConfigError(f"bad axioms.max_iters {ax.max_iters!r}; valid choices: an integer >= 1")
    if ax.max_restarts is not None and not integer(ax.max_restarts, 0):
        raise XattrConfigError(f"bad axioms.max_restarts {ax.max_restarts!r}; valid choices: an integer >= 0, "
                               "or null (restart until found)")
    if isinstance(ax.lr, bool) or not isinstance(ax.lr, (int, float)) or not ax.lr > 0:
        raise XattrConfigError(f"bad axioms.lr {ax.lr!r}; valid choices: a number > 0")


def _scenario_folder(cfg: DictConfig) -> Path:
    scenario = "null" if cfg.axioms.scenario is None else str(cfg.axioms.scenario)
    return Path(cfg.axioms.out) / cfg.model.name / scenario


def _has_samples(out: Path) -> bool:
    return any(out.rglob("samples/*.pt"))


def _stop(cfg: DictConfig) -> Stop:
    """What an interrupted or failed generation keeps: its finished samples (one file each). Hydra's run folder is
    ``axioms.out``: removed on bad input when this command made it and no sample is in it."""
    from xattr.data.axioms_store import AxiomsStore

    folder = _scenario_folder(cfg)

    def kept() -> str:
        return f"{len(AxiomsStore(folder).indices())} finished samples kept in {folder}; the same command resumes"

    out = Path(cfg.axioms.out)
    return Stop(interrupted=kept, folder=out, has_finished_work=_has_samples, empty_parents=parents_to_outputs(out),
                writable="a writable folder (axioms.out=...)")


def main(argv: list[str] | None = None) -> int:
    """``python -m xattr.generate [overrides]``: :func:`generate` in the CLI shell (:mod:`xattr.cli`); the exit
    code."""
    return hydra_command("generate", lambda cfg: generate(cfg, set_threads=True), _stop, argv,
                         writable="a writable folder (axioms.out=...)")


if __name__ == "__main__":
    raise SystemExit(main())
