"""Per-Sample IBA speed: the authors' loop and a reference-style loop vs xattr batched (fp32, bf16 autocast).

Authors' loop (BioroboticsLab/IBA ``analyze``, as its README uses it): one image at a time, the image repeated
``copies`` times, the whole network run at every step with the bottleneck in a forward hook, and the model's
parameters left with ``requires_grad`` on (``analyze`` does not turn it off), so every step's backward also
computes the weights' gradients of the whole network. Reference style: the same loop with the weights frozen
(the fairest one-image loop). bf16: on CUDA, and on CPUs with native bfloat16 (AVX512-BF16 / AMX); the last
column is the maps' mean Spearman correlation with the exact fp32 path on two images (same noise seeds). xattr: ``--batch`` images (``chunk = batch * copies`` forwards per call) x
``copies`` in one graph, the layers before the bottleneck once, only the tail per step; "plain tail" is the
fx tail as split, "optimised tail" folds conv + BatchNorm and runs channels-last (``optimise_tail``, the default).
Each row also gives the arithmetic of its path (GFLOP per image, counted by ``torch.utils.flop_counter``
on one image) and the rate it reached (GFLOP/s): the ratio of a row's arithmetic to the first row's is the
speed-up it would have at equal efficiency, which separates "less work" from "faster work".
The *limit row* (issue 31) is the rate of a plain batched forward + input-gradient backward of the same tail
(the network after the bottleneck, optimised as xattr runs it) at the same batch (``batch x copies`` rows),
measured in the same run (``timing.limit``); "% of limit" is each row's rate as a share of it (target for
xattr's rows: >= 80%). ``--threads 1`` and ``--threads 0`` (all cores) give the two CPU tables.
Rows are timed ``--repeat`` times in turn (reference, plain, optimised, ...) and the median is printed, so
the ratios come from back-to-back runs on a shared machine. Prints one Markdown table: ms per image and
peak memory (GPU: allocated by torch; CPU: resident set size above the start, see ``timing``).

    python scripts/bench_iba.py --device cuda --batch 64 --images 128
    python scripts/bench_iba.py --device cpu --images 8 --batch 8 --ref-images 2 --models "mobilenet_v2 features.6"
    python scripts/bench_iba.py --device cpu --images 4 --batch 4 --size 64     # smoke run on CPU
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import warnings

import torch
import torchvision

from timing import device_name, flops, fmt, limit, ratio, record, timed  # scripts/ is on sys.path as a script
from xattr.core.hooks import frozen, hooked
from xattr.methods.iba import PerSampleIBA
from xattr.methods.iba import statistics as st
from xattr.methods.iba.bottleneck import Bottleneck, cross_entropy_loss
from xattr.methods.iba.tail import NetworkTail

MODELS = {
    "vgg16 conv4_1": (torchvision.models.vgg16, "features.17"),
    "resnet50 layer2": (torchvision.models.resnet50, "layer2"),
    "mobilenet_v2 features.6": (torchvision.models.mobilenet_v2, "features.6"),
}


def reference_style(model, layer, bn: Bottleneck, x, target, steps, copies, beta=10.0, lr=1.0):
    """One image at a time, whole network per step (the reference's loop, with xattr's bottleneck)."""
    module = model.get_submodule(layer)
    maps = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].expand(copies, -1, -1, -1)
        alpha = None
        state = {}

        def restrict(out, state=state):
            nonlocal alpha
            if alpha is None:
                alpha = torch.full_like(out[:1], 5.0, requires_grad=True)
                state["opt"] = torch.optim.Adam([alpha], lr=lr)
            lam = bn.lam(alpha)
            state["kl"] = bn.kl(out, lam)
            return bn.sample(out, lam, torch.randn_like(out))

        with hooked(module, restrict):
            for _ in range(steps):
                if "opt" in state:
                    state["opt"].zero_grad()
                logits = model(xi)
                loss = cross_entropy_loss(target[i : i + 1])(logits.float()[None]).sum() + beta * state["kl"].mean()
                loss.backward()
                state["opt"].step()
        maps.append(state["kl"].detach().mean(0, keepdim=True))
    return torch.cat(maps)


AUTHORS = "authors' loop as published (1 image, whole net per step, weights' gradients on)"
REFERENCE = "reference style (1 image, whole net per step)"


def bf16_cpu() -> bool:
    """The CPU has native bfloat16 (AVX512-BF16 / AMX), where oneDNN runs bf16 convolutions fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image Spearman rank correlation of two (B, 1, H, W) maps."""
    ra = a.flatten(1).argsort(1).argsort(1).double()
    rb = b.flatten(1).argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean())


def bench_model(name, x, target, args, device) -> list[tuple]:
    ctor, layer = MODELS[name]
    model = ctor(weights=None).eval().to(device)
    n_ref = args.ref_images or args.images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = st.estimate(model, [layer], [{"x": x[: min(16, args.images)]}], n_samples=16)
    variants = [("xattr batched fp32, plain tail", None, False), ("xattr batched fp32, optimised tail", None, True)]
    if device.type == "cuda" or bf16_cpu():
        variants.append(("xattr batched bf16, optimised tail", "bf16", True))
    iba = {v: PerSampleIBA(model, layer, steps=args.steps, copies=args.copies, chunk=args.batch * args.copies,
                           autocast=ac, optimise_tail=opt) for v, ac, opt in variants}
    for m in iba.values():
        m.set_statistics(stats)
    bn = next(iter(iba.values())).bottleneck(layer)
    warm = {v: m.attribute(x[:2], target[:2]) for v, m in iba.items()}  # warm-up (cudnn autotune, fx tracing)
    if not args.skip_reference:  # warm-up of the loops (allocator, oneDNN primitives)
        reference_style(model, layer, bn, x[:1], target[:1], 1, args.copies)
        model.zero_grad(set_to_none=True)
    exact = warm[variants[0][0]]
    agree = {f"{v} (batch {args.batch})": agreement(exact, warm[v]) for v, _, _ in variants}
    # arithmetic per image of each path, counted once on one image (the count does not depend on batching)
    work: dict[str, float] = {}
    if not args.skip_reference and not args.skip_authors:
        work[AUTHORS] = flops(lambda: reference_style(model, layer, bn, x[:1], target[:1], args.steps, args.copies))
        model.zero_grad(set_to_none=True)
    if not args.skip_reference:
        with frozen(model):
            work[REFERENCE] = flops(lambda: reference_style(model, layer, bn, x[:1], target[:1], args.steps,
                                                            args.copies))
    for v, _, _ in variants:
        work[f"{v} (batch {args.batch})"] = flops(lambda v=v: iba[v].attribute(x[:1], target[:1]))
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeat):
        if not args.skip_reference and not args.skip_authors:
            sec, peak = timed(lambda: reference_style(model, layer, bn, x[:n_ref], target[:n_ref], args.steps,
                                                      args.copies), device, args.clock)
            runs.setdefault(AUTHORS, []).append((1000 * sec / n_ref, peak))
            print(f"  authors' loop: {1000 * sec / n_ref:.0f} ms/image", file=sys.stderr, flush=True)
            model.zero_grad(set_to_none=True)
        if not args.skip_reference:
            with frozen(model):
                sec, peak = timed(lambda: reference_style(model, layer, bn, x[:n_ref], target[:n_ref], args.steps,
                                                          args.copies), device, args.clock)
            runs.setdefault(REFERENCE, []).append((1000 * sec / n_ref, peak))
            print(f"  reference style: {1000 * sec / n_ref:.0f} ms/image", file=sys.stderr, flush=True)
        for v, _, _ in variants:
            sec, peak = timed(lambda v=v: iba[v].attribute(x, target), device, args.clock)
            runs.setdefault(f"{v} (batch {args.batch})", []).append((1000 * sec / args.images, peak))
            print(f"  {v}: {1000 * sec / args.images:.0f} ms/image", file=sys.stderr, flush=True)
    with frozen(model):  # the limit row: the same (optimised) tail, plain, at the same batch x copies rows
        tail = NetworkTail(model, layer, x[: args.batch])
        z = tail.r.repeat_interleave(args.copies, 0)
        lim = limit(tail, z, device, backward=True, repeat=max(3, args.repeat), params=list(model.parameters()),
                    clock=args.clock)
    print(f"  limit row (tail forward + input backward, {lim['batch']} rows): {lim['rate']:.1f} GFLOP/s",
          file=sys.stderr, flush=True)
    ref = statistics.median(ms for ms, _ in runs[next(iter(runs))])
    return [(name, path, statistics.median(ms for ms, _ in r), max(p for _, p in r), ref, agree.get(path),
             work.get(path, math.nan), work[next(iter(runs))], lim) for path, r in runs.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="images per xattr optimisation group")
    ap.add_argument("--images", type=int, default=64, help="images timed per row")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--ref-images", type=int, default=None, help="images for the reference path (default: --images)")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--repeat", type=int, default=1, help="timings per row, taken in turn; the median is shown")
    ap.add_argument("--skip-reference", action="store_true", help="no reference rows")
    ap.add_argument("--skip-authors", action="store_true", help="no authors'-loop row (weights' gradients on)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default or 0: all cores)")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="process: CPU time (one thread on a shared CPU), for every row and the limit")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.threads == 0:
        torch.set_num_threads(os.cpu_count() or 1)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, args.size, args.size, generator=g).to(device)
    target = torch.randint(0, 1000, (args.images,), generator=g).to(device)
    n_ref = args.ref_images or args.images
    rows = []
    for name in args.models:
        rows += bench_model(name, x, target, args, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\nPer-Sample IBA, {args.steps} steps x {args.copies} copies, {args.size}x{args.size}, {device_name(device)}, "
          f"{args.images} images (reference path: {n_ref}), median of {args.repeat}\n")
    print("| model / layer | path | ms / image | x faster than the first row | GFLOP / image | x less arithmetic "
          "than the first row | GFLOP/s | limit GFLOP/s | % of limit | peak memory (MiB) | maps vs fp32 plain tail "
          "(Spearman) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, path, ms, peak, ref, agree, work, ref_work, lim in rows:
        rate = work / 1e6 / ms
        print(f"| {name} | {path} | {ms:.1f} | {ref / ms:.1f} | {work / 1e9:.1f} | {ref_work / work:.1f} | "
              f"{rate:.1f} | {lim['rate']:.1f} | {fmt(ratio(rate, lim['rate']), pct=True)} | {fmt(peak, 0)} | "
              f"{'–' if agree is None else f'{agree:.4f}'} |")
        record("iba", model=name, path=path, device=device_name(device), ms_per_image=ms, gflop_per_image=work / 1e9,
               rate=rate, limit_rate=lim["rate"], peak_mib=peak)
    print("\nGFLOP: matrix products and convolutions, forward and backward (torch.utils.flop_counter), counted on "
          "one image; 'x less arithmetic' is the speed-up a path would have at the first row's GFLOP/s. Limit: a "
          "plain forward + input backward of the tail at batch x copies rows, in this run (timing.limit).")


if __name__ == "__main__":
    main()
