"""Baseline attribution methods (Captum, pytorch-grad-cam, zennit, TorchRay wrappers): axioms on tiny models,
closed forms, batched == one at a time, chunking neutrality, hooks and model state left untouched."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

from xattr.core.hooks import hook_count
from xattr.errors import XattrConfigError
from xattr.methods.baselines import model_fixes
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
from xattr.models.tiny import PixelLinear, TinyCNN

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# cheap hyper-parameters: every method, runnable on any image model; `layer` filled per model
FACTORIES = {
    "gradient": lambda m, layer: Gradient(m),
    "random": lambda m, layer: RandomAttribution(m),
    "input_x_gradient": lambda m, layer: InputXGradient(m),
    "integrated_gradients": lambda m, layer: IntegratedGradients(m, n_steps=4, chunk=8),
    "smoothgrad": lambda m, layer: SmoothGrad(m, n_samples=3),
    "guided_backprop": lambda m, layer: GuidedBackprop(m),
    "grad_cam": lambda m, layer: GradCAM(m, layer=layer),
    "guided_grad_cam": lambda m, layer: GuidedGradCAM(m, layer=layer),
    "grad_cam_pp": lambda m, layer: GradCAMPlusPlus(m, layer=layer),
    "fullgrad": lambda m, layer: FullGrad(m),
    "deepshap": lambda m, layer: DeepSHAP(m, n_baselines=2),
    "occlusion": lambda m, layer: Occlusion(m, window=16),
    "lime": lambda m, layer: LIME(m, n_samples=12, segmentation="grid", cell=16),
    "lrp": lambda m, layer: LRP(m, rule="epsilon"),
    "lrp_alpha_beta": lambda m, layer: LRP(m, rule="alpha_beta"),
    "extremal_perturbation": lambda m, layer: ExtremalPerturbation(m, max_iter=2, step=4, sigma=4.0),
}


def _tiny():
    return TinyCNN(num_classes=10).eval(), "conv3"


def _mobilenet():
    from xattr.models.tf_padding import use_tf_same_padding

    net = torchvision.models.mobilenet_v2(weights=None).eval()
    use_tf_same_padding(net)
    return net, "features.18"


def _resnet50():
    return torchvision.models.resnet50(weights=None).eval(), "layer4"


def _vgg16():
    return torchvision.models.vgg16(weights=None).eval(), "features.28"


def _effnet():
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0").eval(), "_conv_head"


MODELS = {"tiny": _tiny, "mobilenet_v2": _mobilenet, "resnet50": _resnet50, "vgg16": _vgg16, "efficientnet_lite0": _effnet}
# methods whose model-side fixes matter (hooks on activations / shared modules) run fast on every model but VGG
FIX_SENSITIVE = {"guided_backprop", "guided_grad_cam", "deepshap", "lrp", "grad_cam", "grad_cam_pp", "gradient"}
FIX_SENSITIVE_BIG = {"guided_backprop", "deepshap", "lrp", "grad_cam"}


def _combos():
    for model in MODELS:
        for method in FACTORIES:
            fast = (
                model == "tiny"
                or (model == "mobilenet_v2" and method in FIX_SENSITIVE)
                or (model in ("resnet50", "efficientnet_lite0") and method in FIX_SENSITIVE_BIG)
            )
            yield pytest.param(model, method, marks=() if fast else pytest.mark.slow, id=f"{model}-{method}")


_MODEL_CACHE: dict = {}


def _get_model(name):
    if name not in _MODEL_CACHE:
        torch.manual_seed(0)
        _MODEL_CACHE[name] = MODELS[name]()
    return _MODEL_CACHE[name]


def _snapshot(model: nn.Module):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    structure = [(n, type(m), getattr(m, "inplace", None)) for n, m in model.named_modules()]
    flags = [p.requires_grad for p in model.parameters()]
    return state, structure, flags, model.training


def _assert_unchanged(model: nn.Module, snap) -> None:
    state, structure, flags, training = snap
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    assert [(n, type(m), getattr(m, "inplace", None)) for n, m in model.named_modules()] == structure
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training == training
    assert hook_count(model) == 0


@pytest.mark.parametrize("model_name,method", list(_combos()))
def test_shape_hooks_and_model_untouched(model_name, method):
    model, layer = _get_model(model_name)
    size = 16 if model_name == "tiny" else 32
    x = torch.randn(3, 3, size, size)
    target = torch.tensor([0, 3, 7])
    snap = _snapshot(model)
    maps = FACTORIES[method](model, layer).attribute(x, target)
    assert maps.shape == (3, 1, size, size)
    assert maps.dtype == torch.float32 and not maps.requires_grad
    assert torch.isfinite(maps).all()
    _assert_unchanged(model, snap)


# ---------------------------------------------------------------- batched == one at a time
@pytest.mark.parametrize("method", [m for m in FACTORIES if m != "random"])
def test_batch_equals_one_at_a_time(method):
    model, layer = _get_model("tiny")
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([1, 4, 9])
    attr = FACTORIES[method](model, layer)
    batch = attr.attribute(x, target)
    single = torch.cat([attr.attribute(x[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda m, ibs: IntegratedGradients(m, n_steps=12, chunk=ibs),
        lambda m, ibs: SmoothGrad(m, n_samples=10, chunk=ibs),
        lambda m, ibs: DeepSHAP(m, n_baselines=4, chunk=ibs),
        lambda m, ibs: Occlusion(m, window=4, chunk=ibs),
        lambda m, ibs: LIME(m, n_samples=15, segmentation="grid", cell=4, lasso_alpha=1e-6, chunk=ibs),
    ],
    ids=["ig", "smoothgrad", "deepshap", "occlusion", "lime"],
)
def test_chunk_is_neutral(make):
    model, _ = _get_model("tiny")
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([2, 5])
    ref = make(model, None).attribute(x, target)
    for chunk in (3, 7):
        torch.testing.assert_close(make(model, chunk).attribute(x, target), ref, rtol=1e-4, atol=1e-6)


class _Rows(nn.Module):
    """Identity that records the batch size (forward rows) of every call of the model."""

    seen: list[int] = []  # class-level: the fixed copies (DeepSHAP) record here too

    def forward(self, x):
        _Rows.seen.append(x.shape[0])
        return x


# (factory, rows of one image that no chunk can split, rows of the whole batch of 3 images with chunk=None)
_B, _STEPS, _SAMPLES, _REFS, _WINDOWS = 3, 6, 7, 4, 16
CHUNKED = {
    "ig": (lambda m, c: IntegratedGradients(m, n_steps=_STEPS, chunk=c), 1, _B * _STEPS),
    "smoothgrad": (lambda m, c: SmoothGrad(m, n_samples=_SAMPLES, chunk=c), 1, _SAMPLES),  # one image per call
    "deepshap": (lambda m, c: DeepSHAP(m, n_baselines=_REFS, chunk=c), 2 * _REFS, 2 * _B * _REFS),  # input + ref
    "occlusion": (lambda m, c: Occlusion(m, window=4, chunk=c), 1, _B * _WINDOWS),
    "lime": (
        lambda m, c: LIME(m, n_samples=_SAMPLES, segmentation="grid", cell=4, lasso_alpha=1e-6, chunk=c),
        1,
        _SAMPLES,  # one image per call
    ),
}


@pytest.mark.parametrize("method", list(CHUNKED))
def test_chunk_bounds_rows_per_call_and_never_changes_maps(method):
    """chunk = forward rows per device call: maps with chunk=1 (and other small values, also below the batch
    size) equal chunk=None; no call exceeds max(chunk, one image's rows); None runs everything in one call."""
    make, floor, everything = CHUNKED[method]
    torch.manual_seed(12)
    model = nn.Sequential(_Rows(), TinyCNN(num_classes=10)).eval()
    x = torch.randn(_B, 3, 16, 16)
    target = torch.tensor([2, 5, 9])
    _Rows.seen.clear()
    ref = make(model, None).attribute(x, target)
    assert max(_Rows.seen) == everything
    for chunk in (1, 2, 5, 17):
        _Rows.seen.clear()
        maps = make(model, chunk).attribute(x, target)
        torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6)
        assert max(_Rows.seen) <= max(chunk, floor), (chunk, _Rows.seen)
    assert make(model, 1).chunk == 1


@pytest.mark.parametrize("method", list(CHUNKED))
def test_default_chunk_is_auto_sized_for_the_cpu_and_never_changes_maps(method, monkeypatch):
    """Every chunked method defaults to ``chunk: auto`` (issue 31: 64-256 fixed rows ran 1.3-2.5x slower per
    image on a CPU than the cache-sized ``auto``, docs/speed.md). Off CUDA ``auto`` is
    ``CPU_CHUNK_VALUES // values per row`` rows (at least 4), patched here to 5 rows of 3 x 16 x 16 so the
    split shows: the calls hold at most max(5, one image's rows) rows, and the maps equal ``chunk=None``."""
    import inspect

    import xattr.core.chunk as chunk_mod

    make, floor, _ = CHUNKED[method]
    torch.manual_seed(12)
    model = nn.Sequential(_Rows(), TinyCNN(num_classes=10)).eval()
    x, target = torch.randn(_B, 3, 16, 16), torch.tensor([2, 5, 9])
    ref = make(model, None).attribute(x, target)
    cls = type(make(model, None))
    assert inspect.signature(cls.__init__).parameters["chunk"].default == "auto"
    monkeypatch.setattr(chunk_mod, "CPU_CHUNK_VALUES", 5 * 3 * 16 * 16)
    _Rows.seen.clear()
    maps = make(model, "auto").attribute(x, target)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6)
    assert max(_Rows.seen) <= max(5, floor) and len(_Rows.seen) > 1, _Rows.seen


@pytest.mark.parametrize("bad", [0, -3, "x", 2.5, True])
@pytest.mark.parametrize("method", list(CHUNKED))
def test_bad_chunk_is_one_line_error_naming_the_value(method, bad):
    model, _ = _get_model("tiny")
    with pytest.raises(XattrConfigError) as err:
        CHUNKED[method][0](model, bad)
    msg = str(err.value)
    assert "chunk" in msg and repr(bad) in msg and "\n" not in msg


# ---------------------------------------------------------------- axioms and closed forms
def test_integrated_gradients_completeness():
    model, _ = _get_model("tiny")
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 1, 2])
    attr = IntegratedGradients(model, n_steps=300, method="riemann_trapezoid").attribute_channels(x, target)
    with torch.no_grad():
        delta = model(x)[torch.arange(3), target] - model(torch.zeros_like(x))[torch.arange(3), target]
    torch.testing.assert_close(attr.sum((1, 2, 3)), delta, rtol=1e-2, atol=1e-4)


def _half_null_linear():
    torch.manual_seed(1)
    weight = torch.randn(4, 3, 8, 8)
    weight[..., :4] = 0.0  # left half of every image is a null feature
    return PixelLinear(weight).eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda m: InputXGradient(m, reduce="abs_sum"),
        lambda m: IntegratedGradients(m, n_steps=8, reduce="abs_sum"),
        lambda m: DeepSHAP(m, n_baselines=3, reduce="abs_sum"),
        lambda m: Occlusion(m, window=2, baseline="zero", reduce="abs"),
    ],
    ids=["input_x_gradient", "integrated_gradients", "deepshap", "occlusion"],
)
def test_null_feature_gets_zero(make):
    model = _half_null_linear()
    x = torch.randn(2, 3, 8, 8)
    maps = make(model).attribute(x, torch.tensor([0, 3]))
    assert maps[..., 4:].abs().max() > 0
    assert maps[..., :4].abs().max() <= 1e-5 * maps[..., 4:].abs().max()  # zero up to float rounding


def test_input_x_gradient_and_ig_exact_on_linear_model():
    """On logit = <W_c, x> + b both equal W_c * x per pixel (IG with zero baseline too)."""
    model = _half_null_linear()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([1, 2])
    truth = (model.weight[target] * x).sum(1, keepdim=True)
    torch.testing.assert_close(InputXGradient(model).attribute(x, target), truth)
    torch.testing.assert_close(IntegratedGradients(model, n_steps=5).attribute(x, target), truth, rtol=1e-5, atol=1e-6)


def test_ig_without_inputs_is_the_iba_paper_codes_mean_path_gradient():
    """``multiply_by_inputs=False`` with the mean-colour baseline is IBA-paper-code's "Int. Grad." heatmap before its
    channel mean: ``1/m sum_{k=1..m} dF(x' + k/m (x - x'))/dx``, computed here by autograd one point at a time.
    With ``True`` the same gradient times ``x - x'`` (Eq. 3)."""
    model, _ = _get_model("tiny")
    torch.manual_seed(3)
    x, target, m = torch.randn(2, 3, 16, 16), torch.tensor([0, 2]), 6
    base = x.mean((2, 3), keepdim=True).expand_as(x)  # per-image channel mean (the reference's Mean())
    grads = []
    for k in range(1, m + 1):
        p = (base + k / m * (x - base)).requires_grad_(True)
        model(p)[torch.arange(2), target].sum().backward()
        grads.append(p.grad)
    mean_grad = torch.stack(grads).mean(0)
    got = IntegratedGradients(model, baseline="mean", n_steps=m, multiply_by_inputs=False).attribute_channels(x, target)
    torch.testing.assert_close(got, mean_grad, rtol=1e-5, atol=1e-7)
    ig = IntegratedGradients(model, baseline="mean", n_steps=m).attribute_channels(x, target)
    torch.testing.assert_close(ig, mean_grad * (x - base), rtol=1e-5, atol=1e-7)
    with pytest.raises(XattrConfigError, match="multiply_by_inputs"):
        IntegratedGradients(model, multiply_by_inputs="no")


def test_the_iba_papers_ig_row_is_saliency_of_the_mean_path_gradient():
    """The IBA tables' row "Int. Grad. (of Saliency)" (conf/row/integrated_gradients_of_saliency.yaml): max over
    channels of |mean path gradient from the mean colour| (autograd, one path point at a time); InputIBA's row
    (integrated_gradients) stays Captum's IG, the gradient times x - x' summed over channels."""
    from tests.helpers import compose_cfg
    from xattr.config import build

    model, _ = _get_model("tiny")
    torch.manual_seed(4)
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([1, 3])
    base = x.mean((2, 3), keepdim=True).expand_as(x)
    cfg = compose_cfg(["experiment=iba_t2_bbox", "row=integrated_gradients_of_saliency", "model.weights=random"])
    method = build(cfg.method)(model=model)
    grads = []
    for k in range(1, method.n_steps + 1):
        p = (base + k / method.n_steps * (x - base)).requires_grad_(True)
        model(p)[torch.arange(2), target].sum().backward()
        grads.append(p.grad)
    mean_grad = torch.stack(grads).mean(0)
    torch.testing.assert_close(method.attribute(x, target), mean_grad.abs().amax(1, keepdim=True), rtol=1e-5, atol=1e-7)
    captum = build(compose_cfg(["experiment=inputiba_t2_ehr", "row=integrated_gradients",
                                "model.weights=random"]).method)(model=model)
    assert (captum.baseline, captum.multiply_by_inputs, captum.reduce) == ("zero", True, "sum")


def test_occlusion_closed_form_on_linear_model():
    """Drop of a window on a linear model = sum over the window of W_c * (x - fill)."""
    model = _half_null_linear()
    x = torch.randn(1, 3, 8, 8)
    maps = Occlusion(model, window=4, baseline="mean").attribute(x, torch.tensor([2]))
    fill = x.mean((2, 3), keepdim=True)
    contrib = (model.weight[2:3] * (x - fill)).sum(1)[0]  # (8, 8)
    for r in (0, 4):
        for c in (0, 4):
            expected = contrib[r : r + 4, c : c + 4].sum()
            assert torch.allclose(maps[0, 0, r : r + 4, c : c + 4], expected.expand(4, 4), atol=1e-5)


def _avgpool_tiny():
    torch.manual_seed(3)
    net = TinyCNN(num_classes=5).eval()
    net.features[4] = nn.AvgPool2d(2)  # Captum's DeepLift max-pool rule is not exactly complete
    return net


def test_deepshap_completeness_tiny():
    model = _avgpool_tiny()
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 2, 4])
    method = DeepSHAP(model, n_baselines=4)
    attr = method.attribute_channels(x, target)
    with torch.no_grad():
        refs = method.reference_set(x)
        delta = model(x)[torch.arange(3), target] - model(refs)[:, target].mean(0)
    torch.testing.assert_close(attr.sum((1, 2, 3)), delta, rtol=1e-3, atol=1e-5)


def _resnet18_avgpool():
    torch.manual_seed(4)
    net = torchvision.models.resnet18(weights=None, num_classes=6).eval()
    net.maxpool = nn.AvgPool2d(3, 2, 1)
    for m in net.modules():  # make outputs O(1) so the test is sensitive
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1.0)
    return net


def test_deepshap_completeness_on_resnet_with_shared_inplace_relu():
    """torchvision ResNet calls one in-place ``relu`` module 2-3 times per block: without the model-side fix
    (out-of-place, one module per call site) DeepLift's stored inputs are overwritten and completeness fails."""
    model = _resnet18_avgpool()
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([1, 4])
    method = DeepSHAP(model, n_baselines=2)
    attr = method.attribute_channels(x, target)
    with torch.no_grad():
        refs = method.reference_set(x)
        delta = model(x)[torch.arange(2), target] - model(refs)[:, target].mean(0)
    assert delta.abs().min() > 1e-3
    torch.testing.assert_close(attr.sum((1, 2, 3)), delta, rtol=2e-3, atol=1e-5)


def test_relu6_split_is_exact_and_clamp_is_relu6():
    x = torch.linspace(-10, 10, 101)
    torch.testing.assert_close(model_fixes.ReLU6Split()(x), nn.functional.relu6(x))
    torch.testing.assert_close(model_fixes.ReLU6Clamp()(x), nn.functional.relu6(x))


def test_fixed_copy_same_function_and_shares_weights():
    net, _ = _get_model("efficientnet_lite0")
    x = torch.randn(2, 3, 32, 32)
    for mode in model_fixes.RELU6_MODES:
        fixed = model_fixes.fixed_copy(net, x, relu6=mode)
        with torch.no_grad():
            torch.testing.assert_close(fixed(x), net(x), rtol=1e-5, atol=1e-5)
        assert {id(p) for p in fixed.parameters()} == {id(p) for p in net.parameters()}
        # no activation module is called twice in the copy
        calls: dict = {}
        hs = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1))  # noqa: B023
              for m in fixed.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
        with torch.no_grad():
            fixed(x)
        for h in hs:
            h.remove()
        assert calls and max(calls.values()) == 1
        assert not any(getattr(m, "inplace", False) for m in fixed.modules())


def test_grad_cam_hand_computed():
    """conv -> ReLU (layer A) -> global average pool -> linear W: dy_c/dA_k = W_ck / (h w), so
    Grad-CAM = ReLU(sum_k W_ck / (h w) * A_k) (Selvaraju et al., Eqs. 1-2)."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    net.eval()
    x = torch.randn(2, 3, 6, 6)
    target = torch.tensor([0, 2])
    maps = GradCAM(net, layer="1").attribute(x, target)
    with torch.no_grad():
        acts = torch.relu(net[0](x))  # (2, 4, 6, 6)
        alpha = net[4].weight[target] / 36.0  # (2, 4)
        expected = torch.relu((alpha[:, :, None, None] * acts).sum(1, keepdim=True))
    torch.testing.assert_close(maps, expected)
    # signed map (the bilinear resize of a coarser layer: test_grad_cam_bilinear_resize_of_a_coarser_layer)
    signed = GradCAM(net, layer="1", relu=False).attribute(x, target)
    torch.testing.assert_close(signed, (alpha[:, :, None, None] * acts).sum(1, keepdim=True))


def _coarse_cam_net():
    """conv (stride 2: an 8x8 input gives a 4x4 layer) -> ReLU (the CAM layer "1") -> GAP -> linear; class 1's
    head weights set by hand with mixed signs, so every channel's gradient dy_1/dA_k = W_1k / 16 is constant."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval()
    with torch.no_grad():
        net[4].weight[1] = torch.tensor([0.8, -0.6, 0.5, -0.9])
    return net


def _skimage_bilinear(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Independent bilinear resize (scikit-image, order 1, edge mode, no anti-aliasing) per map."""
    from skimage.transform import resize

    out = [resize(m[0].double().numpy(), (size, size), order=1, mode="edge", anti_aliasing=False) for m in maps]
    return torch.tensor(out, dtype=maps.dtype).unsqueeze(1)


def test_grad_cam_bilinear_resize_of_a_coarser_layer():
    """Grad-CAM at a 4x4 layer of an 8x8 input: ReLU(sum_k W_ck / (h w) A_k) at 4x4, resized bilinearly
    (half-pixel centres, as scikit-image's order-1 resize) to 8x8."""
    net = _coarse_cam_net()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([1, 1])
    with torch.no_grad():
        acts = torch.relu(net[0](x))  # (2, 4, 4, 4)
        coarse = torch.relu((net[4].weight[1][None, :, None, None] / 16.0 * acts).sum(1, keepdim=True))
    assert coarse.amax() > 0
    torch.testing.assert_close(GradCAM(net, layer="1").attribute(x, target), _skimage_bilinear(coarse, 8),
                               rtol=1e-5, atol=1e-6)


def test_grad_cam_pp_hand_formula_with_mixed_sign_weights():
    """Grad-CAM++ (Chattopadhyay et al., Eq. 19, pytorch-grad-cam's closed-form alpha): per channel
    w_k = sum_ij alpha_ij ReLU(g_ij), alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3) (0 where g = 0),
    map = ReLU(sum_k w_k A_k), bilinearly resized. Class 1's head has two negative weights: those channels
    get no weight; written per image and per channel from the equation."""
    net = _coarse_cam_net()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([1, 1])
    maps = GradCAMPlusPlus(net, layer="1").attribute(x, target)
    expected = []
    with torch.no_grad():
        for i in range(2):
            acts = torch.relu(net[0](x[i : i + 1]))[0].double()  # (4, 4, 4)
            cam = torch.zeros(4, 4, dtype=torch.float64)
            for k in range(4):
                g = float(net[4].weight[1, k]) / 16.0  # the same at every (i, j)
                a_sum = float(acts[k].sum())
                alpha = g**2 / (2 * g**2 + a_sum * g**3 + 1e-6)
                w_k = 16 * alpha * max(g, 0.0)
                cam += w_k * acts[k]
            expected.append(torch.relu(cam)[None].float())
    expected = _skimage_bilinear(torch.stack(expected), 8)
    assert expected.amax() > 0
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_guided_grad_cam_is_guided_backprop_times_upsampled_grad_cam():
    """Guided Grad-CAM (Selvaraju et al., Sec. 3.1) = guided backprop (ReLU passes ReLU(grad) where its input
    was > 0) times the Grad-CAM map nearest-upsampled from 4x4 to 8x8, elementwise per channel, then the
    max over channels of |.|; both factors written by hand."""
    net = _coarse_cam_net()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([1, 1])
    maps = GuidedGradCAM(net, layer="1").attribute(x, target)
    g = net[4].weight[1].detach() / 16.0  # dy/dA_k, constant over the 4x4 layer
    xg = x.clone().requires_grad_(True)
    z = net[0](xg)  # (2, 4, 4, 4), the ReLU's input
    guided_at_z = (z > 0).float() * torch.relu(g)[None, :, None, None]
    (gbp,) = torch.autograd.grad(z, xg, grad_outputs=guided_at_z.detach())
    with torch.no_grad():
        cam = torch.relu((g[None, :, None, None] * torch.relu(z)).sum(1, keepdim=True))  # (2, 1, 4, 4)
        up = cam.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 4 -> 8
    assert cam.amax() > 0 and gbp.abs().amax() > 0
    torch.testing.assert_close(maps, (gbp * up).abs().amax(1, keepdim=True), rtol=1e-5, atol=1e-7)


def test_lrp_epsilon_zero_equals_gradient_times_input_on_bias_free_relu_net():
    """LRP-0 on a bias-free ReLU network is Gradient x Input (Montavon et al. 2019, Sec. 10.2.1)."""
    torch.manual_seed(7)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 5, bias=False),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 3])
    lrp = LRP(net, rule="epsilon", epsilon=1e-9, canonize=False, init="logit").attribute_channels(x, target)
    xg = x.clone().requires_grad_(True)
    out = net(xg)[torch.arange(2), target].sum()
    (grad,) = torch.autograd.grad(out, xg)
    torch.testing.assert_close(lrp, grad * x, rtol=1e-4, atol=1e-6)


def test_guided_backprop_passes_only_positive_signal():
    """On conv -> ReLU -> linear, guided backprop = W1^T (1[z > 0] * relu(w2_c)) per pixel."""
    torch.manual_seed(8)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).eval()
    x = torch.randn(2, 3, 2, 2)
    target = torch.tensor([0, 1])
    maps = GuidedBackprop(net, reduce="sum").attribute(x, target)
    with torch.no_grad():
        z = net[1](x.flatten(1))  # (2, 6)
        g = (z > 0).float() * torch.relu(net[3].weight[target])  # (2, 6)
        expected = (g @ net[1].weight).reshape(2, 3, 2, 2).sum(1, keepdim=True)
    torch.testing.assert_close(maps, expected)


def test_extremal_perturbation_restores_flags_and_finds_the_evidence():
    """A model whose target logit is 300 x the mean of the top-right quadrant (a score of a network's scale:
    TorchRay's area penalty has weight 300; the top-right, not a diagonal quadrant, so a transposed mask
    fails): the preserved mask sits there, beating each of the three other quadrants, IoU > 0.5."""

    class Quadrant(nn.Module):
        num_classes = 2

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(300.0))

        def forward(self, x):
            q = x[:, :, :16, 16:].mean((1, 2, 3)) * self.scale
            return torch.stack([q, -q], 1)

    model = Quadrant().eval()
    model.scale.requires_grad_(True)
    x = torch.full((1, 3, 32, 32), -1.0)
    x[:, :, :16, 16:] = 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # TorchRay's meshgrid UserWarning stays off the console
        maps = ExtremalPerturbation(model, areas=[0.25], max_iter=60, step=4, sigma=4.0).attribute(x, torch.tensor([0]))
    assert model.scale.requires_grad
    quadrants = [maps[..., r : r + 16, c : c + 16].mean() for r in (0, 16) for c in (0, 16)]  # TL, TR, BL, BR
    assert quadrants[1] > 2 * max(quadrants[0], quadrants[2], quadrants[3]), quadrants
    top = maps[0, 0] > 0.5
    truth = torch.zeros(32, 32, dtype=torch.bool)
    truth[:16, 16:] = True
    assert (top & truth).sum() / (top | truth).sum() > 0.5


def test_lime_grid_recovers_linear_model():
    """LIME on a linear model with one cell per feature: coefficients rank the cells by W_c * (x - 0) mass."""
    torch.manual_seed(9)
    weight = torch.zeros(2, 1, 8, 8)
    weight[0, 0, :4, :4] = 1.0  # only the top-left cell matters
    model = PixelLinear(weight).eval()
    x = torch.ones(1, 1, 8, 8)
    maps = LIME(model, n_samples=200, segmentation="grid", cell=4, lasso_alpha=1e-4).attribute(x, torch.tensor([0]))
    cells = maps[0, 0, ::4, ::4]
    assert cells[0, 0] > 10 * cells.flatten()[1:].abs().max()


# ---------------------------------------------------------------- hooks after an error, bad config
class _Bomb(nn.Module):
    armed = False  # class-level: the fixed copies see it too

    def forward(self, x):
        if _Bomb.armed:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", ["guided_backprop", "grad_cam", "grad_cam_pp", "fullgrad", "deepshap", "lrp", "guided_grad_cam"])
def test_no_hook_left_after_an_error(method):
    torch.manual_seed(10)
    net = TinyCNN(num_classes=4).eval()
    net.pool = nn.Sequential(_Bomb(), nn.AdaptiveAvgPool2d(1))
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([0, 1])
    attr = FACTORIES[method](net, "conv3")
    before = attr.attribute(x, target)
    _Bomb.armed = True
    try:
        with pytest.raises(RuntimeError, match="boom"):
            attr.attribute(x, target)
    finally:
        _Bomb.armed = False
    assert hook_count(net) == 0
    for _, (_, fixed) in model_fixes._CACHE.get(net, {}).items():
        assert hook_count(fixed) == 0
    assert all(p.requires_grad for p in net.parameters())
    torch.testing.assert_close(attr.attribute(x, target), before)


def test_copy_follows_in_place_weight_changes():
    """Cascading randomisation changes weights in place: the cached copy must see it."""
    torch.manual_seed(11)
    net = TinyCNN(num_classes=4).eval()
    x = torch.randn(1, 3, 16, 16)
    gbp = GuidedBackprop(net)
    before = gbp.attribute(x, torch.tensor([1]))
    with torch.no_grad():
        net.fc.weight.mul_(-1.0)
    after = gbp.attribute(x, torch.tensor([1]))
    fresh = GuidedBackprop(copy.deepcopy(net)).attribute(x, torch.tensor([1]))
    torch.testing.assert_close(after, fresh)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: IntegratedGradients(m, method="simpson"),
        lambda m: IntegratedGradients(m, baseline="black"),
        lambda m: SmoothGrad(m, n_samples=0),
        lambda m: DeepSHAP(m, baselines="uniformish"),
        lambda m: Occlusion(m, window=0),
        lambda m: LIME(m, segmentation="quickshiftt"),
        lambda m: LRP(m, rule="zplus"),
        lambda m: LRP(m, rule="alpha_beta", alpha=2.0, beta=2.0),
        lambda m: ExtremalPerturbation(m, areas=[1.5]),
        lambda m: GradCAM(m, layer="conv9"),
        lambda m: InputXGradient(m, reduce="mean"),
    ],
)
def test_bad_config_raises_one_clear_error(make):
    model, _ = _get_model("tiny")
    with pytest.raises(XattrConfigError) as err:
        make(model)
    assert "\n" not in str(err.value)


def test_deepshap_data_baselines_need_fit():
    model, _ = _get_model("tiny")
    method = DeepSHAP(model, baselines="data", n_baselines=3)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(XattrConfigError, match="fit"):
        method.attribute(x, torch.tensor([0, 1]))
    method.fit([{"x": torch.randn(2, 3, 16, 16)}, {"x": torch.randn(2, 3, 16, 16)}])
    assert method.reference_set(x).shape == (3, 3, 16, 16)
    assert method.attribute(x, torch.tensor([0, 1])).shape == (2, 1, 16, 16)


# ---------------------------------------------------------------- SmoothGrad, FullGrad, LRP alpha-beta: closed forms
class _Cubic(nn.Module):
    """logit_c = sum_p w_cp x_p^3: the gradient 3 w_cp (x_p + sigma eps_p)^2 has the expectation
    3 w_cp (x_p^2 + sigma^2), which depends on the noise level."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.stack([torch.linspace(0.5, 2.0, 16), -torch.linspace(1.0, 3.0, 16)]).view(2, 1, 4, 4))

    def forward(self, x):
        return (self.w[None] * x[:, None] ** 3).flatten(2).sum(2)


def test_smoothgrad_mean_equals_closed_form_expectation():
    """SmoothGrad (Smilkov et al., Eq. 2, signed) with sigma = noise_level * (max x - min x): the mean over
    4000 noisy copies of 3 w (x + sigma eps)^2 equals 3 w (x^2 + sigma^2) up to Monte-Carlo error
    (a 10x noise level would give sigma^2 x 100)."""
    model = _Cubic().eval()
    x = torch.tensor([[-0.5, 0.0, 0.25, 1.0], [0.5, -1.0, 0.75, 0.1], [0.3, -0.2, 0.0, 0.6], [-0.7, 0.2, 0.4, -0.3]])
    x = torch.stack([x.view(1, 4, 4), -x.view(1, 4, 4)])  # two images, (2, 1, 4, 4)
    target = torch.tensor([0, 1])
    maps = SmoothGrad(model, n_samples=4000, noise_level=0.2, abs=False, reduce="sum", seed=3).attribute(x, target)
    sigma = 0.2 * 2.0  # max - min = 1 - (-1) for both images
    w = model.w.detach()[target]  # (2, 1, 4, 4)
    estimate = (maps / (3 * w) - x**2)  # per pixel, an unbiased estimate of sigma^2
    torch.testing.assert_close(estimate.mean((1, 2, 3)), torch.full((2,), sigma**2), rtol=0.05, atol=0.0)


class _Quadratic(nn.Module):
    """logit_c = sum_p w_cp x_p^2 over 3 colour channels: the gradient 2 w_cp (x_p + sigma eps_p) changes sign under
    the noise where x_p is near 0, so the mean of the signed gradient (2 w x) and the mean of |gradient| differ."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.w = nn.Parameter(torch.rand(2, 3, 4, 4, generator=g) * 2 - 1)

    def forward(self, x):
        return (self.w[None] * x[:, None] ** 2).flatten(2).sum(2)


def test_the_smoothgrad_row_is_saliency_of_the_mean_signed_gradient():
    """The published row "SmoothGrad (of Saliency)" (conf/row/smoothgrad.yaml): max over channels of |mean signed
    gradient| = max_c |2 w_c x_c| in expectation, by Monte-Carlo; SmoothGrad of |gradient| would give
    2 |w| E|x + sigma eps| >= 2 |w| sigma sqrt(2 / pi) even at x = 0."""
    from tests.helpers import compose_cfg
    from xattr.config import build

    cfg = compose_cfg(["experiment=iba_t2_bbox", "row=smoothgrad", "model.weights=random"])
    model = _Quadratic().eval()
    g = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    x[:, :, :2] = 0.0  # half the pixels at 0 in every channel: the expected signed gradient is 0 there
    target = torch.tensor([0, 1])
    method = build(cfg.method)(model=model)
    method.n_samples = 3000
    maps = method.attribute(x, target)
    expected = (2 * model.w.detach()[target] * x).abs().amax(1, keepdim=True)
    sigma = 0.15 * (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).view(2, 1, 1, 1)
    se = 2 * model.w.detach()[target].abs().amax(1, keepdim=True) * sigma / 3000**0.5  # one channel's MC error
    assert ((maps - expected).abs() <= 4 * se + 1e-6).all()


def _fullgrad_net():
    torch.manual_seed(13)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    ).eval()
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
        net[0].bias.uniform_(-0.5, 0.5)
        net[3].bias.uniform_(-0.5, 0.5)
    return net


def test_fullgrad_completeness_and_hand_map():
    """FullGrad (Srinivas & Fleuret, Eq. 2 and 4). A ReLU net is piecewise linear, so the input-gradient
    term and the bias-gradient terms (conv biases, the batch-norm's folded bias beta - gamma mu / sqrt(var +
    eps), the linear head's bias) sum to the target logit (completeness). The map is psi applied to the
    pieces as pytorch-grad-cam does: per channel min-max of |x * grad_x| and of |b * grad_b| for the
    conv / batch-norm biases, summed, then a final per-image min-max."""
    net = _fullgrad_net()
    x = torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 2])
    maps = FullGrad(net).attribute(x, target)

    def mm(m):  # psi's min-max of one map
        m = m - m.min()
        return m / (1e-7 + m.max())

    bn = net[1]
    biases = [net[0].bias, bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps), net[3].bias]
    for i in range(2):  # per image, from the equations
        xi = x[i : i + 1].clone().requires_grad_(True)
        outs = []
        a0 = net[0](xi)
        a1 = net[1](a0)
        a3 = net[3](net[2](a1))
        logit = net[7](net[6](net[5](net[4](a3))))[0, target[i]]
        grads = torch.autograd.grad(logit, [xi, a0, a1, a3])
        with torch.no_grad():
            terms = [(b[None, :, None, None] * g).sum() for b, g in zip(biases, grads[1:])]
            total = (xi * grads[0]).sum() + sum(terms) + net[7].bias[target[i]]
            torch.testing.assert_close(total, logit.detach(), rtol=1e-4, atol=1e-5)  # completeness
            acc = sum(mm((xi * grads[0])[0, c].abs()) for c in range(3))
            for b, g in zip(biases, grads[1:]):
                acc = acc + sum(mm((b[c] * g[0, c]).abs()) for c in range(b.shape[0]))
            outs.append(mm(acc))
        torch.testing.assert_close(maps[i, 0], outs[0], rtol=1e-4, atol=1e-5)


def _lrp_alpha_beta_by_hand(net, x, target, alpha=2.0, beta=1.0):
    """LRP per image from Bach et al.: linear head LRP-0 (R_j = w_cj a_j with R_c = the logit), ReLU passes
    relevance, the bias-free conv by the alpha-beta rule R_i = sum_j (alpha z_ij^+ / sum_i z_ij^+ -
    beta z_ij^- / sum_i z_ij^-) R_j with z_ij = w_ij x_i over each output's receptive field."""
    conv, lin = net[0], net[3]
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].double()
        a = torch.relu(nn.functional.conv2d(xb, conv.weight.double(), padding=1))  # (1, O, H, W)
        r_a = lin.weight.double()[target[b]].view_as(a) * a  # LRP-0 of the head
        patches = nn.functional.unfold(xb, 3, padding=1)[0]  # (C*9, L)
        w = conv.weight.double().flatten(1)  # (O, C*9)
        z = w[:, :, None] * patches[None]  # (O, C*9, L)
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        sp = zp.sum(1, keepdim=True)
        sn = zn.sum(1, keepdim=True)
        share = alpha * zp / torch.where(sp == 0, 1.0, sp) - beta * zn / torch.where(sn == 0, -1.0, sn)
        r_in = (share * r_a.flatten(2)[0][:, None, :]).sum(0)  # (C*9, L)
        out.append(nn.functional.fold(r_in[None], x.shape[-2:], 3, padding=1)[0])
    return torch.stack(out).float()


def test_lrp_alpha_beta_hand_case_and_conservation():
    """alpha = 2, beta = 1 on conv (bias-free) -> ReLU -> flatten -> linear (bias-free, epsilon ~ 0):
    the relevance equals the per-image loop from the rule, and it is conserved (alpha - beta = 1: the
    input relevance sums to the target logit)."""
    torch.manual_seed(14)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3, bias=False)).eval()
    x = torch.randn(2, 3, 6, 6)
    target = torch.tensor([0, 2])
    rel = LRP(net, rule="alpha_beta", alpha=2.0, beta=1.0, epsilon=1e-9, canonize=False,
              init="logit").attribute_channels(x, target)
    torch.testing.assert_close(rel, _lrp_alpha_beta_by_hand(net, x, target), rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        logits = net(x)[torch.arange(2), target]
    torch.testing.assert_close(rel.sum((1, 2, 3)), logits, rtol=1e-3, atol=1e-5)


def test_the_lrp_row_is_the_iba_paper_codes_b_rule():
    """The published LRP row (conf/row/lrp.yaml) builds the code's rule: on a tiny VGG-like network its map is the
    b-rule's with beta -1, epsilon 5 from the target's logit (checked against the code's arithmetic in
    tests/reference/test_lrp_b_rule.py), not the epsilon rule's."""
    from tests.helpers import compose_cfg
    from tests.reference.test_lrp_b_rule import SmallVGG, reference_lrp
    from xattr.config import build

    cfg = compose_cfg(["experiment=iba_t2_bbox", "row=lrp", "model.weights=random"])
    net = SmallVGG().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    method = build(cfg.method)(model=net)
    method.canonize = False  # the tiny network has no batch norm to merge
    maps = method.attribute(x, torch.tensor([3, 1]))
    refs = torch.stack([reference_lrp(net, x[i : i + 1], t, -1.0, 5.0) for i, t in enumerate([3, 1])]).detach()
    assert refs.abs().max() > 1e-3
    torch.testing.assert_close(maps[:, 0], refs, rtol=1e-5, atol=1e-6 * float(refs.abs().max()))
