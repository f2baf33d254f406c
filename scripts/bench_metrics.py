"""Benchmark: images per second of insertion+deletion and Sensitivity-n, xattr (batched over images and
steps) vs a straightforward per-image loop (the reference codes' way: one image at a time, 80 steps per
forward for insertion/deletion, 100 masks per forward for Sensitivity-n) vs Quantus 0.6 where it has
the protocol (PixelFlipping = deletion only, one forward per step for the whole batch).

    python scripts/bench_metrics.py                       # CPU, small settings
    python scripts/bench_metrics.py --device cuda --images 256 --size 224 --chunk 1024 --precision bf16

Prints a Markdown table. Models: torchvision VGG-16 and MobileNet-V2 with random weights.

``--tolerance``: how far the AUC of the curve at ``--points`` evenly spread steps (``points: 100``) lies from
the full curve's (``points: all``), on real images, real weights and several methods' maps (xattr zoo
models; ``--zoo cifar_resnet20`` reads CIFAR-10 test images, ``--zoo mobilenet_v2`` ImageNet val images from
``--data``). Prints the distribution of the AUC differences (mean |d|, 95th percentile, max) per method,
mode and number of points, and the time of each setting (forwards per image and ms per image).

    python scripts/bench_metrics.py --tolerance --zoo cifar_resnet20 --images 200 --per-step 1 --points 100 50
    python scripts/bench_metrics.py --tolerance --zoo mobilenet_v2 --images 4 --per-step 10 --points 100
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torchvision
from torchvision.transforms.functional import gaussian_blur

from timing import timed as timed_mem  # scripts/ is on sys.path when run as a script
from xattr.metrics.insertion_deletion import InsertionDeletion
from xattr.metrics.sensitivity_n import SensitivityN


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def loop_insdel(model, x, target, maps, per_step: int, sigma: float, chunk: int = 80) -> None:
    """Reference-style: per image, perturbed copies of up to ``chunk`` steps per forward."""
    k = int(2 * sigma - 1)
    for xi, ti, mi in zip(x, target, maps):
        order = torch.argsort(mi.flatten(), descending=True)
        canvas = gaussian_blur(xi[None], [k, k], [sigma, sigma])[0]
        n = order.numel()
        counts = list(range(0, n + per_step, per_step))
        for start, fill in ((xi, torch.zeros_like(xi)), (canvas, xi)):
            for s0 in range(0, len(counts), chunk):
                batch = []
                for c in counts[s0 : s0 + chunk]:
                    cur = start.clone().flatten(1)
                    idx = order[: min(c, n)]
                    cur[:, idx] = fill.flatten(1)[:, idx]
                    batch.append(cur.view_as(xi))
                model(torch.stack(batch)).softmax(-1)[:, ti]


@torch.no_grad()
def loop_sens(model, x, target, maps, metric: SensitivityN) -> None:
    """IBA-paper-code style: per n and image, one forward of the masked copies."""
    units, tid, n = metric.masks(x.shape[-2], x.shape[-1], x.device)
    for k in range(len(n)):
        masks = units[k][:, tid].float().view(-1, 1, *x.shape[-2:])
        for xi, ti, mi in zip(x, target, maps):
            out = model(torch.cat([xi[None] * (1 - masks), xi[None]]))[:, ti]
            drop = out[-1] - out[:-1]
            attr = (mi * masks).flatten(1).sum(1)
            torch.corrcoef(torch.stack([attr, drop]))


def _zoo_data(name: str, data: str, n: int, device: torch.device):
    """(net, x, target) of ``n`` real images for a zoo model (labels as targets)."""

    from xattr.data.transforms import collate
    from xattr.models import load_model

    zoo = load_model(name, "imagenet", weights_dir=f"{data}/weights")
    if name.startswith("cifar"):
        from xattr.data.cifar10 import Cifar10

        ds = Cifar10(f"{data}/cifar10/cifar10-jpeg.zip", "test", zoo.preprocess, limit=n)
    else:
        from xattr.data.imagenet import ImageNetBoxes

        ds = ImageNetBoxes(f"{data}/imagenet", "attribution", zoo.preprocess, limit=n)
    b = collate([ds[i] for i in range(min(n, len(ds)))])
    return zoo.net.to(device).eval(), b["x"].to(device), b["label"].to(device)


def tolerance(a) -> None:
    """``--tolerance``: AUC differences of sparse curves against the full curve (see the module docstring)."""
    from timing import device_name  # scripts/ is on sys.path when run as a script
    from xattr.methods.baselines.gradient import Gradient
    from xattr.methods.baselines.input_x_gradient import InputXGradient
    from xattr.methods.baselines.random import RandomAttribution

    device = torch.device(a.device)
    net, x, target = _zoo_data(a.zoo, a.data, a.images, device)
    methods = {"gradient": lambda: Gradient(net, reduce="max_abs", abs=True),
               "input_x_gradient": lambda: InputXGradient(net, reduce="sum"),
               "random": lambda: RandomAttribution(net, seed=0, tile=1)}
    methods = {k: v for k, v in methods.items() if k in a.methods.split(",")}
    size = x.shape[-1]
    sigma = min(15.0, (size + 1) / 4)
    kw = dict(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk, precision=a.precision)
    settings = ["all"] + [int(p) for p in a.points]
    n_steps = -(-size * size // a.per_step)
    rows, times = [], {s: [0.0, 0] for s in settings}
    for mname, make in methods.items():
        maps = torch.cat([make().attribute(x[i : i + a.batch], target[i : i + a.batch])
                          for i in range(0, len(x), a.batch)])
        aucs = {}
        for setting in settings:
            metric = InsertionDeletion(points=setting, **kw)
            res = []
            for i in range(0, len(x), a.batch):
                sl = slice(i, i + a.batch)
                t = timed(lambda sl=sl: res.append(metric(net, x[sl], target[sl], maps[sl])), device)  # noqa: B023 (called at once)
                times[setting][0] += t
                times[setting][1] += len(x[sl])
            aucs[setting] = {m: torch.cat([r.scores[m] for r in res]).double() for m in ("insertion", "deletion")}
        for setting in settings[1:]:
            for mode in ("insertion", "deletion"):
                signed = aucs[setting][mode] - aucs["all"][mode]
                d = signed.abs()
                rows.append((mname, mode, setting, float(aucs["all"][mode].mean()), float(d.mean()),
                             float(d.quantile(0.95)), float(d.max()), int((d > 0.005).sum()), len(d),
                             float(signed.mean())))
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\nInsertion/deletion AUC: sparse curve vs full curve; {a.zoo} (real weights), {len(x)} real images "
          f"{size}x{size}, {a.per_step} px per step = {n_steps} steps per curve, {device_name(device)}\n")
    print("| method | mode | points | mean AUC (full) | mean abs diff | 95th pct | max | images with diff > 0.005 "
          "| diff of the mean AUC |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4f} | {r[4]:.5f} | {r[5]:.5f} | {r[6]:.5f} | {r[7]} / {r[8]} "
              f"| {r[9]:+.5f} |")
    print("\n| points | forwards per image (both curves) | ms per image | x faster than all |")
    print("|---|---:|---:|---:|")
    full_ms = 1000 * times["all"][0] / times["all"][1]
    for setting in settings:
        fw = 2 * (n_steps if setting == "all" else min(setting, n_steps))
        ms = 1000 * times[setting][0] / times[setting][1]
        print(f"| {setting} | {fw} | {ms:.0f} | {full_ms / ms:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tolerance", action="store_true", help="sparse vs full AUC on real images (module docstring)")
    p.add_argument("--zoo", default="cifar_resnet20", help="--tolerance: xattr zoo model with real weights")
    p.add_argument("--data", default="/work/shared/data", help="--tolerance: the shared data folder")
    p.add_argument("--methods", default="gradient,input_x_gradient,random", help="--tolerance: maps to compare on")
    p.add_argument("--points", nargs="*", default=["100"], help="sparse settings (--tolerance: all compared; else the first)")
    p.add_argument("--batch", type=int, default=16, help="--tolerance: images per metric call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--per-step", type=int, default=10)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--n-masks", type=int, default=10)
    p.add_argument("--models", default="vgg16,mobilenet_v2")
    p.add_argument("--skip-loop", action="store_true", help="skip the per-image loop columns")
    p.add_argument("--skip-quantus", action="store_true")
    a = p.parse_args()
    if a.tolerance:
        tolerance(a)
        return
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = a.precision != "fp32"
    try:
        import quantus  # noqa: F401
    except ImportError:
        quantus = None
    sigma = min(15.0, (a.size + 1) / 4)  # kernel 2 sigma - 1 must fit the image
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.images, 3, a.size, a.size, generator=g).to(device)
    maps = torch.rand(a.images, 1, a.size, a.size, generator=g).to(device)
    target = torch.randint(0, 1000, (a.images,), generator=g).to(device)
    insdel = InsertionDeletion(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk, precision=a.precision)
    n_units = a.size * a.size
    sens = SensitivityN(n=[v for v in (1, 10, 100, 1000, 10000) if v < n_units], n_masks=a.n_masks, chunk=a.chunk,
                        precision=a.precision)
    steps = 2 * (-(-n_units // a.per_step) + 1)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), {a.images} images "
          f"{a.size}x{a.size}, insertion+deletion {a.per_step} px/step = {steps} forwards/image, Sensitivity-n "
          f"{len(sens.n)} n x {a.n_masks} masks, chunk {a.chunk}, {a.precision}\n")
    print("| model | metric | path | forwards / image | ms / image | peak memory (MiB) | x faster than the metric's first row |")
    print("|---|---|---|---:|---:|---:|---:|")
    pts = int(a.points[0])
    sparse = InsertionDeletion(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk,
                               precision=a.precision, points=pts)
    del_only = InsertionDeletion(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk,
                                 precision=a.precision, modes=["deletion"])
    n_steps = -(-n_units // a.per_step)
    for name in a.models.split(","):
        model = getattr(torchvision.models, name)(weights=None).eval().to(device)
        insdel(model, x[:1], target[:1], maps[:1])  # warm-up
        rows = []  # (metric, path, forwards per image, (seconds, peak MiB) or None)
        if not a.skip_loop:
            rows.append(("insertion+deletion", "per-image loop (reference codes' way, 80 steps per forward)",
                         2 * (n_steps + 1), timed_mem(lambda: loop_insdel(model, x, target, maps, a.per_step, sigma), device)))  # noqa: B023
        if quantus is not None and not a.skip_quantus:
            total = 3 * n_units  # Quantus needs a divisor of C*H*W: the one nearest to 3 x per_step
            fis = min((d for d in range(1, total + 1) if total % d == 0), key=lambda d: abs(d - 3 * a.per_step))
            pf = quantus.PixelFlipping(features_in_step=fis, perturb_baseline=0.0, normalise=False,
                                       disable_warnings=True, display_progressbar=False)
            rows.append(("deletion only", f"Quantus 0.6 PixelFlipping ({fis} values per step, batch per step)",
                         total // fis, timed_mem(lambda: pf(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(),  # noqa: B023
                                                             a_batch=maps.expand(-1, 3, -1, -1).cpu().numpy(), device=str(device),
                                                             softmax=True), device)))
        rows.append(("deletion only", "xattr, points all", n_steps, timed_mem(lambda: del_only(model, x, target, maps), device)))  # noqa: B023
        rows.append(("insertion+deletion", "xattr, points all (tables)", 2 * n_steps,
                     timed_mem(lambda: insdel(model, x, target, maps), device)))  # noqa: B023
        rows.append(("insertion+deletion", f"xattr, points {pts} (ordinary runs)", 2 * min(pts, n_steps),
                     timed_mem(lambda: sparse(model, x, target, maps), device)))  # noqa: B023
        sens(model, x[:1], target[:1], maps[:1])
        n_sens = len(sens.n) * (a.n_masks + 1)
        if not a.skip_loop:
            rows.append(("Sensitivity-n (InputIBA)", "per-image loop", n_sens,
                         timed_mem(lambda: loop_sens(model, x, target, maps, sens), device)))  # noqa: B023
        rows.append(("Sensitivity-n (InputIBA)", "xattr", n_sens, timed_mem(lambda: sens(model, x, target, maps), device)))  # noqa: B023
        first: dict[str, float] = {}
        for metric, path, fw, (sec, peak) in rows:
            base = first.setdefault(metric, sec)
            up = "-" if base == sec else f"{base / sec:.1f}"
            mem = "-" if peak != peak else f"{peak:.0f}"
            print(f"| {name} | {metric} | {path} | {fw} | {1000 * sec / a.images:.0f} | {mem} | {up} |", flush=True)

if __name__ == "__main__":
    main()
