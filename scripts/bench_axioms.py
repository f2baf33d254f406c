"""Axiom-sample generation speed (dissertation ch. 7): optimisation steps per second one sample at a time vs
``batch`` samples stacked in one graph, on the CPU and (when available) the GPU; samples per minute assume
``--iters`` iterations per sample (the reference: >= 300 warm-up + 50; restarts add more).

    python scripts/bench_axioms.py --prior cpu --batch 4 --steps 3            # small, CPU
    python scripts/bench_axioms.py --prior paper --batch 64 --steps 10        # GPU: the 1000-samples-in-15-min target

Prints a Markdown table: device, batch, s/step, samples/min, speed-up over one at a time, and the arithmetic
of one sample's iteration (GFLOP: prior networks and classifier, forward and backward, counted by
``torch.utils.flop_counter`` on one sample) with the rate each row reached (TFLOP/s). The default
``--iters 700`` is the mean iterations per sample, restarts included, measured with the real MobileNet-V2 at
the paper's thresholds (docs/axioms.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from omegaconf import OmegaConf

from timing import (  # scripts/ is on sys.path when run as a script
    device_name,
    flops,
    fmt,
    limit,
    ratio,
    record,
)
from xattr.config import CONF_DIR
from xattr.data.axioms_generation import AxiomGenerator, GenConfig
from xattr.data.axioms_prior import PriorSpec
from xattr.data.axioms_store import AxiomsStore
from xattr.models.zoo import load_model


def prior_spec(name: str) -> PriorSpec:
    node = OmegaConf.load(CONF_DIR / "axioms" / f"{name}.yaml")
    if "defaults" in node:
        base = OmegaConf.load(CONF_DIR / "axioms" / "paper.yaml")
        node = OmegaConf.merge(base, {k: v for k, v in node.items() if k != "defaults"})
    return PriorSpec(**OmegaConf.to_container(node.prior))


def _generator(net, pre, spec, scenario: str, batch: int, device: torch.device) -> AxiomGenerator:
    return AxiomGenerator(net, pre.normalise, GenConfig(scenario, image_size=pre.size, warmup=10 ** 6), spec,
                          batch=batch, device=device)


def flops_per_iteration(net, pre, spec, scenario: str, device: torch.device) -> float:
    """Arithmetic of one optimisation step of one sample (after a warm-up step)."""
    gen = _generator(net, pre, spec, scenario, 1, device)
    with tempfile.TemporaryDirectory() as tmp:
        store = AxiomsStore(tmp)
        gen.run(range(1), store, limit_steps=1)
        return flops(lambda: gen.run(range(1), store, limit_steps=1))


def seconds_per_step(net, pre, spec, scenario: str, batch: int, steps: int, device: torch.device) -> float:
    gen = _generator(net, pre, spec, scenario, batch, device)
    with tempfile.TemporaryDirectory() as tmp:
        store = AxiomsStore(tmp)
        gen.run(range(batch), store, limit_steps=1)  # warm-up call (allocations, cuDNN choice)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen.run(range(batch), store, limit_steps=steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--weights", default="random", help="random (speed does not depend on them) | imagenet")
    ap.add_argument("--prior", default="cpu", help="an option of conf/axioms: paper | cpu")
    ap.add_argument("--scenario", default="null")
    ap.add_argument("--batch", type=int, nargs="+", default=[4])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--iters", type=int, default=700, help="iterations per sample for samples/min")
    ap.add_argument("--devices", nargs="*", default=None, help="cpu and/or cuda (default: cpu, and cuda when present)")
    args = ap.parse_args()
    spec = prior_spec(args.prior)
    devices = ([torch.device(d) for d in args.devices] if args.devices else
               [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    print(f"{args.scenario} scenario, prior {args.prior}, {args.model}; GFLOP per sample-iteration counted once per "
          "device\n")
    print(f"| device | batch | s/step | samples/min ({args.iters} it/sample) | speed-up | GFLOP / sample-iteration "
          "| TFLOP/s | limit TFLOP/s | % of limit |\n|---|---|---|---|---|---:|---:|---:|---:|")
    for device in devices:
        zoo = load_model(args.model, weights=args.weights, device=device)
        work = flops_per_iteration(zoo.net, zoo.preprocess, spec, args.scenario, device)
        name = device_name(device)
        one = seconds_per_step(zoo.net, zoo.preprocess, spec, args.scenario, 1, args.steps, device)
        size = zoo.preprocess.size
        size = (size, size) if isinstance(size, int) else tuple(size)

        def lim(b: int, zoo=zoo, size=size, device=device) -> float:
            """The limit row: a plain forward + input backward of the classifier at the generation batch (TFLOP/s)."""
            return limit(zoo.net, torch.randn(b, 3, *size, device=device), device, backward=True)["rate"] / 1e3

        l1 = lim(1)
        print(f"| {name} | 1 (one at a time) | {one:.3f} | {60 / (one * args.iters):.3f} | 1.0 | {work / 1e9:.1f} | "
              f"{work / one / 1e12:.3f} | {l1:.3f} | {fmt(ratio(work / one / 1e12, l1), pct=True)} |", flush=True)
        for b in args.batch:
            sec = seconds_per_step(zoo.net, zoo.preprocess, spec, args.scenario, b, args.steps, device)
            lb = lim(b)
            print(f"| {name} | {b} | {sec:.3f} | {60 * b / (sec * args.iters):.3f} | {one * b / sec:.2f} | "
                  f"{work / 1e9:.1f} | {work * b / sec / 1e12:.3f} | {lb:.3f} | "
                  f"{fmt(ratio(work * b / sec / 1e12, lb), pct=True)} |", flush=True)
            record("axioms", model=args.model, path=f"generation, batch {b} ({args.scenario}, prior {args.prior})",
                   device=name, ms_per_image=1000 * sec / b, gflop_per_image=work / 1e9, rate=work * b / sec / 1e9,
                   limit_rate=1e3 * lb, unit="ms per sample-iteration")


if __name__ == "__main__":
    main()
