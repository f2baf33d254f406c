"""Mutation testing of the modules that compute published numbers (``make mutation``; not part of ``make test``).

Each module in ``MODULES`` is mutated one change at a time (mutmut 2's mutation operators: an operator, a
constant, a keyword, a string changed) and the fast tests that pin it are run against every mutant; a mutant
that makes a test fail (or error, hang past its time limit, or die by a signal) is *killed*. The score is
killed / all mutants.

Why not ``mutmut run``: it starts a fresh pytest (and a fresh ``import torch``) per mutant and runs every test
file of the module (20-40 s a mutant on this 2-core machine). This script keeps mutmut only as the mutant
generator and runs the mutants itself (one warm process, one worker, ``nice``):

1. *warm parent*: the third-party modules the tests import (torch, numpy, captum, hydra, ...) are imported
   once, never ``xattr`` itself;
2. *coverage pass*: the module's test files are run once, unmutated, in a forked child that traces which
   lines of the module each test executes (``sys.settrace`` on that one file) and how long each test takes;
   a test that fails unmutated stops the run (it would "kill" every mutant);
3. *one fork per mutant*: the parent writes the mutant into a scratch copy of ``src`` (the clone's sources are
   never edited) and forks; the child runs ``pytest -x`` on only the tests that execute the mutated statement
   (fastest first), or, for a statement that runs at import (a class attribute, a default argument, a
   module constant), on every test that executes some line of the module (a test that only reads a constant
   of it, without running any of its code, is left out: this can only lose kills, so the score is a lower
   bound). A mutant of a statement no test executes survives without a run ("no test runs it"). A child
   past its time limit (10x the tests' unmutated time + 60 s, at least 90 s) is stopped and counted killed
   (a hang), as mutmut does. A class attribute ``paper = "..."`` (a citation no code reads, like a docstring,
   which mutmut never mutates; also the base classes' ``paper: ClassVar[str] = ""``) is not mutated.

Each mutant's result is appended to ``outputs/mutation/<module>.results.jsonl`` the moment it is known, so a
stopped run loses nothing and a re-run skips the mutants already done (``--retest`` re-runs the survivors,
e.g. after new tests). Per module: one line in ``outputs/mutation/scores.md`` and each survivor's diff in
``outputs/mutation/<module>.survivors.txt``; docs/testing.md keeps the table and explains the survivors.

    python scripts/mutation.py                      # every module, in priority order
    python scripts/mutation.py metrics/localisation.py data/roar.py   # some of them
    python scripts/mutation.py --retest metrics/region.py            # survivors again, after new tests
    python scripts/mutation.py --list               # the modules and their test files
    python scripts/mutation.py --report             # the table from the results so far (runs nothing)

mutmut is the ``mutation`` extra: ``pip install -e '.[mutation]'``. POSIX only (``os.fork``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import gc
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "mutation"

# module (under src/xattr) -> the fast test files (and -k filters) that pin its numbers; priority order
MODULES: dict[str, list[str]] = {
    "metrics/bottleneck_accuracy.py": ["tests/test_metrics_bottleneck_accuracy.py", "tests/test_metric_names.py", "-k", "not readout_bottleneck"],
    "metrics/localisation.py": ["tests/test_cxr_iou.py", "tests/test_cxr_training.py", "tests/reference/test_ehr.py",
                                "tests/reference/test_bbox_sensitivity_degradation.py",
                                "tests/test_metrics_localisation_sanity.py", "tests/test_metric_names.py",
                                "-k", "iou or ehr or bbox or localis or mask or named_after"],
    "data/roar.py": ["tests/test_roar.py", "tests/reference/test_lerf_roar.py",
                     "-k", "not sweep and not subprocess and not killed_unit and not removing_the_true_region"],
    "methods/pathways/dgr.py": ["tests/test_pathways_pruning.py", "tests/reference/test_dgr_ties.py",
                                "tests/test_plugin_cost.py", "tests/test_metric_names.py", "-k",
                                "dgr or batched or cost or named_after or ties"],
    "methods/iba/bottleneck.py": ["tests/test_iba_bottleneck.py", "tests/reference/test_iba_resize.py",
                                  "tests/test_metrics_bottleneck_accuracy.py", "-k", "not readout_bottleneck"],
    "methods/iba/per_sample.py": ["tests/test_iba_bottleneck.py", "tests/test_iba_variants.py",
                                  "tests/test_metrics_bottleneck_accuracy.py", "tests/test_iba_statistics.py",
                                  "tests/test_iba_tail_speed.py", "tests/test_vit_methods.py",
                                  "tests/reference/test_iba_resize.py", "-k", "not readout_bottleneck"],
    "methods/iba/readout.py": ["tests/test_iba_readout.py", "tests/test_metrics_bottleneck_accuracy.py"],
    "methods/iba/statistics.py": ["tests/test_iba_statistics.py"],
    "methods/iba/multilayer.py": ["tests/test_iba_variants.py"],
    "methods/iba/regression.py": ["tests/test_iba_variants.py"],
    "methods/iba/inverse.py": ["tests/test_iba_variants.py"],
    "methods/iba/tail.py": ["tests/test_iba_tail_speed.py", "tests/test_iba_bottleneck.py"],
    "methods/input_iba/input_bottleneck.py": ["tests/test_input_iba_bottleneck.py", "tests/test_input_iba_steps.py"],
    "methods/input_iba/wgan.py": ["tests/test_input_iba_wgan.py", "tests/test_input_iba_steps.py",
                                  "tests/test_input_iba_timing.py"],
    "methods/input_iba/input_iba.py": ["tests/test_input_iba_method.py", "tests/test_input_iba_steps.py",
                                       "tests/test_input_iba_timing.py"],
    "methods/input_iba/text.py": ["tests/test_input_iba_text.py", "tests/test_input_iba_text_reference.py",
                                  "tests/test_input_iba_steps.py", "tests/test_text_methods.py", "-k", "iba or gru"],
    "methods/pathways/contributions.py": ["tests/test_pathways_methods.py", "tests/test_pathways_pruning.py",
                                          "tests/test_plugin_cost.py"],
    "methods/pathways/greedy.py": ["tests/test_pathways_methods.py", "tests/test_pathways_pruning.py",
                                   "tests/test_plugin_cost.py"],
    "methods/pathways/neurons.py": ["tests/test_pathways_methods.py", "tests/test_pathways_evaluation.py"],
    "methods/pathways/pathway.py": ["tests/test_pathways_methods.py", "tests/test_pathways_evaluation.py",
                                    "tests/test_pathways_pruning.py"],
    "methods/pathways/maps.py": ["tests/test_pathways_methods.py"],
    "methods/pathways/selection.py": ["tests/test_pathways_methods.py", "tests/test_pathways_pruning.py",
                                      "tests/reference/test_dgr_ties.py"],
    "methods/pathways/inputs.py": ["tests/test_pathways_methods.py"],
    "core/masks.py": ["tests/test_core_masks.py", "tests/test_pathways_methods.py", "tests/test_pathways_pruning.py"],
    "metrics/insertion_deletion.py": ["tests/test_metrics_insdel_points.py", "tests/reference/test_insertion_deletion.py",
                                      "tests/test_metric_names.py"],
    "metrics/degradation.py": ["tests/test_metrics_perturbation.py", "tests/reference/test_bbox_sensitivity_degradation.py",
                                "tests/test_metric_names.py"],
    "metrics/sensitivity_n.py": ["tests/test_metrics_perturbation.py", "tests/reference/test_bbox_sensitivity_degradation.py",
                                 "tests/test_metrics_insdel_points.py", "tests/test_text_methods.py",
                                 "tests/test_plugin_cost.py", "tests/test_metric_names.py", "-k", "sensitivity or named_after"],
    "metrics/lerf.py": ["tests/test_metrics_perturbation.py", "tests/reference/test_lerf_roar.py",
                          "tests/test_pathways_evaluation.py", "tests/test_metric_names.py"],
    "metrics/region.py": ["tests/test_cxr_training.py", "tests/test_metric_names.py", "-k", "by_hand or named_after"],
    "metrics/_perturb.py": ["tests/test_metrics_perturbation.py", "tests/test_metrics_insdel_points.py",
                            "tests/test_cpu_paths.py", "tests/test_analyses.py", "-k", "not killed_run and not engine_hands"],
    "core/boxes.py": ["tests/test_cpu_paths.py", "tests/test_data.py", "tests/reference/test_ehr.py",
                      "tests/test_metrics_localisation_sanity.py", "tests/test_cxr_iou.py"],
    "core/ranking.py": ["tests/test_cpu_paths.py", "tests/test_pathways_methods.py", "tests/test_roar.py",
                        "tests/reference/test_lerf_roar.py", "-k", "not train and not sweep and not subprocess"],
    "metrics/sanity_check.py": ["tests/test_metrics_localisation_sanity.py", "tests/test_metric_names.py"],
    "metrics/axioms.py": ["tests/test_axioms_metric.py", "tests/test_metric_names.py"],
    "metrics/summary.py": ["tests/test_report.py", "tests/test_engine.py", "tests/test_tables.py"],
    "analyses/dissection.py": ["tests/test_analyses_dissection.py"],
    "analyses/dead_neurons.py": ["tests/test_pathways_evaluation.py", "tests/test_pathways_methods.py",
                                 "tests/test_analyses_dead_neurons.py",
                                 "-k", "dead or analysis or jaccard"],
    "metrics/pointing.py": ["tests/test_metrics_eval.py", "tests/test_metric_names.py"],
    "metrics/road.py": ["tests/test_metrics_eval.py", "tests/test_metric_names.py"],
    "metrics/faithfulness.py": ["tests/test_metrics_eval.py", "tests/test_metric_names.py", "tests/test_plugin_cost.py",
                                "-k", "faithful or irof or infidelity or named_after"],
    "metrics/robustness.py": ["tests/test_metrics_eval.py", "tests/test_metrics_eval_oracles.py", "tests/test_metric_names.py"],
    "metrics/randomisation.py": ["tests/test_metrics_eval.py", "tests/test_metrics_eval_oracles.py",
                                 "tests/test_metric_names.py"],
    "metrics/complexity.py": ["tests/test_metrics_eval.py", "tests/test_metric_names.py"],
    "analyses/sensitivity_n.py": ["tests/test_analyses.py", "tests/test_metrics_perturbation.py",
                                  "tests/reference/test_bbox_sensitivity_degradation.py",
                                  "-k", "not killed_run and (sensitivity or streaming or refused or pooled or named_metric or merge_copies or engine_hands or constant_sums or far_from_zero)"],
    "analyses/semantic.py": ["tests/test_methods_semantic.py", "tests/test_analyses.py", "-k", "concepts or engine_hands"],
    "methods/input_iba/text_discriminator.py": ["tests/test_input_iba_text_reference.py", "tests/test_input_iba_text.py",
                                                "-k", "not padded_text and not padding_ignored"],
    "metrics/base.py": ["tests/test_metrics_base.py", "tests/test_metric_names.py", "tests/test_plugin_cost.py",
                        "tests/test_metrics_perturbation.py", "tests/test_axioms_metric.py",
                        "-k", "test_metrics_base or named_after or every_metric_states or without_a_stated or eq8 "
                        "or spearman_summary"],
}

COPY = ("src", "tests", "conf", "assets", "pyproject.toml", "examples", "scripts", "docs")
# no:unraisableexception / no:threadexception: their gc.collect() at exit walks the whole inherited heap
PYTEST_ARGS = ["-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:unraisableexception",
               "-p", "no:threadexception", "-m", "not slow"]
SKIP_PRELOAD = ("xattr", "tests", "conftest", "test_", "__main__", "__mp_main__")
#: set in every forked child: a test that re-runs ``sys.argv`` (Lightning's DDP launcher starts ``[python, *sys.argv]``
#: for each further rank, e.g. under readout's ``devices=1`` -> ``devices=2`` mutant) starts this script again; with
#: it set, that copy stops at once instead of running mutants itself (session 10's "runaway runner")
CHILD_ENV = "XATTR_MUTATION_CHILD"
#: the verdicts that count as killed: a test failed or errored, the run hung past its limit, or the test process
#: died by a signal (e.g. readout's ``devices=2`` mutant: Lightning's DDP launcher SIGKILLs rank 0 when the
#: re-launched rank 1 stops at once)
KILLED = ("killed", "timeout", "crashed")


def hold_lock() -> None:
    """One runner at a time: all share the scratch copy and the results files, so a second runner's mutants would
    be imported by the first one's tests (a mutant of one module "killing" another's, session 10). The lock
    file names the holder's pid; a stale one (its process gone) is taken over."""
    lock = OUT / "runner.lock"
    if lock.exists():
        pid = int(lock.read_text().strip() or 0)
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, ValueError):
            pid = 0
        except PermissionError:
            pass
        if pid and pid != os.getpid():
            raise SystemExit(f"error: another mutation run (pid {pid}) holds {lock}; runs share the scratch copy, "
                             "so wait for it or stop it")
    lock.write_text(str(os.getpid()))


def scratch_copy() -> Path:
    """A copy of the working tree's sources and tests (mutants are written there, never into the clone)."""
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


def slug(module: str) -> str:
    return module.replace("/", ".")


# ---------------------------------------------------------------- which tests run which statement


def statement_spans(source: str) -> tuple[dict[int, tuple[int, int]], set[int]]:
    """For each line: the line span of the innermost statement holding it (a compound statement's header
    only: ``if x:``, a ``def``'s decorators and signature), and the lines that run at import (not inside a
    function body: module constants, class attributes, ``def`` headers with their default arguments)."""
    tree = ast.parse(source)
    span: dict[int, tuple[int, int]] = {}
    at_import: set[int] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.stmt, ast.excepthandler)):
                first = min([child.lineno] + [d.lineno for d in getattr(child, "decorator_list", [])])
                body = getattr(child, "body", None)
                last = (body[0].lineno - 1) if isinstance(body, list) and body and isinstance(body[0], ast.stmt) \
                    else child.end_lineno
                last = max(first, last)
                for ln in range(first, last + 1):
                    span[ln] = (first, last)  # inner statements are visited later and overwrite
                    if not in_function:
                        at_import.add(ln)
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
            else:
                visit(child, in_function or isinstance(child, ast.Lambda))

    visit(tree, False)
    return span, at_import


class _Tracer:
    """pytest plugin of the coverage pass: the lines of one file each test executes, and its time."""

    def __init__(self, target: str):
        self.target = target
        self.lines: set[int] = set()
        self.tests: dict[str, dict] = {}
        self.failed: list[str] = []

    def _global(self, frame, event, arg):  # noqa: ARG002 - sys.settrace's signature
        if frame.f_code.co_filename == self.target:
            self.lines.add(frame.f_lineno)
            return self._local
        return None

    def _local(self, frame, event, arg):  # noqa: ARG002
        if event == "line":
            self.lines.add(frame.f_lineno)
        return self._local

    def start(self) -> None:
        import threading
        sys.settrace(self._global)
        threading.settrace(self._global)

    def pytest_runtest_logstart(self, nodeid, location):  # noqa: ARG002
        self.lines = set()

    def pytest_runtest_logfinish(self, nodeid, location):  # noqa: ARG002
        self.tests.setdefault(nodeid, {"seconds": 0.0})["lines"] = sorted(self.lines)
        self.lines = set()

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)
        t = self.tests.setdefault(report.nodeid, {"lines": [], "seconds": 0.0})
        t["seconds"] += report.duration


def coverage_pass(work: Path, module: str, tmp: Path) -> dict:
    """Run the module's tests once, unmutated, in a forked child tracing the module's lines; returns
    ``{"tests": {nodeid: {"lines", "seconds"}}, "failed": [...], "modules": [third-party modules]}``."""
    target = str(work / "src" / "xattr" / module)
    out = OUT / f"{slug(module)}.coverage.json"
    out.unlink(missing_ok=True)
    args = MODULES[module]
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.environ[CHILD_ENV] = "coverage"
            import pytest
            tracer = _Tracer(target)
            tracer.start()
            with open(OUT / f"{slug(module)}.coverage.log", "w") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                code = pytest.main([*[a for a in PYTEST_ARGS if a != "-x"], "--basetemp", str(tmp), *args],
                                   plugins=[tracer])
            sys.settrace(None)
            mods = sorted(m for m in sys.modules if not m.startswith(SKIP_PRELOAD))
            out.write_text(json.dumps({"tests": tracer.tests, "failed": tracer.failed, "exit": int(code),
                                       "modules": mods}))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    if not out.exists():
        raise RuntimeError(f"coverage pass of {module} wrote nothing: see {OUT / (slug(module) + '.coverage.log')}")
    return json.loads(out.read_text())


def preload(modules: list[str]) -> None:
    """Import, once in the parent, the third-party modules the tests imported (forked children inherit them)."""
    import importlib
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a module that cannot be imported alone is imported by the child
            pass
    try:  # one intra-op thread in every child, whatever tests/conftest.py asks for (the machine is shared)
        import torch
        torch.set_num_threads(1)
        torch.set_num_threads = lambda n: None
    except ImportError:
        pass


# ---------------------------------------------------------------- the mutants


#: class attributes that only cite a source (``paper = "Schulz et al., ICLR 2020, ..."``, and the base classes'
#: annotated empty default ``paper: ClassVar[str] = ""``): like docstrings, which mutmut never mutates, no code
#: reads them, so a mutated citation is not a wrong number
CITATION = ("paper",)


def mutants(path: Path, rel: str) -> list:
    from mutmut import Context, list_mutations
    return [m for m in list_mutations(Context(source=path.read_text(), filename=rel))
            if m.line.split("=")[0].split(":")[0].strip() not in CITATION]  # ``paper: ClassVar[str] = ""`` too


def mutant_source(source: str, rel: str, mid) -> str:
    from mutmut import Context, mutate
    new, n = mutate(Context(source=source, filename=rel, mutation_id=mid))
    if n != 1:
        raise RuntimeError(f"mutmut applied {n} mutations for {mid}")
    return new


def key(mid) -> str:
    return f"{mid.line_number}:{mid.index}:{hashlib.sha1(mid.line.encode()).hexdigest()[:10]}"


def run_one(nodeids: list[str], limit: float, tmp: Path) -> tuple[str, float]:
    """Fork; the child runs ``pytest -x`` on ``nodeids``; the mutant's status and the seconds it took."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.dont_write_bytecode = True  # never a stale .pyc of a mutant
            signal.alarm(int(limit) + 1)  # SIGALRM's default action ends the child: a hang is a kill
            os.environ[CHILD_ENV] = "mutant"
            import pytest
            code = int(pytest.main([*PYTEST_ARGS, "--basetemp", str(tmp), *nodeids]))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    if os.WIFSIGNALED(status):
        return ("timeout" if os.WTERMSIG(status) == signal.SIGALRM else "crashed"), seconds
    code = os.WEXITSTATUS(status)
    # pytest: 0 all passed, 1 a test failed, 2 interrupted (a collection error: the mutant breaks an import),
    # 3 internal error, 4 usage error (a node id no longer collected: the mutant changed a parametrisation)
    return {0: "survived", 1: "killed", 2: "killed", 3: "error", 4: "killed"}.get(code, f"error {code}"), seconds


def run_module(work: Path, module: str, retest: bool) -> str:
    rel = f"src/xattr/{module}"
    path = work / rel
    original = path.read_text()
    tmp = OUT / "tmp"
    t_start = time.time()
    cov = coverage_pass(work, module, tmp)
    if cov["failed"] or cov["exit"] not in (0,):
        raise RuntimeError(f"{module}: tests fail unmutated (exit {cov['exit']}): {cov['failed'][:5]}; "
                           f"see {OUT / (slug(module) + '.coverage.log')}")
    preload(cov["modules"])
    gc.collect()
    gc.freeze()  # the parent's objects stay out of the children's collections (no copy-on-write of the heap)
    for pyc in (path.parent / "__pycache__").glob(path.stem + ".*.pyc"):
        pyc.unlink()
    tests = cov["tests"]
    by_time = sorted(tests, key=lambda t: tests[t]["seconds"])
    covering: dict[int, set[str]] = {}
    for t, v in tests.items():
        for ln in v["lines"]:
            covering.setdefault(ln, set()).add(t)
    runs_module = [t for t in by_time if tests[t]["lines"]]
    span, at_import = statement_spans(original)

    results_file = OUT / f"{slug(module)}.results.jsonl"
    done = read_results(module)
    mids = mutants(path, rel)
    print(f"{module}: {len(mids)} mutants, {len(tests)} tests ({sum(v['seconds'] for v in tests.values()):.1f} s "
          f"unmutated)", flush=True)
    try:
        with open(results_file, "a") as res:
            for i, mid in enumerate(mids, 1):
                k = key(mid)
                old = done.get(k)
                if old and (old["status"] in KILLED or not retest):
                    continue
                ln = mid.line_number + 1  # mutmut counts lines from 0
                first, last = span.get(ln, (ln, ln))
                chosen = set().union(*(covering.get(ln, set()) for ln in range(first, last + 1)))
                if ln in at_import:  # every test that runs some line of the module (conservative: see above)
                    nodeids = [t for t in by_time if t in chosen] + [t for t in runs_module if t not in chosen]
                else:
                    nodeids = [t for t in by_time if t in chosen]
                if not nodeids:
                    status, seconds = "no test runs it", 0.0
                else:
                    limit = max(90.0, 10 * sum(tests[t]["seconds"] for t in nodeids) + 60)
                    path.write_text(mutant_source(original, rel, mid))
                    try:
                        status, seconds = run_one(nodeids, limit, tmp)
                    finally:
                        path.write_text(original)
                r = {"key": k, "line": ln, "index": mid.index, "status": status,
                     "seconds": round(seconds, 2), "tests": len(nodeids)}
                res.write(json.dumps(r) + "\n")
                res.flush()
                done[k] = r
                print(f"  {i}/{len(mids)} line {ln}: {status} ({seconds:.1f} s, "
                      f"{len(nodeids)} tests)", flush=True)
    finally:
        path.write_text(original)

    return summary(module, time.time() - t_start)


def read_results(module: str) -> dict[str, dict]:
    """The results recorded so far for ``module`` (key -> last record)."""
    f = OUT / f"{slug(module)}.results.jsonl"
    done: dict[str, dict] = {}
    if f.exists():
        for line in f.read_text().splitlines():
            r = json.loads(line)
            done[r["key"]] = r
    return done


def summary(module: str, seconds: float | None = None) -> str:
    """One table line for ``module`` from its recorded results (the mutants of the clone's current source);
    writes the survivors' diffs."""
    rel = f"src/xattr/{module}"
    original = (REPO / rel).read_text()
    mids = mutants(REPO / rel, rel)
    done = read_results(module)
    tested = [(m, done[key(m)]) for m in mids if key(m) in done]
    killed = sum(r["status"] in KILLED for _, r in tested)
    with open(OUT / f"{slug(module)}.survivors.txt", "w") as f:
        for m, r in tested:
            if r["status"] not in KILLED:
                diff = difflib.unified_diff(original.splitlines(True), mutant_source(original, rel, m).splitlines(True),
                                            rel, rel + " (mutant)", n=1)
                f.write(f"# line {m.line_number + 1}, mutant {m.index}: {r['status']}\n{''.join(diff)}\n")
    tally: dict[str, int] = {}
    for _, r in tested:
        tally[r["status"]] = tally.get(r["status"], 0) + 1
    others = ", ".join(f"{k} {v}" for k, v in sorted(tally.items()) if k not in KILLED)
    secs = [r["seconds"] for _, r in tested if r["seconds"]]
    mean = sum(secs) / len(secs) if secs else 0.0
    score = 100.0 * killed / len(tested) if tested else float("nan")
    took = f"{seconds:.0f} s" if seconds is not None else "-"
    return (f"| {module} | {killed} / {len(tested)} (of {len(mids)}) | {score:.0f}% | {others or '-'} | "
            f"{mean:.1f} s | {took} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", help="modules under src/xattr (default: all, in priority order)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--retest", action="store_true", help="re-run the mutants not killed before")
    p.add_argument("--report", action="store_true", help="print the table from the results so far; run nothing")
    a = p.parse_args(argv)
    if os.environ.get(CHILD_ENV):
        print(f"error: started from a runner's {os.environ[CHILD_ENV]} child (a test re-ran sys.argv, e.g. "
              "Lightning's DDP launcher); not running", file=sys.stderr, flush=True)
        return 3
    if a.list:
        for m, t in MODULES.items():
            print(m, " ".join(t))
        return 0
    if a.report:
        print("| module | killed / tested (of all) | score | not killed | s / mutant | time |\n|---|---|---|---|---|---|")
        for m in a.modules or list(MODULES):
            if read_results(m):
                print(summary(m), flush=True)
        return 0
    mods = a.modules or list(MODULES)
    unknown = [m for m in mods if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {unknown}; choices: {list(MODULES)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    hold_lock()
    work = scratch_copy()
    os.environ.setdefault("XATTR_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline")
    os.environ["PYTHONPATH"] = str(work / "src") + os.pathsep + str(work)
    sys.path[:0] = [str(work / "src"), str(work)]
    os.chdir(work)
    scores = OUT / "scores.md"
    if not scores.exists():
        scores.write_text("| module | killed / tested (of all) | score | not killed | s / mutant | time |\n"
                          "|---|---|---|---|---|---|\n")
    for m in mods:
        try:
            line = run_module(work, m, a.retest)
        except RuntimeError as e:
            print(f"{m}: not measured: {e}", file=sys.stderr, flush=True)
            continue
        print(line, flush=True)
        with open(scores, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
