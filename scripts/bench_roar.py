"""ROAR training throughput (images/s), time per epoch and the projected time of a whole ROAR table, as a
Markdown table: ResNet-8 (64/128/256), batch 256, Adam, CIFAR-10 sized inputs (dissertation ch. 5 L1988).

    python scripts/bench_roar.py                       # CPU rows; GPU rows too when CUDA is available
    python scripts/bench_roar.py --steps 2 --no-gpu    # quick CPU run
    python scripts/bench_roar.py --data ../shared/data/cifar10/cifar10-jpeg.zip   # + the per-item loader

Rows:
- ``cpu loop``: the training step alone (fp32), batches already in memory;
- ``cpu loader``: the per-item ``RoarDataset`` path of ``python -m xattr.train recipe=roar`` (JPEG decode,
  removal, crop + flip), items/s in one process (only with ``--data``);
- ``cuda``: the GPU path: the whole split as uint8 in GPU memory, removal masks of one percentile computed
  once, normalise + fill + crop + flip batched on the GPU (:class:`xattr.data.roar.DeviceRoarBatches`), bf16
  autocast, channels-last, ``torch.compile`` (``--no-compile`` to compare); one full epoch timed after a
  warm-up epoch (compilation excluded). The training command does the same with ``roar.device_data=true
  net.channels_last=true net.compile=true trainer.precision=bf16-mixed`` (:class:`xattr.training.roar.DeviceRoarData`).

Projection: one training = ``epochs`` x (43 750 training images / train img/s + 6 250 validation images /
eval img/s) + 10 000 test images / eval img/s; the table = trainings x methods x percentiles x repeats
(Table 1 of ch. 5: 8 x 4 x 3 = 96 at 30 epochs; the code's default 8 x 5 x 3 = 120 at 50 epochs). The maps
(one ``xattr.run`` per method over 60 000 images) are not included.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from timing import flops, fmt, ratio, record  # scripts/ is on sys.path when run as a script
from xattr.data.roar import DeviceRoarBatches
from xattr.models.cifar_resnet8 import CIFAR10_MEAN, CIFAR10_STD, ResNet8

TRAIN, VAL, TEST = 43_750, 6_250, 10_000


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cpu_loop(batch: int, steps: int) -> tuple[float, float]:
    """(train img/s, eval img/s) of ResNet-8 on CPU, fp32."""
    net = ResNet8()
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_ips = batch * steps / (time.perf_counter() - t0)
    net.eval()
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            net(x)
    return train_ips, batch * steps / (time.perf_counter() - t0)


def cpu_loader(root: str, n: int) -> float:
    """Items/s of the per-item ROAR dataset + augmentation (one process), random maps, 50 % removed."""
    from xattr.data.cifar10 import Cifar10
    from xattr.data.roar import RoarDataset
    from xattr.models.cifar_resnet8 import CIFAR10_PRE
    from xattr.training.data import Augmented, RandomCropFlip

    base = Cifar10(root, split="all", preprocess=CIFAR10_PRE)
    ds = Augmented(RoarDataset(base, maps=torch.rand(len(base), 32, 32), percent=50, part="train",
                               preprocess=CIFAR10_PRE), RandomCropFlip(preprocess=CIFAR10_PRE))
    ds[0]
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t0)


def gpu_epoch(batch: int, compile_: bool, dev: torch.device, n: int = TRAIN) -> tuple[float, float]:
    """(train img/s, eval img/s) of one full ROAR epoch (``n`` images) on the GPU path (see module docstring);
    on a CPU device (``--device-path-on-cpu``) the same code runs, to check it, with bf16 autocast on CPU."""
    net = ResNet8().to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4, fused=dev.type == "cuda")
    model = torch.compile(net) if compile_ else net
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=dev, generator=g)
    labels = torch.randint(0, 10, (n,), device=dev, generator=g)
    maps = torch.rand(n, 32, 32, device=dev, generator=g)
    data = DeviceRoarBatches(images, labels, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_MEAN, maps=maps, percent=50,
                             batch_size=batch, channels_last=True)

    def epoch() -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for b in data:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(b["x"]), b["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(dev)
        return time.perf_counter() - t0

    epoch()  # warm-up: compilation, autotuning
    train_ips = n / epoch()
    nv = min(VAL, n)
    evaluation = DeviceRoarBatches(images[:nv], labels[:nv], CIFAR10_MEAN, CIFAR10_STD, CIFAR10_MEAN, maps=maps[:nv],
                                   percent=50, batch_size=1024, augment=False, shuffle=False, channels_last=True)
    model.eval()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        for b in evaluation:
            model(b["x"])
        _sync(dev)
        t0 = time.perf_counter()
        for b in evaluation:
            model(b["x"]).argmax(1)
        _sync(dev)
    return train_ips, nv / (time.perf_counter() - t0)


def train_step_gflop(batch: int) -> float:
    """GFLOP per training image of ResNet-8 (forward, input and weight gradients; ``timing.flops``)."""
    net = ResNet8()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return flops(lambda: F.cross_entropy(net(x), y).backward()) / 1e9 / batch


def training_seconds(train_ips: float, eval_ips: float, epochs: int) -> float:
    return epochs * (TRAIN / train_ips + VAL / eval_ips) + TEST / eval_ips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="timed CPU steps")
    ap.add_argument("--data", default=None, help="CIFAR-10 zip: also time the per-item CPU loader")
    ap.add_argument("--loader-items", type=int, default=512)
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device-path-on-cpu", type=int, default=0, metavar="N",
                    help="also run the GPU path's code on the CPU with N images (a check, not a benchmark)")
    args = ap.parse_args()

    rows = []
    tr, ev = cpu_loop(args.batch, args.steps)
    rows.append(("cpu loop (fp32)", torch.get_num_threads(), tr, ev))
    if args.device_path_on_cpu:
        tr, ev = gpu_epoch(args.batch, False, torch.device("cpu"), args.device_path_on_cpu)
        rows.append(("cpu, the GPU path's code (bf16 autocast, channels-last, device batches)", torch.get_num_threads(),
                     tr, ev))
    if args.data:
        rows.append(("cpu loader (1 process, items/s)", 1, cpu_loader(args.data, args.loader_items), float("nan")))
    if torch.cuda.is_available() and not args.no_gpu:
        dev = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        tr, ev = gpu_epoch(args.batch, not args.no_compile, dev)
        name = torch.cuda.get_device_name(dev)
        rows.append((f"cuda {name} (bf16, channels-last{', compile' if not args.no_compile else ''}, data on GPU)",
                     "-", tr, ev))

    work = train_step_gflop(8)
    limits = {"cpu": rows[0][2] * work}  # the limit row on a CPU: the plain fp32 step on fixed tensors (row 1)
    if torch.cuda.is_available() and not args.no_gpu:  # on the GPU: the same step, bf16 channels-last, no data
        net = ResNet8().cuda().to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), 1e-3, fused=True)
        x = torch.randn(args.batch, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.batch,), device="cuda")
        for i in range(3 + args.steps * 5):
            if i == 3:
                _sync(torch.device("cuda"))
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(torch.device("cuda"))
        limits["cuda"] = args.batch * args.steps * 5 / (time.perf_counter() - t0) * work
    print(f"ResNet-8: {work:.3f} GFLOP per training image (forward + backward); limit: a plain training step on "
          "fixed tensors at the same batch (CPU: the first row itself; GPU: bf16 channels-last, no compile)\n")
    print("| path | threads | train img/s | eval img/s | s / epoch | 30-epoch training | Table 1 (96 x 30 ep) "
          "| code default (120 x 50 ep) | train GFLOP/s | limit GFLOP/s | % of limit |")
    print("|---|---|---|---|---|---|---|---|---:|---:|---:|")
    for name, threads, tr, ev in rows:
        if ev != ev:  # a loader row: only its rate
            print(f"| {name} | {threads} | {tr:,.0f} | – | {TRAIN / tr:,.1f} (loading only) | – | – | – | – | – | – |")
            continue
        per_epoch = TRAIN / tr + VAL / ev
        one = training_seconds(tr, ev, 30)
        lim = limits.get("cuda" if name.startswith("cuda") else "cpu", float("nan"))
        record("roar", model="ResNet-8 CIFAR-10", path=f"one training step ({name}, {threads} threads)", device=name,
               ms_per_image=1000 / tr, gflop_per_image=work, rate=tr * work, limit_rate=lim,
               unit=f"ms per training image; a 30-epoch training: {one / 60:,.1f} min")
        print(f"| {name} | {threads} | {tr:,.0f} | {ev:,.0f} | {per_epoch:,.1f} | {one / 60:,.1f} min "
              f"| {96 * one / 3600:,.1f} h | {120 * training_seconds(tr, ev, 50) / 3600:,.1f} h | {tr * work:.1f} | "
              f"{lim:.1f} | {fmt(ratio(tr * work, lim), pct=True)} |")


if __name__ == "__main__":
    main()
