"""Writing a paper table: ``<id>.csv`` and ``<id>.md`` (title, source, optional text before the table, the
table, the paper's claim, optional text after), the layout every table kind shares."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_table(df: pd.DataFrame, spec: dict, table_id: str, out_dir: Path, intro: str = "", after: str = "") -> str:
    """Write the CSV and the Markdown of ``df`` for the published.yaml entry ``spec``; returns the Markdown."""
    df.to_csv(out_dir / f"{table_id}.csv", index=False)
    md = f"### {spec['title']}\n\nSource: {spec['source']}\n\n{intro}"
    md += df.to_markdown(index=False, disable_numparse=True) + "\n"
    if spec.get("claim"):
        md += f"\nPaper: {spec['claim']}\n"
    md += after
    (out_dir / f"{table_id}.md").write_text(md)
    return md
