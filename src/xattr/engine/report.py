"""After a run: the per-image table, the summary (each metric's own summary of its scores), the results of
the dataset-level analyses, Markdown/CSV copies and the figures (heatmap grid with labels, mean metric
curves, InputIBA's stages, highlighted tokens for text)."""

from __future__ import annotations

import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from xattr.analyses.base import Analysis  # noqa: E402
from xattr.core.store import RunStore  # noqa: E402
from xattr.metrics.base import Metric  # noqa: E402
from xattr.metrics.summary import summarise_run_scores  # noqa: E402
from xattr.viz.curves import mean_sem  # noqa: E402
from xattr.viz.heatmaps import heatmap_grid  # noqa: E402


def plot_curves(curves: dict[str, np.ndarray], path: Path, title: str = "") -> Path | None:
    # raw per-sample pairs (Sensitivity-N's attribution sums and output drops) are data, not curves
    names = [k for k in curves if not k.endswith(("/x", "/attr_sum", "/output_drop"))]
    if not names:
        return None
    fig, ax = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for a, k in zip(ax[0], names):
        c = curves[k]
        x = curves.get(k + "/x", np.arange(c.shape[1]))
        mu, se = mean_sem(c)
        a.plot(x, mu, lw=1.8)
        a.fill_between(x, mu - se, mu + se, alpha=0.25)
        a.set_title(k, fontsize=9)
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def finish_analyses(store: RunStore, analyses: dict[str, Analysis]) -> dict[str, pd.DataFrame]:
    """Merge each analysis' per-rank states (``analyses/<name>[.rank<r>].pt``), compute it and write
    ``analyses/<name>.{csv,md}``; returns name -> result."""
    out = {}
    for name, analysis in analyses.items():
        for state in store.shard_states(name):
            other = copy.copy(analysis)  # same configuration, another shard's state
            other.load_state_dict(state["state"])
            analysis.merge(other)
        df = analysis.compute()
        folder = store.write_analysis(name, df)
        if hasattr(analysis, "write_extras"):  # further files of its own (dissection: IoU matrix, figure)
            analysis.write_extras(folder, name)
        out[name] = df
    return out


def write_report(run_dir: str | Path, dataset=None, labels: list[str] | None = None, preprocess=None,
                 title: str = "", grid_size: int = 8, metrics: dict[str, Metric] | None = None) -> pd.DataFrame:
    """Write ``per_image.{parquet,csv}``, ``summary.{csv,md}``, ``heatmaps.png``, ``curves.png``."""
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    per_image = store.per_image()
    summary = summarise_run_scores(per_image, metrics)
    store.write_report_tables(per_image, summary)
    plot_curves(store.curves(), run_dir / "curves.png", title)
    if dataset is not None and len(per_image) and hasattr(dataset, "vocab"):
        _text_report(run_dir, dataset, store.heatmaps(), per_image.head(grid_size), labels, title)
    elif dataset is not None and preprocess is not None and len(per_image):
        maps = store.heatmaps()
        rows = per_image.head(grid_size)
        imgs, ms, titles = [], [], []
        for _, r in rows.iterrows():
            item = dataset[int(r["index"])]
            x = item["x"]
            if x.dim() != 3:
                break  # text: rendered elsewhere
            imgs.append(preprocess.denormalise(x[None])[0].permute(1, 2, 0).numpy())
            ms.append(maps[str(r["id"])].astype(np.float32))
            name = labels[int(r["top1"])] if labels else str(int(r["top1"]))
            t = f"{r['id'][-18:]}\npred: {name} ({r['prob']:.2f})" if r["target"] == r["top1"] else (
                f"{r['id'][-18:]}\npred: {name}; target: {labels[int(r['target'])] if labels else int(r['target'])}")
            titles.append(t)
        if imgs:
            heatmap_grid(imgs, ms, titles, run_dir / "heatmaps.png", suptitle=title)
            _stage_figure(run_dir, store, rows, imgs, titles)
    return summary


def _text_report(run_dir: Path, dataset, maps: dict, rows: pd.DataFrame, labels: list[str] | None,
                 title: str) -> None:
    """``tokens.html`` (highlighted tokens like Table 1 of ch. 6) and ``tokens.txt`` (plain text: ``[[red]]``,
    ``[orange]``; no escape codes)."""
    from xattr.viz.tokens import render_html, render_plain

    html, txt = [f"<h3>{title}</h3>"], []
    for _, r in rows.iterrows():
        ids = dataset[int(r["index"])][0]
        tokens = dataset.vocab.decode(ids.tolist()) if hasattr(dataset.vocab, "decode") else [
            dataset.vocab.itos[i] for i in ids.tolist()]
        m = maps[str(r["id"])].astype(np.float32)[: len(tokens)]
        special = dataset.vocab.is_special(ids.tolist()) if hasattr(dataset.vocab, "is_special") else None
        name = labels[int(r["top1"])] if labels else str(int(r["top1"]))
        head = f"{r['id']}: pred {name} ({r['prob']:.2f}), label {int(r['label'])}"
        if special is not None and any(special):  # a transformer's [CLS] / [SEP]: their share, apart from the words
            share = float(np.abs(m[np.array(special)]).sum() / max(float(np.abs(m).sum()), 1e-12))
            head += f"; special tokens {share:.0%} of |attribution|"
        html.append(render_html(tokens, m, title=head, special=special))
        txt.append(head + "\n" + render_plain(tokens, m, special=special) + "\n")
    (run_dir / "tokens.html").write_text("\n".join(html))
    (run_dir / "tokens.txt").write_text("\n".join(txt))


def _stage_figure(run_dir: Path, store: RunStore, rows: pd.DataFrame, imgs: list, titles: list) -> None:
    """``stages.png``: image, feature mask, generator mask, final map side by side (Fig. 1 of ch. 6)."""
    stages = store.stages()
    ids = [str(i) for i in rows["id"]][: len(imgs)]
    if not stages or not all(i in stages for i in ids):
        return
    from xattr.viz.input_iba_figure import stage_figure

    keys = stages[ids[0]].keys()
    st = {k: torch.tensor(np.stack([stages[i][k].astype(np.float32) for i in ids])) for k in keys}
    images = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2)
    fig = stage_figure(images, st, [t.split("\n")[-1] for t in titles])
    fig.savefig(run_dir / "stages.png", dpi=100)
    plt.close(fig)
