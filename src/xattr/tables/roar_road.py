"""ROAD beside ROAR (``kind: roar_road`` in ``published.yaml``; docs/roar.md "ROAD beside ROAR"): do the two
evaluations order the attribution methods the same way, on the same stored maps?

Read from two kinds of folders under the run paths, nothing recomputed:

- ROAR *units* of ``python -m xattr.train recipe=roar`` (:func:`xattr.tables.roar.find_units`): test accuracy
  after removing the top ``p`` % pixels and retraining, mean over repeats per method and percent;
- ROAD runs of ``python -m xattr.run method=saved method.run_dir=<the ROAR maps> metric=[road]``
  (:class:`xattr.metrics.road.ROAD`): the per-image MoRF and LeRF curves stored in the run's ``curves/``
  (``road/road_morf``, ``road/road_lerf`` over ``metric.road.percentages``), averaged over the images; the run's
  ``method_name`` (the source method of the saved maps) names the method.

Both are reduced to the same number per method: the ROAR AUC of :func:`xattr.tables.roar.roar_auc` (trapezoid
over the removed fraction divided by its range, a mean accuracy) at the percents *both* ran for every method
(ROAD's other percents are left out), so ROAD's curve means over its own percentages (its ``road_morf`` score)
are not what is compared. Agreement is Kendall's tau-b (scipy) of the method orderings, each signed "best first":
ROAR AUC low is good, ROAD MoRF AUC low is good, ROAD LeRF AUC high is good; tau is also given per percent (ROAR
accuracy against ROAD's MoRF accuracy). The table names each tau's number of methods; with 4 methods, tau moves
in steps of 1/3, so one swapped pair already gives 0.67.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from xattr.core.store import RunStore
from xattr.errors import XattrConfigError
from xattr.tables.match import no_runs
from xattr.tables.output import write_table
from xattr.tables.roar import BASE, find_units, roar_auc, summarise_units

ORDERS = ("morf", "lerf")


def road_curves(paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    """``method -> {"morf": {percent: mean}, "lerf": {...}, "n": images, "dir": run}`` of every finished
    ``python -m xattr.run`` folder under ``paths`` that stored ROAD curves (other runs are left out). Two ROAD
    runs of one method are one error (which of them would be ambiguous)."""
    out: dict[str, dict[str, Any]] = {}
    for d in RunStore.find_runs(list(paths)):
        store = RunStore(d)
        curves = store.curves()
        if not any(f"road/road_{o}" in curves for o in ORDERS):
            continue
        method = str(store.config().get("method_name"))
        if method in out:
            raise XattrConfigError(f"two ROAD runs of method {method!r}: {out[method]['dir']} and {d}; valid "
                                   "choices: run paths holding one ROAD run per method")
        rec: dict[str, Any] = {"dir": str(d)}
        for o in ORDERS:
            key = f"road/road_{o}"
            if key in curves:
                per_image = curves[key].astype(np.float64)
                y = np.nanmean(per_image, 0)
                rec[o] = {float(p): float(v) for p, v in zip(curves[f"{key}/x"], y)}
                rec[f"{o}_images"] = {float(p): per_image[:, j] for j, p in enumerate(curves[f"{key}/x"])}
                rec["n"] = int(per_image.shape[0])
        out[method] = rec
    return out


def tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two score lists over the same methods, both signed "higher is better" (scipy)."""
    if len(a) < 2:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def compare(roar: dict[str, dict[str, Any]], road: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, dict]:
    """``(per-method frame, taus)`` for the methods both ran (``roar``: :func:`summarise_units`, ``road``:
    :func:`road_curves`), at the percents both ran for every one of them (see the module docstring). ``taus``:
    ``{"morf": tau, "lerf": tau, "per_percent": {p: tau}, "percents": [...], "methods": [...]}``."""
    methods = sorted((set(roar) - {BASE}) & set(road))
    if len(methods) < 2:
        raise XattrConfigError(f"ROAR and ROAD share {len(methods)} method(s) ({', '.join(methods) or 'none'}; "
                               f"ROAR: {', '.join(sorted(set(roar) - {BASE})) or 'none'}, ROAD: "
                               f"{', '.join(sorted(road)) or 'none'}); valid choices: run paths holding both for "
                               "at least 2 methods")
    percents = sorted(set.intersection(*[{p for p in roar[m]["acc"] if p > 0} for m in methods],
                                       *[set(road[m].get("morf", {})) for m in methods]))
    if not percents:
        raise XattrConfigError("ROAR and ROAD ran no percent in common; valid choices: "
                               "metric.road.percentages holding ROAR's roar.percent values")
    rows = []
    for m in methods:
        rec: dict[str, Any] = {"method": m}
        for p in percents:
            rec[f"ROAR {p:g}%"] = roar[m]["acc"][p][0]
        rec["ROAR AUC"] = roar_auc(percents, [roar[m]["acc"][p][0] for p in percents])
        for p in percents:
            rec[f"ROAD MoRF {p:g}%"] = road[m]["morf"][p]
        rec["ROAD MoRF AUC"] = roar_auc(percents, [road[m]["morf"][p] for p in percents])
        images = road[m].get("morf_images")
        if images is not None and all(p in images for p in percents):  # the AUC of each image, its s.e.
            per = np.array([roar_auc(percents, list(v)) for v in zip(*[images[p] for p in percents])])
            per = per[np.isfinite(per)]
            rec["ROAD MoRF AUC s.e."] = float(np.std(per, ddof=1) / np.sqrt(len(per))) if len(per) > 1 else np.nan
        lerf = road[m].get("lerf", {})
        rec["ROAD LeRF AUC"] = (roar_auc(percents, [lerf[p] for p in percents]) if all(p in lerf for p in percents)
                                else float("nan"))
        rows.append(rec)
    df = pd.DataFrame(rows).set_index("method")
    df["ROAR rank"] = df["ROAR AUC"].rank(method="min")
    df["ROAD MoRF rank"] = df["ROAD MoRF AUC"].rank(method="min")
    df["ROAD LeRF rank"] = df["ROAD LeRF AUC"].rank(ascending=False, method="min")
    best_roar = list(-df["ROAR AUC"])
    taus = {"morf": tau(best_roar, list(-df["ROAD MoRF AUC"])),
            "lerf": tau(best_roar, list(df["ROAD LeRF AUC"])) if df["ROAD LeRF AUC"].notna().all() else float("nan"),
            "per_percent": {p: tau(list(-df[f"ROAR {p:g}%"]), list(-df[f"ROAD MoRF {p:g}%"])) for p in percents},
            "percents": percents, "methods": methods}
    return df, taus


def roar_road_table(table_id: str, spec: dict, run_paths: list[str | Path], out_dir: Path) -> pd.DataFrame:
    """Build a ``kind: roar_road`` table: ``<out_dir>/<id>.md`` and ``.csv`` (the per-method frame of
    :func:`compare`, ranks 1 = best) with the taus above it."""
    units, pending = find_units(run_paths)
    road = road_curves(run_paths)
    if not units or not road:
        raise no_runs(run_paths, "ROAR units (python -m xattr.train recipe=roar) and ROAD runs "
                                 "(python -m xattr.run method=saved metric=[road])")
    df, taus = compare(summarise_units(units, []), road)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = df.reset_index().rename(columns={"method": ""})
    for c in df.columns:
        rank = c.endswith("rank")
        shown[c] = ["–" if not np.isfinite(v) else str(int(v)) if rank else f"{v:.3f}" for v in df[c]]
    n_road = sorted({road[m].get("n", 0) for m in taus["methods"]})
    pct = ", ".join(f"{p:g}%" for p in taus["percents"])
    intro = (f"{len(taus['methods'])} methods; percents both ran: {pct}. ROAR: test accuracy after retraining "
             f"(mean over repeats; {len(units)} finished units" + (f", {pending} unfinished" if pending else "")
             + f"); ROAD: accuracy of the unretrained model on imputed images (mean over {'/'.join(map(str, n_road))} "
             "images; s.e. of the images' AUCs). AUC = trapezoid over the removed fraction divided by its range (ROAR's, for both); ranks "
             "1 = best (ROAR and ROAD MoRF: low AUC, ROAD LeRF: high AUC).\n\n"
             f"Kendall's tau of the method orderings: ROAR vs ROAD MoRF **{taus['morf']:.3f}**, ROAR vs ROAD LeRF "
             f"**{taus['lerf']:.3f}**; per percent (ROAR vs ROAD MoRF): "
             + ", ".join(f"{p:g}% {t:.3f}" for p, t in taus["per_percent"].items()) + ".\n\n")
    write_table(shown, spec, table_id, out_dir, intro=intro)
    return df
