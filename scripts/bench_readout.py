"""Readout IBA's training speed: the step before session 15 (a new network split per step, the read-out on the
resized concatenation of its features) vs xattr's (one split moved from batch to batch, the read-out by parts),
against the limit row.

Each training step of the read-out (``ReadoutTraining.training_step``) needs the model's features for the
read-out's input (one clean forward), the read-out network, and the network after the bottleneck (the *tail*)
run forward and backward on the noisy feature. Before, every step built a new ``NetworkTail`` (an fx trace,
BatchNorm folding, a recording forward and the split's self-check on one and two copies); now the split is built
and checked once and takes the bottleneck's output from the read-out's own forward (``NetworkTail.for_input``).

Rows: ms per training image (a step = the read-out's forward, the loss, the backward and Adam's update, as
Lightning runs it, without Lightning's own loop), GFLOP per image (``torch.utils.flop_counter``, one step),
the rate reached and its share of the *limit row*, measured in the same run at the same batch
(``timing.limit``): a plain forward of the whole network, a plain forward + input backward of the tail, and
the read-out network's forward by parts and the backward to its weights (what training takes). Before, the
read-out convolved the resized, concatenated features (1 432 channels on MobileNet-V2, most of them ``last_conv``'s
7 x 7 map upsampled to 28 x 28) at every bottleneck pixel; by parts, each is convolved at the smaller of its and
the bottleneck's resolution, then resized (``ReadoutNet.forward_parts``: the same map up to float rounding). The limit row is the part xattr runs (by
parts), so only xattr's row gets a share of it; the row before did other arithmetic. Peak memory is
the resident set size above the start (CPU) or torch's allocated peak (CUDA). The read-outs of both paths are
compared after the timed steps (same seed, same batches).

    python scripts/bench_readout.py --threads 1                      # MobileNet-V2, 224 px, batch 16 (the run's)
    python scripts/bench_readout.py --threads 1 --size 64 --steps 2  # smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F

from timing import (  # scripts/ is on sys.path as a script
    device_name,
    flops,
    fmt,
    limit,
    measured,
    ratio,
    record,
    timed,
)
from xattr.core.hooks import frozen
from xattr.methods.iba import statistics as st
from xattr.methods.iba.readout import ReadoutIBA, ReadoutNet, ReadoutTraining
from xattr.methods.iba.tail import NetworkTail
from xattr.models import load_model

OLD = "before session 15: a new split per step, the read-out on the resized concatenation"
NEW = "xattr: one split moved per batch, the read-out by parts"


def trainer(method: ReadoutIBA, seed: int = 0) -> tuple[ReadoutTraining, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    feats_in = method.features(torch.zeros(2, *BATCH_SHAPE[1:], device=method.device))[1].shape[1]
    module = ReadoutTraining(method, ReadoutNet(feats_in, method.stats[method.layer].mean.shape[0]))
    module.log = lambda *a, **k: None  # Lightning's logging needs its trainer; not part of the work timed
    return module, module.configure_optimizers()


def concatenated(readout: ReadoutNet):
    """The read-out as before session 15: every part resized to the bottleneck's size, concatenated, convolved."""

    def forward_parts(parts, size):
        return readout(torch.cat([p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear",
                                                                              align_corners=False) for p in parts], 1))

    return forward_parts


def steps(module: ReadoutTraining, opt, batches: list[dict], old: bool) -> None:
    for i, b in enumerate(batches):
        if old:  # every step splits (traces, folds, checks) the network anew; the read-out on the concatenation
            object.__setattr__(module, "_tail", None)
            module.readout.forward_parts = concatenated(module.readout)
        loss = module.training_step(b, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


BATCH_SHAPE: tuple[int, ...] = ()


def readout_limit(readout: ReadoutNet, parts: list[torch.Tensor], size: tuple[int, int], repeat: int, device,
                  clock: str) -> dict[str, float]:
    """The read-out's piece of the limit row: a plain forward by parts and the backward to its weights (what
    training takes), nothing else (``timing.measured``)."""

    def fn() -> None:
        readout.zero_grad(set_to_none=True)
        readout.forward_parts(parts, size).sum().backward()

    return measured(fn, device, repeat, clock)


def main(argv: list[str] | None = None) -> None:
    global BATCH_SHAPE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--weights", default="random", help="random (timing does not depend on the weights) | imagenet")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16, help="training images per step (conf: train_batch_size)")
    ap.add_argument("--steps", type=int, default=4, help="training steps timed per row")
    ap.add_argument("--repeat", type=int, default=3, help="timings per row, taken in turn; the median is shown")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default or 0: all cores)")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"])
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    zoo = load_model(args.model, args.weights, device=device)
    layers = zoo.net.xattr_layers
    method = ReadoutIBA(zoo.net, "block_5" if "block_5" in layers else next(iter(layers)),
                        ["block_2", "block_5", "block_12", "last_conv"] if "block_12" in layers else [],
                        train_batch_size=args.batch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch * args.steps, 3, args.size, args.size, generator=g).to(device)
    BATCH_SHAPE = (args.batch, 3, args.size, args.size)
    target = torch.randint(0, zoo.net.num_classes, (x.shape[0],), generator=g).to(device)
    batches = [{"x": x[i : i + args.batch], "target": target[i : i + args.batch]} for i in range(0, len(x), args.batch)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.set_statistics(st.estimate(zoo.net, method.layers, [{"x": x[:8]}], n_samples=8))
    print(f"bench_readout: {args.model} {args.size} px, {args.steps} steps of {args.batch} images per row, "
          f"{args.repeat} repeats", file=sys.stderr, flush=True)
    modules = {OLD: trainer(method), NEW: trainer(method)}
    work, runs = {}, {}
    with frozen(zoo.net):
        for path, (module, opt) in modules.items():
            old = path == OLD
            steps(module, opt, batches[:1], old)  # warm-up: oneDNN primitives, the first split
            work[path] = flops(lambda m=module, o=opt, f=old: steps(m, o, batches[1:2] or batches[:1], f)) / args.batch
        # the same seed and batches for both: reset, then time in turn
        modules = {OLD: trainer(method), NEW: trainer(method)}
        for _ in range(args.repeat):
            for path, (module, opt) in modules.items():
                sec, peak = timed(lambda m=module, o=opt, f=path == OLD: steps(m, o, batches, f), device, args.clock)
                runs.setdefault(path, []).append((1000 * sec / len(x), peak))
                print(f"  {path}: {1000 * sec / len(x):.0f} ms/image", file=sys.stderr, flush=True)
        same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in
                   zip(modules[OLD][0].readout.parameters(), modules[NEW][0].readout.parameters()))
        xb = batches[0]["x"]
        rep = max(3, args.repeat)
        full = limit(zoo.net, xb, device, backward=False, repeat=rep, clock=args.clock)
        tail = NetworkTail(zoo.net, method.resolved[method.layer], xb)
        part = limit(tail, tail.r, device, backward=True, repeat=rep, params=list(zoo.net.parameters()),
                     clock=args.clock)
        readout = modules[NEW][0].readout
        head = readout_limit(readout, method.feature_parts(xb)[1], tuple(tail.r.shape[-2:]), rep, device, args.clock)
    pieces = (full, part, head)
    lim_gflop, lim_sec = sum(p["gflop"] for p in pieces), sum(p["seconds"] for p in pieces)
    lim_rate = lim_gflop / lim_sec
    print(f"  limit row ({args.batch} rows): {lim_rate:.1f} GFLOP/s; GFLOP per image: network "
          f"{full['gflop'] / args.batch:.2f}, tail forward + backward {part['gflop'] / args.batch:.2f}, read-out "
          f"forward + backward {head['gflop'] / args.batch:.2f}", file=sys.stderr, flush=True)
    print(f"\nReadout IBA training, {args.model} ({args.weights}), {args.size} px, batch {args.batch}, "
          f"{device_name(device)}, median of {args.repeat}; read-outs of both paths equal: {same}\n")
    print("| path | ms per training image | GFLOP per image | GFLOP/s | % of limit | peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for path, r in runs.items():
        ms = statistics.median(m for m, _ in r)
        rate = work[path] / 1e9 / (ms / 1000)
        print(f"| {path} | {ms:.0f} | {fmt(work[path] / 1e9, 2)} | {fmt(rate)} | {fmt(ratio(rate, lim_rate) if path == NEW else math.nan, pct=True)} "
              f"| {fmt(max(p for _, p in r), 0)} |")
        record("readout", model=args.model, path=path, device=device_name(device), ms_per_image=ms,
               gflop_per_image=work[path] / 1e9, rate=rate, limit_rate=lim_rate, peak_mib=max(p for _, p in r))
    print(f"| limit row: plain network forward + tail forward and input backward + read-out forward and backward | "
          f"{1000 * lim_sec / args.batch:.0f} | {lim_gflop / args.batch:.2f} | {fmt(lim_rate)} | 100% | - |")


if __name__ == "__main__":
    main()
