"""Milliseconds per image of IBA, InputIBA, Chefer, attention rollout and Integrated Gradients on vision
transformers, and IBA batched vs one image at a time, as Markdown tables; CPU and, when CUDA exists, GPU.

    python scripts/bench_transformers.py                    # CIFAR ViT (32 px) and vit_b_16 (224 px, random)
    python scripts/bench_transformers.py --fast --images 2  # cheap hyper-parameters (a smoke run)
    python scripts/bench_transformers.py --models cifar_vit --devices cuda

Models: ``cifar_vit`` (assets/cifar_vit.pt when present, else random weights; IBA at block2) and torchvision
``vit_b_16`` with random weights at 224 px (IBA at block6). Each method runs with its config defaults
(conf/method/*.yaml: IBA 10 steps x 10 copies, InputIBA 20 GAN epochs + 60 steps, IG 50 steps) unless
``--fast``; feature statistics come from the images themselves (timing only). "batched" attributes all
images in one call, "one at a time" calls IBA once per image; the speed-up is their ratio. CPU figures are
the process's CPU time with one thread (``torch.set_num_threads(1)``), so a busy shared machine does not
inflate them; GPU figures are wall-clock.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import xattr  # noqa: E402

METHODS = ("iba", "input_iba", "chefer", "attention_rollout", "integrated_gradients")
FAST = {"iba": {"steps": 3, "copies": 2},
        "input_iba": {"epochs": 1, "n_targets": 8, "n_groups": 2, "gan_batch": 4, "feat_steps": 2, "feat_copies": 2,
                      "steps": 3, "copies": 2},
        "integrated_gradients": {"n_steps": 8}}


def model(name: str, device: str):
    if name == "cifar_vit":
        weights = "pretrained" if (ROOT / "assets" / "cifar_vit.pt").is_file() else "random"
        return xattr.load_model("cifar_vit", weights=weights, device=device), 32
    return xattr.load_model("vit_b_16", weights="random", device=device,
                            layers={"bottleneck": "block6", "cam": "ln1_12"}), 224


def timed(fn, device: str) -> float:
    """Seconds of ``fn``: on the CPU the process's CPU time (one thread: other jobs on a shared machine do not
    inflate it), on CUDA the wall-clock time between synchronisations."""
    if device == "cuda":
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["cifar_vit", "vit_b_16"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rows, speed = [], []
    for device in args.devices:
        for name in args.models:
            zoo, size = model(name, device)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(args.images, 3, size, size, generator=g).to(device)
            t = xattr.top1(zoo, x)
            for meth in args.methods:
                kw = FAST.get(meth, {}) if args.fast else {}
                m = xattr.method(meth, zoo, **kw)
                xattr.fit(m, x.repeat(2, 1, 1, 1))  # statistics from the images themselves: timing only
                sec = timed(lambda m=m, x=x, t=t: m.attribute(x, t), device)
                rows.append((device, name, size, meth, 1000 * sec / len(x)))
                print(f"{device} {name} {meth}: {1000 * sec / len(x):.0f} ms/image", flush=True)
                if meth == "iba":
                    one = timed(lambda m=m, x=x, t=t: [m.attribute(x[i:i + 1], t[i:i + 1]) for i in range(len(x))], device)
                    speed.append((device, name, len(x), 1000 * one / len(x), 1000 * sec / len(x), one / sec))
    print("\n| device | model | input | method | ms / image |\n|---|---|---|---|---|")
    for d, n, s, meth, ms in rows:
        print(f"| {d} | {n} | {s} px | {meth} | {ms:.0f} |")
    print("\n| device | model | images | IBA one at a time (ms / image) | IBA batched (ms / image) | speed-up |"
          "\n|---|---|---|---|---|---|")
    for d, n, b, one, bat, sp in speed:
        print(f"| {d} | {n} | {b} | {one:.0f} | {bat:.0f} | {sp:.1f}x |")


if __name__ == "__main__":
    main()
