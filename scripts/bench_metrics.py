"""Benchmark: images per second of insertion+deletion and Sensitivity-n, xattr (batched over images and
steps) vs a straightforward per-image loop (the reference codes' way: one image at a time, 80 steps per
forward for insertion/deletion, 100 masks per forward for Sensitivity-n) vs Quantus 0.6 where it has
the protocol (PixelFlipping = deletion only, one forward per step for the whole batch).

    python scripts/bench_metrics.py                       # CPU, small settings
    python scripts/bench_metrics.py --device cuda --images 256 --size 224 --chunk 1024 --precision bf16

Prints a Markdown table. Models: torchvision VGG-16 and MobileNet-V2 with random weights.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torchvision.transforms.functional import gaussian_blur

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    print("| model | metric | xattr img/s | per-image loop img/s | Quantus img/s | speed-up vs loop |")
    print("|---|---|---|---|---|---|")
    for name in a.models.split(","):
        model = getattr(torchvision.models, name)(weights=None).eval().to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        insdel(model, x[:1], target[:1], maps[:1])  # warm-up
        rows = []
        t_ours = timed(lambda: insdel(model, x, target, maps), device)  # noqa: B023 (called at once)
        t_loop = None if a.skip_loop else timed(lambda: loop_insdel(model, x, target, maps, a.per_step, sigma), device)  # noqa: B023 (called at once)
        t_q = None
        if quantus is not None and not a.skip_quantus:
            total = 3 * n_units  # Quantus needs a divisor of C*H*W: the one nearest to 3 x per_step
            fis = min((d for d in range(1, total + 1) if total % d == 0), key=lambda d: abs(d - 3 * a.per_step))
            pf = quantus.PixelFlipping(features_in_step=fis, perturb_baseline=0.0, normalise=False,
                                       disable_warnings=True, display_progressbar=False)
            t_q = timed(lambda: pf(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(),  # noqa: B023 (called at once)
                                   a_batch=maps.expand(-1, 3, -1, -1).cpu().numpy(), device=str(device), softmax=True), device)
            note = f"deletion only, {fis} values per step"
        rows.append(("insertion+deletion", t_ours, t_loop, t_q, "" if t_q is None else note))
        sens(model, x[:1], target[:1], maps[:1])
        t_ours = timed(lambda: sens(model, x, target, maps), device)  # noqa: B023 (called at once)
        t_loop = None if a.skip_loop else timed(lambda: loop_sens(model, x, target, maps, sens), device)  # noqa: B023 (called at once)
        rows.append(("Sensitivity-n (InputIBA)", t_ours, t_loop, None, ""))
        for metric, t_o, t_l, t_qq, note in rows:
            fmt = lambda t: "-" if t is None else f"{a.images / t:.3g}"  # noqa: E731
            q = "n/a (other protocol)" if metric.startswith("Sens") else ("not installed" if quantus is None else fmt(t_qq) + f" ({note})")
            up = "-" if t_l is None else f"{t_l / t_o:.1f}x"
            print(f"| {name} | {metric} | {fmt(t_o)} | {fmt(t_l)} | {q} | {up} |")


if __name__ == "__main__":
    main()
