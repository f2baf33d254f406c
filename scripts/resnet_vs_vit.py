"""The same attribution methods and metrics on the CIFAR-10 ResNet-20 and the CIFAR-10 ViT, side by side
(README "Vision transformers"; docs/transformers.md). One command:

    python scripts/resnet_vs_vit.py --limit 32            # make resnet-vs-vit LIMIT=32

Models: ``cifar_resnet20`` (real weights, ../shared/data/weights) and ``cifar_vit`` (assets/cifar_vit.pt).
Images: the first ``--limit`` CIFAR-10 test images of the shared JPEG zip, balanced over classes; each model
explains its own top-1 class. Methods: IBA (at ``bottleneck``: ResNet stage2, ViT block2), InputIBA (reference
settings), Grad-CAM (ResNet stage3, ViT ln1_4), attention rollout and Chefer (ViT only), Integrated Gradients,
Gradient, random. Metrics: insertion / deletion (AUC, images with p >= 0.6), Sensitivity-N (InputIBA's
protocol, mean Pearson over n), and the cascading-randomisation sanity check block by block from the top
(mean SSIM over the steps; lower = more sensitive to the weights), on ``--sanity`` images (InputIBA's sanity
check is left out with --fast). Writes ``<out>/table.md``, ``<out>/per_image.csv`` and ``<out>/maps.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import xattr  # noqa: E402
from xattr.core.summary import mean_and_sem  # noqa: E402
from xattr.data.cifar10 import Cifar10  # noqa: E402

MODELS = {"ResNet-20": "cifar_resnet20", "ViT": "cifar_vit"}
METHODS = {"IBA": "iba", "InputIBA": "input_iba", "Grad-CAM": "grad_cam", "attention rollout": "attention_rollout",
           "Chefer": "chefer", "Integrated Gradients": "integrated_gradients", "Gradient": "gradient",
           "random": "random"}
VIT_ONLY = ("attention_rollout", "chefer")
SCORES = {"insertion": "insertion_deletion/insertion", "deletion": "insertion_deletion/deletion",
          "Sensitivity-N": "sensitivity_n/sensitivity_n", "sanity SSIM": "sanity_check/ssim"}


def images(name: str, zoo, limit: int, data: Path):
    ds = Cifar10(data / "cifar10" / "cifar10-jpeg.zip", split="test", preprocess=zoo.preprocess,
                 per_class=-(-limit // 10))
    items = [ds[i] for i in range(len(ds))][:limit]
    est = Cifar10(data / "cifar10" / "cifar10-jpeg.zip", split="train", preprocess=zoo.preprocess, per_class=100)
    fit = torch.stack([est[i]["x"] for i in range(len(est))])
    return torch.stack([it["x"] for it in items]), [it["id"] for it in items], fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=32, help="CIFAR-10 test images (balanced over classes)")
    ap.add_argument("--sanity", type=int, default=8, help="images for the sanity check (0: none)")
    ap.add_argument("--methods", default=",".join(METHODS.values()))
    ap.add_argument("--fast", action="store_true", help="no sanity check for InputIBA (the costliest)")
    ap.add_argument("--n-masks", type=int, default=100, help="Sensitivity-N masks per n (the protocol: 100)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "resnet_vs_vit")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--models", default=",".join(MODELS), help="ResNet-20,ViT (rows of earlier runs in --out kept)")
    ap.add_argument("--vit-weights", default="pretrained", help="pretrained (assets/cifar_vit.pt) or a file")
    args = ap.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = args.methods.split(",")
    rows, frames, shown = [], [], {}
    for family, model_name in MODELS.items():
        if family not in args.models.split(","):
            continue
        zoo = xattr.load_model(model_name, weights=args.vit_weights if family == "ViT" else None)
        x, ids, fit_x = images(model_name, zoo, args.limit, args.data)
        target = xattr.top1(zoo, x)
        blocks = list(zoo.roles.get("blocks") or [])
        for label, name in METHODS.items():
            if name not in wanted:
                continue
            if name in VIT_ONLY and family != "ViT":
                rows.append({"model": family, "method": label, **{k: np.nan for k in SCORES}, "s/image": np.nan})
                continue
            method = xattr.method(name, zoo)
            xattr.fit(method, fit_x, n_samples=len(fit_x))
            t0 = time.perf_counter()
            maps = method.attribute(x, target)
            sec = (time.perf_counter() - t0) / len(x)
            metrics = ["insertion_deletion", xattr.metric("sensitivity_n", n_masks=args.n_masks)]
            df = xattr.evaluate(zoo, x, maps, target, metrics=metrics, ids=ids)
            n_sanity = 0 if (args.fast and name == "input_iba") else min(args.sanity, len(x))
            if n_sanity:
                sanity = xattr.metric("sanity_check", layers=blocks)
                ds = xattr.evaluate(zoo, x[:n_sanity], maps[:n_sanity], target[:n_sanity], metrics=[sanity],
                                    method=method, fit_data=fit_x, ids=ids[:n_sanity])
                df = df.merge(ds[["id", "sanity_check/ssim"]], on="id", how="left")
            df.insert(0, "method", label)
            df.insert(0, "model", family)
            frames.append(df)
            row = {"model": family, "method": label, "s/image": sec, "images": len(x)}
            for k, col in SCORES.items():
                row[k] = mean_and_sem(torch.as_tensor(df[col].to_numpy(np.float64)))[:2] if col in df else np.nan
            rows.append(row)
            shown[(family, label)] = (x[:4], maps[:4], zoo)
            print(f"{family:9s} {label:22s} {sec:7.2f} s/image", flush=True)
    for family in {r["model"] for r in rows}:  # per model, so the two can run apart (--models); the methods run
        # now replace their earlier rows, the other methods' rows of earlier runs are kept (--methods)
        path, csv = args.out / f"rows_{family}.pt", args.out / f"per_image_{family}.csv"
        now = {r["method"] for r in rows if r["model"] == family}
        old = torch.load(path, weights_only=False) if path.is_file() else {"rows": [], "shown": {}}
        new_frames = [f for f in frames if f["model"].iloc[0] == family]
        if csv.is_file():
            earlier = pd.read_csv(csv)
            new_frames.insert(0, earlier[~earlier["method"].isin(now)])
        pd.concat(new_frames).to_csv(csv, index=False)
        kept = [r for r in old["rows"] if r["method"] not in now]
        shown_kept = {k: v for k, v in old["shown"].items() if k[1] not in now}
        torch.save({"rows": kept + [r for r in rows if r["model"] == family],
                    "shown": {**shown_kept, **{k: (v[0].cpu(), v[1].cpu(), v[2].name) for k, v in shown.items()
                                               if k[0] == family}}}, path)
    rows, shown = [], {}
    for family, model_name in MODELS.items():
        path = args.out / f"rows_{family}.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=False)
            rows += saved["rows"]
            zoo = xattr.load_model(model_name, weights="random")  # only its preprocessing, for the figure
            shown.update({k: (x, m, zoo) for k, (x, m, _) in saved["shown"].items()})
    table = _table(rows)
    (args.out / "table.md").write_text(table)
    print(table)
    _figure(shown, args.out / "maps.png")


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return f"{v[0]:.3f} ± {v[1]:.3f}" if np.isfinite(v[0]) else "–"
    return "–"


def _table(rows: list[dict]) -> str:
    """One row per method; the header gives the images per row (a method run on fewer says so in its cell)."""
    by = {(r["model"], r["method"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    counts = [r.get("images") for r in rows if r.get("images")]
    most = max(counts) if counts else 0
    cols = [f"{m} {k}" for k in SCORES for m in MODELS]
    lines = [f"| method ({most} CIFAR-10 test images) | " + " | ".join(cols) + " |",
             "|---|" + "---|" * len(cols)]
    for meth in methods:
        n = {by[(m, meth)].get("images") for m in MODELS if (m, meth) in by} - {None, most}
        label = meth + (f" ({', '.join(map(str, sorted(n)))} images)" if n else "")
        cells = [_fmt(by.get((m, meth), {}).get(k)) for k in SCORES for m in MODELS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(shown: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(shown)
    families = [f for f in MODELS if any(k[0] == f for k in keys)]
    ncols = 1 + max(sum(k[0] == f for k in keys) for f in families)
    fig, axes = plt.subplots(len(families), ncols, figsize=(1.9 * ncols, 2.2 * len(families)), squeeze=False)
    for row, family in enumerate(families):
        ks = [k for k in keys if k[0] == family]
        x, _, zoo = shown[ks[0]]
        axes[row, 0].imshow(zoo.preprocess.denormalise(x[:1]).clamp(0, 1)[0].permute(1, 2, 0).cpu())
        axes[row, 0].set_title(f"{family}: image", fontsize=8)
        for j, k in enumerate(ks, start=1):
            m = shown[k][1][0, 0].float().cpu()
            axes[row, j].imshow(m, cmap="jet")
            axes[row, j].set_title(k[1], fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
