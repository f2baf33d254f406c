"""``python -m xattr.tables.text_qualitative <multirun dir> [--id ID] [--n N]``: Table 1 of ch. 6 and Fig. 5b.

For the text runs under a folder (one per method, e.g. a multirun of ``inputiba_f5_imdb_insdel``):

- ``qualitative.html``: the same review(s) highlighted by every method side by side, one row per method, in
  the paper's colour bands after min-max scaling per review over its real tokens (0.33-0.66 orange,
  0.66-1 red; :mod:`xattr.viz.tokens`); ``qualitative.txt`` the same with ``[orange]`` / ``[[red]]`` marks;
  the terminal rendering (ANSI colours) is printed.
- ``insdel_curves.png`` (insertion and deletion curves, mean +- s.e. per method, like Fig. 5b's data) and
  ``insdel_scatter.png`` (deletion AUC vs insertion AUC per method, Fig. 5b: top-left is better), when the
  runs have ``insertion_deletion`` curves; ``sensitivity_n.png`` for token Sensitivity-N runs (Fig. 4b).

The reviews shown are the first ``n`` (in dataset order) that every run attributed, or ``--id``. Tokens are
decoded with the run's own dataset config (the vocabulary of the model's checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from xattr.core.store import RunStore
from xattr.errors import XattrConfigError
from xattr.viz.curves import plot_curves
from xattr.viz.tokens import render_html, render_plain, render_terminal


def text_runs(paths: list[str | Path]) -> list[tuple[str, Path, object]]:
    """``(method name, run dir, config)`` of the runs with token maps (``(B, L)`` heatmaps), sorted by name."""
    out = []
    for r in RunStore.find_runs(paths):
        store = RunStore(r)
        shape = store.map_shape()
        if shape is None or len(shape) != 1:
            continue
        cfg = store.config()
        out.append((str(cfg.get("method_name") or r.name), r, cfg))
    return sorted(out, key=lambda t: t[0])


def _dataset(cfg, source: object = "a run's config"):
    """The run's attribution dataset, from its config read as data: only classes of ``xattr.data`` are built."""
    from xattr.core.safe_build import build_known

    return build_known(cfg.dataset.attribution, ("xattr.data.",), "dataset.attribution", source)


def qualitative(paths: list[str | Path], out_dir: str | Path | None = None, ids: list[str] | None = None,
                n: int = 1, terminal: bool = True, dataset=None) -> pd.DataFrame:
    """Write the qualitative table (and curves) for the text runs under ``paths`` into ``out_dir``
    (default: the first path); returns one row per (review, method) with the plain rendering.
    ``dataset``: the attribution dataset (default: built from the first run's config)."""
    runs = text_runs(paths)
    if not runs:
        raise XattrConfigError(f"no text runs under {[str(p) for p in paths]}; valid choices: run folders of a text "
                               "model (e.g. python -m xattr.run -m experiment=inputiba_f5_imdb_insdel)")
    out = Path(out_dir or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    maps = {name: RunStore(r).heatmaps() for name, r, _ in runs}
    per_image = RunStore(runs[0][1]).per_image()
    common = [i for i in per_image["id"].astype(str) if all(i in m for m in maps.values())]
    if ids:
        bad = [i for i in ids if i not in common]
        if bad:
            raise XattrConfigError(f"bad review id {bad[0]!r}; valid choices: {', '.join(common[:10])}"
                                   + (" ..." if len(common) > 10 else ""))
        chosen = list(ids)
    else:
        chosen = common[:n]
    ds = dataset if dataset is not None else _dataset(runs[0][2], f"the config of {runs[0][1]}")
    index = dict(zip(per_image["id"].astype(str), per_image["index"].astype(int)))
    label = dict(zip(per_image["id"].astype(str), per_image["label"].astype(int)))
    html = ["<html><head><meta charset='utf-8'><style>td{padding:4px 8px;vertical-align:top;border-bottom:1px solid #ddd}"
            "</style></head><body>", "<h3>Qualitative comparison (Table 1 of ch. 6): 0.33-0.66 orange, 0.66-1 red "
            "after min-max per review</h3>"]
    rows, txt = [], []
    for rid in chosen:
        ids_ = ds[index[rid]][0]
        tokens = ds.vocab.decode(ids_.tolist())
        special = ds.vocab.is_special(ids_.tolist()) if hasattr(ds.vocab, "is_special") else None
        head = f"review {rid} (label {label[rid]}, {len(tokens)} tokens)"
        html.append(f"<h4>{head}</h4><table>")
        txt.append(head)
        if terminal:
            print(head)
        for name, _, _ in runs:
            m = maps[name][rid].astype(np.float32)[: len(tokens)]
            html.append(f"<tr><td><b>{name}</b></td><td>{render_html(tokens, m, special=special)[3:-4]}</td></tr>")
            plain = render_plain(tokens, m, special=special)
            txt.append(f"{name:>22}: {plain}")
            rows.append({"review": rid, "method": name, "tokens": plain})
            if terminal:
                print(f"{name:>22}: {render_terminal(tokens, m, special=special)}")
        html.append("</table>")
        txt.append("")
    html.append("</body></html>")
    (out / "qualitative.html").write_text("\n".join(html))
    (out / "qualitative.txt").write_text("\n".join(txt))
    _plots(runs, out)
    return pd.DataFrame(rows)


def _plots(runs: list, out: Path) -> None:
    curves = {name: RunStore(r).padded_curves() for name, r, _ in runs}
    for mode in ("insertion", "deletion"):
        key = f"insertion_deletion/{mode}"
        got = {n: c[key] for n, c in curves.items() if key in c}
        if got:
            plot_curves({n: c for n, (c, _) in got.items()}, {n: x for n, (_, x) in got.items()},
                        out / f"insdel_{mode}.png", title=f"IMDB {mode} (Fig. 5b)", xlabel="tokens perturbed",
                        ylabel="target probability")
    got = {n: c["sensitivity_n/sensitivity_n"] for n, c in curves.items() if "sensitivity_n/sensitivity_n" in c}
    if got:
        plot_curves({n: c for n, (c, _) in got.items()}, {n: x for n, (_, x) in got.items()}, out / "sensitivity_n.png",
                    title="IMDB Sensitivity-N (Fig. 4b)", xlabel="% of tokens replaced by <unk>",
                    ylabel="Pearson correlation", logx=True)
    aucs = []
    for name, r, _ in runs:
        df = RunStore(r).per_image()
        if {"insertion_deletion/insertion", "insertion_deletion/deletion"} <= set(df.columns):
            aucs.append((name, df["insertion_deletion/deletion"].mean(), df["insertion_deletion/insertion"].mean()))
    if aucs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4), dpi=120)
        for name, d, i in aucs:
            ax.scatter(d, i)
            ax.annotate(name, (d, i), fontsize=7)
        ax.set(xlabel="deletion AUC (lower better)", ylabel="insertion AUC (higher better)",
               title="IMDB insertion / deletion (Fig. 5b)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "insdel_scatter.png")
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xattr.tables.text_qualitative", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (searched recursively), e.g. a multirun folder")
    ap.add_argument("--id", action="append", help="review id(s) to show (default: the first --n)")
    ap.add_argument("--n", type=int, default=1, help="how many reviews (default 1)")
    ap.add_argument("--out", default=None, help="where to write (default: the first run folder)")
    args = ap.parse_args(argv)
    try:
        qualitative(args.runs, args.out, args.id, args.n)
    except XattrConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"-> {Path(args.out or args.runs[0]) / 'qualitative.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
