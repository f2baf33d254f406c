"""Vision transformers (docs/transformers.md): token-grid layouts, IBA on tokens, Grad-CAM on token grids,
attention rollout and Chefer on images, the one-line stops; tiny torchvision / timm ViT and Swin models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from xattr.core.hooks import capture
from xattr.core.tokens import TokenLayout, token_layout
from xattr.errors import XattrConfigError
from xattr.methods.baselines.attention import AttentionRollout, Chefer
from xattr.methods.baselines.cam import GradCAM, GradCAMPlusPlus
from xattr.methods.iba import PerSampleIBA
from xattr.methods.iba.statistics import FeatureStats

torch.set_num_threads(1)


def tiny_vit(num_layers: int = 1, classes: int = 5, seed: int = 0, cls=torchvision.models.VisionTransformer, **kw):
    torch.manual_seed(seed)
    net = cls(image_size=32, patch_size=8, num_layers=num_layers, num_heads=2, hidden_dim=16, mlp_dim=32,
              num_classes=classes, **kw)
    nn.init.normal_(net.heads.head.weight, std=0.5)  # torchvision starts the head at 0 (constant logits)
    net.num_classes = classes
    return net.eval().requires_grad_(False)


def tiny_swin(seed: int = 0):
    torch.manual_seed(seed)
    net = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                             window_size=[2, 2], num_classes=5)
    net.num_classes = 5
    return net.eval().requires_grad_(False)


class OnePatchViT(torchvision.models.VisionTransformer):
    """A ViT whose head reads only patch token ``k`` (row-major on the grid), not the class token."""

    k = 6  # grid (1, 2) of the 4 x 4 grid: not on the diagonal, so a transposed grid puts it elsewhere

    def forward(self, x):
        t = self.encoder(_embed(self, x))  # the encoder adds the position embedding
        return self.heads(t[:, 1 + self.k])


def _embed(net, x):
    t = net._process_input(x)
    return torch.cat([net.class_token.expand(x.shape[0], -1, -1), t], dim=1)


def _stats(r: torch.Tensor) -> FeatureStats:
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(r.shape[1:], generator=g) * 0.3
    std = torch.rand(r.shape[1:], generator=g) + 0.5
    return FeatureStats(mean, std, torch.ones(r.shape[1:]), 100)


# ------------------------------------------------------------------------------------------------ layouts
def test_layouts_declared_per_family_and_to_grid_by_hand() -> None:
    vit, swin = tiny_vit(), tiny_swin()
    assert token_layout(vit, "conv_proj") is None  # a (B, C, h, w) map already
    lay = token_layout(vit, "encoder.layers.encoder_layer_0")
    assert (lay.kind, lay.prefix, lay.prefix_names) == ("tokens", 1, ("cls",))
    assert token_layout(vit, "encoder.layers.encoder_layer_0.ln_1") == lay
    assert token_layout(swin, "features.1").kind == "channels_last"
    assert token_layout(torchvision.models.resnet18(), "layer2") is None
    # (B, 1 + 2 * 3, C): token 1 + 3 i + j is grid (i, j); a 2 x 3 grid from a 2:3 image
    t = torch.arange(2 * 7 * 4, dtype=torch.float32).reshape(2, 7, 4)
    g = lay.to_grid(t, (20, 30))
    assert g.shape == (2, 4, 2, 3)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                assert torch.equal(g[b, :, i, j], t[b, 1 + 3 * i + j])
    assert torch.equal(lay.grid_to_tokens(g, lay.special(t)), t)
    # Swin: (B, h, w, C) channels-last
    s = torch.randn(2, 3, 5, 4)
    sl = TokenLayout("channels_last")
    assert torch.equal(sl.to_grid(s)[1, :, 2, 4], s[1, 2, 4])
    assert torch.equal(sl.grid_to_tokens(sl.to_grid(s), sl.special(s)), s)
    with pytest.raises(XattrConfigError, match="do not fill a grid"):
        lay.to_grid(torch.zeros(1, 8, 4), (32, 32))  # 7 patches on no square grid


# ------------------------------------------------------------------------------------------------ IBA on tokens
def _iba(net, layer, x, **kw):
    iba = PerSampleIBA(net, layer=layer, **kw)
    r = capture(net, iba.resolved[layer].module, x)
    iba.set_statistics({layer: _stats(r)})
    return iba, r


def test_iba_on_tokens_kl_of_a_known_alpha_is_the_closed_form() -> None:
    net = tiny_vit(1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    layer = "encoder.layers.encoder_layer_0"
    iba, r = _iba(net, layer, x, steps=1, copies=2, sigma=0, init_alpha=0.7)
    res = iba.optimize(x, torch.tensor([0, 3]))  # one step: the KL at alpha = 0.7 everywhere
    assert res.kl.shape == (2, 17, 16)  # one alpha per (token, channel): CLS + 4 x 4 patches
    s = iba.stats[layer]
    lam = 1 / (1 + math.exp(-0.7))
    rn = ((r.double() - s.mean.double()) / s.std.double()).numpy()
    want = 0.5 * ((lam * rn) ** 2 + (1 - lam) ** 2 - 1) - math.log(1 - lam)  # KL(N(lam r + (1-lam) mu, ...) || N(mu, s^2))
    assert np.allclose(res.kl.double().numpy(), want, atol=1e-5)
    grid = iba.kl_grid(res.kl, x)
    assert grid.shape == (2, 16, 4, 4)
    assert np.allclose(grid[:, :, 1, 2].numpy(), want[:, 1 + 4 * 1 + 2], atol=1e-5)  # token 1 + 4 i + j
    aux = iba.explain(x, torch.tensor([0, 3])).aux
    assert np.allclose(aux["bottleneck/cls_bits"].numpy(), want[:, 0].sum(-1) / math.log(2), atol=1e-4)


def test_iba_on_tokens_batched_equals_one_at_a_time() -> None:
    net = tiny_vit(2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1, 0, 4])
    iba, _ = _iba(net, "encoder.layers.encoder_layer_0", x, steps=3, copies=3)
    both = iba.attribute(x, t)
    alone = torch.cat([iba.attribute(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    assert both.shape == (3, 1, 32, 32)
    assert torch.allclose(both, alone, atol=1e-5, rtol=1e-4)


def test_iba_tokens_the_head_never_reads_get_no_information() -> None:
    net = tiny_vit(1, cls=OnePatchViT)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    iba, _ = _iba(net, "encoder.layers.encoder_layer_0", x, steps=10, copies=4, sigma=0)
    res = iba.optimize(x, torch.tensor([2, 1]))
    bits = res.kl.sum(-1) / math.log(2)  # (B, 17) per token
    read = bits[:, 1 + OnePatchViT.k]
    others = torch.cat([bits[:, : 1 + OnePatchViT.k], bits[:, 2 + OnePatchViT.k:]], 1)
    assert (read > 0.5).all()
    assert (others < 1e-2 * read[:, None]).all(), (read, others.amax(1))


# ------------------------------------------------------------------------------------------------ Grad-CAM
def _one_patch_input(net_embed_zero, shape, row, col, patch):
    x = torch.zeros(1, 3, *shape)
    x[:, :, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] = torch.randn(3, patch, patch,
                                                                                     generator=torch.Generator().manual_seed(6))
    return x


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_grad_cam_on_a_vit_reading_one_patch_heats_that_patch_only(cls) -> None:
    # tokens at the encoder's input are 0 except patch k (no biases, no position embedding, zero class
    # token, an input that is 0 outside patch k); the head reads patch token k only
    net = tiny_vit(2, cls=OnePatchViT)
    with torch.no_grad():
        net.conv_proj.bias.zero_()
        net.encoder.pos_embedding.zero_()
        net.class_token.zero_()
    i, j = divmod(OnePatchViT.k, 4)
    x = _one_patch_input(net, (32, 32), i, j, 8)
    maps = cls(net, layer="encoder.dropout", **({"relu": False} if cls is GradCAM else {}),
               interpolation="nearest").attribute(x, torch.tensor([3]))
    assert maps.shape == (1, 1, 32, 32)
    heat = maps[0, 0].abs()
    inside = heat[8 * i:8 * (i + 1), 8 * j:8 * (j + 1)]
    assert inside.min() > 0 and heat.sum() == pytest.approx(inside.sum().item(), rel=1e-6)


def test_grad_cam_on_swin_channels_last_on_a_non_square_grid() -> None:
    net = tiny_swin()
    with torch.no_grad():
        net.features[0][0].bias.zero_()
    x = _one_patch_input(net, (32, 48), 2, 7, 4)  # an 8 x 12 grid; patch (2, 7)
    maps = GradCAM(net, layer="features.0.1", relu=False, interpolation="nearest").attribute(x, torch.tensor([1]))
    heat = maps[0, 0].abs()
    assert maps.shape == (1, 1, 32, 48)
    assert heat[8:12, 28:32].min() > 0 and heat.sum() == pytest.approx(heat[8:12, 28:32].sum().item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------ rollout, Chefer
def _manual_vit(net, x):
    """The torchvision ViT's forward written from its equations (pre-LN blocks, softmax(q k^T / sqrt(d)) v),
    returning the logits and each layer's attention probabilities (in the graph)."""
    n = x.shape[0]
    t = _embed(net, x) + net.encoder.pos_embedding
    atts = []
    for blk in net.encoder.layers:
        mha = blk.self_attention
        e, h = mha.embed_dim, mha.num_heads
        q, k, v = F.linear(blk.ln_1(t), mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
        q, k, v = (z.reshape(n, -1, h, e // h).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // h), -1)
        atts.append(a)
        t = t + mha.out_proj((a @ v).transpose(1, 2).reshape(n, -1, e))
        t = t + blk.mlp(blk.ln_2(t))
    return net.heads(net.encoder.ln(t)[:, 0]), atts


def test_rollout_and_chefer_on_images_equal_the_hand_computation() -> None:
    net = tiny_vit(2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    target = torch.tensor([4, 1])
    logits, atts = _manual_vit(net, x)
    assert torch.allclose(logits, net(x), atol=1e-5)
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), atts)
    a = [z.detach().double().numpy() for z in atts]
    g = [z.double().numpy() for z in grads]
    eye = np.eye(17)
    for b in range(2):
        roll, rel = eye, eye
        for layer in range(2):  # Abnar & Zuidema: 0.5 A + 0.5 I, rows renormalised, multiplied from layer 1
            m = 0.5 * a[layer][b].mean(0) + 0.5 * eye
            roll = (m / m.sum(1, keepdims=True)) @ roll
            rel = rel + np.maximum(g[layer][b] * a[layer][b], 0).mean(0) @ rel  # Chefer eqs. 5-6
        for method, want in ((AttentionRollout, roll), (Chefer, rel)):
            maps = method(net, interpolation="nearest").attribute(x.detach(), target)
            assert maps.shape == (2, 1, 32, 32)
            grid = maps[b, 0, ::8, ::8].double().numpy()  # one value per 8 x 8 patch
            assert np.allclose(grid, want[0, 1:].reshape(4, 4), atol=1e-5), method.name


def test_attention_methods_and_methods_without_a_transformer_form_stop_in_one_line() -> None:
    from xattr.methods.baselines.guided_backprop import GuidedBackprop
    from xattr.methods.baselines.lrp import LRP

    swin, vit = tiny_swin(), tiny_vit()
    for method in (AttentionRollout, Chefer):
        with pytest.raises(XattrConfigError, match="Swin's attention is windowed"):
            method(swin)
    with pytest.raises(XattrConfigError, match="lrp has no vision-transformer form"):
        LRP(vit)
    with pytest.raises(XattrConfigError, match="guided_backprop has no vision-transformer form.*GELU"):
        GuidedBackprop(swin)
    from xattr.methods.iba import MultiLayerIBA, ReadoutIBA

    for make in (lambda: ReadoutIBA(vit, layer="encoder.layers.encoder_layer_0", readout_layers=["encoder.layers.encoder_layer_0"]),
                 lambda: MultiLayerIBA(vit, layers=["encoder.layers.encoder_layer_0"])):
        with pytest.raises(XattrConfigError, match="has no vision-transformer form .*gives tokens"):
            make()
