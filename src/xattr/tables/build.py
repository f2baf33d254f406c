"""Build a paper table from run directories: the paper's rows and columns, published values beside ours.

A run is a finished ``python -m xattr.run`` folder (:meth:`~xattr.core.store.RunStore.find_runs`); it is
only read (:class:`~xattr.core.store.RunStore` writes nothing on opening). Each metric's dataset summary is
its class's :meth:`~xattr.metrics.base.Metric.summarise` (e.g. the eq.-8 scaling of the degradation score
needs dataset-level ``t1`` and ``b``), the same numbers as the run's ``summary.csv``. Figures
(``kind: figure``) are drawn as mean curves per run, or from a dataset-level analysis' result
(``analyses/<name>.csv``, e.g. the pooled Sensitivity-N of the IBA paper), with the paper's claim as caption.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from xattr.analyses.sensitivity_n import PooledSensitivityN  # noqa: E402
from xattr.core.safe_build import build_known, check_known  # noqa: E402
from xattr.core.store import RunStore  # noqa: E402
from xattr.errors import XattrConfigError, unknown  # noqa: E402
from xattr.metrics.summary import summarise_run_scores  # noqa: E402
from xattr.tables.analysis import analysis_table  # noqa: E402
from xattr.tables.dissection import dissection_table  # noqa: E402
from xattr.tables.match import check_run_paths, fmt, matches, no_runs  # noqa: E402
from xattr.tables.output import write_table  # noqa: E402
from xattr.tables.roar import roar_table  # noqa: E402
from xattr.tables.roar_road import roar_road_table  # noqa: E402

PUBLISHED = Path(__file__).with_name("published.yaml")


@cache
def load_published() -> dict[str, dict]:
    with open(PUBLISHED) as f:
        return yaml.safe_load(f)


def summarise_run(run_dir: Path) -> dict[str, tuple[float, float, int]]:
    """``<metric>/<score>`` -> (mean, s.e., n) for one run, each metric summarising its own scores."""
    store = RunStore(run_dir)
    cfg, df = store.config(), store.rows()
    metrics = {}
    for mname, node in (cfg.get("metric") or {}).items():
        check_known(node, METRIC_PACKAGES, f"metric.{mname}", f"the config of {store.dir}")  # one line
        try:
            metrics[mname] = build_metric(node)
        except (XattrConfigError, ImportError, TypeError, ValueError):  # a metric this version cannot build
            continue
    return {r.score: (r.mean, r.sem, r.n) for r in summarise_run_scores(df, metrics).itertuples()}


METRIC_PACKAGES = ("xattr.metrics.",)


def build_metric(node, source: object = "a run's config"):
    """A metric from a run's config, read as data: only classes of ``xattr.metrics`` are built
    (:func:`xattr.core.safe_build.build_known`)."""
    return build_known(node, METRIC_PACKAGES, "metric", source)


def _score(spec: dict, row: dict, col: dict) -> str | None:
    """The ``<metric>/<score>`` of a cell: the row's, else the column's, else the table's."""
    score = row.get("score") or col.get("score") or spec.get("score")
    if score and col.get("score_prefix"):  # e.g. the "Original" column reads model_top1 for the row's top1
        head, _, last = score.rpartition("/")
        score = f"{head}/{col['score_prefix']}{last}"
    return score


def paper_models(spec: dict) -> set[str]:
    """The paper's models: ``models`` and every column's ``model.name``."""
    out = {str(m) for m in spec.get("models") or []}
    out |= {str(c["match"]["model.name"]) for c in spec.get("columns") or [] if "model.name" in (c.get("match") or {})}
    return out


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def without_model(name: str, model: str) -> str:
    """``name`` with the words spelling ``model`` removed ("ResNet-50 deg. 8x8", resnet50 -> "deg. 8x8")."""
    words, target = name.split(), _norm(model)
    for i in range(len(words)):
        acc = ""
        for k in range(i, len(words)):
            acc += _norm(words[k])
            if acc == target:
                return " ".join(words[:i] + words[k + 1:])
            if not target.startswith(acc):
                break
    return name


def _stand_in_groups(columns: list[dict]) -> list[tuple[str, dict]]:
    """Columns that differ only by the paper model, once each: (name without the model, the column with its
    ``model.name`` match dropped). A run of another model is shown once per group, never under a paper model."""
    groups: dict[tuple, tuple[str, dict]] = {}
    for col in columns:
        match = dict(col.get("match") or {})
        model = match.pop("model.name", None)
        if model is None:
            continue
        key = (tuple(sorted((k, repr(v)) for k, v in match.items())), col.get("score"), col.get("score_prefix"))
        if key not in groups:
            name = without_model(col["name"], str(model))
            if any(name == n for n, _ in groups.values()):  # two settings, one name: spell the setting out
                name = " ".join([name, *(f"{k}={v}" for k, v in match.items())]).strip()
            groups[key] = (name, {**col, "match": match})
    return list(groups.values())


def _ours(hits: list[tuple[tuple[float, float, int], str]], named: bool) -> str:
    """Our numbers of one cell; ``named``: each followed by the model that produced it."""
    if not hits:
        return "–"
    return "; ".join(fmt(m, s) + (f" ({model})" if named else "") for (m, s, _), model in hits)


def build_table(table_id: str, run_paths: list[str | Path], out_dir: str | Path | None = None) -> pd.DataFrame:
    """The table ``table_id`` of ``published.yaml`` with our numbers from the runs under ``run_paths``.

    Each published column gives "<column> (paper)" and "<column> (ours)". A column that names a paper model
    (``match: {model.name: ...}``) takes only that model's runs; runs of other models (stand-ins, e.g.
    MobileNet-V2 for the papers' VGG-16) get their own columns "<column without the model> (ours, <model>)",
    one per distinct column setting, so one model's number never sits under another model's heading. Columns
    that differ by score (no model) take every run, each number followed by its model.
    Writes ``<out_dir>/<table_id>.md`` and ``.csv`` (and ``.png`` for figures) and returns the frame.
    """
    pub = load_published()
    if table_id not in pub:
        raise unknown("table", table_id, sorted(pub))
    spec = pub[table_id]
    check_run_paths(run_paths)
    if spec.get("kind") == "roar":  # ROAR: retraining units (results.json), accuracy per percentile, AUC, figure
        return roar_table(table_id, spec, run_paths, Path(out_dir or "outputs/tables"))
    if spec.get("kind") == "roar_road":  # ROAD beside ROAR on the same maps: both orderings, Kendall's tau
        return roar_road_table(table_id, spec, run_paths, Path(out_dir or "outputs/tables"))
    runs = [(r, RunStore(r).config()) for r in RunStore.find_runs(run_paths)]
    if not runs:  # never replace a table with an empty one
        raise no_runs(run_paths)
    for r, cfg in runs:  # a run's config is data: refuse a foreign _target_ before building anything
        for mname, node in (cfg.get("metric") or {}).items():
            check_known(node, METRIC_PACKAGES, f"metric.{mname}", f"the config of {r}")
    out_dir = Path(out_dir or "outputs/tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.get("kind") == "figure":
        models = sorted({str(cfg.model.name) for _, cfg in runs})
        if spec.get("panels") == "model" and len(models) > 1:  # one figure per half (pixels / tokens axes)
            return pd.concat([_figure(f"{table_id}_{m}", spec, [(r, c) for r, c in runs if str(c.model.name) == m],
                                      out_dir).assign(model=m) for m in models], ignore_index=True)
        return _figure(table_id, spec, runs, out_dir)
    if spec.get("kind") == "dissection":  # detectors per model and concept from analyses/dissection.csv
        return dissection_table(table_id, spec, runs, out_dir)
    if spec.get("kind") == "analysis":  # cells from analyses/<name>.csv (e.g. the pathways' dead-neuron shares)
        return analysis_table(table_id, spec, runs, out_dir)
    summaries = {r: summarise_run(r) for r, _ in runs}
    columns = spec["columns"]
    ours_models = paper_models(spec)
    stand_ins = sorted({str(cfg.model.name) for _, cfg in runs} - ours_models)
    groups = _stand_in_groups(columns)

    def cells(row: dict, row_runs: list) -> dict[str, str]:
        rec = {}
        for col in columns:
            score = _score(spec, row, col)
            hits = [(summaries[r][score], str(cfg.model.name)) for r, cfg in row_runs
                    if matches(cfg, col.get("match")) and score in summaries[r]]
            rec[f"{col['name']} (ours)"] = _ours(hits, named=True)
        for model in stand_ins:
            for name, col in groups:
                score = _score(spec, row, col)
                hits = [(summaries[r][score], model) for r, cfg in row_runs
                        if str(cfg.model.name) == model and matches(cfg, col["match"]) and score in summaries[r]]
                rec[f"{name} (ours, {model})".strip()] = _ours(hits, named=False)
        return rec

    rows = []
    for i, row in enumerate(spec["rows"]):
        rec: dict[str, Any] = {"": row["name"]}
        for j, col in enumerate(columns):
            paper = spec["paper"][i][j] if spec.get("paper") else None
            rec[f"{col['name']} (paper)"] = "–" if paper is None else f"{paper:.3f}"
        rec.update(cells(row, [(r, cfg) for r, cfg in runs if matches(cfg, row.get("match"))]))
        rows.append(rec)
    # runs of methods the paper's table does not have: extra rows, marked
    for r, cfg in runs:
        if any(matches(cfg, row.get("match")) for row in spec["rows"]):
            continue
        rec = {"": f"{cfg.get('method_name')} (not in paper)"}
        rec.update({f"{col['name']} (paper)": "–" for col in columns})
        rec.update(cells({}, [(r, cfg)]))
        rows.append(rec)
    order = [""] + [f"{c['name']} ({w})" for c in columns for w in ("paper", "ours")]
    extra = [k for k in (rows[0] if rows else {}) if k not in order and any(rec[k] != "–" for rec in rows)]
    df = pd.DataFrame(rows, columns=order + extra)  # stand-in columns without any number are left out
    write_table(df, spec, table_id, out_dir)
    return df


def _figure(table_id: str, spec: dict, runs: list, out_dir: Path) -> pd.DataFrame:
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = []
    for r, cfg in runs:
        key = spec["curve"]
        metric = key.split("/")[0]
        store = RunStore(r)
        pooled = store.analysis_result(PooledSensitivityN.name)
        curves = store.curves()
        if pooled is not None:  # IBA-paper protocol: the run's analysis, one correlation pooled over images
            res = pooled
            x, y = res["n"].to_numpy(), res["correlation"].to_numpy()
        elif f"{metric}/attr_sum" in curves:  # a run made before the analysis: pool its stored pairs now
            analysis = PooledSensitivityN(metric)
            analysis.add(torch.tensor(curves[f"{metric}/attr_sum"]), torch.tensor(curves[f"{metric}/output_drop"]),
                         torch.tensor(curves[f"{metric}/attr_sum/x"]))
            res = analysis.compute()
            x, y = res["n"].to_numpy(), res["correlation"].to_numpy()
        elif key in curves:
            y = np.nanmean(curves[key], 0)
            x = curves.get(key + "/x", np.arange(len(y)))
        else:
            continue
        label = f"{cfg.get('method_name')} ({cfg.model.name})"
        ax.plot(x, y, marker=".", label=label)
        rows.append({"run": label, **{f"{float(a):g}": round(float(b), 4) for a, b in zip(x, y)}})
    if "sensitivity" in spec["curve"]:
        ax.set_xscale("log")
    ax.set_title(spec["title"], fontsize=9)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{table_id}.png", dpi=110)
    plt.close(fig)
    df = pd.DataFrame(rows)
    df.to_csv(out_dir / f"{table_id}.csv", index=False)
    md = f"### {spec['title']}\n\nSource: {spec['source']}\n\nPaper: {spec.get('claim', '')}\n\n"
    md += (df.to_markdown(index=False) if len(df) else "(no runs)") + f"\n\n![{table_id}]({table_id}.png)\n"
    (out_dir / f"{table_id}.md").write_text(md)
    return df
