"""Inverse, Regression and Multi-layer IBA (Khakzar, dissertation ch. 8, sec. 2), Table 1 scores."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.test_iba_bottleneck import HalfIgnoring
from xattr.errors import XattrConfigError
from xattr.methods.iba import (
    InverseIBA,
    MultiLayerIBA,
    PerSampleIBA,
    RegressionIBA,
    bottleneck_scores,
    intersect,
)
from xattr.methods.iba import statistics as st
from xattr.methods.iba.multilayer import binarize
from xattr.methods.iba.regression import regression_loss
from xattr.models.tiny import TinyCNN


def _fit(method, layers, size=16):
    g = torch.Generator().manual_seed(1)
    loader = [{"x": torch.randn(16, 3, size, size, generator=g)} for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method.set_statistics(st.estimate(method.model, layers, loader, n_samples=64))
    return method


def test_inverse_iba_defaults_to_the_references_beta():
    """REFERENCE.md (CheXplain-IBA): the inverse bottleneck ran with beta 6, not Per-Sample IBA's 10."""
    model = TinyCNN(num_classes=5).eval()
    assert InverseIBA(model, "conv1").beta == 6.0 and PerSampleIBA(model, "conv1").beta == 10.0
    assert InverseIBA(model, "conv1", beta=2.0).beta == 2.0 and InverseIBA.inverse
    import xattr  # each variant is named by the option that builds it (a run's method label)

    options = set(xattr.list_methods())
    assert InverseIBA(model, "conv1").name == "inverse_iba" and "inverse_iba" in options
    assert MultiLayerIBA(model, ["conv1"]).name == "multilayer_iba" and "multilayer_iba" in options
    assert RegressionIBA(model, "conv1").name == "regression_iba" and "regression_iba" in options


def test_inverse_iba_raises_lambda_on_predictive_features_only():
    torch.manual_seed(0)
    model = HalfIgnoring().eval()
    x = torch.randn(2, 3, 16, 16)
    inv = _fit(InverseIBA(model, "feat", beta=1e-3, steps=10, copies=5, sigma=0.0), ["feat"])
    res = inv.optimize(x, torch.tensor([0, 3]))
    lam = torch.sigmoid(res.alpha) * inv.bottleneck("feat").active
    left, right = lam[..., :8].mean(), lam[..., 8:].mean()
    assert right < 0.05 and left > 0.5, (left, right)
    # the deletion game removed the evidence: the target's cross-entropy went up
    assert res.losses[-1].mean() > res.losses[0].mean()
    maps = inv.attribute(x, torch.tensor([0, 3]))
    assert torch.all(maps >= 0) and maps[..., 8:].mean() < 0.05 * maps[..., :8].mean()


def test_regression_losses_as_defined():
    phi = torch.tensor([[1.0, 3.0], [0.0, -2.0]])  # (B, copies)
    y = torch.tensor([2.0, 1.0])
    clean = torch.tensor([2.5, -1.0])
    assert torch.allclose(regression_loss("mse", y)(phi), torch.tensor([(1 + 1) / 2, (1 + 9) / 2]))
    assert torch.allclose(regression_loss("rm")(phi), torch.tensor([-(1 + 9) / 2, -(0 + 4) / 2]))
    assert torch.allclose(regression_loss("dv", clean=clean)(phi), torch.tensor([(2.25 + 0.25) / 2, (1 + 1) / 2]))
    with pytest.raises(XattrConfigError, match="valid choices"):
        regression_loss("mae")


def test_regression_iba_deviation_ignores_blind_half_and_rm_differs():
    torch.manual_seed(0)
    model = HalfIgnoring(k=1).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(100)  # a score with a range worth explaining
    x = torch.randn(2, 3, 16, 16)
    dv = _fit(RegressionIBA(model, "feat", regression_loss="dv", beta=1e-3, steps=10, copies=5, sigma=0.0), ["feat"])
    res = dv.optimize(x, torch.zeros(2))
    assert res.losses[0].max() < 0.05 * (model(x) ** 2).mean() + 1e-3  # alpha = 5: Phi(Z) ~ Phi(x)
    maps = dv.attribute(x, torch.zeros(2))
    assert maps.shape == (2, 1, 16, 16) and maps[..., 8:].mean() < 0.05 * maps[..., :8].mean()
    rm = _fit(RegressionIBA(model, "feat", regression_loss="rm", beta=1e-3, steps=10, copies=5, sigma=0.0), ["feat"])
    res_rm = rm.optimize(x, torch.zeros(2))
    assert torch.allclose(res_rm.losses[-1], -(res_rm.outputs[..., 0] ** 2).mean(-1), rtol=1e-5)
    # rm maximises Phi^2: the last step's |Phi| exceeds the first's
    assert -res_rm.losses[-1].mean() > -res_rm.losses[0].mean()
    two = HalfIgnoring(k=2).eval()
    with pytest.raises(XattrConfigError, match="output"):
        _fit(RegressionIBA(two, "feat", steps=1, copies=1), ["feat"]).attribute(x, torch.zeros(2))


def test_intersection_rule_on_hand_made_maps():
    a = torch.tensor([[1.0, 0.6], [0.2, 0.0]]).view(1, 1, 2, 2)
    b = torch.tensor([[0.1, 2.0], [1.5, 0.0]]).view(1, 1, 2, 2)
    assert torch.equal(binarize(a, 0.5, "relative"), torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2))
    assert torch.equal(binarize(b, 0.5, "relative"), torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2))
    assert torch.equal(intersect([a, b]), torch.tensor([[0.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2))
    assert torch.equal(intersect([a, b], 0.15, "absolute"), torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2))
    assert torch.equal(binarize(a, 0.75, "quantile"), torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2))
    m = intersect([a, b], combine="mean")
    assert torch.allclose(m, torch.tensor([[0.0, (0.6 + 1.0) / 2], [0.0, 0.0]]).view(1, 1, 2, 2))


def test_thresholds_per_image_by_hand_on_two_images_of_different_scale():
    """T of eq. 5 per image on a batch of two 2 x 3 maps (maxima 4 and 1, values on the thresholds): relative 0.5
    -> t = 2 and 0.5, quantile 0.6 (torch's linear rank 3 of 6 sorted values) -> t = 2 and 0.5 again but
    relative 0.6 -> t = 2.4 and 0.6, absolute 0.5 -> t = 0.5 for both; ``>=``: a value on t is in. ``mean``
    multiplies the intersection by the mean of the per-image max-normalised maps. Bad modes: one line."""
    img0 = [[4.0, 2.0, 1.0], [0.0, 3.0, 2.0]]
    img1 = [[1.0, 0.5, 0.25], [0.75, 0.5, 0.0]]
    maps = torch.tensor([img0, img1]).view(2, 1, 2, 3)

    def mask(*rows):
        return torch.tensor(rows).view(2, 1, 2, 3)

    half = mask([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert torch.equal(binarize(maps, 0.5, "relative"), half)
    assert torch.equal(binarize(maps, 0.6, "quantile"), half)
    assert torch.equal(binarize(maps, 0.6, "relative"), mask([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                                                              [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(binarize(maps, 0.5, "absolute"), mask([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]],
                                                              [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))
    other = maps.flip(-1)  # a second layer's maps
    inter = half * binarize(other, 0.5, "relative")
    assert torch.equal(intersect([maps, other]), inter)
    expected = inter * (maps / torch.tensor([4.0, 1.0]).view(2, 1, 1, 1) + other / torch.tensor([4.0, 1.0]).view(
        2, 1, 1, 1)) / 2
    assert torch.allclose(intersect([maps, other], combine="mean"), expected)
    with pytest.raises(XattrConfigError, match=r"^unknown threshold mode 'bogus'; valid choices: relative, quantile, "
                                               r"absolute$"):
        binarize(maps, 0.5, "bogus")
    with pytest.raises(XattrConfigError, match=r"^unknown combine 'bogus'; valid choices: binary, mean$"):
        intersect([maps], combine="bogus")


def test_multilayer_iba_takes_per_sample_ibas_settings_per_layer():
    """Each layer runs the Per-Sample IBA of the paper's settings (the same defaults as one PerSampleIBA), on the
    eq. 5 defaults (relative 0.5, binary); ``inverse`` swaps in Inverse IBA; bad options are one line."""
    import inspect

    model = TinyCNN(num_classes=5).eval()
    ml = MultiLayerIBA(model, ["conv1", "conv3"])
    assert (ml.threshold, ml.threshold_mode, ml.combine) == (0.5, "relative", "binary")
    assert all(type(m) is PerSampleIBA for m in ml.methods)
    assert all(type(m) is InverseIBA for m in MultiLayerIBA(model, ["conv1", "conv3"], inverse=True).methods)
    from xattr.methods.iba.per_sample import IBABase

    single = inspect.signature(IBABase.__init__).parameters  # what one PerSampleIBA takes through **kw
    multi = inspect.signature(MultiLayerIBA.__init__).parameters
    for name in ("n_samples", "min_std", "active_threshold", "sigma", "relu", "resize"):
        assert multi[name].default == single[name].default, name
    assert inspect.signature(PerSampleIBA.__init__).parameters["sigma"].default == multi["sigma"].default
    with pytest.raises(XattrConfigError, match=r"^unknown threshold mode 'bogus'"):
        MultiLayerIBA(model, ["conv1"], threshold_mode="bogus")
    with pytest.raises(XattrConfigError, match=r"^unknown combine 'bogus'"):
        MultiLayerIBA(model, ["conv1"], combine="bogus")


def test_multilayer_iba_is_intersection_of_per_layer_maps():
    model = TinyCNN(num_classes=5).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    ml = _fit(MultiLayerIBA(model, ["conv1", "conv3"], steps=2, copies=2), ["conv1", "conv3"])
    maps = [_fit(PerSampleIBA(model, layer, steps=2, copies=2), [layer]).attribute(x, t) for layer in ("conv1", "conv3")]
    assert torch.equal(ml.attribute(x, t), intersect(maps))


def test_table1_scores_from_a_result():
    """bottleneck_scores on a hand-made result: L_I/k is the mean of the KL over (C, h, w) (here 0..11 and
    12..23 per image: 5.5 and 17.5); top-1 / top-5 are the shares of copies ranking the target first / in the
    first five (six classes, the target's logit placed by hand)."""
    from xattr.methods.iba.bottleneck import AlphaResult

    kl = torch.arange(24.0).view(2, 3, 2, 2)
    target = torch.tensor([2, 5])
    out = torch.zeros(2, 3, 6)  # target's logit: above all (copy 0), 5th (copy 1), last (copy 2)
    out[..., :] = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    for b, t in enumerate(target.tolist()):
        out[b, :, t] = torch.tensor([9.0, 2.5, -1.0])
    empty = torch.zeros(0, 2)
    s = bottleneck_scores(AlphaResult(alpha=kl, kl=kl, outputs=out, losses=empty, info=empty), target)
    assert s["info_per_k"].tolist() == [5.5, 17.5]
    torch.testing.assert_close(s["top1"], torch.tensor([1 / 3, 1 / 3]))
    torch.testing.assert_close(s["top5"], torch.tensor([2 / 3, 2 / 3]))


def test_lightning_predict_wrapper_matches_attribute():
    import pytorch_lightning as pl

    from xattr.methods.iba.per_sample import PerSampleIBAModule

    model = TinyCNN(num_classes=5).eval()
    iba = _fit(PerSampleIBA(model, "conv2", steps=2, copies=2), ["conv2"])
    batch = {"x": torch.randn(2, 3, 16, 16), "target": torch.tensor([1, 3])}
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (out,) = trainer.predict(PerSampleIBAModule(iba), torch.utils.data.DataLoader([batch], batch_size=None))
    assert torch.allclose(out["maps"], iba.attribute(batch["x"], batch["target"]), rtol=1e-4, atol=1e-6)
    assert out["top1"].shape == (2,)


def test_regression_iba_options_defaults_cost_and_its_whole_error_lines():
    """Regression IBA's options by hand: ``output`` picks the head's column for Phi (the other column ignored),
    ``inverse`` and ``regression_loss`` are kept, the default loss is ``dv`` (the clean prediction as target)
    whose cost counts the clean prediction; a scalar target broadcasts, a wrong-length one and a bad loss or a
    multi-output head without ``output`` are one whole line each."""
    import re

    from xattr.methods.iba.regression import RegressionIBA

    model = HalfIgnoring(k=2).eval()
    m = RegressionIBA(model, "feat")
    assert (m.regression_loss, m.output, m.inverse) == ("dv", None, False)
    assert RegressionIBA(model, "feat", inverse=1).inverse is True
    assert RegressionIBA(model, "feat", output=1).phi(torch.tensor([[[3.0, 7.0]]])).item() == 7.0
    mse = RegressionIBA(model, "feat", regression_loss="mse")
    assert m.forwards_per_image((3, 16, 16)) == mse.forwards_per_image((3, 16, 16)) + 1
    assert not RegressionIBA.scores  # Table 1's accuracies need class targets
    with pytest.raises(XattrConfigError, match=re.escape("the head has 2 outputs; set output to one of 0..1") + "$"):
        m.phi(torch.zeros(4, 2))
    with pytest.raises(XattrConfigError, match=r"^unknown regression loss 'mae'; valid choices: mse, rm, dv$"):
        RegressionIBA(model, "feat", regression_loss="mae")
    with pytest.raises(XattrConfigError, match=r"^unknown regression loss 'mae'; valid choices: mse, rm, dv$"):
        regression_loss("mae")
    one = _fit(RegressionIBA(HalfIgnoring(k=1).eval(), "feat", regression_loss="mse", steps=1, copies=1), ["feat"])
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    scalar = one.explain(x, 0.5).maps
    torch.manual_seed(0)
    assert torch.equal(scalar, one.explain(x, torch.tensor([0.5, 0.5])).maps)
    with pytest.raises(ValueError, match=r"^target has 3 entries for a batch of 2$"):
        one.explain(x, torch.zeros(3))


def test_lightning_wrapper_registers_the_network_so_it_moves_with_the_module():
    """Lightning moves a module's registered children to the device (``.to``): the wrapper's ``net`` is the
    method's network, so moving the wrapper (here to float64) moves the network the method optimises through."""
    from xattr.methods.iba.per_sample import PerSampleIBAModule

    model = TinyCNN(num_classes=5).eval()
    module = PerSampleIBAModule(PerSampleIBA(model, "conv2"))
    assert module.net is model
    module.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_token_bottleneck_blurs_on_the_inputs_patch_grid(monkeypatch):
    """On a ViT token layer the blur of eq. 7 acts on the patch grid, whose aspect ratio is the input's ``(H, W)``
    (a 32 x 32 image in 8 px patches: a 4 x 4 grid, the class token aside)."""
    from tests.test_vit_methods import _iba, tiny_vit
    from xattr.methods.iba.bottleneck import TokenBottleneck

    seen = []
    lam = TokenBottleneck.lam

    def spy(self, alpha):
        seen.append((self.image_hw, tuple(self.layout.to_grid(alpha, self.image_hw).shape[-2:])))
        return lam(self, alpha)

    monkeypatch.setattr(TokenBottleneck, "lam", spy)
    net = tiny_vit(1)
    x = torch.randn(1, 3, 32, 32)
    iba, _ = _iba(net, "encoder.layers.encoder_layer_0", x, steps=1, copies=1)
    iba.optimize(x, torch.tensor([0]))
    assert seen == [((32, 32), (4, 4))]


def test_multilayer_defaults_memory_knob_token_refusal_and_regressions_3d_error_line():
    """``binarize``'s defaults are eq. 5's (relative threshold 0.5: a hand map); Multi-layer IBA's memory knob is
    its layers' ``chunk``; a ViT token layer is one whole line; Regression IBA's head error counts the outputs of
    a ``(B, copies, K)`` batch (its last axis) and it has no Table 1 scores."""
    import inspect

    from tests.test_vit_methods import tiny_vit

    m = torch.tensor([[0.0, 0.49, 0.5, 1.0]]).view(1, 1, 2, 2)
    assert binarize(m).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    assert MultiLayerIBA.memory_knob == "chunk" and "chunk" in inspect.signature(PerSampleIBA.__init__).parameters
    layer = "encoder.layers.encoder_layer_0"
    with pytest.raises(XattrConfigError) as err:
        MultiLayerIBA(tiny_vit(), [layer])
    assert str(err.value) == (f"method multilayer_iba has no vision-transformer form (layer {layer!r} gives tokens): "
                              "its layer maps are combined as (B, C, h, w) feature maps (not adapted to tokens); use "
                              "iba or inverse_iba (docs/transformers.md)")
    reg = RegressionIBA(HalfIgnoring(k=2).eval(), "feat")
    with pytest.raises(XattrConfigError) as err:
        reg.phi(torch.zeros(2, 3, 2))
    assert str(err.value) == "the head has 2 outputs; set output to one of 0..1"
    assert RegressionIBA.scores is False
