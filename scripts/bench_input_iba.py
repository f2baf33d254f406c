"""Benchmark InputIBA: seconds per image one at a time vs batched, split per stage, GFLOP per image and the
rate reached, the WGAN stage beside its *limit row*, and peak memory per image at ``chunk`` null / auto / small.

CPU here with tiny settings; unchanged on a GPU with the reference's (target: <= 1 s/image on an H100
with 32+ images a batch, VGG-16, reference hyper-parameters)::

    python scripts/bench_input_iba.py                                   # CPU smoke: tiny CNN, 2 epochs
    python scripts/bench_input_iba.py --model efficientnet_lite0 --size 224 --batch 7 --single 0 \\
        --epochs 2 --targets 64 --steps 20                               # the demo's photos and model
    python scripts/bench_input_iba.py --device cuda --model vgg16 --size 224 --batch 32 --epochs 20 \\
        --steps 60 --feat-steps 10 --single 2

**Limit row** (issue 31): the WGAN stage's arithmetic, done as plain batched passes of the same networks in
the same run: per image and minibatch of ``gan_batch`` target samples, a critic step is the classifier up to
the bottleneck layer on ``gan_batch`` rows without gradient plus one plain critic (``nn.Conv2d`` /
``BatchNorm2d`` / ``nn.Linear``, the architecture of :class:`ConvDiscriminators` for one image) forward and
backward on ``2 gan_batch`` rows; a generator step is the classifier's first part forward and input-gradient
backward on ``gan_batch`` rows and the plain critic's forward and backward on them. Each is timed in
contiguous and channels-last format (best of 3 each), the fastest kept; the limit rate is their FLOPs over
their time, mixed as
the WGAN mixes them (its numbers of critic and generator steps). The stage's own rate is its FLOPs
(``timing.flops``, counted on one epoch and multiplied by ``epochs``: every epoch does the same passes) over
its time (``timing.timed`` on at most 2 epochs, scaled likewise). Target: >= 50% of the limit.

**Memory**: InputIBA's memory knob is ``chunk`` (images per graph = ``chunk // max(copies, feat_copies)``);
the peak of a step does not depend on the number of steps, so the memory rows run 1 epoch and 1 step of
each stage. Peak: CUDA ``max_memory_allocated`` above the start, or the CPU resident set above the start.

Weights are random (timing only): the cost does not depend on them. The feature statistics come from
the benchmark images themselves (timing only). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import math
import warnings

import torch
from torch import nn

from timing import (  # scripts/ is on sys.path when run as a script
    device_name,
    flops,
    parse_chunk,
    record,
    timed,
)
from xattr.core.hooks import capture, frozen
from xattr.methods.iba.statistics import estimate
from xattr.methods.input_iba import ConvDiscriminators, InputIBA
from xattr.models.tiny import TinyCNN


def build_model(name: str, device: str) -> tuple[torch.nn.Module, str]:
    if name == "tiny":
        return TinyCNN(10).eval().to(device), "conv2"
    from xattr.models import load_model

    zoo = load_model(name, weights="random", device=device)
    layer = {"vgg16": "conv4_1", "efficientnet_lite0": "block_4"}.get(name, "features.17")
    return zoo.net, layer


def run(method: InputIBA, x: torch.Tensor, target: torch.Tensor, device: str) -> tuple[dict, float]:
    box = []
    total, peak = timed(lambda: box.append(method.explain(x, target)), device)
    timings = {k: float(v.sum()) for k, v in box[0].group("timing").items()}  # seconds per image, summed
    return {**timings, "wall": total}, peak


def variant(method: InputIBA, **changes) -> InputIBA:
    """A shallow copy of ``method`` with other epochs / steps / chunk (same model, statistics, seeds)."""
    out = copy.copy(method)
    out.gan = copy.copy(method.gan)
    out.feature_iba = copy.copy(method.feature_iba)
    for key, value in changes.items():
        if key == "epochs":
            out.gan.epochs = value
        elif key == "feat_steps":
            out.feature_iba.steps = value
        else:
            setattr(out, key, value)
    return out


def flops_per_image(method: InputIBA, x1: torch.Tensor, t1: torch.Tensor) -> float:
    """FLOPs of ``explain`` on one image: counted at 1 and 2 epochs and input steps (each epoch and step does
    the same passes), extrapolated exactly to the method's epochs and steps."""
    f11 = flops(lambda: variant(method, epochs=1, steps=1).explain(x1, t1))
    f21 = flops(lambda: variant(method, epochs=2, steps=1).explain(x1, t1))
    f12 = flops(lambda: variant(method, epochs=1, steps=2).explain(x1, t1))
    return f11 + (method.gan.epochs - 1) * (f21 - f11) + (method.steps - 1) * (f12 - f11)


def wgan_inputs(method: InputIBA, x: torch.Tensor, target: torch.Tensor):
    """``(r, kl, m)``: what the WGAN stage starts from (stage 1 run once)."""
    feat = method.feature_iba.optimize(x, target)
    kl = method.feature_iba.kl_grid(feat.kl, x)
    m = kl if method.target_mask == "capacity" else method.feature_iba.kl_grid(torch.sigmoid(feat.alpha), x)
    return method._features(x), kl, m


def step_counts(method: InputIBA) -> tuple[int, int]:
    """(critic steps, generator steps) of the WGAN stage."""
    gan = method.gan
    batches = math.ceil(gan.n_targets / gan.batch)
    return gan.epochs * batches, gan.epochs * len(range(0, batches, gan.critic))


def step_rows(method: InputIBA) -> tuple[int, int]:
    """(rows of all critic steps, rows of all generator steps) per image: the minibatches' sizes summed."""
    gan = method.gan
    sizes = [min(gan.batch, gan.n_targets - s) for s in range(0, gan.n_targets, gan.batch)]
    return gan.epochs * sum(sizes), gan.epochs * sum(sizes[::gan.critic])


def trim() -> None:
    """Give the heap's freed memory back to the system (glibc), so that a CPU peak resident set measured next
    starts from what is in use, not from what earlier runs left in the heap."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def plain_critic(disc: ConvDiscriminators, feat_shape: tuple[int, ...]) -> nn.Module:
    """One image's critic as ordinary modules (the architecture of ``disc``; the limit row's critic)."""
    layers: list[nn.Module] = []
    for cin, cout, k, s, p in disc.spec:
        layers += [nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
    layers += [nn.Flatten(), nn.Linear(disc.flat, 512), nn.LeakyReLU(0.2), nn.Linear(512, 256), nn.LeakyReLU(0.2),
               nn.Linear(256, 1)]
    return nn.Sequential(*layers)


def wgan_stage(method: InputIBA, x: torch.Tensor, r, kl, m) -> None:
    with frozen(method.model), torch.enable_grad():
        method.wgan_stage(x, r, kl, m)


def plain_steps(net: nn.Module, module: nn.Module, crit: nn.Module, z: torch.Tensor, rr: torch.Tensor,
                b: int) -> dict:
    """The limit's critic step and generator step for ``b`` images (module docstring): ``z`` ``n`` input rows,
    ``rr`` ``2 n`` feature rows."""

    def critic() -> None:
        for _ in range(b):
            with torch.no_grad():
                capture(net, module, z)
            crit.zero_grad(set_to_none=True)
            crit(rr).sum().backward()

    def generator() -> None:
        for _ in range(b):
            zz = z.detach().clone().requires_grad_(True)
            crit.zero_grad(set_to_none=True)
            (-crit(capture(net, module, zz))).sum().backward()

    return {"critic": critic, "generator": generator}


def limit_row(method: InputIBA, x: torch.Tensor, r: torch.Tensor, device: str) -> dict:
    """The WGAN stage's limit (module docstring): FLOPs, seconds and rate of plain batched passes."""
    n, b = min(method.gan.batch, method.gan.n_targets), x.shape[0]
    disc = ConvDiscriminators(1, r.shape[1:], None, r.device)
    crit = plain_critic(disc, tuple(r.shape[1:])).to(r.device).train()
    net, module = method.model, method.module
    best: dict[str, tuple[float, float]] = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        z = x[:1].expand(n, *x.shape[1:]).contiguous(memory_format=fmt)
        rr = r[:1].expand(2 * n, *r.shape[1:]).contiguous(memory_format=fmt)
        with frozen(net), torch.enable_grad():
            for name, fn in plain_steps(net, module, crit.to(memory_format=fmt), z, rr, b).items():
                fn()  # warm-up
                sec = min(timed(fn, device)[0] for _ in range(3))  # the limit: the best of 3
                if name not in best or sec < best[name][1]:
                    best[name] = (flops(fn), sec)
    rc, rg = step_rows(method)  # the plain steps ran n rows each; FLOPs and time scale with the rows
    f = (rc * best["critic"][0] + rg * best["generator"][0]) / n
    t = (rc * best["critic"][1] + rg * best["generator"][1]) / n
    return {"flops": f / b, "seconds": t / b, "rate": f / t, "parts": best}


def wgan_rows(method: InputIBA, x: torch.Tensor, target: torch.Tensor, device: str, repeats: int = 1,
              old: bool = True, epochs: int = 2) -> list[tuple]:
    """``(name, GFLOP/img, s/img, GFLOP/s, ratio to the limit)`` for the WGAN stage (and, with ``old``, its path
    before issue 31 on a CPU) and the limit row; ``repeats``: the stage's time is the best of that many runs;
    ``epochs``: the stage is timed on at most that many epochs and scaled to the method's (every epoch does the
    same passes), so that the row costs little beside the full runs above."""
    r, kl, m = wgan_inputs(method, x, target)
    b = x.shape[0]
    fl = method.gan.epochs * flops(lambda: wgan_stage(variant(method, epochs=1), x, r, kl, m)) / b
    lim = limit_row(method, x, r, device)
    rows = []
    paths = [("WGAN stage", method)]
    if old and torch.device(device).type == "cpu":
        paths.append(("WGAN stage, one call (before issue 31)", variant(method, cpu_pieces=False)))
    e = min(epochs, method.gan.epochs)
    for name, meth in paths:
        wgan_stage(variant(meth, epochs=1), x[:1], r[:1], kl[:1], m[:1])  # warm-up
        short = variant(meth, epochs=e)
        best = min(timed(lambda short=short: wgan_stage(short, x, r, kl, m), device)[0] for _ in range(repeats))
        sec = best * method.gan.epochs / e / b
        rows.append((name, fl, sec, fl / sec, fl / sec / lim["rate"]))
    rows.append(("limit: plain batched passes", lim["flops"], lim["seconds"], lim["rate"], 1.0))
    return rows


def memory_rows(method: InputIBA, x: torch.Tensor, target: torch.Tensor, device: str,
                chunks: list) -> list[tuple]:
    """``(chunk, images per graph, peak MiB, peak MiB per image)`` at 1 epoch and 1 step per stage."""
    rows = []
    for chunk in chunks:
        meth = variant(method, epochs=1, steps=1, feat_steps=1, chunk=chunk)
        group = meth.images_per_group(x)
        meth.explain(x[:group], target[:group])  # warm-up: the allocator's first growth is not the method's
        trim()
        _sec, peak = timed(lambda meth=meth: meth.explain(x, target), device)
        rows.append((chunk, group, peak, peak / group))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="tiny", help="tiny | vgg16 | efficientnet_lite0 | any zoo name")
    p.add_argument("--batch", type=int, default=4, help="images attributed at once")
    p.add_argument("--single", type=int, default=2, help="images timed one at a time")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--targets", type=int, default=200, help="WGAN target samples (reference 200)")
    p.add_argument("--steps", type=int, default=5, help="input IBA steps (reference 60)")
    p.add_argument("--feat-steps", type=int, default=3, help="feature IBA steps (reference 10)")
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--chunks", default="null,auto,10", help="chunk values of the memory rows ('' for none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, layer = build_model(args.model, args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    target = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    method = InputIBA(net, layer=layer, epochs=args.epochs, n_targets=args.targets, steps=args.steps,
                      feat_steps=args.feat_steps, copies=args.copies, feat_copies=args.copies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.set_statistics(estimate(net, [layer], [{"x": x}], n_samples=args.batch))
    run(variant(method, epochs=1, steps=1, feat_steps=1), x[:1], target[:1], args.device)  # warm-up
    gflop = flops_per_image(method, x[:1], target[:1]) / 1e9
    rows = []
    trim()
    single = [run(method, x[i : i + 1], target[i : i + 1], args.device) for i in range(min(args.single, args.batch))]
    if single:
        n1 = len(single)
        rows.append(("one at a time", n1, {k: sum(s[0][k] for s in single) / n1 for k in single[0][0]},
                     max(s[1] for s in single)))
    trim()
    t, peak = run(method, x, target, args.device)
    rows.append((f"batched ({args.batch})", args.batch, {k: v / args.batch for k, v in t.items()}, peak))
    print(f"\nInputIBA, {args.model} at {layer}, {args.size}x{args.size}, epochs {args.epochs}, targets {args.targets}, "
          f"steps {args.feat_steps}/{args.steps}, copies {args.copies}, {device_name(args.device)}\n")
    print("WGAN = critic steps + generator steps + set-up; feature + WGAN + input = total (InputIBA's timing/*); "
          "wall: the explain call timed from outside. Peak: GPU memory allocated, or CPU resident set above the "
          f"start. GFLOP per image (timing.flops): {gflop:.2f}.\n")
    print("| mode | images | feature IBA s/img | WGAN s/img | (critic) | (generator) | input IBA s/img | total s/img "
          "| wall s/img | GFLOP/img | GFLOP/s | peak MiB | peak MiB/img |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, n, t, peak in rows:
        mib = "-" if peak != peak else f"{peak:.0f} | {peak / n:.0f}"
        print(f"| {mode} | {n} | {t['feature']:.3f} | {t['wgan']:.3f} | {t['wgan_critic']:.3f} | {t['wgan_generator']:.3f} "
              f"| {t['input']:.3f} | {t['total']:.3f} | {t['wall']:.3f} | {gflop:.2f} | {gflop / t['wall']:.1f} | {mib} |")
        record("input_iba", model=f"{args.model} {args.size} px", path=f"whole method, {mode}",
               device=device_name(args.device), ms_per_image=1000 * t["wall"], gflop_per_image=gflop,
               rate=gflop / t["wall"], peak_mib=peak)
    nc, ng = step_counts(method)
    print(f"\nWGAN stage beside its limit row (plain batched passes of the same classifier part and critic at the "
          f"same batch, {method.gan.batch} rows; {nc} critic and {ng} generator steps; target >= 50%):\n")
    print("| path | GFLOP/img | s/img | GFLOP/s | % of limit |")
    print("|---|---|---|---|---|")
    for name, fl, sec, rate, ratio in wgan_rows(method, x, target, args.device):
        print(f"| {name} | {fl / 1e9:.2f} | {sec:.3f} | {rate / 1e9:.1f} | {100 * ratio:.0f}% |")
        record("input_iba", model=f"{args.model} {args.size} px", path=f"WGAN stage: {name}",
               device=device_name(args.device), ms_per_image=1000 * sec, gflop_per_image=fl / 1e9, rate=rate / 1e9,
               limit_rate=rate / 1e9 / ratio if ratio else None)
    chunks = [parse_chunk(c) for c in args.chunks.split(",") if c]
    if chunks:
        print("\nPeak memory per image by `chunk` (1 epoch and 1 step per stage: a step's peak does not depend on "
              "their number):\n")
        print("| chunk | images per graph | peak MiB | peak MiB per image |")
        print("|---|---|---|---|")
        for chunk, group, peak, per in memory_rows(method, x, target, args.device, chunks):
            print(f"| {'null' if chunk is None else chunk} | {group} | {peak:.0f} | {per:.0f} |")


if __name__ == "__main__":
    main()
