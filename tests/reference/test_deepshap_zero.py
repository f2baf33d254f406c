"""InputIBA's DeepSHAP baselines (CAMP-eXplain-AI/InputIBA ``tools/train_baseline.py``), written here from the
facts: Captum's ``DeepLiftShap`` on one image at a time with ``baselines`` = ten all-zero images, the map the
mean over the batch and channel axes. xattr's configured DeepSHAP (``conf/method/deepshap.yaml``:
``baselines: zero``) gives the same signed channel-mean map (relative 1e-5)."""

from __future__ import annotations

import torch
from captum.attr import DeepLiftShap
from torch import nn

from tests.helpers import compose_cfg


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).flatten(1))


def _reference_maps(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out = []
    for xi, ti in zip(x, target):
        xi = xi[None]
        base = xi.new_zeros((10,) + xi.shape[1:])
        attr = DeepLiftShap(net).attribute(xi, target=int(ti), baselines=base).detach().numpy()
        out.append(torch.from_numpy(attr.mean((0, 1))))
    return torch.stack(out)


def test_configured_deepshap_is_inputibas_zero_baseline_deepliftshap():
    from hydra.utils import instantiate

    torch.manual_seed(0)
    net = SmallNet().eval()
    x, target = torch.randn(3, 3, 12, 12), torch.tensor([0, 3, 4])
    cfg = compose_cfg(["method=deepshap"]).method
    assert cfg.baselines == "zero"
    method = instantiate(cfg)(net)
    ours = method.attribute_channels(x, target).mean(1)  # the signed channel mean, as the reference stores it
    ref = _reference_maps(net, x, target)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-9)  # maps of ~1e-4 here: 1e-6 would not tell
    assert ref.abs().max() > 1e-4  # not a trivially zero map
    # another baseline set gives other maps: the comparison can tell them apart
    normal = instantiate(cfg, baselines="normal")(net).attribute_channels(x, target).mean(1)
    assert (normal - ref).abs().max() > 1e-4
