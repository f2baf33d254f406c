"""Benchmark InputIBA: seconds per image one at a time vs batched, split per stage, peak memory.

CPU here with tiny settings; unchanged on a GPU with the reference's (target: <= 1 s/image on an H100
with 32+ images a batch, VGG-16, reference hyper-parameters)::

    python scripts/bench_input_iba.py                                   # CPU smoke: tiny CNN, 2 epochs
    python scripts/bench_input_iba.py --device cuda --model vgg16 --size 224 --batch 32 --epochs 20 \\
        --steps 60 --feat-steps 10 --single 2

Weights are random (timing only): the cost does not depend on them. The feature statistics come from
the benchmark images themselves (timing only). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from timing import device_name, timed  # scripts/ is on sys.path when run as a script
from xattr.methods.iba.statistics import estimate
from xattr.methods.input_iba import InputIBA
from xattr.models.tiny import TinyCNN


def build_model(name: str, device: str) -> tuple[torch.nn.Module, str]:
    if name == "tiny":
        return TinyCNN(10).eval().to(device), "conv2"
    from xattr.models import load_model

    zoo = load_model(name, weights="random", device=device)
    return zoo.net, "conv4_1" if name == "vgg16" else "features.17"


def run(method: InputIBA, x: torch.Tensor, target: torch.Tensor, device: str) -> tuple[dict, float]:
    box = []
    total, peak = timed(lambda: box.append(method.explain(x, target)), device)
    timings = {k: float(v.sum()) for k, v in box[0].group("timing").items()}  # seconds per image, summed
    return {**timings, "wall": total}, peak


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="tiny", help="tiny | vgg16 | any zoo name")
    p.add_argument("--batch", type=int, default=4, help="images attributed at once")
    p.add_argument("--single", type=int, default=2, help="images timed one at a time")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="input IBA steps (reference 60)")
    p.add_argument("--feat-steps", type=int, default=3, help="feature IBA steps (reference 10)")
    p.add_argument("--copies", type=int, default=10)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    net, layer = build_model(args.model, args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    target = torch.zeros(args.batch, dtype=torch.long, device=args.device)
    method = InputIBA(net, layer=layer, epochs=args.epochs, steps=args.steps, feat_steps=args.feat_steps,
                      copies=args.copies, feat_copies=args.copies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.set_statistics(estimate(net, [layer], [{"x": x}], n_samples=args.batch))
    run(method, x[:1], target[:1], args.device)  # warm-up (cuDNN autotune, allocator)
    rows = []
    single = [run(method, x[i : i + 1], target[i : i + 1], args.device) for i in range(min(args.single, args.batch))]
    n1 = len(single)
    rows.append(("one at a time", n1, {k: sum(s[0][k] for s in single) / n1 for k in single[0][0]},
                 max(s[1] for s in single)))
    t, peak = run(method, x, target, args.device)
    rows.append((f"batched ({args.batch})", args.batch, {k: v / args.batch for k, v in t.items()}, peak))
    print(f"\nInputIBA, {args.model} at {layer}, {args.size}x{args.size}, epochs {args.epochs}, steps "
          f"{args.feat_steps}/{args.steps}, copies {args.copies}, {device_name(args.device)}\n")
    print("WGAN = critic steps + generator steps + set-up; feature + WGAN + input = total (InputIBA's timing/*); "
          "wall: the explain call timed from outside. Peak: GPU memory allocated, or CPU resident set above the start.\n")
    print("| mode | images | feature IBA s/img | WGAN s/img | (critic) | (generator) | input IBA s/img | total s/img "
          "| wall s/img | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, n, t, peak in rows:
        print(f"| {mode} | {n} | {t['feature']:.3f} | {t['wgan']:.3f} | {t['wgan_critic']:.3f} | {t['wgan_generator']:.3f} "
              f"| {t['input']:.3f} | {t['total']:.3f} | {t['wall']:.3f} | {'-' if peak != peak else f'{peak:.0f}'} |")


if __name__ == "__main__":
    main()
