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

Each row also gives the method's arithmetic (GFLOP per image, ``timing.flops`` on one image), the rate reached
and the *limit row* (issue 31), measured in the same run (``timing.limit``): for IBA a plain forward +
input-gradient backward of the same token tail (the blocks after the bottleneck) at ``images x copies`` rows;
for the other methods the whole model's forward + input backward at ``images`` rows (IG: ``images x steps``,
at most 64; InputIBA: its WGAN batch, where most of its passes run). IBA's speed-up over one image at a time is bounded by how far the one-at-a-time path already is
from its own limit (its 10 copies are one batch): the second table shows both rates.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import xattr  # noqa: E402
from xattr.core.hooks import frozen  # noqa: E402
from xattr.methods.iba.tail import NetworkTail  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from timing import device_name, flops, fmt, limit, ratio, record, timed  # noqa: E402

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


def clock_of(device: str) -> str:
    """The clock of every row on ``device`` (``timing.timed``): CPU time of one thread on a CPU (a busy shared
    machine does not inflate it), CUDA-synchronised wall-clock time on a GPU."""
    return "wall" if device == "cuda" else "process"


def limit_row(meth: str, m, zoo, x: torch.Tensor, device: str) -> dict:
    """The limit row of ``meth`` (module docstring): the IBA tail at images x copies rows, else the whole model."""
    net = zoo.net
    clock = clock_of(device)
    with frozen(net):
        if meth == "iba":
            tail = NetworkTail(net, m.resolved[m.layer], x)
            return limit(tail, tail.r.repeat_interleave(m.copies, 0), device, backward=True,
                         params=list(net.parameters()), clock=clock)
        rows = len(x) * (getattr(m, "n_steps", 1) if meth == "integrated_gradients" else 1)
        if meth == "input_iba":  # most of its passes run at the WGAN's batch
            rows = getattr(getattr(m, "gan", None), "batch", 32)
        return limit(net, x[:1].expand(min(rows, 64), -1, -1, -1).contiguous(), device, backward=True, clock=clock)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["cifar_vit", "vit_b_16"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: all cores)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
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
                sec = timed(lambda m=m, x=x, t=t: m.attribute(x, t), device, clock_of(device))[0]
                work = flops(lambda m=m, x=x, t=t: m.attribute(x[:1], t[:1])) / 1e9
                lim = limit_row(meth, m, zoo, x, device)
                ms = 1000 * sec / len(x)
                rows.append((device, name, size, meth, ms, work, lim["rate"]))
                record("transformers", model=f"{name} {size} px", path=meth, device=device_name(device),
                       ms_per_image=ms, gflop_per_image=work, rate=1000 * work / ms, limit_rate=lim["rate"])
                print(f"{device} {name} {meth}: {ms:.0f} ms/image, {1000 * work / ms:.1f} GFLOP/s "
                      f"(limit {lim['rate']:.1f})", flush=True)
                if meth == "iba":
                    one = timed(lambda m=m, x=x, t=t: [m.attribute(x[i:i + 1], t[i:i + 1]) for i in range(len(x))],
                                device, clock_of(device))[0]
                    one_lim = limit_row(meth, m, zoo, x[:1], device)
                    speed.append((device, name, len(x), 1000 * one / len(x), ms, one / sec, work, one_lim["rate"],
                                  lim["rate"]))
    print(f"\n{device_name('cpu')}; CPU: process time\n")
    print("| device | model | input | method | ms / image | GFLOP / image | GFLOP/s | limit GFLOP/s | % of limit |"
          "\n|---|---|---|---|---:|---:|---:|---:|---:|")
    for d, n, s, meth, ms, work, lim in rows:
        rate = 1000 * work / ms
        print(f"| {d} | {n} | {s} px | {meth} | {ms:.0f} | {work:.2f} | {rate:.1f} | {lim:.1f} | "
              f"{fmt(ratio(rate, lim), pct=True)} |")
    print("\n| device | model | images | IBA one at a time (ms / image) | IBA batched (ms / image) | speed-up | "
          "one at a time: GFLOP/s (% of its limit, 1 image x copies rows) | batched: GFLOP/s (% of its limit) |"
          "\n|---|---|---|---:|---:|---:|---:|---:|")
    for d, n, b, one, bat, sp, work, lim1, limb in speed:
        r1, rb = 1000 * work / one, 1000 * work / bat
        print(f"| {d} | {n} | {b} | {one:.0f} | {bat:.0f} | {sp:.1f}x | {r1:.1f} ({fmt(ratio(r1, lim1), pct=True)}) | "
              f"{rb:.1f} ({fmt(ratio(rb, limb), pct=True)}) |")


if __name__ == "__main__":
    main()
