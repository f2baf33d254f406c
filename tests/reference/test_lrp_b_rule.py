"""LRP ``rule: b_rule`` against an independent implementation of the IBA paper code's LRP (BioroboticsLab/IBA-paper-code
@105969b: ``attribution/lrp/lrp.py`` and ``inverter_util.py``, Böhle et al.'s innvestigator, ``method='b-rule'``),
written here from its arithmetic, layer by layer, with plain convolutions and their transposes (no autograd, no
zennit), on a small VGG-like network (conv, ReLU, max-pool, linear; no biases used), to 1e-6.

What the code does, per conv / linear layer with input ``x`` and weights ``w`` (biases ignored):
- four blocks: ``w+ x+``, ``w- x-`` (the positive contributions), ``w+ x-``, ``w- x+`` (the negative ones);
- norms ``z+`` (first two blocks summed) and ``z-`` (last two); a zero norm is set to 1; a neuron with either norm
  zero ("rare") has ``z+`` scaled by ``1 + beta`` (unless ``beta == -1``) and ``z-`` by ``-beta`` (unless
  ``beta == 0``); then ``eps * sign`` is added to both;
- the outgoing relevance times ``(1 + beta) / z+`` for the positive blocks and ``-beta / z-`` for the negative,
  sent back through each block's weights (transposed) and multiplied by the block's input; the four summed.
ReLU passes the relevance; max-pool sends it to the maximum of each window; the relevance starts at the target's
logit (zeros elsewhere); the map is the channel sum.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xattr.methods.baselines.lrp import LRP


class SmallVGG(nn.Module):
    """conv-ReLU-pool x 2, then two linear layers: the layer types of VGG-16 that the code supports. The second
    conv has one all-positive filter (its neurons have no negative part: the code's "rare neurons")."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 5))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            self.features[3].weight[2].abs_()  # all-positive filter
        self.num_classes = 5

    def forward(self, x):
        return self.classifier(self.features(x))


def b_rule_layer(x, w, rel, beta, eps, forward, backward):
    """One conv / linear layer of the code's b-rule (module docstring); ``forward(x, w)`` the layer without bias,
    ``backward(r, w)`` its transpose."""
    xs = [x.clamp(min=0), x.clamp(max=0), x.clamp(max=0), x.clamp(min=0)]
    ws = [w.clamp(min=0), w.clamp(max=0), w.clamp(min=0), w.clamp(max=0)]
    z = [forward(a, b) for a, b in zip(xs, ws)]
    zp, zn = z[0] + z[1], z[2] + z[3]
    mp, mn = zp == 0, zn == 0
    zp[mp], zn[mn] = 1.0, 1.0
    rare = mp | mn
    zp[rare] *= 1 if beta == -1 else 1 + beta
    zn[rare] *= 1 if beta == 0 else -beta
    zp, zn = zp + eps * torch.sign(zp), zn + eps * torch.sign(zn)
    scaled = [rel * (1 + beta) / zp] * 2 + [rel * -beta / zn] * 2
    return sum(xs[k] * backward(scaled[k], ws[k]) for k in range(4))


def reference_lrp(net: SmallVGG, x: torch.Tensor, target: int, beta: float, eps: float) -> torch.Tensor:
    """The code's relevance of one image ``(1, C, H, W)`` for ``target``, channel-summed ``(H, W)``."""
    layers = list(net.features) + list(net.classifier)
    inputs, pools, h = [], {}, x
    for i, m in enumerate(layers):
        inputs.append(h)
        if isinstance(m, nn.MaxPool2d):
            h, pools[i] = F.max_pool2d(h, 2, return_indices=True)
        else:
            h = m(h)
    rel = torch.zeros_like(h)
    rel[0, target] = h[0, target]  # the target's logit
    for i in reversed(range(len(layers))):
        m, a = layers[i], inputs[i]
        if isinstance(m, nn.Linear):
            rel = b_rule_layer(a, m.weight, rel, beta, eps, lambda v, w: v @ w.t(), lambda r, w: r @ w)
        elif isinstance(m, nn.Conv2d):
            rel = b_rule_layer(a, m.weight, rel, beta, eps, lambda v, w: F.conv2d(v, w, padding=1),
                               lambda r, w: F.conv_transpose2d(r, w, padding=1))
        elif isinstance(m, nn.MaxPool2d):
            rel = F.max_unpool2d(rel, pools[i], 2, output_size=a.shape[-2:])
        elif isinstance(m, nn.Flatten):
            rel = rel.reshape(a.shape)
        # ReLU: the relevance passes
    return rel[0].sum(0)


@pytest.mark.parametrize("beta", [-1.0, 0.0, 1.0])
def test_b_rule_equals_the_iba_paper_codes_lrp(beta):
    """The paper's setting (beta -1, eps 5) and the code's two other regimes (beta 0: positive only; beta 1:
    its rare-neuron rescaling), each image on its own against the batched zennit rule."""
    net = SmallVGG().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=g)
    target = torch.tensor([0, 3, 4])
    maps = LRP(net, rule="b_rule", beta=beta, epsilon=5.0, init="logit", canonize=False).attribute(x, target)
    refs = torch.stack([reference_lrp(net, x[i : i + 1], int(target[i]), beta, 5.0) for i in range(3)]).detach()
    assert (refs.flatten(1).abs().amax(1) > 1e-3).sum() >= 2  # the relevance reached the input (beta -1: an
    # image whose target logit has no negative contribution keeps none: the code's zero, matched below)
    torch.testing.assert_close(maps[:, 0], refs, rtol=1e-5, atol=1e-6 * float(refs.abs().max()))


def test_the_papers_beta_keeps_only_the_negative_contributions():
    """With ``beta = -1`` the positive blocks get ``1 + beta = 0``: the relevance differs from ``beta = 0``'s
    (positive contributions only), and from the epsilon rule's."""
    net = SmallVGG().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1, 2])
    neg = LRP(net, rule="b_rule", beta=-1.0, epsilon=5.0, init="logit", canonize=False).attribute(x, t)
    pos = LRP(net, rule="b_rule", beta=0.0, epsilon=5.0, init="logit", canonize=False).attribute(x, t)
    eps = LRP(net, rule="epsilon", epsilon=5.0, init="logit", canonize=False).attribute(x, t)
    assert not torch.allclose(neg, pos, atol=1e-4) and not torch.allclose(neg, eps, atol=1e-4)
