"""Benchmark: images per second of insertion+deletion and Sensitivity-n, xattr (batched over images and
steps) vs a straightforward per-image loop (the reference codes' way: one image at a time, 80 steps per
forward for insertion/deletion, 100 masks per forward for Sensitivity-n) vs Quantus 0.6 where it has
the protocol (PixelFlipping = deletion only, one forward per step for the whole batch).

    python scripts/bench_metrics.py                       # CPU, small settings
    python scripts/bench_metrics.py --device cuda --images 256 --size 224 --chunk 1024 --precision bf16

Prints a Markdown table. Models: torchvision VGG-16 and MobileNet-V2 with random weights. The *limit row*
(issue 31): a plain batched forward of the same model (BatchNorm folded and channels-last, as the metric runs
it) at the metric's rows per call (``--chunk``, ``auto``
resolved as the metric resolves it), under the same precision, measured in the same run (``timing.limit``);
"% of limit" is each row's forward rate as a share of it (target for xattr's rows: >= 80%).

``--tolerance``: how far the AUC of the curve at ``--points`` steps (``points: 100``; ``--spacings even,adaptive``)
lies from the full curve's (``points: all``), on real images, real weights and several methods' maps (xattr zoo
models; ``--zoo cifar_resnet20`` reads CIFAR-10 test images, ``--zoo mobilenet_v2`` ImageNet val images from
``--data``). The full curves are computed once per method (``--cache DIR`` keeps them, so a killed run
resumes); each sparse setting's points are then picked by the metric's own rule fed the full curve's values
(no forwards; the same points and AUCs as the metric, checked on the first ``--time-images`` images, on
which the real sparse metric is also timed). Prints the distribution of the AUC differences (mean |d|, 95th
percentile, max, share above 0.005, bias of the mean with its standard error) per method, mode, points and
spacing, and the time of each setting (forwards per image and ms per image; the full curve's from its
computation).

    python scripts/bench_metrics.py --tolerance --zoo cifar_resnet20 --images 200 --per-step 1 --points 100 200 \
        --batch 20 --chunk 64 --threads 1 --cache /tmp/insdel_cache --time-images 20
    python scripts/bench_metrics.py --tolerance --zoo mobilenet_v2 --images 2 --per-step 10 --points 100 200 \
        --methods gradient --batch 1 --chunk 64 --threads 1 --cache /tmp/insdel_cache --time-images 1

``--quantus``: deletion on the same maps against Quantus 0.6 ``PixelFlipping`` (see :func:`quantus_compare`).
``--eval-metrics``: issue 28's metrics against Quantus 0.6 at equal protocol (:func:`eval_metrics_compare`):

    python scripts/bench_metrics.py --eval-metrics --images 8 --size 32 --threads 1

    python scripts/bench_metrics.py --quantus --images 1 --size 224 --per-step 10 --models mobilenet_v2 \
        --points 100 --threads 1 --chunk auto --plain
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torchvision
from torchvision.transforms.functional import gaussian_blur

from timing import device_name, flops, fmt, limit, parse_chunk, ratio, record
from timing import timed as timed_mem  # scripts/ is on sys.path when run as a script
from xattr.core.chunk import autocast, resolve_chunk
from xattr.metrics._perturb import folded
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


def _maps(name: str, net, x: torch.Tensor, target: torch.Tensor, batch: int) -> torch.Tensor:
    """The ``--tolerance`` methods' maps of ``x`` (computed ``batch`` images at a time)."""
    from xattr.methods.baselines.gradient import Gradient
    from xattr.methods.baselines.input_x_gradient import InputXGradient
    from xattr.methods.baselines.integrated_gradients import IntegratedGradients
    from xattr.methods.baselines.random import RandomAttribution

    make = {"gradient": lambda: Gradient(net, reduce="max_abs", abs=True),
            "input_x_gradient": lambda: InputXGradient(net, reduce="sum"),
            "integrated_gradients": lambda: IntegratedGradients(net, n_steps=20),
            "random": lambda: RandomAttribution(net, seed=0, tile=1)}
    if name not in make:
        raise SystemExit(f"bad method {name!r}; valid choices: {', '.join(make)}")
    method = make[name]()
    return torch.cat([method.attribute(x[i : i + batch], target[i : i + batch]).detach() for i in range(0, len(x), batch)])


def full_curves(a, net, x: torch.Tensor, target: torch.Tensor, mname: str, maps: torch.Tensor, device) -> dict:
    """The full curves (``points: all``) of every image, computed ``--batch`` images per call and, with
    ``--cache DIR``, kept in ``DIR/<zoo>_<per_step>px_<method>.pt`` (appended batch by batch, so a killed run
    resumes). Returns ``{"insertion": (N, T), "deletion": (N, T), "seconds": s, "timed": images}``."""
    from pathlib import Path

    path = Path(a.cache) / f"{a.zoo}_{a.per_step}px_{mname}.pt" if a.cache else None
    have = torch.load(path) if path is not None and path.is_file() else {"insertion": [], "deletion": [], "seconds": 0.0, "timed": 0}
    done = sum(len(c) for c in have["insertion"])
    sigma = min(15.0, (x.shape[-1] + 1) / 4)
    metric = InsertionDeletion(points="all", per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk,
                               precision=a.precision, channels_last=a.channels_last)
    for i in range(done, len(x), a.batch):
        sl = slice(i, i + a.batch)
        out = []
        sec = timed(lambda sl=sl: out.append(metric(net, x[sl], target[sl], maps[sl])), device)  # noqa: B023
        for mode in ("insertion", "deletion"):
            have[mode].append(out[0].curves[mode].double().cpu())
        have["seconds"] += sec
        have["timed"] += len(x[sl])
        print(f"  full curves {mname}: {i + len(x[sl])} / {len(x)} images, {1000 * sec / len(x[sl]):.0f} ms per image",
              file=sys.stderr, flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(have, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
    return {**have, **{m: torch.cat(have[m])[: len(x)] for m in ("insertion", "deletion")}}


def tolerance(a) -> None:
    """``--tolerance``: AUC differences of sparse curves against the full curve (see the module docstring)."""
    from timing import device_name  # scripts/ is on sys.path when run as a script

    device = torch.device(a.device)
    net, x, target = _zoo_data(a.zoo, a.data, a.images, device)
    size, n = x.shape[-1], len(x)
    sigma = min(15.0, (size + 1) / 4)
    kw = dict(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk, precision=a.precision,
              channels_last=a.channels_last)
    settings = [(int(p), sp) for p in a.points for sp in a.spacings.split(",")]
    n_steps = -(-size * size // a.per_step)
    cap = torch.full((n,), size * size)
    rows, diffs, times, checks = [], {}, {}, []
    full_sec = [0.0, 0]
    for mname in a.methods.split(","):
        maps = _maps(mname, net, x, target, a.batch)
        full = full_curves(a, net, x, target, mname, maps, device)
        full_sec[0] += full["seconds"]
        full_sec[1] += full["timed"]
        for points, spacing in settings:
            metric = InsertionDeletion(points=points, spacing=spacing, rounds=a.rounds, **kw)
            for mode in ("insertion", "deletion"):
                curve = full[mode]
                steps = torch.arange(1, n_steps + 1)[None].expand(n, -1)
                auc_full = torch.trapezoid(curve, metric._x(steps, cap))
                # the points the metric picks, fed the full curve's values (the same rule, no forwards)
                k, y, _, _ = metric._sample(cap, lambda i, kk, c=curve: c[i, kk - 1])  # noqa: B023
                signed = torch.trapezoid(y, metric._x(k, cap)) - auc_full
                diffs.setdefault((points, spacing, mode), []).append(signed)
                rows.append((mname, mode, points, spacing, float(auc_full.mean()), signed))
                print(f"  {mname} {mode} {points} {spacing}: mean |d| {float(signed.abs().mean()):.5f}", file=sys.stderr, flush=True)
            if a.time_images:  # the real metric on the first images: its time, and its AUCs against the rule's
                sl = slice(0, a.time_images)
                got = []
                sec = timed(lambda: got.append(metric(net, x[sl], target[sl], maps[sl])), device)  # noqa: B023
                times.setdefault((points, spacing), [0.0, 0])
                times[(points, spacing)][0] += sec
                times[(points, spacing)][1] += len(x[sl])
                for mode in ("insertion", "deletion"):
                    auc_sim = full[mode][sl]
                    k, y, _, _ = metric._sample(cap[sl], lambda i, kk, c=auc_sim: c[i, kk - 1])  # noqa: B023
                    checks.append(float((got[0].scores[mode].double() - torch.trapezoid(y, metric._x(k, cap[sl]))).abs().max()))
    print(f"\nInsertion/deletion AUC: sparse curve vs full curve; {a.zoo} (real weights), {n} real images "
          f"{size}x{size}, {a.per_step} px per step = {n_steps} steps per curve, {device_name(device)}. d = sparse AUC "
          f"- full AUC per image; bias = mean of d (+- its standard error)\n")
    print("| method | mode | points | spacing | mean AUC (full) | mean abs d | 95th pct | max | images with abs d > 0.005 "
          "| bias of the mean AUC |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")

    def line(name, mode, points, spacing, mean_full, d) -> None:
        a_ = d.abs()
        se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
        print(f"| {name} | {mode} | {points} | {spacing} | {mean_full} | {float(a_.mean()):.5f} | "
              f"{float(a_.quantile(0.95)):.5f} | {float(a_.max()):.5f} | {int((a_ > 0.005).sum())} / {len(d)} "
              f"({float((a_ > 0.005).double().mean()):.0%}) | {float(d.mean()):+.5f} +- {se:.5f} |")

    for r in rows:
        line(r[0], r[1], r[2], r[3], f"{r[4]:.4f}", r[5])
    if len(a.methods.split(",")) > 1:
        for (points, spacing, mode), ds in diffs.items():
            line("**all methods**", mode, points, spacing, "", torch.cat(ds))
    if checks:
        print(f"\n(the metric's own AUCs on the first {a.time_images} images equal the rule's on the full curve up to "
              f"{max(checks):.1e})")
    print("\n| points | spacing | forwards per image (both curves) | ms per image | x faster than all |")
    print("|---|---|---:|---:|---:|")
    full_ms = 1000 * full_sec[0] / max(1, full_sec[1])
    print(f"| all | - | {2 * n_steps} | {full_ms:.0f} | 1.0 |")
    for (points, spacing), (sec, cnt) in times.items():
        ms = 1000 * sec / cnt
        print(f"| {points} | {spacing} | {2 * min(points, n_steps)} | {ms:.0f} | {full_ms / ms:.1f} |")


def quantus_compare(a) -> None:
    """``--quantus``: deletion on the same maps, ms per image: Quantus 0.6 ``PixelFlipping`` (its batched
    evaluation: one forward of the whole batch per step, ``features_in_step`` the divisor of C*H*W nearest to
    3 x ``--per-step``: the same number of forwards as a ``--per-step`` px curve) against xattr's deletion with
    every step (equal forwards; plain forwards as Quantus's, then xattr's defaults: BatchNorm folded,
    channels-last) and with ``--points`` (adaptive), and xattr's insertion + deletion with ``--points`` (what
    an ordinary run computes). Random weights, random maps."""
    import quantus

    from timing import device_name  # scripts/ is on sys.path when run as a script

    device = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.images, 3, a.size, a.size, generator=g).to(device)
    maps = torch.rand(a.images, 1, a.size, a.size, generator=g).to(device)
    target = torch.randint(0, 1000, (a.images,), generator=g).to(device)
    sigma = min(15.0, (a.size + 1) / 4)
    n_units = a.size * a.size
    n_steps = -(-n_units // a.per_step)
    total = 3 * n_units
    fis = min((d for d in range(1, total + 1) if total % d == 0), key=lambda d: abs(d - 3 * a.per_step))
    pts = int(a.points[0])
    kw = dict(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk)
    print(f"Deletion on the same maps: {a.images} images {a.size}x{a.size}, {a.per_step} px per step, "
          f"{device_name(device)}, random weights\n")
    print("| model | path | forwards per image | ms per image | x faster than Quantus |")
    print("|---|---|---:|---:|---:|")
    for name in a.models.split(","):
        model = getattr(torchvision.models, name)(weights=None).eval().to(device)
        pf = quantus.PixelFlipping(features_in_step=fis, perturb_baseline=0.0, normalise=False,
                                   disable_warnings=True, display_progressbar=False)
        rows = [(f"Quantus 0.6 PixelFlipping (deletion, {fis} values per step, the batch per forward)", total // fis,
                 lambda: pf(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(),  # noqa: B023
                            a_batch=maps.expand(-1, 3, -1, -1).cpu().numpy(), device=str(device), softmax=True))]
        plain = [("xattr deletion, every step, plain forwards (fold_bn off, contiguous)",
                  InsertionDeletion(modes=["deletion"], fold_bn=False, channels_last=False, **kw), n_steps)]
        for label, metric, fw in (
            *(plain if a.plain else []),
            ("xattr deletion, every step (defaults: BatchNorm folded, channels-last)",
             InsertionDeletion(modes=["deletion"], **kw), n_steps),
            (f"xattr deletion, points {pts} adaptive", InsertionDeletion(modes=["deletion"], points=pts, **kw), pts),
            (f"xattr insertion + deletion, points {pts} adaptive (the default)", InsertionDeletion(points=pts, **kw), 2 * pts),
        ):
            rows.append((label, fw, lambda m=metric: m(model, x, target, maps)))  # noqa: B023
        InsertionDeletion(modes=["deletion"], points=4, **kw)(model, x[:1], target[:1], maps[:1])  # warm-up
        base = None
        for label, fw, fn in rows:
            sec = timed(fn, device)
            base = base or sec
            print(f"| {name} | {label} | {fw} | {1000 * sec / a.images:.0f} | {base / sec:.1f} |", flush=True)


def eval_metrics_compare(a) -> None:
    """``--eval-metrics``: the metrics of issue 28 against Quantus 0.6 on the same model, images and maps, at equal
    protocol (the same number of runs / percentages / draws / segments; the method: xattr's Gradient, which Quantus
    calls as its ``explain_func``), images per second. Both take the batch of ``--images`` at once; Quantus' random
    draws are its own (equal counts, not equal values: the tests compare values). Random weights, random maps."""
    import numpy as np
    import quantus

    from timing import device_name  # scripts/ is on sys.path when run as a script
    from xattr.methods.baselines.gradient import Gradient
    from xattr.metrics.complexity import Complexity, Sparseness
    from xattr.metrics.faithfulness import IROF, FaithfulnessCorrelation
    from xattr.metrics.pointing import PointingGame, RelevanceMass, RelevanceRank, TopKIntersection
    from xattr.metrics.randomisation import EfficientMPRT, RandomLogit
    from xattr.metrics.road import ROAD
    from xattr.metrics.robustness import MaxSensitivity, RelativeInputStability

    if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz (numpy 2: np.trapezoid)
        np.trapz = np.trapezoid
    device = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    n, s = a.images, a.size
    x = torch.randn(n, 1, s, s, generator=g).to(device)  # one channel: Quantus' ROAD and IROF need it
    maps = torch.rand(n, 1, s, s, generator=g).to(device)
    target = torch.randint(0, 10, (n,), generator=g).to(device)
    box = [torch.tensor([[s / 4, s / 4, 3 * s / 4, 3 * s / 4]])] * n
    seg = np.zeros((n, 1, s, s))
    seg[:, :, s // 4:3 * s // 4, s // 4:3 * s // 4] = 1
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(device)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False).to(device).eval()
    method = Gradient(model, reduce="sum")

    def explain(model, inputs, targets, **kw):
        return Gradient(model, reduce="sum").attribute(torch.as_tensor(np.asarray(inputs), device=device),
                                                        torch.as_tensor(np.asarray(targets), device=device)).cpu().numpy()

    q = dict(disable_warnings=True, display_progressbar=False)
    qa = dict(abs=False, normalise=False, **q)
    data = dict(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(), a_batch=maps.cpu().numpy(),
                device=str(device))
    pct = [10, 30, 50, 70, 90]
    cases = [
        ("pointing_game", PointingGame(tolerance=1), quantus.PointingGame(**qa), {"boxes": box}, {"s_batch": seg}),
        ("relevance_mass", RelevanceMass(positive=False), quantus.RelevanceMassAccuracy(**qa), {"boxes": box},
         {"s_batch": seg}),
        ("relevance_rank", RelevanceRank(), quantus.RelevanceRankAccuracy(**qa), {"boxes": box}, {"s_batch": seg}),
        ("top_k_intersection", TopKIntersection(k=s), quantus.TopKIntersection(k=s, **qa), {"boxes": box},
         {"s_batch": seg}),
        ("sparseness", Sparseness(), quantus.Sparseness(abs=True, normalise=False, **q), {}, {}),
        ("complexity", Complexity(), quantus.Complexity(abs=True, normalise=False, **q), {}, {}),
        ("road (MoRF, 5 levels)", ROAD(percentages=pct, orders=["morf"]), quantus.ROAD(percentages=pct, **qa), {}, {}),
        ("faithfulness_correlation (20 runs)", FaithfulnessCorrelation(n_runs=20, subset_size=s),
         quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=s, return_aggregate=False, **qa), {}, {}),
        ("irof", IROF(baseline="zero"), quantus.IROF(return_aggregate=False, perturb_baseline=0.0, **qa), {}, {}),
        ("max_sensitivity (10 draws)", MaxSensitivity(n_samples=10), quantus.MaxSensitivity(nr_samples=10, **qa),
         {"method": method}, {"explain_func": explain}),
        ("relative_input_stability (10 draws)", RelativeInputStability(n_samples=10),
         quantus.RelativeInputStability(nr_samples=10, **q), {"method": method}, {"explain_func": explain}),
        ("random_logit", RandomLogit(), quantus.RandomLogit(num_classes=10, **qa), {"method": method},
         {"explain_func": explain}),
        ("efficient_mprt", EfficientMPRT(), quantus.EfficientMPRT(**q), {"method_factory": lambda m: Gradient(m, reduce="sum")},
         {"explain_func": explain}),
    ]
    print(f"Issue 28's metrics on the same maps: {n} images 1x{s}x{s}, ResNet-18 (10 classes, random weights), "
          f"{device_name(device)}, {torch.get_num_threads()} thread(s), clock {a.clock}, median of {a.repeat}\n")
    # the limit rows: a plain batched forward, and forward + input backward, of the same model at 64 rows
    rows_in = x[:1].expand(64, -1, -1, -1).contiguous()
    lim = {bw: limit(model, rows_in, device, backward=bw, clock=a.clock) for bw in (False, True)}
    print("| metric | Quantus 0.6 images/s | xattr images/s | x faster | GFLOP / image | xattr GFLOP/s | limit GFLOP/s "
          "| xattr % of limit | most x faster at equal arithmetic |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ours, theirs, extras, qkw in cases:
        if a.only and name.split()[0] not in a.only.split(","):
            continue
        one = {k: (v[:1] if k == "boxes" else v) for k, v in extras.items()}
        ours(model, x[:1], target[:1], maps[:1], **one)  # warm-up
        work = flops(lambda: ours(model, x[:1], target[:1], maps[:1], **one)) / 1e9  # noqa: B023  GFLOP per image
        t_ours = median_time(lambda: ours(model, x, target, maps, **extras), device, a)  # noqa: B023
        t_q = median_time(lambda: theirs(**data, **qkw), device, a)  # noqa: B023
        # equal protocol = equal arithmetic per image; the limit (forward + backward where the metric runs the
        # method) bounds any implementation's rate, so it bounds the ratio to Quantus: limit / Quantus' rate
        lim_rate = lim["method" in extras or "method_factory" in extras]["rate"]
        rate, q_rate = work * n / t_ours, work * n / t_q
        most = fmt(lim_rate / q_rate, digits=1) if work > 0 else "-"
        share = fmt(ratio(rate, lim_rate), pct=True) if work > 0 else "-"
        print(f"| {name} | {n / t_q:.1f} | {n / t_ours:.1f} | {t_q / t_ours:.1f} | {work:.3f} | {rate:.1f} | "
              f"{lim_rate:.1f} | {share} | {most} |", flush=True)
        record("eval_metrics", model=f"resnet18 1x{s}x{s}", metric=name, path=f"xattr, {t_q / t_ours:.1f}x Quantus",
               device=device_name(device), images=n, ms_per_image=1000 * t_ours / n, quantus_images_s=n / t_q,
               xattr_images_s=n / t_ours, gflop_per_image=work, rate=rate if work > 0 else None,
               limit_rate=lim_rate if work > 0 else None)
    print("\n(GFLOP / image: torch.utils.flop_counter on xattr's call for one image: the model's convolutions and "
          "matrix products, 0 for the map-only metrics; limit: a plain batched forward of the model at 64 rows, with "
          "the input-gradient backward for the metrics that run the method; most x faster: the limit's rate over "
          "Quantus' rate at the same arithmetic per image, the most any implementation could gain over it here)")


def median_time(fn, device: torch.device, a) -> float:
    """Median seconds of ``a.repeat`` calls of ``fn`` (``a.clock``: wall or this process's CPU time)."""
    return statistics.median(timed_mem(fn, device, a.clock)[0] for _ in range(max(1, a.repeat)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tolerance", action="store_true", help="sparse vs full AUC on real images (module docstring)")
    p.add_argument("--quantus", action="store_true", help="deletion vs Quantus PixelFlipping on the same maps")
    p.add_argument("--eval-metrics", action="store_true", help="issue 28's metrics vs Quantus on the same maps")
    p.add_argument("--plain", action="store_true", help="--quantus: also xattr with plain forwards (no folding, contiguous)")
    p.add_argument("--zoo", default="cifar_resnet20", help="--tolerance: xattr zoo model with real weights")
    p.add_argument("--data", default="/work/shared/data", help="--tolerance: the shared data folder")
    p.add_argument("--methods", default="gradient,input_x_gradient,random", help="--tolerance: maps to compare on")
    p.add_argument("--points", nargs="*", default=["100"], help="sparse settings (--tolerance: all compared; else the first)")
    p.add_argument("--batch", type=int, default=16, help="--tolerance: images per metric call")
    p.add_argument("--cache", default=None, help="--tolerance: folder keeping the full curves between runs")
    p.add_argument("--spacings", default="even,adaptive", help="--tolerance: spacings compared")
    p.add_argument("--rounds", type=int, default=4, help="adaptive spacing: rounds after the first, even set")
    p.add_argument("--time-images", type=int, default=0, help="--tolerance: images the sparse metric is timed on")
    p.add_argument("--channels-last", action="store_true", default=None, help="channels-last forwards (CPU too)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    p.add_argument("--clock", default="wall", choices=["wall", "process"],
                   help="process: CPU time (one thread on a shared CPU), for every row and the limit")
    p.add_argument("--only", default=None, help="--eval-metrics: comma-separated metric names (default: all)")
    p.add_argument("--repeat", type=int, default=1, help="--eval-metrics: timed calls per row, the median kept")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--per-step", type=int, default=10)
    p.add_argument("--chunk", type=parse_chunk, default=256, help="forwards per call, auto or null")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--n-masks", type=int, default=10)
    p.add_argument("--models", default="vgg16,mobilenet_v2")
    p.add_argument("--skip-loop", action="store_true", help="skip the per-image loop columns")
    p.add_argument("--skip-quantus", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak for --precision (e.g. 989 for H100 bf16 dense): adds a %% of peak column")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tolerance:
        tolerance(a)
        return
    if a.quantus:
        quantus_compare(a)
        return
    if a.eval_metrics:
        eval_metrics_compare(a)
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
    peak_col = f" % of {a.peak_tflops:g} TFLOP/s |" if a.peak_tflops else ""
    print("| model | metric | path | forwards / image | ms / image | peak memory (MiB) | x faster than the metric's first row "
          f"| forward TFLOP/s | limit TFLOP/s | % of limit |{peak_col}")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if a.peak_tflops else ""))
    pts = int(a.points[0])
    sparse = InsertionDeletion(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk,
                               precision=a.precision, points=pts)
    del_only = InsertionDeletion(per_step=a.per_step, blur_sigma=sigma, min_prob=None, chunk=a.chunk,
                                 precision=a.precision, modes=["deletion"])
    n_steps = -(-n_units // a.per_step)
    for name in a.models.split(","):
        model = getattr(torchvision.models, name)(weights=None).eval().to(device)
        with torch.no_grad():
            per_forward = flops(lambda: model(x[:1]))  # noqa: B023  (the perturbed forwards' arithmetic per row)
        insdel(model, x[:1], target[:1], maps[:1])  # warm-up
        rows = []  # (metric, path, forwards per image, (seconds, peak MiB) or None)
        if not a.skip_loop:
            rows.append(("insertion+deletion", "per-image loop (reference codes' way, 80 steps per forward)",
                         2 * (n_steps + 1), timed_mem(lambda: loop_insdel(model, x, target, maps, a.per_step, sigma), device, a.clock)))  # noqa: B023
        if quantus is not None and not a.skip_quantus:
            total = 3 * n_units  # Quantus needs a divisor of C*H*W: the one nearest to 3 x per_step
            fis = min((d for d in range(1, total + 1) if total % d == 0), key=lambda d: abs(d - 3 * a.per_step))
            pf = quantus.PixelFlipping(features_in_step=fis, perturb_baseline=0.0, normalise=False,
                                       disable_warnings=True, display_progressbar=False)
            rows.append(("deletion only", f"Quantus 0.6 PixelFlipping ({fis} values per step, batch per step)",
                         total // fis, timed_mem(lambda: pf(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(),  # noqa: B023
                                                             a_batch=maps.expand(-1, 3, -1, -1).cpu().numpy(), device=str(device),
                                                             softmax=True), device, a.clock)))
        rows.append(("deletion only", "xattr, points all", n_steps, timed_mem(lambda: del_only(model, x, target, maps), device, a.clock)))  # noqa: B023
        rows.append(("insertion+deletion", "xattr, points all (tables)", 2 * n_steps,
                     timed_mem(lambda: insdel(model, x, target, maps), device, a.clock)))  # noqa: B023
        rows.append(("insertion+deletion", f"xattr, points {pts} (ordinary runs)", 2 * min(pts, n_steps),
                     timed_mem(lambda: sparse(model, x, target, maps), device, a.clock)))  # noqa: B023
        sens(model, x[:1], target[:1], maps[:1])
        n_sens = len(sens.n) * (a.n_masks + 1)
        if not a.skip_loop:
            rows.append(("Sensitivity-n (InputIBA)", "per-image loop", n_sens,
                         timed_mem(lambda: loop_sens(model, x, target, maps, sens), device, a.clock)))  # noqa: B023
        rows.append(("Sensitivity-n (InputIBA)", "xattr", n_sens, timed_mem(lambda: sens(model, x, target, maps), device, a.clock)))  # noqa: B023
        per_call = resolve_chunk(a.chunk, model, x[:1], a.precision) or 2 * n_steps  # None: a whole curve per call
        # the network the metric runs (BatchNorm folded, channels-last, as InsertionDeletion's defaults), plain
        net = folded(model, x[:1]).to(memory_format=torch.channels_last)
        rows_in = x[:1].expand(per_call, -1, -1, -1).contiguous(memory_format=torch.channels_last)

        def forward(z, net=net):
            with autocast(device, a.precision):
                return net(z)

        lim = limit(forward, rows_in, device, params=list(net.parameters()), clock=a.clock)
        first: dict[str, float] = {}
        for metric, path, fw, (sec, peak) in rows:
            base = first.setdefault(metric, sec)
            up = "-" if base == sec else f"{base / sec:.1f}"
            mem = "-" if peak != peak else f"{peak:.0f}"
            rate = per_forward * fw * a.images / sec / 1e12
            pct = f" {100 * rate / a.peak_tflops:.1f} |" if a.peak_tflops else ""
            share = ratio(rate, lim["rate"] / 1e3)
            print(f"| {name} | {metric} | {path} | {fw} | {1000 * sec / a.images:.0f} | {mem} | {up} | {rate:.3f} | "
                  f"{lim['rate'] / 1e3:.3f} | {fmt(share, pct=True)} |{pct}", flush=True)
            record("metrics", model=name, metric=metric, path=path, device=device_name(device), precision=a.precision,
                   ms_per_image=1000 * sec / a.images, gflop_per_image=per_forward * fw / 1e9, rate=rate * 1e3,
                   limit_rate=lim["rate"], peak_mib=peak)
        print(f"\n({name}: {per_forward / 1e9:.2f} GFLOP per forward (torch.utils.flop_counter: convolutions and matrix "
              "products); forward TFLOP/s = forwards x that / time, the rate of the metric's model forwards; limit: a plain "
              f"forward of {per_call} rows in this run)")

if __name__ == "__main__":
    main()
