"""The house: imports only point down, reading a run writes nothing, auxiliary results flow explicitly from
a method through the store to the metric (and analysis) that declares them, one low-level piece each."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import compose_cfg
from xattr.core.hooks import frozen
from xattr.core.store import RunStore
from xattr.methods.base import Explanation
from xattr.methods.baselines.random import RandomAttribution
from xattr.metrics.base import Metric, MetricResult
from xattr.run import run

SRC = Path(__file__).resolve().parents[1] / "src" / "xattr"
# config -> data/models -> methods -> metrics/analyses -> engine -> tables -> CLI, with core at the bottom
# (xattr.config holds the CLI's pre-Hydra checks; the entry points run, train, table sit on top).
# Same rank: siblings that must not import each other.
RANK = {"errors": 0, "core": 1, "viz": 2, "data": 3, "models": 3, "methods": 4, "training": 4,
        "metrics": 5, "analyses": 6, "engine": 7, "tables": 8, "config": 9, "cli": 9.5, "api": 10, "run": 10, "train": 10, "generate": 10, "table": 10, "report": 10, "demo": 11}
FAST = ["model=efficientnet_lite0", "dataset=samples", "target=top1", "batch_size=2", "trainer=cpu",
        "logger=none", "trainer.enable_progress_bar=false"]


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """Every ``xattr.<package>`` a module imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for n in names:
            parts = n.split(".")
            if parts[0] == "xattr" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_imports_only_point_down():
    bad, unknown = [], []
    for path in sorted(SRC.rglob("*.py")):
        pkg = _package(path)
        if pkg == "__init__":
            continue
        if pkg not in RANK:
            unknown.append(pkg)
            continue
        for dep in _imports(path) - {pkg}:
            if dep not in RANK or RANK[dep] >= RANK[pkg]:
                bad.append(f"{path.relative_to(SRC)} imports xattr.{dep}")
    assert not unknown, f"packages without a place in the house: {sorted(set(unknown))}"
    assert not bad, "backward or sideways imports:\n" + "\n".join(bad)


def _doc_floors() -> dict[str, tuple[float, set[str] | None]]:
    """``package -> (floor, imports today)`` from the floor table of docs/ARCHITECTURE.md (``None``: a package
    not written yet, ``-``)."""
    text = (SRC.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    lines = text.split("floor  package")[1].split("```")[0].splitlines()
    out, floor = {}, None
    for line in lines[1:]:
        if line[:6].strip():
            floor = float(line[:6])
        name = line[7:26].strip().removesuffix(".py").removesuffix("/")
        if not name:
            continue
        deps = re.split(r"\s{2,}", line.strip())[-1].split("(")[0].strip()
        out[name] = (floor, None if deps == "-" else set() if deps == "nothing" else set(deps.split(", ")))
    return out


def test_the_architecture_doc_says_what_each_package_imports():
    doc = _doc_floors()
    assert {k: f for k, (f, _) in doc.items()} == {k: float(v) for k, v in RANK.items()}
    code: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        pkg = _package(path)
        if pkg != "__init__":
            code.setdefault(pkg, set()).update(_imports(path) - {pkg})
    assert {k: sorted(v) for k, v in code.items()} == {k: sorted(doc[k][1] or ()) for k in code}
    assert all(doc[k][1] is None for k in set(doc) - set(code))  # not written yet: "-"


def test_the_import_checker_would_catch_a_backward_arrow(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from xattr.engine.module import AttributionModule\n")
    assert _imports(mod) == {"engine"}



# ----------------------------------------------------------------------------- no file cycles
def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``root`` (a package folder) it imports, at the top or inside functions:
    ``import a.b.c`` and ``from a.b import c`` (relative too) name ``a.b.c`` when it is a module, else the
    nearest enclosing module (a package's ``__init__``). Python runs a package's ``__init__`` before any of
    its submodules, so importing ``a.b.c`` from outside package ``a.b`` imports ``a.b`` too (from inside it,
    ``a.b`` is already running: no arrow unless named)."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for d in {resolve(t) for t in targets if t.split(".")[0] == root.name} - {None}:
                parts = d.split(".")
                deps |= {d} | {p for p in (".".join(parts[:k]) for k in range(1, len(parts)))
                                if p in files and not mod.startswith(p + ".")}
        deps.discard(mod)
        graph[mod] = deps
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other (strongly connected, two or more, or one importing itself),
    as one cycle through them: ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # one path around the group, from its first module back to it
        start = min(group)
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in group)
            back = start in nxt and len(path) > 1 or nxt == [start]
            if back:
                break
            fresh = [w for w in nxt if w not in seen]
            if not fresh:
                break
            path.append(fresh[0])
            seen.add(fresh[0])
        cycles.append(path + [start])
    return sorted(cycles)


def test_no_module_imports_itself_round_a_cycle():
    cycles = import_cycles(import_graph(SRC))
    assert not cycles, "modules that import each other (break it: shared pieces into a module both import):\n" + \
        "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_checker_would_catch_a_planted_cycle(tmp_path):
    pkg = tmp_path / "xattr"
    (pkg / "tables").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tables" / "__init__.py").write_text("NAME = 1\n")
    (pkg / "tables" / "build.py").write_text("import numpy\nfrom xattr.tables import kinds\n")
    (pkg / "tables" / "kinds.py").write_text("def f():\n    from .build import build\n")
    (pkg / "tables" / "ok.py").write_text("from xattr.tables.kinds import f\nfrom xattr.tables import NAME\nimport xattr\n")
    graph = import_graph(pkg)
    assert graph["xattr.tables.build"] == {"xattr.tables.kinds"}  # a submodule named in `from pkg import name`
    assert graph["xattr.tables.kinds"] == {"xattr.tables.build"}  # relative, inside a function
    assert graph["xattr.tables.ok"] == {"xattr.tables.kinds", "xattr.tables", "xattr"}  # not a submodule: __init__
    assert import_cycles(graph) == [["xattr.tables.build", "xattr.tables.kinds", "xattr.tables.build"]]
    (pkg / "tables" / "kinds.py").write_text("def f():\n    from xattr.tables import ok\n")
    assert import_cycles(import_graph(pkg)) == [["xattr.tables.kinds", "xattr.tables.ok", "xattr.tables.kinds"]]
    (pkg / "tables" / "kinds.py").write_text("def f():\n    return 1\n")
    assert import_cycles(import_graph(pkg)) == []
    (pkg / "methods" / "text").mkdir(parents=True)  # the cycle through a package's __init__
    (pkg / "methods" / "__init__.py").write_text("")
    (pkg / "methods" / "text" / "__init__.py").write_text("from xattr.methods.iba_text import T\n")
    (pkg / "methods" / "text" / "base.py").write_text("from xattr.methods.text import helpers\n")
    (pkg / "methods" / "text" / "helpers.py").write_text("")
    (pkg / "methods" / "iba_text.py").write_text("from xattr.methods.text.base import B\n")
    graph = import_graph(pkg)
    assert graph["xattr.methods.text.base"] == {"xattr.methods.text.helpers"}  # inside its package: no arrow to it
    assert graph["xattr.methods.iba_text"] == {"xattr.methods.text.base", "xattr.methods.text"}
    assert import_cycles(graph) == [["xattr.methods.iba_text", "xattr.methods.text", "xattr.methods.iba_text"]]


def test_one_place_for_each_low_level_piece():
    """The helpers that used to exist two or three times are defined once, in xattr.core."""
    defs: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.col_offset == 0:
                defs.setdefault(node.name, []).append(str(path.relative_to(SRC)))
    for name in ("frozen", "hooked", "capture", "hook_count", "seeded", "image_seeds", "make_generators",
                 "draw_noise", "check_choice", "check_positive_int", "module_device", "layer_path", "mean_and_sem",
                 "RunStore", "Preprocess", "Vocab", "make_trainer", "build_loggers"):
        assert len(defs.get(name, [])) == 1 and defs[name][0].startswith("core/"), (name, defs.get(name))
    for gone in ("frozen_params", "has_hooks", "model_device", "_Stop", "summarise"):
        assert gone not in defs, (gone, defs[gone])


def test_frozen_restores_flags_and_grads_also_on_error():
    net = torch.nn.Linear(2, 2)
    net.weight.grad = torch.ones(2, 2)
    with pytest.raises(RuntimeError), frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
        net(torch.ones(1, 2)).sum()
        raise RuntimeError
    assert all(p.requires_grad for p in net.parameters())
    assert torch.equal(net.weight.grad, torch.ones(2, 2)) and net.bias.grad is None


def test_explanation_checks_the_batch_axis():
    Explanation(torch.zeros(2, 1, 4, 4), {"a/b": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="'a/b'"):
        Explanation(torch.zeros(2, 1, 4, 4), {"a/b": torch.zeros(3)})
    parts = [Explanation(torch.full((1, 1, 2, 2), float(i)), {"s/x": torch.tensor([i])}) for i in range(3)]
    cat = Explanation.cat(parts)
    assert cat.maps.shape == (3, 1, 2, 2) and cat.group("s") == {"x": cat.aux["s/x"]} and cat.aux["s/x"].tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- explicit results through the engine
class Probed(RandomAttribution):
    """Random maps and two auxiliaries: a per-image value (the map's mean) and a per-image small map."""

    def _explain(self, x, target, aux):
        maps = self._attribute(x, target)
        return Explanation(maps, {"probe/mean": maps.mean((1, 2, 3)), "probe/thumb": maps[:, :, :4, :4] * 2})


class ReadsProbe(Metric):
    """Returns the auxiliary it declares as its score, and records every extra it was given."""

    name = "reads_probe"
    needs = ("probe/mean", "boxes", "not/there")
    seen: list[set] = []

    def evaluate(self, model, x, target, maps, **extras):
        type(self).seen.append(set(extras))
        return MetricResult(scores={"probe": extras["probe/mean"].float(), "map_mean": maps.mean((1, 2, 3))})


class Blind(Metric):
    name = "blind"
    seen: list[set] = []

    def evaluate(self, model, x, target, maps, **extras):
        type(self).seen.append(set(extras))
        return MetricResult(scores={"zero": torch.zeros(x.shape[0])})


def test_auxiliary_results_reach_the_store_and_exactly_the_metrics_that_declare_them(tmp_path, monkeypatch):
    import xattr.config

    options = xattr.config.group_options
    monkeypatch.setattr(xattr.config, "group_options",  # the test's metrics have no yaml of their own
                        lambda g: options(g) + (["reads_probe", "blind"] if g == "metric" else []))
    ReadsProbe.seen.clear()
    Blind.seen.clear()
    cfg = compose_cfg(FAST + ["method=random", "method._target_=tests.test_architecture.Probed", "dataset.limit=3",
                              "metric=[insertion_deletion]", "+metric.reads_probe._target_=tests.test_architecture.ReadsProbe",
                              "+metric.blind._target_=tests.test_architecture.Blind", "~metric.insertion_deletion"],
                      output_dir=tmp_path / "run")
    run_dir = run(cfg)
    store = RunStore(run_dir)
    aux = store.aux()
    maps = store.heatmaps()
    assert set(aux) == set(maps) and len(maps) == 3
    for i, m in maps.items():
        assert aux[i]["probe/mean"] == pytest.approx(float(m.astype(np.float32).mean()), abs=1e-3)
        np.testing.assert_allclose(aux[i]["probe/thumb"][0], 2 * m[:4, :4].astype(np.float32), atol=2e-3)
    df = store.per_image()
    np.testing.assert_allclose(df["reads_probe/probe"], df["reads_probe/map_mean"], rtol=1e-6)
    # the metric got exactly what it declared and exists (image batches carry 'boxes'; nothing is 'not/there')
    assert ReadsProbe.seen and all(s == {"probe/mean", "boxes"} for s in ReadsProbe.seen)
    assert Blind.seen and all(s == set() for s in Blind.seen)


def _tree(path: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(path)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()} | {
        str(p.relative_to(path)) + "/": ("dir", 0) for p in sorted(path.rglob("*")) if p.is_dir()}


def test_reading_a_run_leaves_it_byte_identical(tmp_path):
    from xattr.methods.saved import SavedMaps
    from xattr.tables.build import build_table, summarise_run

    run_dir = run(compose_cfg(FAST + ["method=random", "dataset.limit=2", "metric=[insertion_deletion]",
                                      "metric.insertion_deletion.per_step=12000"], output_dir=tmp_path / "run"))
    before = _tree(run_dir)
    store = RunStore(run_dir)
    store.per_image(), store.curves(), store.heatmaps(), store.aux(), store.stages(), store.done_keys()
    assert store.load_state("nothing") is None
    RunStore(tmp_path / "no-such-run").per_image()
    assert not (tmp_path / "no-such-run").exists()
    SavedMaps(torch.nn.Linear(1, 1), run_dir).maps_by_id()
    summarise_run(run_dir)
    build_table("inputiba_t3_insdel", [run_dir], tmp_path / "tables")
    assert _tree(run_dir) == before


def test_summary_of_a_run_is_each_metrics_own(tmp_path):
    """The run's summary.csv and the tables use the metric's summarise (degradation: eq.-8 scaling)."""
    from xattr.tables.build import summarise_run

    run_dir = run(compose_cfg(FAST + ["method=random", "dataset.limit=2", "metric=[degradation]",
                                      "metric.degradation.tile=56", "metric.degradation.n_points=17"], output_dir=tmp_path / "run"))
    summary = pd.read_csv(run_dir / "summary.csv").set_index("score")
    df = pd.read_parquet(run_dir / "per_image.parquet")
    t1, b = df["degradation/top1_prob"].mean(), df["degradation/degraded_prob"].mean()
    assert summary.loc["degradation/degradation_scaled", "mean"] == pytest.approx(df["degradation/degradation"].mean() / (t1 - b), rel=1e-5)
    assert summarise_run(run_dir)["degradation/degradation_scaled"][0] == pytest.approx(summary.loc["degradation/degradation_scaled", "mean"])
