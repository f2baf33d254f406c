"""Images per second of every baseline method on the zoo's architectures (random weights), as a Markdown table.

    python scripts/bench_baselines.py --device cuda --size 224 --images 16
    python scripts/bench_baselines.py --size 32 --images 2 --models mobilenet_v2 --fast   # CPU smoke run

``--fast`` uses cheap hyper-parameters (a smoke run); without it each method runs with its config defaults
(conf/method/*.yaml), i.e. the settings of the papers' tables.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision

from timing import (  # scripts/ is on sys.path when run as a script
    device_name,
    flops,
    fmt,
    limit,
    parse_chunk,
    ratio,
    record,
)
from xattr.methods.baselines.cam import FullGrad, GradCAM, GradCAMPlusPlus, GuidedGradCAM
from xattr.methods.baselines.deepshap import DeepSHAP
from xattr.methods.baselines.extremal_perturbation import ExtremalPerturbation
from xattr.methods.baselines.gradient import Gradient
from xattr.methods.baselines.guided_backprop import GuidedBackprop
from xattr.methods.baselines.input_x_gradient import InputXGradient
from xattr.methods.baselines.integrated_gradients import IntegratedGradients
from xattr.methods.baselines.lime import LIME
from xattr.methods.baselines.lrp import LRP
from xattr.methods.baselines.occlusion import Occlusion
from xattr.methods.baselines.random import RandomAttribution
from xattr.methods.baselines.smoothgrad import SmoothGrad


def models() -> dict:
    def mobilenet():
        from xattr.models.tf_padding import use_tf_same_padding

        net = torchvision.models.mobilenet_v2(weights=None)
        use_tf_same_padding(net)
        return net, "features.18"

    def effnet():
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0"), "_conv_head"

    return {
        "mobilenet_v2": mobilenet,
        "resnet50": lambda: (torchvision.models.resnet50(weights=None), "layer4"),
        "vgg16": lambda: (torchvision.models.vgg16(weights=None), "features.28"),
        "densenet121": lambda: (torchvision.models.densenet121(weights=None), "features"),
        "efficientnet_lite0": effnet,
    }


def methods(fast: bool, chunk: int | str | None) -> dict:
    def k(full, cheap):
        return cheap if fast else full

    return {
        "random": lambda m, layer: RandomAttribution(m),
        "gradient": lambda m, layer: Gradient(m),
        "input_x_gradient": lambda m, layer: InputXGradient(m),
        "integrated_gradients": lambda m, layer: IntegratedGradients(m, n_steps=k(50, 4), chunk=chunk),
        "smoothgrad": lambda m, layer: SmoothGrad(m, n_samples=k(50, 4), chunk=chunk),
        "guided_backprop": lambda m, layer: GuidedBackprop(m),
        "grad_cam": lambda m, layer: GradCAM(m, layer=layer),
        "guided_grad_cam": lambda m, layer: GuidedGradCAM(m, layer=layer),
        "grad_cam_pp": lambda m, layer: GradCAMPlusPlus(m, layer=layer),
        "fullgrad": lambda m, layer: FullGrad(m),
        "deepshap": lambda m, layer: DeepSHAP(m, n_baselines=k(10, 2), chunk=chunk),
        "occlusion8": lambda m, layer: Occlusion(m, window=8, chunk=chunk),
        "occlusion14": lambda m, layer: Occlusion(m, window=14, chunk=chunk),
        "lime": lambda m, layer: LIME(m, n_samples=k(1000, 20), chunk=chunk),
        "lrp_epsilon": lambda m, layer: LRP(m, rule="epsilon"),
        "lrp_alpha_beta": lambda m, layer: LRP(m, rule="alpha_beta"),
        "extremal_perturbation": lambda m, layer: ExtremalPerturbation(m, max_iter=k(800, 5)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--chunk", type=parse_chunk, default=256,
                    help="forward rows per device call of the chunked methods (IG, SmoothGrad, DeepSHAP, Occlusion, "
                         "LIME): an integer, auto (xattr.core.chunk.resolve_chunk) or null")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--fast", action="store_true", help="cheap hyper-parameters (smoke run)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    zoo = models()
    meths = methods(args.fast, args.chunk)
    model_names = args.models or list(zoo)
    method_names = args.methods or list(meths)
    rows = {m: {} for m in method_names}
    lims: dict[str, float] = {}  # the limit row per model: a plain forward + input backward of the images
    for mname in model_names:
        torch.manual_seed(0)
        net, layer = zoo[mname]()
        net = net.eval().to(device)
        x = torch.randn(args.images, 3, args.size, args.size, device=device)
        target = torch.randint(0, 1000, (args.images,), device=device)
        for meth in method_names:
            try:
                attr = meths[meth](net, layer)
                attr.attribute(x[:1], target[:1])  # warm-up (fixed copies, cuDNN)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                attr.attribute(x, target)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                sec = time.perf_counter() - t0
                work = flops(lambda attr=attr, x=x, t=target: attr.attribute(x[:1], t[:1])) / 1e9
                if mname not in lims:
                    lims[mname] = limit(net, x, device, backward=True)["rate"]
                rate = work * args.images / sec
                rows[meth][mname] = (f"{args.images / sec:.2f} ({work:.1f} GFLOP, {rate:.0f} GFLOP/s, "
                                     f"{fmt(ratio(rate, lims[mname]), pct=True)})")
                record("baselines", model=f"{mname} {args.size} px", path=meth, device=device_name(device),
                       ms_per_image=1000 * sec / args.images, gflop_per_image=work, rate=rate,
                       limit_rate=lims[mname])
            except Exception as e:  # noqa: BLE001 - a table cell, not a crash
                rows[meth][mname] = f"error: {type(e).__name__}"
        del net
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Images per second, {args.images} images of {args.size}x{args.size}, {dev}, chunk {args.chunk}"
          f"{' (fast hyper-parameters)' if args.fast else ''}\n")
    print("Each cell: images/s (GFLOP per image, GFLOP/s reached, % of the limit row). Limit: a plain forward + "
          "input-gradient backward of the model at the bench's batch, in this run (timing.limit): "
          + ", ".join(f"{m} {v:.0f} GFLOP/s" for m, v in lims.items()) + "\n")
    print("| method | " + " | ".join(model_names) + " |")
    print("|---|" + "---|" * len(model_names))
    for meth in method_names:
        print(f"| {meth} | " + " | ".join(rows[meth].get(m, "") for m in model_names) + " |")


if __name__ == "__main__":
    main()
