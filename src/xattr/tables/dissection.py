"""Tables of network-dissection runs (``kind: dissection`` in ``published.yaml``; dissertation ch. 9, Fig. 2):
per row (a model, matched on the run's config), the number of concept detectors in total beside the paper's,
then per concept, read from each run's ``analyses/dissection.csv`` (:func:`xattr.analyses.dissection.
detector_counts`), with the dissected layer, its units and the settings that make numbers comparable
(activation quantile, IoU threshold, images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from xattr.analyses.dissection import detector_counts
from xattr.core.store import RunStore
from xattr.tables.match import matches
from xattr.tables.output import write_table


def _run_counts(run: Path, cfg: Any, analysis: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    units = RunStore(run).analysis_result(analysis)
    if units is None:
        return None
    concepts = (cfg.get("analysis") or {}).get(analysis, {}).get("concepts") or None
    return units, detector_counts(units, list(concepts) if concepts else None)


def dissection_table(table_id: str, spec: dict, runs: list[tuple[Path, Any]], out_dir: Path) -> pd.DataFrame:
    """Build a ``kind: dissection`` table (see module docstring); writes ``.csv`` and ``.md`` to ``out_dir``."""
    name = spec.get("analysis", "dissection")
    rows, concepts = [], []
    for i, row in enumerate(spec["rows"]):
        paper = spec["paper"][i][0] if spec.get("paper") else None
        hits = [(r, cfg, got) for r, cfg in runs if matches(cfg, row.get("match"))
                for got in [_run_counts(r, cfg, name)] if got is not None]
        if not hits:
            rows.append({"": row["name"], "detectors (paper)": "–" if paper is None else str(paper),
                         "detectors (ours)": "–"})
            continue
        for _r, cfg, (units, counts) in hits:
            node = cfg.analysis[name]
            c = counts.set_index("concept")["detectors"]
            rec = {"": row["name"], "detectors (paper)": "–" if paper is None else str(paper),
                   "detectors (ours)": str(int(c["total"]))}
            for concept, v in c.items():
                if concept != "total":
                    rec[f"{concept} (ours)"] = str(int(v))
                    if concept not in concepts:
                        concepts.append(concept)
            rec.update({"model": str(cfg.model.name), "weights": Path(str(cfg.model.get("weights", "–"))).name,
                        "layer": str(units["layer"].iloc[0]) if len(units) else "–",
                        "units": str(len(units)), "quantile": str(node.get("quantile")),
                        "quantile of": str(node.get("quantile_on", "features")),
                        "union": str(node.get("union", "concept_images")),
                        "IoU >": str(node.get("iou_threshold")),
                        "images": str(int(units["images"].iloc[0])) if len(units) else "–"})
            rows.append(rec)
    cols = ["", "detectors (paper)", "detectors (ours)", *[f"{c} (ours)" for c in concepts], "model", "weights", "layer",
            "units", "quantile", "quantile of", "union", "IoU >", "images"]
    df = pd.DataFrame(rows).reindex(columns=cols).fillna("–")
    write_table(df, spec, table_id, out_dir)
    return df
