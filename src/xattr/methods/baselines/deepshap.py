"""DeepSHAP through Captum (``captum.attr.DeepLiftShap``).

Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017, Sec. 4.2 (Deep SHAP):
DeepLIFT multipliers (rescale rule, Shrikumar et al. 2017, Eq. 6 ff.) averaged over a set of reference inputs,
``phi(x) = mean_r (x - r) * m(x, r)``; its sum equals ``F(x) - mean_r F(r)``.

Baseline set (``baselines``): ``"normal"`` draws ``n_baselines`` images from N(0, 1) in the normalised space
(the input prior of InputIBA, seeded by ``seed``), ``"zero"`` is the single all-zero image, ``"data"`` takes
``n_baselines`` images of the estimation split through :meth:`fit` (Lundberg & Lee's background set).
The configs default to ``zero`` (``conf/method/deepshap.yaml``): the InputIBA code's baselines (CAMP-eXplain-AI/
InputIBA ``tools/train_baseline.py``: ``DeepLiftShap`` with ten all-zero images, whose attributions are those
of one; the published ch. 6 numbers come from it, and the text names no baseline); ch. 7's row sets its own
(``conf/row/deepshap_axioms.yaml``). The class keeps ``normal`` for direct use.

Model-side fixes (:mod:`xattr.methods.baselines.model_fixes`), because Captum's DeepLift keeps one input per non-linear
module and hooks ``nn.ReLU`` only: a copy with out-of-place activations, one module per call site
(torchvision ResNet's shared ``relu``, EfficientNet-lite's shared ReLU6), ReLU6 written exactly as
``relu(x) - relu(x - 6)`` (the rescale multiplier of the sum is then exactly ``Delta relu6 / Delta x``), and
DenseNet's functional ReLU as a module. The copy shares the weights; the model is never changed.

``model_mode``: ``eval`` (default: the deterministic model every other method explains) | ``train``: the
reference notebook of ch. 7 (Do-Explanations-Explain @400c0ab) builds ``resnet18(pretrained=True)`` without
``.eval()``, so its DeepLiftShap row ran with BatchNorm on *batch* statistics (and dropout on): ``train``
reproduces that on the copy, one image's input and reference rows per call as the notebook's per-image
call (``chunk`` is set to ``2 n_baselines`` rows), the running statistics untouched (``track_running_stats``
off for the call) and dropout seeded per call.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from captum.attr import DeepLiftShap as _CaptumDeepLiftShap
from torch import nn

from xattr.core.checks import check_choice, check_positive, check_positive_int
from xattr.core.chunk import check_chunk, items_per_call, resolve_chunk
from xattr.core.hooks import frozen
from xattr.core.seeding import seeded
from xattr.errors import XattrConfigError
from xattr.methods.base import Attribution, reduce_channels
from xattr.methods.baselines.model_fixes import fixed_copy

BASELINES = ("normal", "zero", "data")
MODEL_MODES = ("eval", "train")


class DeepSHAP(Attribution):
    """DeepLiftShap over a baseline set; signed ``(B, C, H, W)`` reduced by ``reduce`` (``sum``).

    ``chunk``: forward rows per device call, ``None``: all images in one call; the result does not depend on
    it. Captum's DeepLift runs each (image, reference) pair as two rows (input and reference concatenated), so
    one image costs ``2 * N`` rows (``N`` references: ``n_baselines``, 2 for ``baselines="zero"``). Mapping
    (Captum's ``DeepLiftShap`` has no batch parameter): ``chunk`` -> images per ``DeepLiftShap.attribute``
    call ``= max(1, chunk // (2 * N))``, at least one image (with all its references) per call.
    """

    name = "deepshap"
    paper = "Lundberg & Lee, NeurIPS 2017"

    memory_knob = "chunk"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: DeepLift runs the input and each reference (``n_baselines``; ``data``: the fitted
        background; ``zero``: one; at least 2), forward and backward: ``2 refs x 3``."""
        refs = self.background.shape[0] if self.baselines == "data" and self.background is not None else self.n_baselines
        refs = 1 if self.baselines == "zero" else refs
        return 6.0 * max(2, refs)

    def __init__(
        self,
        model: nn.Module,
        baselines: str = "normal",
        n_baselines: int = 10,
        seed: int = 0,
        chunk: int | str | None = "auto",
        reduce: str = "sum",
        mean: float = 0.0,
        std: float = 1.0,
        clamp: tuple[float, float] | None = None,
        model_mode: str = "eval",
    ) -> None:
        super().__init__(model)
        check_choice("model_mode", model_mode, MODEL_MODES)
        self.model_mode = model_mode
        check_choice("DeepSHAP baselines", baselines, BASELINES)
        check_positive_int("n_baselines", n_baselines)
        check_chunk(chunk)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)
        self.baselines, self.n_baselines, self.seed = baselines, int(n_baselines), seed
        self.chunk, self.reduce = chunk, reduce
        # baselines="normal": N(mean, std) in the model's input space, clamped to ``clamp`` when given (ch. 7's
        # clamp(N(0.5, 0.1), 0, 1) in pixels is mean 0, std 0.2, clamp [-1, 1] for MobileNet-V2's [-1, 1] input)
        check_positive("DeepSHAP std", std)
        self.mean, self.std = float(mean), float(std)
        self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))
        self.background: torch.Tensor | None = None

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """For ``baselines="data"``: keep the first ``n_baselines`` images of the estimation split."""
        if self.baselines != "data":
            return
        xs, n = [], 0
        for batch in loader:
            xs.append(batch["x"])
            n += batch["x"].shape[0]
            if n >= self.n_baselines:
                break
        self.background = torch.cat(xs)[: self.n_baselines]

    def reference_set(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(N, C, H, W)`` baseline images for inputs shaped like ``x``."""
        shape = (self.n_baselines, *x.shape[1:])
        if self.baselines == "zero":
            return torch.zeros(1, *x.shape[1:], device=x.device, dtype=x.dtype)
        if self.baselines == "normal":
            g = torch.Generator().manual_seed(int(self.seed))
            refs = torch.randn(shape, generator=g)
            if (self.mean, self.std) != (0.0, 1.0):
                refs = refs * self.std + self.mean
            if self.clamp is not None:
                refs = refs.clamp(*self.clamp)
            return refs.to(device=x.device, dtype=x.dtype)
        if self.background is None:
            raise XattrConfigError("DeepSHAP baselines='data' needs fit(loader) first; valid choices: " + ", ".join(BASELINES))
        return self.background.to(device=x.device, dtype=x.dtype)

    def attribute_channels(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The un-reduced ``(B, C, H, W)`` attribution."""
        refs = self.reference_set(x)
        if refs.shape[0] == 1:  # Captum's DeepLiftShap needs at least two references
            refs = refs.expand(2, *refs.shape[1:]).contiguous()
        fixed = fixed_copy(self.model, x, relu6="split")
        if self.model_mode == "train":  # the notebook's per-image call: batch statistics of its own rows
            step = 1
        else:
            chunk = resolve_chunk(self.chunk, self.model, x[:1], backward=True)
            step = items_per_call(x.shape[0], 2 * refs.shape[0], chunk)  # DeepLift: input + reference rows
        out = []
        with torch.enable_grad(), frozen(self.model), _train_mode(fixed, self.model_mode == "train"), \
                warnings.catch_warnings():
            # Captum says on every call that it hooks the activations of the copy (and removes the hooks after)
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks", category=UserWarning)
            explainer = _CaptumDeepLiftShap(fixed)
            for i in range(0, x.shape[0], step):
                xi = x[i : i + step].detach().clone().requires_grad_(True)
                with seeded(self.seed if self.model_mode == "train" else None, x.device):
                    out.append(explainer.attribute(xi, baselines=refs, target=target[i : i + step]).detach())
        return torch.cat(out)

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce_channels(self.attribute_channels(x, target), self.reduce)


@contextlib.contextmanager
def _train_mode(model: nn.Module, on: bool):
    """``on``: ``model`` in train mode with every BatchNorm on batch statistics *without* updating its running
    statistics (``track_running_stats`` off); modes and flags restored on exit."""
    if not on:
        yield
        return
    was = {m: (m.training, getattr(m, "track_running_stats", None)) for m in model.modules()}
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
        yield
    finally:
        for m, (training, track) in was.items():
            m.training = training
            if track is not None:
                m.track_running_stats = track
