"""Mutation testing of the modules that compute published numbers (``make mutation``; not part of ``make test``).

Each module in ``MODULES`` is mutated by mutmut 2 (one mutant at a time: an operator, a constant, a keyword
changed) and its *targeted* test files are run against every mutant (``pytest -x``: the first failure kills
it). The work happens in a scratch copy of the working tree (``outputs/mutation/work``), so the sources of the
clone are never edited; one process, one worker (the machine is shared). Results: one line per module in
``outputs/mutation/scores.md`` (killed / total) and the surviving mutants' diffs in
``outputs/mutation/<module>.survivors.txt``; docs/testing.md keeps the table and explains the survivors.

    python scripts/mutation.py                      # every module, in priority order
    python scripts/mutation.py metrics/localisation.py data/roar.py   # some of them
    python scripts/mutation.py --list               # the modules and their test files

mutmut is the ``mutation`` extra: ``pip install -e '.[mutation]'``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "mutation"

# module (under src/xattr) -> the fast test files (and -k filters) that pin its numbers; priority order
MODULES: dict[str, list[str]] = {
    "metrics/bottleneck_accuracy.py": ["tests/test_metrics_bottleneck_accuracy.py", "-k", "not readout_bottleneck"],
    "metrics/localisation.py": ["tests/test_cxr_iou.py", "tests/test_cxr_training.py", "tests/reference/test_ehr.py",
                                "tests/reference/test_bbox_sensitivity_degradation.py",
                                "tests/test_metrics_localisation_sanity.py", "-k", "iou or ehr or bbox or localis or mask"],
    "data/roar.py": ["tests/test_roar.py", "-k", "not train and not sweep and not subprocess"],
    "methods/pathways/dgr.py": ["tests/test_pathways_pruning.py", "-k", "dgr"],
    "methods/iba/bottleneck.py": ["tests/test_iba_bottleneck.py", "tests/reference/test_iba_resize.py",
                                  "tests/test_metrics_bottleneck_accuracy.py", "-k", "not readout_bottleneck"],
    "methods/iba/per_sample.py": ["tests/test_iba_bottleneck.py", "tests/test_iba_variants.py",
                                  "tests/test_metrics_bottleneck_accuracy.py", "-k", "not readout_bottleneck"],
    "methods/iba/readout.py": ["tests/test_iba_readout.py", "tests/test_metrics_bottleneck_accuracy.py"],
    "methods/iba/statistics.py": ["tests/test_iba_statistics.py"],
    "methods/iba/multilayer.py": ["tests/test_iba_variants.py"],
    "methods/iba/regression.py": ["tests/test_iba_variants.py"],
    "methods/iba/inverse.py": ["tests/test_iba_variants.py"],
    "methods/iba/tail.py": ["tests/test_iba_tail_speed.py", "tests/test_iba_bottleneck.py"],
    "methods/input_iba/input_bottleneck.py": ["tests/test_input_iba_bottleneck.py", "tests/test_input_iba_steps.py"],
    "methods/input_iba/wgan.py": ["tests/test_input_iba_wgan.py", "tests/test_input_iba_steps.py"],
    "methods/input_iba/input_iba.py": ["tests/test_input_iba_method.py", "tests/test_input_iba_steps.py"],
    "methods/input_iba/text.py": ["tests/test_input_iba_text.py", "tests/test_input_iba_text_reference.py",
                                  "tests/test_input_iba_steps.py"],
    "methods/pathways/contributions.py": ["tests/test_pathways_methods.py"],
    "methods/pathways/greedy.py": ["tests/test_pathways_methods.py"],
    "methods/pathways/neurons.py": ["tests/test_pathways_methods.py", "tests/test_pathways_evaluation.py"],
    "methods/pathways/pathway.py": ["tests/test_pathways_methods.py", "tests/test_pathways_evaluation.py"],
    "methods/pathways/maps.py": ["tests/test_pathways_methods.py"],
    "methods/pathways/selection.py": ["tests/test_pathways_methods.py", "tests/test_pathways_pruning.py"],
    "methods/pathways/inputs.py": ["tests/test_pathways_methods.py"],
    "metrics/insertion_deletion.py": ["tests/test_metrics_insdel_points.py", "tests/reference/test_insertion_deletion.py"],
    "metrics/degradation.py": ["tests/test_metrics_perturbation.py", "tests/reference/test_bbox_sensitivity_degradation.py"],
    "metrics/sensitivity_n.py": ["tests/test_metrics_perturbation.py", "tests/reference/test_bbox_sensitivity_degradation.py"],
    "metrics/lerf.py": ["tests/test_metrics_perturbation.py"],
    "metrics/region.py": ["tests/test_cxr_training.py", "-k", "by_hand"],
    "metrics/_perturb.py": ["tests/test_metrics_perturbation.py", "tests/test_metrics_insdel_points.py"],
    "metrics/sanity_check.py": ["tests/test_metrics_localisation_sanity.py"],
    "metrics/axioms.py": ["tests/test_axioms_metric.py"],
    "metrics/summary.py": ["tests/test_metrics_perturbation.py", "tests/test_engine.py", "-k", "summary or summar"],
    "analyses/dissection.py": ["tests/test_analyses_dissection.py"],
}

COPY = ("src", "tests", "conf", "assets", "pyproject.toml", "examples", "scripts", "docs")


def scratch_copy() -> Path:
    """A copy of the working tree's sources and tests; mutmut's cache (``.mutmut-cache``) is kept between runs:
    a killed mutant stays killed, the others are re-tested when the tests changed."""
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if (work / name).is_dir():
            shutil.rmtree(work / name)
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy2(src, work / name)
    return work


def counts(work: Path, module: str) -> tuple[dict[str, int], list[int]]:
    """Mutant statuses of one file from mutmut's cache, and the ids of those not killed."""
    db = sqlite3.connect(work / ".mutmut-cache")
    rows = db.execute(
        "SELECT m.id, m.status FROM Mutant m JOIN Line l ON m.line = l.id JOIN SourceFile s ON l.sourcefile = s.id "
        "WHERE s.filename = ?", (f"src/xattr/{module}",)).fetchall()
    db.close()
    tally: dict[str, int] = {}
    for _, status in rows:
        tally[status] = tally.get(status, 0) + 1
    return tally, [i for i, status in rows if status != "ok_killed"]


def run_module(work: Path, module: str, python: str, env: dict) -> str:
    args = MODULES[module]
    # mutmut 2 counts only exit code 1 as "killed"; a mutant that breaks the import (pytest's exit 2, a
    # collection error) is killed too: the runner maps every failure to 1
    pytest = f"{python} -m pytest -x -q -p no:cacheprovider -m 'not slow' " + " ".join(
        f"'{a}'" if " " in a else a for a in args)
    script = work / f".runner-{module.replace('/', '.')}.sh"
    script.write_text(f"#!/bin/bash\n{pytest} >/dev/null 2>&1 || exit 1\n")
    script.chmod(0o755)
    runner = f"bash {script}"
    t0 = time.time()
    subprocess.run([python, "-m", "mutmut", "run", "--paths-to-mutate", f"src/xattr/{module}", "--runner", runner,
                    "--no-progress", "--simple-output"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    tally, not_killed = counts(work, module)
    total = sum(tally.values())
    killed = tally.get("ok_killed", 0)
    slug = module.replace("/", ".")
    with open(OUT / f"{slug}.survivors.txt", "w") as f:
        for i in not_killed:
            shown = subprocess.run([python, "-m", "mutmut", "show", str(i)], cwd=work, env=env, capture_output=True,
                                   text=True).stdout
            f.write(f"# mutant {i}\n{shown}\n")
    score = 100.0 * killed / total if total else float("nan")
    others = ", ".join(f"{k} {v}" for k, v in sorted(tally.items()) if k != "ok_killed")
    return f"| {module} | {killed} / {total} | {score:.0f}% | {others} | {time.time() - t0:.0f} s |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help="modules under src/xattr (default: all, in priority order)")
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)
    if a.list:
        for m, t in MODULES.items():
            print(m, " ".join(t))
        return 0
    mods = a.modules or list(MODULES)
    unknown = [m for m in mods if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choices: {list(MODULES)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    work = scratch_copy()
    shared = os.environ.get("XATTR_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    env = {**os.environ, "PYTHONPATH": str(work / "src") + os.pathsep + str(work), "OMP_NUM_THREADS": "1",
           "XATTR_SHARED_DATA": shared, "WANDB_MODE": "offline"}
    scores = OUT / "scores.md"
    if not scores.exists():
        scores.write_text("| module | killed / total | score | not killed | time |\n|---|---|---|---|---|\n")
    for m in mods:
        line = run_module(work, m, sys.executable, env)
        print(line, flush=True)
        with open(scores, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
