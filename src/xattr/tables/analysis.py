"""Tables from dataset-level analyses (``kind: analysis`` in ``published.yaml``): each cell reads a run's
``analyses/<analysis>.csv`` (the row ``layer == level`` of it, default ``all``; the column named by the table
column's ``score`` and its ``sem``) instead of the per-image metric scores.

With ``jaccard: true`` (the critical-pathways Fig. 2) the table adds the mean Jaccard overlap of the runs'
pathways, every pair of runs, network-wide (``<id>_jaccard.csv``) and per layer
(``<id>_jaccard_layers.csv``; the Markdown shows each run against the row named ``jaccard_reference``),
from the stored ``pathway/mask`` auxiliaries (:func:`xattr.analyses.dead_neurons.pathway_jaccard`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xattr.analyses.dead_neurons import pathway_jaccard
from xattr.core.store import RunStore
from xattr.tables.match import fmt, matches
from xattr.tables.output import write_table


def _read(run: Path, analysis: str, score: str, level: str) -> tuple[float, float, int] | None:
    df = RunStore(run).analysis_result(analysis)
    if df is None:
        return None
    sel = df[df["layer"].astype(str) == str(level)]
    if sel.empty or score not in sel:
        return None
    r = sel.iloc[0]
    sem = float(r["sem"]) if "sem" in sel and score == "share" else float("nan")
    return float(r[score]), sem, int(r["n"]) if "n" in sel else -1


def analysis_table(table_id: str, spec: dict, runs: list[tuple[Path, Any]], out_dir: Path) -> pd.DataFrame:
    """Build a ``kind: analysis`` table (see module docstring); writes ``.csv`` and ``.md`` to ``out_dir``."""
    name, level = spec["analysis"], spec.get("level", "all")
    rows, labelled = [], {}
    for i, row in enumerate(spec["rows"]):
        rec: dict[str, Any] = {"": row["name"]}
        for j, col in enumerate(spec["columns"]):
            paper = spec["paper"][i][j] if spec.get("paper") else None
            rec[f"{col['name']} (paper)"] = "–" if paper is None else f"{paper:.3f}"
            ours, models = [], set()
            for r, cfg in runs:
                if matches(cfg, row.get("match")) and matches(cfg, col.get("match")):
                    val = _read(r, name, col["score"], level)
                    if val is not None:
                        ours.append(val)
                        models.add(str(cfg.model.name))
                        labelled.setdefault(row["name"], r)
            rec[f"{col['name']} (ours)"] = (
                "; ".join(fmt(m, s) for m, s, _ in ours) + f" ({', '.join(sorted(models))})" if ours else "–")
        rows.append(rec)
    for r, cfg in runs:  # runs the paper's table has no row for
        if any(matches(cfg, row.get("match")) for row in spec["rows"]):
            continue
        label = f"{cfg.get('method_name')} (not in paper)"
        rec = {"": label}
        for col in spec["columns"]:
            val = _read(r, name, col["score"], level)
            rec[f"{col['name']} (paper)"] = "–"
            rec[f"{col['name']} (ours)"] = f"{fmt(val[0], val[1])} ({cfg.model.name})" if val else "–"
        rows.append(rec)
        labelled.setdefault(label, r)
    df = pd.DataFrame(rows)
    md = ""  # the Jaccard tables, after the main one
    if spec.get("jaccard") and labelled:
        net, layers = pathway_jaccard(labelled)
        net.to_csv(out_dir / f"{table_id}_jaccard.csv")
        layers.to_csv(out_dir / f"{table_id}_jaccard_layers.csv", index=False)
        if len(net):
            md += "\n#### Jaccard overlap of the pathways, whole network (Fig. 2a; ours)\n\n"
            md += net.map(lambda v: "–" if not np.isfinite(v) else f"{v:.3f}").to_markdown(disable_numparse=True) + "\n"
        ref = spec.get("jaccard_reference")
        if ref in net.index and len(layers):
            sel = layers[((layers.a == ref) | (layers.b == ref)) & (layers.a != layers.b)].copy()
            sel["other"] = np.where(sel.a == ref, sel.b, sel.a)
            piv = sel.pivot_table(index="other", columns="layer", values="jaccard")
            md += f"\n#### Jaccard overlap per layer with {ref} (Fig. 2b; ours; layers in call order)\n\n"
            md += piv.map(lambda v: "–" if not np.isfinite(v) else f"{v:.2f}").to_markdown(disable_numparse=True) + "\n"
    write_table(df, spec, table_id, out_dir, after=md)
    return df
