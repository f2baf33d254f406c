"""Class activation maps: Grad-CAM and Guided Grad-CAM (Captum), Grad-CAM++ and FullGrad (pytorch-grad-cam).

- Grad-CAM, Selvaraju et al., ICCV 2017, Eqs. 1-2: ``alpha_k = mean_ij dy_c / dA^k_ij``,
  ``L = ReLU(sum_k alpha_k A^k)`` at a conv layer ``A``, bilinearly resized to the input
  (``captum.attr.LayerGradCam`` with ``relu_attributions=True``; ``relu=False`` keeps the signed map).
- Guided Grad-CAM, same paper, Sec. 3.1: guided backprop times the resized Grad-CAM
  (``captum.attr.GuidedGradCam``; Captum resizes the CAM with nearest-neighbour, ``interpolate_mode``).
- Grad-CAM++, Chattopadhyay et al., WACV 2018, Eq. 19: weights ``sum_ij alpha^kc_ij ReLU(dy/dA)`` with the
  closed-form alphas (``pytorch_grad_cam.GradCAMPlusPlus``). Departure from pytorch-grad-cam: its per-image
  min-max scaling and OpenCV resize are skipped; the raw ``ReLU(sum_k w_k A^k)`` is bilinearly resized.
- FullGrad, Srinivas & Fleuret, NeurIPS 2019, Eq. 4 with the post-processing psi (abs, per-map min-max
  scaling, resize) of the paper (``pytorch_grad_cam.FullGrad``, as is: its output is min-max scaled to [0, 1]
  per image). pytorch-grad-cam collects the biases of ``Conv2d`` / ``BatchNorm2d`` modules only.

Vision transformers (docs/transformers.md): at a token layer (:func:`xattr.core.tokens.token_layout`)
Grad-CAM and Grad-CAM++ run pytorch-grad-cam with its ``reshape_transform`` convention: activations and
gradients ``(B, N, C)`` (Swin: ``(B, h, w, C)``) become ``(B, C, h, w)`` on the patch grid, special tokens
dropped (:meth:`xattr.core.tokens.TokenLayout.to_grid`), then the CNN formulas above; the raw map is
resized as for a CNN. Guided Grad-CAM and FullGrad have no transformer form and stop with one line (Guided
Backprop's rule is for ReLU, not GELU; FullGrad's bias gradients are collected from conv / BatchNorm only).

All run on a fixed copy of the model (:mod:`xattr.methods.baselines.model_fixes`: out-of-place activations, so a hooked
conv output is not overwritten by the in-place ReLU after it; one module per call site). ``layer`` is a paper
name or a module path of the *original* model (``resolve_layer``); config: ``layer: ${model.layers.cam}``.
"""

from __future__ import annotations

import torch
from captum.attr import GuidedGradCam as _CaptumGuidedGradCam
from captum.attr import LayerGradCam
from torch import nn

from xattr.core.checks import check_choice
from xattr.core.hooks import frozen
from xattr.core.layers import layer_path
from xattr.core.tokens import no_transformer_form, token_layout
from xattr.methods.base import Attribution, reduce_channels, upsample
from xattr.methods.baselines.model_fixes import fixed_copy

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")


class _LayerMethod(Attribution):
    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward and one backward to the layer, counted as a full one (3)."""
        return 3.0

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__(model)
        self.layer = layer
        self.layer_path = layer_path(model, layer)  # raises the one-line error for a bad name
        #: token-grid layout of a vision transformer's layer (None: a (B, C, h, w) map)
        self.layout = token_layout(model, self.layer_path)

    def _fixed(self, x: torch.Tensor, relu6: str = "keep"):
        fixed = fixed_copy(self.model, x, relu6=relu6)
        return fixed, fixed.layer(self.layer_path)


class GradCAM(_LayerMethod):
    """Grad-CAM at ``layer``, resized to the input with ``interpolation``.

    >>> maps = GradCAM(model, layer="features.28").attribute(x, target)   # (B, 1, H, W)
    """

    name = "grad_cam"
    paper = "Selvaraju et al., ICCV 2017"

    def __init__(self, model: nn.Module, layer: str, relu: bool = True, interpolation: str = "bilinear") -> None:
        super().__init__(model, layer)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        self.relu, self.interpolation = relu, interpolation

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fixed, layer = self._fixed(x)
        if self.layout is not None:  # tokens: pytorch-grad-cam's GradCAM on the patch grid
            from pytorch_grad_cam import GradCAM as _PGCGradCAM

            cam = _raw_cam(_PGCGradCAM, fixed, layer, x, target, self.model, self.layout)
            cam = cam if not self.relu else cam.clamp_min(0)
            return upsample(cam, tuple(x.shape[-2:]), self.interpolation)
        with frozen(self.model):
            cam = LayerGradCam(fixed, layer).attribute(x.detach(), target=target, relu_attributions=self.relu)
        return upsample(cam.detach(), tuple(x.shape[-2:]), self.interpolation)


class GuidedGradCAM(_LayerMethod):
    """Guided backprop x Grad-CAM (Captum's ``GuidedGradCam``), reduced over channels (``max_abs``).

    ReLU6 is written ``min(relu(x), 6)`` in the copy so the guided rule applies (see guided_backprop.py).
    """

    name = "guided_grad_cam"
    paper = "Selvaraju et al., ICCV 2017"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: Grad-CAM and Guided Backprop, each a forward and a backward (6)."""
        return 6.0

    def __init__(self, model: nn.Module, layer: str, interpolation: str = "nearest", reduce: str = "max_abs") -> None:
        super().__init__(model, layer)
        no_transformer_form(model, self.name, "Guided Backprop's rule gates ReLUs; a ViT's GELU has none")
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)
        self.interpolation, self.reduce = interpolation, reduce

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fixed, layer = self._fixed(x, relu6="clamp")
        with frozen(self.model):
            attr = _CaptumGuidedGradCam(fixed, layer).attribute(
                x.detach().clone().requires_grad_(True), target=target, interpolate_mode=self.interpolation
            )
        return reduce_channels(attr.detach(), self.reduce)


def _targets(target: torch.Tensor) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(t)) for t in target.tolist()]


class GradCAMPlusPlus(_LayerMethod):
    """Grad-CAM++ at ``layer`` (pytorch-grad-cam's weights), raw map bilinearly resized (no min-max)."""

    name = "grad_cam_pp"
    paper = "Chattopadhyay et al., WACV 2018"

    def __init__(self, model: nn.Module, layer: str, interpolation: str = "bilinear") -> None:
        super().__init__(model, layer)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        self.interpolation = interpolation

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from pytorch_grad_cam import GradCAMPlusPlus as _PGCPlusPlus

        fixed, layer = self._fixed(x)
        maps = _raw_cam(_PGCPlusPlus, fixed, layer, x, target, self.model, self.layout).clamp_min(0)
        return upsample(maps, tuple(x.shape[-2:]), self.interpolation)


def _raw_cam(cam_cls, fixed: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor,
             model: nn.Module, layout=None) -> torch.Tensor:
    """pytorch-grad-cam's raw CAM ``(B, 1, h, w)`` (``get_cam_image``: no min-max scaling, no OpenCV resize)
    of ``cam_cls`` at ``layer`` of the fixed copy; a token ``layout`` is its ``reshape_transform``."""
    hw = tuple(x.shape[-2:])
    reshape = None if layout is None else (lambda t: layout.to_grid(t, hw))
    training = fixed.training
    cam = cam_cls(model=fixed, target_layers=[layer], reshape_transform=reshape)  # registers its hooks on the copy
    try:
        with frozen(model):
            xin = x.detach().clone().requires_grad_(True)
            outputs = cam.activations_and_grads(xin)
            loss = sum(t(o) for t, o in zip(_targets(target), outputs))
            loss.backward()
            acts = cam.activations_and_grads.activations[0].cpu().numpy()
            grads = cam.activations_and_grads.gradients[0].cpu().numpy()
            raw = cam.get_cam_image(xin, layer, _targets(target), acts, grads, False)  # numpy (B, h, w)
    finally:
        cam.activations_and_grads.release()
        fixed.train(training)
    return torch.as_tensor(raw, device=x.device, dtype=x.dtype).unsqueeze(1)


class FullGrad(Attribution):
    """FullGrad (pytorch-grad-cam's implementation, its [0, 1] output per image kept as is)."""

    name = "fullgrad"
    paper = "Srinivas & Fleuret, NeurIPS 2019"

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward and one backward, biases' gradients read on the way (3)."""
        return 3.0

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        no_transformer_form(model, self.name, "pytorch-grad-cam collects the bias gradients of conv and "
                            "BatchNorm layers only, not of a ViT's Linear and LayerNorm")

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import contextlib
        import io

        from pytorch_grad_cam import FullGrad as _PGCFullGrad

        fixed = fixed_copy(self.model, x)
        training = fixed.training
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning about target_layers
            cam = _PGCFullGrad(model=fixed, target_layers=[])
        try:
            with frozen(self.model):
                raw = cam(input_tensor=x.detach().clone(), targets=_targets(target))  # numpy (B, H, W)
        finally:
            cam.activations_and_grads.release()
            fixed.train(training)
        return torch.as_tensor(raw, device=x.device, dtype=x.dtype).unsqueeze(1)
