"""Deep-image-prior skip networks, one per sample, stacked in one graph (dissertation ch. 7, sec. 3.5
"Deep Prior Network", L1226-1232; Ulyanov et al., "Deep Image Prior", CVPR 2018, ``models/skip.py``).

Each generated patch is the output of its own randomly initialised decoder fed a fixed random input
``U(0, 1) * 0.1``; the optimisation runs on the decoder's parameters, not on the pixels. The architecture
is DIP's ``skip`` with the settings of Do-Explanations-Explain (issue 13): down/up channels
``[16, 32, 64, 128, 128, 128]``, skip channels ``[0, 4, 4, 4, 4, 4]``, kernels down ``[5, 3, 5, 5, 3, 5]``,
up ``[5, 3, 5, 3, 5, 3]``, skip kernel 1, reflection padding, average-pool downsampling, bilinear
upsampling, LeakyReLU(0.2), batch-norm after every conv (DIP keeps its networks in training mode: with one
image per network the statistics are that image's per-channel spatial mean and variance), a 1x1 conv after
each up block, a last 1x1 conv to 3 channels; then the output conv (3 -> 3, kernel 3, stride 3, padding 1)
and a sigmoid: a 32 x 256 x 256 input gives an 86 x 86 patch. Whether the reference applies DIP's own
sigmoid before the output conv is not stated; here it does not (one sigmoid, at the end).

Batching: the parameters of ``n`` networks are stacked along a leading axis and every conv runs as one
grouped convolution (``groups = n``), so the ``n`` networks are one graph and sample ``i``'s output and
gradient depend only on its own parameters and input. :meth:`StackedSkipPrior.reset` re-draws one slot
(a restart, or the next sample) from that sample's own generator, so a sample's trajectory does not depend
on which slot or batch it runs in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from xattr.errors import XattrConfigError


@dataclass(frozen=True)
class PriorSpec:
    """Architecture of one skip network (defaults: the paper's, 86 x 86 patches)."""

    input_channels: int = 32
    input_size: int = 256
    down: Sequence[int] = (16, 32, 64, 128, 128, 128)
    up: Sequence[int] = (16, 32, 64, 128, 128, 128)
    skip: Sequence[int] = (0, 4, 4, 4, 4, 4)
    kernel_down: Sequence[int] = (5, 3, 5, 5, 3, 5)
    kernel_up: Sequence[int] = (5, 3, 5, 3, 5, 3)
    out_stride: int = 3
    slope: float = 0.2
    eps: float = 1e-5
    #: computed: conv name -> (c_out, c_in, k)
    convs: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.down)
        if not (len(self.up) == len(self.skip) == len(self.kernel_down) == len(self.kernel_up) == n) or n < 1:
            raise XattrConfigError(f"bad axioms.prior: down {list(self.down)}, up {list(self.up)}, skip "
                                   f"{list(self.skip)}, kernels {list(self.kernel_down)} / {list(self.kernel_up)}; "
                                   "valid choices: five lists of one equal length >= 1")
        if self.input_size % (2 ** n):
            raise XattrConfigError(f"bad axioms.prior.input_size {self.input_size}; valid choices: a multiple of "
                                   f"2**{n} (one halving per scale)")
        deepest = self.input_size // 2 ** n
        if deepest <= max(self.kernel_down[-1], self.kernel_up[-1]) // 2:
            raise XattrConfigError(f"bad axioms.prior.input_size {self.input_size}; valid choices: large enough that "
                                   f"the deepest scale ({deepest} px) exceeds its reflection padding")
        convs: dict[str, tuple[int, int, int]] = {}
        depth = self.input_channels
        for i in range(n):
            if self.skip[i]:
                convs[f"s{i}"] = (self.skip[i], depth, 1)
            convs[f"d{i}a"] = (self.down[i], depth, self.kernel_down[i])
            convs[f"d{i}b"] = (self.down[i], self.down[i], self.kernel_down[i])
            k = self.up[i + 1] if i < n - 1 else self.down[i]
            convs[f"u{i}a"] = (self.up[i], self.skip[i] + k, self.kernel_up[i])
            convs[f"u{i}b"] = (self.up[i], self.up[i], 1)
            depth = self.down[i]
        convs["last"] = (3, self.up[0], 1)
        convs["out"] = (3, 3, 3)
        object.__setattr__(self, "convs", convs)

    @property
    def patch_size(self) -> int:
        """Side of the generated patch: the output conv (kernel 3, padding 1, stride ``out_stride``)."""
        return (self.input_size + 2 - 3) // self.out_stride + 1

    def norms(self) -> dict[str, int]:
        """Batch-norm name -> channels (after each conv but ``last`` and ``out``; one on each concat)."""
        out = {name: c for name, (c, _, _) in self.convs.items() if name not in ("last", "out")}
        n = len(self.down)
        for i in range(n):
            out[f"cat{i}"] = self.skip[i] + (self.up[i + 1] if i < n - 1 else self.down[i])
        return out


def _gconv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """``n`` convolutions in one grouped call: ``x`` (n, Cin, H, W), ``w`` (n, Cout, Cin, k, k), ``b`` (n, Cout)."""
    n, cin, h, wd = x.shape
    cout, k = w.shape[1], w.shape[-1]
    y = F.conv2d(x.reshape(1, n * cin, h, wd), w.reshape(n * cout, cin, k, k), b.reshape(-1), stride=stride,
                 padding=padding, groups=n)
    return y.reshape(n, cout, y.shape[-2], y.shape[-1])


class StackedSkipPrior(nn.Module):
    """``n`` skip networks (and their fixed inputs) with parameters stacked on a leading axis.

    >>> prior = StackedSkipPrior(PriorSpec(), n=4)
    >>> prior.reset(0, torch.Generator().manual_seed(1))   # slot 0 gets a fresh network and input
    >>> prior().shape                                      # (4, 3, 86, 86) patches in [0, 1]
    """

    def __init__(self, spec: PriorSpec, n: int) -> None:
        super().__init__()
        self.spec, self.n = spec, int(n)
        self.weight = nn.ParameterDict({k: nn.Parameter(torch.zeros(n, co, ci, kk, kk))
                                        for k, (co, ci, kk) in spec.convs.items()})
        self.bias = nn.ParameterDict({k: nn.Parameter(torch.zeros(n, co)) for k, (co, _, _) in spec.convs.items()})
        self.gamma = nn.ParameterDict({k: nn.Parameter(torch.ones(n, c)) for k, c in spec.norms().items()})
        self.beta = nn.ParameterDict({k: nn.Parameter(torch.zeros(n, c)) for k, c in spec.norms().items()})
        self.register_buffer("z", torch.zeros(n, spec.input_channels, spec.input_size, spec.input_size))

    @torch.no_grad()
    def reset(self, slot: int, generator: torch.Generator) -> None:
        """Re-draw slot ``slot``: input ``U(0, 1) * 0.1`` and PyTorch's default conv initialisation
        (weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; batch-norm scale 1, shift 0), drawn on
        the CPU from ``generator`` in a fixed order, so the draw does not depend on the device."""
        s = self.spec
        z = torch.rand((s.input_channels, s.input_size, s.input_size), generator=generator) * 0.1
        self.z[slot].copy_(z)
        for name, (co, ci, k) in s.convs.items():
            bound = 1.0 / math.sqrt(ci * k * k)
            self.weight[name][slot].copy_((torch.rand((co, ci, k, k), generator=generator) * 2 - 1) * bound)
            self.bias[name][slot].copy_((torch.rand((co,), generator=generator) * 2 - 1) * bound)
        for name in self.gamma:
            self.gamma[name][slot].fill_(1.0)
            self.beta[name][slot].zero_()

    def _conv(self, x: torch.Tensor, name: str, stride: int = 1, reflect: bool = True) -> torch.Tensor:
        k = self.spec.convs[name][2]
        if reflect and k > 1:
            p = (k - 1) // 2
            x = F.pad(x, (p, p, p, p), mode="reflect")
        return _gconv(x, self.weight[name], self.bias[name], stride=stride)

    def _norm_act(self, x: torch.Tensor, name: str, act: bool = True) -> torch.Tensor:
        """Batch-norm of a one-image batch (training mode): per-channel spatial statistics, biased variance."""
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.spec.eps)
        y = y * self.gamma[name][:, :, None, None] + self.beta[name][:, :, None, None]
        return F.leaky_relu(y, self.spec.slope) if act else y

    def _level(self, x: torch.Tensor, i: int) -> torch.Tensor:
        s = self.spec
        n_levels = len(s.down)
        deeper = self._norm_act(F.avg_pool2d(self._conv(x, f"d{i}a"), 2), f"d{i}a")
        deeper = self._norm_act(self._conv(deeper, f"d{i}b"), f"d{i}b")
        if i < n_levels - 1:
            deeper = self._level(deeper, i + 1)
        deeper = F.interpolate(deeper, scale_factor=2, mode="bilinear", align_corners=False)
        if s.skip[i]:
            deeper = torch.cat([self._norm_act(self._conv(x, f"s{i}"), f"s{i}"), deeper], dim=1)
        y = self._norm_act(deeper, f"cat{i}", act=False)
        y = self._norm_act(self._conv(y, f"u{i}a"), f"u{i}a")
        return self._norm_act(self._conv(y, f"u{i}b"), f"u{i}b")

    def forward(self) -> torch.Tensor:
        """The ``n`` patches ``(n, 3, p, p)`` in [0, 1]."""
        y = self._conv(self._level(self.z, 0), "last")
        y = _gconv(y, self.weight["out"], self.bias["out"], stride=self.spec.out_stride, padding=1)
        return torch.sigmoid(y)
