"""Figure of generated axiom samples (ch. 7, Figs. 1-4): samples with their feature boxes, then the maps of
the runs given (``python -m xattr.run dataset=axioms ...`` folders, one per method).

    python scripts/axioms_figure.py outputs/axioms/mobilenet_v2/null outputs/runs/<grad_cam run> <iba run> \
        --n 3 --out outputs/axioms/null.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from xattr.data.axioms import patch_boxes, sample_image
from xattr.data.axioms_store import AxiomsStore
from xattr.viz.axioms_figure import axioms_figure


def run_maps(run_dir: Path) -> tuple[str, dict[str, np.ndarray]]:
    """The run's method name and its maps by sample id."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    out = {}
    for f in sorted((run_dir / "heatmaps").glob("*.npz")):
        z = np.load(f, allow_pickle=False)
        out.update({str(i): m.astype(np.float32) for i, m in zip(z["id"], z["maps"])})
    return str(cfg.get("method_name", run_dir.name)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", type=Path, help="a scenario folder of python -m xattr.generate")
    ap.add_argument("runs", type=Path, nargs="*")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    store = AxiomsStore(args.samples)
    store.require()
    runs = dict(run_maps(r) for r in args.runs)
    images, boxes, titles, maps = [], [], [], {m: [] for m in runs}
    for i in store.indices()[: args.n]:
        r = store.read(i)
        sid = f"{r['scenario']}_{i:06d}"
        if any(sid not in ms for ms in runs.values()):
            continue
        images.append(sample_image(r).permute(1, 2, 0).numpy())
        boxes.append(patch_boxes(r["positions"], r["patches"].shape[-1]).numpy())
        titles.append(f"{sid}: a={r['target']} b={r['other']}")
        for m, ms in runs.items():
            maps[m].append(ms[sid])
    out = args.out or args.samples / "figure.png"
    print(axioms_figure(images, boxes, maps, titles, out, suptitle=f"{args.samples.name} scenario"))


if __name__ == "__main__":
    main()
