"""Comparing methods and metrics across the runs of a folder (``python -m xattr.report``), from what the runs
stored (``summary.csv``, ``per_image.parquet``, heatmaps, ``config.yaml``): nothing is recomputed.

- the method x metric table (mean and s.e. from each run's ``summary.csv``) and, per metric, the ranking of
  the methods (best first; :data:`LOWER_IS_BETTER` names the scores where lower wins);
- metric agreement: Kendall's tau between the method rankings of every pair of metrics, and a bootstrap over
  images (the images every run scored, resampled with replacement, ``n_boot`` times) of each tau; a pair
  "differs significantly" when the upper end of tau's 95 % bootstrap interval is below 1;
- each run's own figures (``curves.png``, ``heatmaps.png`` of :func:`xattr.engine.report.write_report`), copied
  beside the page, and runs without a ``summary.csv`` summarised as that report does
  (:func:`~xattr.metrics.summary.summarise_run_scores`);
- a heatmap gallery (image x method, one colour scale per image) and one "saliency card" per method (the fields
  of Boggust et al., "Saliency cards", FAccT 2023, that runs can measure: determinism across seeds,
  sensitivity to the swept hyper-parameters, the stored sanity check, the metrics' verdicts).
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from xattr.core.store import RunStore  # noqa: E402
from xattr.errors import XattrConfigError  # noqa: E402

#: score names (the part after ``<metric>/``) where a lower value is better
LOWER_IS_BETTER = ("deletion", "complexity", "infidelity", "max_sensitivity", "avg_sensitivity",
                   "relative_input_stability", "relative_output_stability", "random_logit", "smooth_mprt",
                   "road_morf", "ssim", "spearman", "spearman_abs")
META = ("id", "index", "label", "target", "prob", "top1", "top1_prob")


@dataclass
class Run:
    """One run folder as the report reads it."""

    folder: Path
    method: str
    seed: int | None
    hparams: dict
    summary: pd.DataFrame
    rows: pd.DataFrame
    maps: dict = field(default_factory=dict)


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Every finished run under ``paths`` (:meth:`RunStore.find_runs`), possibly none."""
    folders = RunStore.find_runs(list(paths))
    runs = []
    for f in folders:
        store = RunStore(f)
        cfg = store.config()
        c = OmegaConf.to_container(cfg, resolve=False) if cfg is not None else {}
        method = dict(c.get("method") or {})
        name = str(method.pop("_target_", "?")).rsplit(".", 1)[-1]
        method.pop("_partial_", None)
        summary = store.summary()
        rows = store.rows()
        if summary.empty:  # a run without its report: mean and s.e. of its rows
            from xattr.metrics.summary import summarise_run_scores

            summary = summarise_run_scores(rows)
        runs.append(Run(f, c.get("method_name", name), c.get("seed"), method, summary, rows, store.heatmaps()))
    _check_distinct(runs)
    return runs


def _check_distinct(runs: list[Run]) -> None:
    """Two runs of one method with the same settings and seed (e.g. an old sweep's folder beside a new one's)
    would be two "methods" of the same name in every ranking: one error naming both folders."""
    seen: dict[str, Path] = {}
    for r in runs:
        key = repr((r.method, sorted((k, str(v)) for k, v in r.hparams.items()), r.seed))
        if key in seen:
            raise XattrConfigError(
                f"bad runs: {seen[key]} and {r.folder} are both {r.method} with the same settings and seed, so the "
                "report could not tell them apart; valid choices: folders holding one run per method setting "
                "(move the older one away, or name the run folders to compare)")
        seen[key] = r.folder


def label(run: Run, runs: list[Run]) -> str:
    """The method's name, with the hyper-parameters that differ between its runs (``IBA beta=10``)."""
    same = [r for r in runs if r.method == run.method]
    keys = sorted(k for k in run.hparams if len({str(r.hparams.get(k)) for r in same}) > 1)
    seed = [f"seed={run.seed}"] if len({r.seed for r in same}) > 1 else []
    return " ".join([run.method] + [f"{k}={run.hparams[k]}" for k in keys] + seed)


def score_names(runs: list[Run]) -> list[str]:
    names = []
    for r in runs:
        names += [s for s in r.summary["score"] if s not in names]
    return names


def lower_is_better(score: str) -> bool:
    return score.rsplit("/", 1)[-1] in LOWER_IS_BETTER


def method_table(runs: list[Run]) -> pd.DataFrame:
    """Rows: the runs' labels; columns ``<score>`` (mean), ``<score> s.e.`` and ``<score> rank`` (1 = best)."""
    table = pd.DataFrame(index=[label(r, runs) for r in runs])
    for s in score_names(runs):
        mean = [float(r.summary.set_index("score")["mean"].get(s, np.nan)) for r in runs]
        sem = [float(r.summary.set_index("score")["sem"].get(s, np.nan)) for r in runs]
        table[s], table[f"{s} s.e."] = mean, sem
        table[f"{s} rank"] = pd.Series(mean, index=table.index).rank(ascending=lower_is_better(s), method="min")
    return table


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors over the same methods (scipy); NaN with fewer than 2 methods."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    return float(kendalltau(a[ok], b[ok]).statistic)


def agreement(runs: list[Run], scores: list[str], n_boot: int = 200, seed: int = 0
              ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Kendall's tau between the method orderings of every pair of ``scores`` (signed so that both read "best
    first"), with 95 % bootstrap intervals over the images every run scored: (tau, low, high), each a
    scores x scores frame."""
    ids = sorted(set.intersection(*[set(r.rows["id"].astype(str)) for r in runs])) if runs else []
    per = {s: np.stack([_per_image(r, s, ids) for r in runs]) for s in scores}  # (methods, images)

    def taus(cols: np.ndarray) -> np.ndarray:
        means = {s: np.nanmean(per[s][:, cols], 1) * (-1 if lower_is_better(s) else 1) for s in scores}
        return np.array([[kendall(means[a], means[b]) for b in scores] for a in scores])

    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = taus(np.arange(len(ids)))
            rng = np.random.default_rng(seed)
            boot = np.stack([taus(rng.integers(0, len(ids), len(ids))) for _ in range(n_boot)]) if ids else None
    frame = lambda v: pd.DataFrame(v, index=scores, columns=scores)  # noqa: E731
    if boot is None:
        return frame(full), frame(full * np.nan), frame(full * np.nan)
    return frame(full), frame(np.nanpercentile(boot, 2.5, 0)), frame(np.nanpercentile(boot, 97.5, 0))


def _per_image(run: Run, score: str, ids: list[str]) -> np.ndarray:
    if score not in run.rows:
        return np.full(len(ids), np.nan)
    s = run.rows.assign(id=run.rows["id"].astype(str)).set_index("id")[score]
    return s.reindex(ids).to_numpy(dtype=np.float64)


def short_score(score: str) -> str:
    """``relevance_mass/relevance_mass`` -> ``relevance_mass`` (a metric with one score); others unchanged."""
    metric, _, name = score.rpartition("/")
    return name if metric == name else score


def agreement_figure(tau: pd.DataFrame, high: pd.DataFrame, path: Path) -> Path:
    n = len(tau)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    im = ax.imshow(tau.to_numpy(), vmin=-1, vmax=1, cmap="RdBu")
    names = [short_score(s) for s in tau.columns]
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            v = tau.iat[i, j]
            star = "*" if np.isfinite(high.iat[i, j]) and high.iat[i, j] < 1 and i != j else ""
            ax.text(j, i, "" if np.isnan(v) else f"{v:.2f}{star}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Kendall's tau")
    ax.set_title("metric agreement (* differs: bootstrap 95% upper < 1)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gallery(runs: list[Run], path: Path, n_images: int = 4) -> Path | None:
    """Image x method grid of the stored maps, one colour scale per image (row), titled with target and prob."""
    ids = sorted(set.intersection(*[set(r.maps) for r in runs]))[:n_images] if runs else []
    if not ids:
        return None
    fig, ax = plt.subplots(len(ids), len(runs), figsize=(2.0 * len(runs), 2.0 * len(ids)), squeeze=False)
    for i, im_id in enumerate(ids):
        ms = [np.asarray(r.maps[im_id], dtype=np.float32).reshape(-1, *np.asarray(r.maps[im_id]).shape[-2:]).mean(0)
              for r in runs]
        lim = max(float(np.abs(m).max()) for m in ms) or 1.0
        for j, (r, m) in enumerate(zip(runs, ms)):
            row = r.rows.assign(id=r.rows["id"].astype(str)).set_index("id").loc[im_id]
            ax[i, j].imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
            ax[i, j].set_title(f"{label(r, runs)}\n{im_id}: target {int(row['target'])} p={row['prob']:.2f}",
                               fontsize=6)
            ax[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cards(runs: list[Run], table: pd.DataFrame) -> dict[str, dict]:
    """One saliency card per method (Boggust et al.'s measurable fields), from the stored runs."""
    out = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        card: dict[str, str] = {"runs": str(len(mine))}
        seeds = {}
        for r in mine:
            key = str(sorted((k, str(v)) for k, v in r.hparams.items() if k != "seed"))
            seeds.setdefault(key, []).append(r)
        groups = [g for g in seeds.values() if len({r.seed for r in g}) > 1]
        if groups:
            diffs = [max(float(np.abs(np.asarray(a.maps[k], float) - np.asarray(b.maps[k], float)).max())
                         for k in set(a.maps) & set(b.maps)) for g in groups for a, b in zip(g, g[1:])]
            card["determinism across seeds"] = f"largest map difference {max(diffs):.3g}"
        else:
            card["determinism across seeds"] = "not measured (one seed per setting)"
        scores = [s for s in score_names(runs) if not s.endswith(("s.e.", "rank"))]
        swept = [label(r, runs) for r in mine]
        if len(swept) > 1:
            spread = {s: float(np.nanmax(table.loc[swept, s]) - np.nanmin(table.loc[swept, s])) for s in scores}
            card["hyper-parameter sensitivity"] = ", ".join(f"{s} range {v:.3g}" for s, v in spread.items())
        else:
            card["hyper-parameter sensitivity"] = "not measured (no sweep)"
        timing = [c for c in mine[0].rows.columns if "time" in c or c.startswith("timing/")]
        card["compute cost per image"] = (", ".join(f"{c} {mine[0].rows[c].mean():.3g}" for c in timing)
                                          if timing else "not stored")
        sanity = [s for s in scores if s.startswith("sanity_check/") or "mprt" in s or s.startswith("random_logit")]
        best = table.loc[[label(mine[0], runs)]]
        card["sanity checks"] = ", ".join(f"{s} {best[s].iloc[0]:.3g}" for s in sanity) or "not run"
        card["verdicts"] = ", ".join(f"{s}: rank {int(best[f'{s} rank'].iloc[0])}/{len(table)}"
                                     for s in scores if np.isfinite(best[f"{s} rank"].iloc[0]))
        out[method] = card
    return out


def run_figures(runs: list[Run], out: Path) -> list[str]:
    """Copy each run's ``curves.png`` / ``heatmaps.png`` (its own report) beside the page; their names there."""
    names = []
    for k, r in enumerate(runs):
        for fig in ("heatmaps.png", "curves.png"):
            if (r.folder / fig).is_file():
                name = f"run{k}_{r.method}_{fig}"
                shutil.copyfile(r.folder / fig, out / name)
                names.append(name)
    return names


def write(runs: list[Run], out: Path, n_boot: int = 200, seed: int = 0) -> Path:
    """Write ``report.md``, ``report.html`` and their figures into ``out``; returns the HTML page."""
    out.mkdir(parents=True, exist_ok=True)
    table = method_table(runs)
    scores = [s for s in score_names(runs) if s != "top1_accuracy" and not s.endswith("/prob")]
    tau, low, high = agreement(runs, scores, n_boot, seed)
    figs = {"agreement": agreement_figure(tau, high, out / "agreement.png") if len(scores) > 1 else None,
            "gallery": gallery(runs, out / "gallery.png")}
    cs = cards(runs, table)
    show = table[[c for s in score_names(runs) for c in (s, f"{s} s.e.", f"{s} rank")]]
    compact = pd.DataFrame({s: [f"{table.at[i, s]:.4g} ± {table.at[i, f'{s} s.e.']:.2g} ({int(table.at[i, f'{s} rank'])})"
                                if np.isfinite(table.at[i, s]) else "–" for i in table.index]
                            for s in score_names(runs)}, index=table.index)
    md = ["# xattr report", "", f"{len(runs)} runs: " + ", ".join(str(r.folder) for r in runs), "",
          "## Methods x metrics (mean ± s.e. (rank: 1 = best))", "", compact.to_markdown(), ""]
    if figs["agreement"]:
        md += ["## Metric agreement (Kendall's tau of the method rankings)", "", "![agreement](agreement.png)", "",
               tau.to_markdown(floatfmt=".3f"), ""]
        differ = [f"{a} vs {b}" for i, a in enumerate(scores) for b in scores[i + 1:] if high.at[a, b] < 1]
        md += ["Rankings that differ significantly (bootstrap over images): " + (", ".join(differ) or "none"), ""]
    if figs["gallery"]:
        md += ["## Heatmap gallery", "", "![gallery](gallery.png)", ""]
    own = run_figures(runs, out)
    if own:
        md += ["## The runs' own figures", ""] + [f"![{n}]({n})" for n in own] + [""]
    md += ["## Saliency cards", ""]
    for m, card in cs.items():
        md += [f"### {m}", ""] + [f"- **{k}**: {v}" for k, v in card.items()] + [""]
    (out / "report.md").write_text("\n".join(md))
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>xattr report</title>",
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 6px;border:1px solid #ccc}"
            "table{border-collapse:collapse}</style></head><body>", "<h1>xattr report</h1>",
            "<h2>Methods x metrics</h2>", show.to_html(float_format=lambda v: f"{v:.4g}", table_id="methods")]
    if figs["agreement"]:
        page += ["<h2>Metric agreement</h2>", "<img src='agreement.png' alt='metric agreement'>",
                 tau.to_html(float_format=lambda v: f"{v:.3f}", table_id="agreement")]
    if figs["gallery"]:
        page += ["<h2>Heatmap gallery</h2>", "<img src='gallery.png' alt='heatmap gallery'>"]
    if own:
        page += ["<h2>The runs' own figures</h2>"] + [f"<img src='{n}' alt='{html.escape(n)}'>" for n in own]
    page += ["<h2>Saliency cards</h2>"]
    for m, card in cs.items():
        page += [f"<h3>{html.escape(m)}</h3><ul>"] + [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                                     for k, v in card.items()] + ["</ul>"]
    page += ["</body></html>"]
    (out / "report.html").write_text("\n".join(page))
    table.to_csv(out / "methods.csv")
    return out / "report.html"
