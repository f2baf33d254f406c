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

The last row of each model, *gated pass*, is the floor of every pathway method: one forward with a 0/1 gate
multiplied into every ReLU neuron and the input-gradient backward through it (the pathway gradient with every
neuron kept), at the limit's rows, nothing else. A GreedyPruning round is this pass plus its selection, a DGR
iteration this pass plus its gate update, NeuronMCT one plain and one gated pass plus a selection: no method
can come closer to the limit than this row, whatever its own bookkeeping costs. On CIFAR ResNet-20 (~220
multiply-adds per neuron, VGG-16 ~1 100) it read 86-98% with one thread and 85-89% with two here (session 18): the
gates themselves cost little, and what keeps a method below it is its own work on every neuron.

``--breakdown`` adds, per model, where a GreedyPruning round's time goes (its scored pass on the pruned network,
its exact selection, its counts and gates; each call of the module's pieces timed in place) and two ceilings of
its "% of limit": with every piece but the scored pass free, and with the selection at its floor (one
``np.partition`` of the round's scores, the fastest exact selection at hand on a CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import warnings
from unittest import mock

import numpy as np
import torch

from timing import (  # scripts/ is on sys.path when run as a script
    device_name,
    flops,
    fmt,
    limit,
    measured,
    ratio,
    record,
)
from xattr.core.hooks import frozen
from xattr.methods.pathways import DGR, GreedyPruning, InputIntGrad, InputMCT, NeuronIntGrad, NeuronMCT
from xattr.methods.pathways import greedy as greedy_module
from xattr.methods.pathways.neurons import Neurons
from xattr.methods.pathways.pathway import pathway_gradient
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
    # warm-up at the shapes the timed runs use (oneDNN makes its primitives per shape on the first call: a
    # batched row warmed at one image only built them inside its timed runs)
    warm = len(x) if batched else 1
    method.explain(x[:warm], t[:warm])
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


def limit_at(lims: dict[int, dict], net: torch.nn.Module, x: torch.Tensor, rows: int, device: torch.device,
             clock: str) -> dict:
    """The limit row at ``rows`` rows (``x``'s first image repeated), measured once per model and kept in ``lims``."""
    if rows not in lims:
        lims[rows] = limit(net, x[:1].expand(rows, -1, -1, -1).contiguous(), device, backward=True, clock=clock)
    return lims[rows]


def gated_row(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, device: torch.device, clock: str,
              repeat: int, lims: dict[int, dict], mname: str, dev_label: str) -> str:
    """The *gated pass* row (module docstring): the pathway gradient of ``x`` with every neuron's gate 1, against
    the limit at the same rows (measured here when no method row measured it)."""
    neurons = Neurons(net)
    with frozen(net):
        layout = neurons.layout(x)
        gates = layout.split(torch.ones(x.shape[0], layout.total, device=x.device, dtype=x.dtype))
        row = measured(lambda: pathway_gradient(neurons, x, t, gates), device, max(3, repeat), clock)
    lim = limit_at(lims, net, x, x.shape[0], device, clock)["rate"]
    ms = 1000 * row["seconds"] / x.shape[0]
    record("pathways", model=mname, path="gated pass (the floor of every method)", device=device_name(device),
           ms_per_image=ms, gflop_per_image=row["gflop"] / x.shape[0], rate=row["rate"], limit_rate=lim)
    return (f"| {mname} | {dev_label} | gated pass (the floor of every method) | | {ms:.1f} | | | "
            f"{row['gflop'] / x.shape[0]:.2f} | {row['rate']:.1f} | {lim:.1f} | {fmt(ratio(row['rate'], lim), pct=True)} |")


#: GreedyPruning's pieces timed by ``--breakdown``: the names its module calls
GREEDY_PIECES = {"flat_mct_scores": "scored pass (forward + backward on the pruned network)",
                 "lowest_positive": "selection (the lowest 1% of the live scores)",
                 "count_true": "live count", "greater": "live mask", "as_float": "gates to float"}


def greedy_breakdown(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, device: torch.device, clock: str,
                     plain_ms: float) -> list[str]:
    """Markdown lines: GreedyPruning's milliseconds per round by piece (the module's own calls timed in place, one
    explained batch after a warm-up) and its ceilings against ``plain_ms``, the limit's pass at the same rows."""
    now = time.process_time if clock == "process" else time.perf_counter
    spent = dict.fromkeys(GREEDY_PIECES, 0.0)
    seen: list[torch.Tensor] = []

    def timed(name, fn):
        def call(*a, **k):
            _sync(device)
            t0 = now()
            out = fn(*a, **k)
            _sync(device)
            spent[name] += now() - t0
            if name == "lowest_positive":
                seen[:] = [a[0]]
            return out
        return call

    m = GreedyPruning(net)
    m.explain(x, t)  # warm-up
    with mock.patch.multiple(greedy_module, **{k: timed(k, getattr(greedy_module, k)) for k in GREEDY_PIECES}):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        _sync(device)
        t0 = now()
        aux = m.explain(x, t).aux
        _sync(device)
        total = now() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    rounds = int(aux["pathway/iterations"].max()) + 1  # + the first scoring
    per = {k: 1000 * v / rounds for k, v in spent.items()}
    rest = 1000 * total / rounds - sum(per.values())
    keys = seen[0].detach().float().cpu().numpy().view(np.uint32) - np.uint32(1)  # the selection's own order:
    k = max(1, keys.shape[1] // 100)  # zeros (pruned, dead) wrap behind every positive score
    floor = 1000 * measured(lambda: np.partition(keys, k, axis=1), device, 5, clock)["seconds"]
    lines = [f"\nGreedyPruning, {x.shape[0]} images, {rounds} scorings: ms per round (plain pass at the same rows "
             f"{plain_ms:.2f} ms; {faults / rounds:.0f} page faults per round)\n", "| piece | ms per round |", "|---|---:|"]
    lines += [f"| {GREEDY_PIECES[k]} | {v:.2f} |" for k, v in per.items()]
    lines += [f"| the rest (Python, the closing pathway gradient spread over the rounds) | {rest:.2f} |",
              f"| selection's floor: one np.partition of the scores | {floor:.2f} |",
              f"\nceiling of % of limit: every piece but the scored pass free {plain_ms / per['flat_mct_scores']:.0%}; "
              f"the selection at its floor {plain_ms / (per['flat_mct_scores'] + floor):.0%}"]
    return lines


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
    ap.add_argument("--breakdown", action="store_true",
                    help="also GreedyPruning's milliseconds per round by piece, and its ceilings")
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
                    rate, lim = work / 1e6 / bat, limit_at(lims, zoo.net, x, rows, device, args.clock)["rate"]
                    print(f"| {mname} | {dev_label} | {meth} | {one:.1f} | {bat:.1f} | {one / bat:.2f}x | "
                          f"{peak1:.0f} / {peakb:.0f} | {work / 1e9:.2f} | {rate:.1f} | {lim:.1f} | "
                          f"{fmt(ratio(rate, lim), pct=True)} |", flush=True)
                    record("pathways", model=mname, path=f"{meth}, batched", device=device_name(device),
                           ms_per_image=bat, gflop_per_image=work / 1e9, rate=rate, limit_rate=lim, peak_mib=peakb)
                except Exception as e:  # noqa: BLE001 - a table cell, not a crash
                    print(f"| {mname} | {dev_label} | {meth} | error: {type(e).__name__}: {e} | | | | | | | |",
                          flush=True)
            rows = min(args.images, args.chunk)
            try:
                print(gated_row(zoo.net, x[:rows], t[:rows], device, args.clock, args.repeat, lims, mname, dev_label),
                      flush=True)
            except Exception as e:  # noqa: BLE001 - a table cell, not a crash
                print(f"| {mname} | {dev_label} | gated pass | error: {type(e).__name__}: {e} | | | | | | | |",
                      flush=True)
            if args.breakdown:
                print("\n".join(greedy_breakdown(zoo.net, x[:rows], t[:rows], device, args.clock,
                                                1000 * limit_at(lims, zoo.net, x, rows, device, args.clock)["seconds"]))
                      + "\n", flush=True)
            del zoo


if __name__ == "__main__":
    main()
