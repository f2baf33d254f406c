"""Milliseconds per image of the critical-pathway methods (dissertation ch. 5), one image at a time (as the
reference PathwayGrad code runs, batch size 1) vs batched (xattr), with peak memory, as a Markdown table.

    python scripts/bench_pathways.py                                   # CPU, and CUDA when available
    python scripts/bench_pathways.py --models cifar_resnet20 --images 4 --fast   # CPU smoke run
    python scripts/bench_pathways.py --devices cuda --models mobilenet_v2 --size 224 --images 16

Models come from the zoo (``--weights random`` by default, so no data is needed; timings do not depend on
the weights except for DGR's retries and GreedyPruning's iteration count). Without ``--fast`` every method
runs with its config defaults (conf/method/*.yaml): NeuronIntGrad 10 steps, InputIntGrad 50, DGR 1000
iterations per round, GreedyPruning 1% of the neurons per step. Peak memory: on CUDA the allocator's peak
during the call (``torch.cuda.max_memory_allocated``, reset before each); on CPU the process's peak resident
set so far (``ru_maxrss``: monotone over the script, so only its growth is informative).

Each row also gives the method's arithmetic (GFLOP per image, ``timing.flops`` on one image), the rate the
batched path reached, and the *limit row* (issue 31): a plain batched forward + input-gradient backward of the
whole model at ``min(images x rows per image, --chunk)`` rows, measured in the same run (``timing.limit``);
"% of limit" is the batched rate's share of it (target: >= 80%). ``--threads 1`` / ``--threads 0`` (all cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import warnings

import torch

from timing import (  # scripts/ is on sys.path when run as a script
    device_name,
    flops,
    fmt,
    limit,
    ratio,
    record,
)
from xattr.methods.pathways import DGR, GreedyPruning, InputIntGrad, InputMCT, NeuronIntGrad, NeuronMCT
from xattr.models import load_model


def methods(fast: bool, chunk: int | None, iterations: int | None = None) -> dict:
    """The benched methods; ``iterations``: DGR's iterations per round (default 1 000; its cost per iteration does
    not depend on it, so a large network can be timed on fewer)."""
    def k(full, cheap):
        return cheap if fast else full

    return {
        "neuron_mct": lambda m: NeuronMCT(m),
        "neuron_intgrad": lambda m: NeuronIntGrad(m, n_steps=k(10, 2), chunk=chunk),
        "input_mct": lambda m: InputMCT(m),
        "input_intgrad": lambda m: InputIntGrad(m, n_steps=k(50, 4), chunk=chunk),
        "greedy_pruning": lambda m: GreedyPruning(m, prune_step=k(0.01, 0.2)),
        "dgr": lambda m: DGR(m, iterations=iterations or k(1000, 5), max_retries=k(100, 1)),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method, x: torch.Tensor, t: torch.Tensor, batched: bool, clock: str = "wall",
            repeat: int = 1) -> tuple[float, float]:
    """(ms per image, peak MiB) of explaining ``x`` batched or one image at a time (``clock: process``: this
    process's CPU time, for one thread on a shared CPU); the median of ``repeat`` runs, as the limit row."""
    now = time.process_time if clock == "process" else time.perf_counter
    dev = x.device
    method.explain(x[:1], t[:1])  # warm-up
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(max(1, repeat)):
        _sync(dev)
        t0 = now()
        if batched:
            method.explain(x, t)
        else:
            for i in range(len(x)):
                method.explain(x[i : i + 1], t[i : i + 1])
        _sync(dev)
        times.append(now() - t0)
    return 1000 * statistics.median(times) / len(x), _peak_mb(dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="*", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--models", nargs="*", default=["cifar_resnet20", "mobilenet_v2"])
    ap.add_argument("--weights", default="random")
    ap.add_argument("--size", type=int, default=None, help="input side (default: 32 for CIFAR models, 224 else)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=256, help="forward rows per call (NeuronIntGrad, InputIntGrad)")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--fast", action="store_true", help="cheap hyper-parameters (smoke run)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="DGR's iterations per round (default 1 000; e.g. 20 to time VGG-16 at 224 px)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per row, the median kept (DGR at full size: 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (0: all cores; default torch's)")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="process: CPU time (one thread on a shared CPU), for every row and the limit")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    warnings.filterwarnings("ignore")
    meths = methods(args.fast, args.chunk, args.iterations)
    names = args.methods or list(meths)
    unit = "MiB (CUDA peak) / MiB (CPU process max RSS)"
    print(f"ms per image, {args.images} images, {args.weights} weights"
          f"{' (fast hyper-parameters)' if args.fast else ''}"
          f"{f', DGR {args.iterations} iterations per round' if args.iterations else ''}; peak memory in {unit}\n")
    print("| model | device | method | one at a time ms/img | batched ms/img | speed-up | peak one / batched | "
          "GFLOP / image | GFLOP/s batched | limit GFLOP/s | % of limit |")
    print("|---|---|---|---|---|---|---|---:|---:|---:|---:|")
    for dname in args.devices:
        device = torch.device(dname)
        dev_label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        for mname in args.models:
            torch.manual_seed(0)  # the same random weights every run
            zoo = load_model(mname, args.weights, device=device)
            size = args.size or (32 if mname.startswith("cifar") else 224)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(args.images, 3, size, size, generator=g).to(device)
            with torch.no_grad():
                t = zoo.net(x).argmax(1)
            lims: dict[int, dict] = {}
            for meth in names:
                try:
                    m = meths[meth](zoo.net)
                    one, peak1 = measure(m, x, t, batched=False, clock=args.clock, repeat=args.repeat)
                    bat, peakb = measure(m, x, t, batched=True, clock=args.clock, repeat=args.repeat)
                    work = flops(lambda m=m, x=x, t=t: m.explain(x[:1], t[:1]))
                    rows = min(args.images * getattr(m, "n_steps", 1), args.chunk)
                    if rows not in lims:
                        lims[rows] = limit(zoo.net, x[:1].expand(rows, -1, -1, -1).contiguous(), device, backward=True,
                                           clock=args.clock)
                    rate, lim = work / 1e6 / bat, lims[rows]["rate"]
                    print(f"| {mname} | {dev_label} | {meth} | {one:.1f} | {bat:.1f} | {one / bat:.2f}x | "
                          f"{peak1:.0f} / {peakb:.0f} | {work / 1e9:.2f} | {rate:.1f} | {lim:.1f} | "
                          f"{fmt(ratio(rate, lim), pct=True)} |", flush=True)
                    record("pathways", model=mname, path=f"{meth}, batched", device=device_name(device),
                           ms_per_image=bat, gflop_per_image=work / 1e9, rate=rate, limit_rate=lim, peak_mib=peakb)
                except Exception as e:  # noqa: BLE001 - a table cell, not a crash
                    print(f"| {mname} | {dev_label} | {meth} | error: {type(e).__name__}: {e} | | | | | | | |",
                          flush=True)
            del zoo


if __name__ == "__main__":
    main()
