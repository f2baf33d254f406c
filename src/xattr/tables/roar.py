"""ROAR tables (``kind: roar`` in ``published.yaml``): test accuracy per percentile removed, the ROAR AUC, the
published AUCs, and a figure of accuracy vs % removed per method (dissertation ch. 5 Table 1, ch. 6 Fig. 6).

A *unit* is a folder of ``python -m xattr.train recipe=roar`` holding ``config.yaml`` (with its ``roar``
node: ``method``, ``percent``, ``repeat``) and ``results.json`` (``test_acc`` of the best validation epoch);
unfinished units (no ``results.json``) are counted and left out. Per method and percentile: the mean test
accuracy over repeats and its standard error. The unmodified baseline (``roar.percent=0``) is the 0 %
column and the curves' first point.

ROAR AUC (not in the public RoarTorch code, so stated here): the trapezoid of the mean accuracy over the
removed fraction ``p / 100`` at the table's percentiles (``percents`` of the spec: 30/50/70/90 for Table 1,
L1988), divided by the fraction range, i.e. a mean accuracy; lower is better. The published Gradient AUC
0.728 is consistent with it (a ResNet-8 at about 0.8 to 0.85 accuracy degrading to about 0.6). Its
standard error is over the repeats that finished every percentile. Percentiles run beyond the spec's are
shown, not integrated; with none of the spec's, all that ran are used. Where the 10% point ran and the spec
leaves it out, a second AUC with it is shown beside ("AUC with 10%"): neither the paper nor the code says
whether the published AUC includes it (RoarTorch's configs run 10/30/50/70/90).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from xattr.core.store import RunStore
from xattr.core.summary import mean_and_sem
from xattr.tables.match import fmt, no_runs
from xattr.tables.output import write_table
from xattr.viz.roar import plot_roar

BASE = "base"


def find_units(paths: list[str | Path]) -> tuple[list[dict[str, Any]], int]:
    """``(finished units, unfinished count)`` under ``paths``: each ``{method, percent, repeat, acc, dir}``."""
    done, pending = [], 0
    for d in RunStore.find_configured(paths):
        roar = RunStore(d).config().get("roar")
        if roar is None or roar.get("percent") is None:
            continue
        res = d / "results.json"  # written by python -m xattr.train (a training unit, not a run folder)
        if not res.is_file():
            pending += 1
            continue
        acc = json.loads(res.read_text()).get("test_acc")
        method = BASE if float(roar.percent) == 0 else str(roar.method)
        done.append({"method": method, "percent": float(roar.percent), "repeat": int(roar.repeat),
                     "acc": float(acc), "dir": str(d)})
    return done, pending


def roar_auc(percents: list[float], acc: list[float]) -> float:
    """Trapezoid of ``acc`` over ``percents / 100`` divided by the fraction range (one point: itself)."""
    x, y = np.asarray(percents, float) / 100, np.asarray(acc, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def summarise_units(units: list[dict], spec_percents: list[float]) -> dict[str, dict[str, Any]]:
    """Per method: ``acc[p] = (mean, sem, n)``, the AUC (mean, sem over complete repeats) and its percents."""
    df = pd.DataFrame(units)
    out: dict[str, dict[str, Any]] = {}
    if df.empty:
        return out
    for method, g in df.groupby("method"):
        acc = {float(p): mean_and_sem(torch.tensor(gp["acc"].to_numpy())) for p, gp in g.groupby("percent")}
        ran = sorted(p for p in acc if p > 0)
        use = [p for p in ran if p in {float(q) for q in spec_percents}] or ran
        auc, auc_sem = float("nan"), float("nan")
        if use:
            auc = roar_auc(use, [acc[p][0] for p in use])
            per_rep = g[g["percent"].isin(use)].pivot_table(index="repeat", columns="percent", values="acc")
            per_rep = per_rep.dropna()
            if len(per_rep) > 1:
                aucs = [roar_auc(use, [r[p] for p in use]) for _, r in per_rep.iterrows()]
                auc_sem = float(np.std(aucs, ddof=1) / np.sqrt(len(aucs)))
        out[str(method)] = {"acc": acc, "auc": (auc, auc_sem), "auc_percents": use}
        if 10.0 in ran and 10.0 not in use and use:
            with10 = sorted(set(use) | {10.0})
            out[str(method)]["auc_with_10"] = roar_auc(with10, [acc[p][0] for p in with10])
    return out


def roar_table(table_id: str, spec: dict, run_paths: list[str | Path], out_dir: Path) -> pd.DataFrame:
    """Build a ``kind: roar`` table: ``<out_dir>/<id>.md``, ``.csv`` and ``.png`` (see module docstring)."""
    units, pending = find_units(run_paths)
    if not units and not pending:  # never replace a table with an empty one
        raise no_runs(run_paths, "ROAR units of python -m xattr.train recipe=roar")
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_percents = [float(p) for p in spec.get("percents") or []]
    summary = summarise_units(units, spec_percents)
    percents = sorted({float(u["percent"]) for u in units} | set(spec_percents))
    rows_spec = spec.get("rows") or []
    columns = spec.get("columns") or []
    base = summary.get(BASE, {}).get("acc", {}).get(0.0)

    def pct(p: float) -> str:
        return f"{p:g}%"

    rows = []
    names = {}
    for i, row in enumerate(rows_spec):
        method = str(row["method"])
        names[method] = row["name"]
        rows.append(_row(row["name"], summary.get(method), percents, base, columns,
                         spec["paper"][i] if spec.get("paper") else None))
    for method in sorted(set(summary) - {BASE} - set(names)):
        names[method] = f"{method} (not in paper)"
        rows.append(_row(names[method], summary[method], percents, base, columns, None))
    df = pd.DataFrame(rows)

    curves = {names[m]: {p: v[:2] for p, v in s["acc"].items()} for m, s in summary.items() if m != BASE}
    plot_roar(curves, out_dir / f"{table_id}.png", title=spec["title"],
              baseline=base[:2] if base else None)
    used = sorted({p for m, s in summary.items() if m != BASE for p in s["auc_percents"]})
    intro = (f"Test accuracy after retraining (mean ± s.e. over repeats; n = repeats) per % of pixels removed; "
           f"AUC = trapezoid over the removed fraction at {', '.join(pct(p) for p in used) or '–'} divided by "
           f"its range (lower is better). {len(units)} finished units")
    intro += (f", {pending} unfinished (left out)" if pending else "") + ".\n\n"
    write_table(df, spec, table_id, out_dir, intro=intro, after=f"\n![{table_id}]({table_id}.png)\n")
    return df


def _row(name: str, s: dict | None, percents: list[float], base: tuple | None, columns: list[dict],
         paper: list | None) -> dict[str, str]:
    rec: dict[str, str] = {"": name}
    rec["0% (baseline)"] = f"{fmt(base[0], base[1])} (n={base[2]})" if base else "–"
    for p in percents:
        if p == 0:
            continue
        v = (s or {}).get("acc", {}).get(p)
        rec[f"{p:g}%"] = f"{fmt(v[0], v[1])} (n={v[2]})" if v else "–"
    rec["AUC (ours)"] = fmt(*s["auc"]) if s else "–"
    if s and "auc_with_10" in s:
        rec["AUC with 10% (ours)"] = f"{s['auc_with_10']:.3f}"
    for j, col in enumerate(columns):
        val = paper[j] if paper else None
        rec[f"AUC {col['name']} (paper)"] = "–" if val is None else f"{val:.3f}"
    return rec
