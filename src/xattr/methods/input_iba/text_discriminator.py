"""The reference's text discriminator for InputIBA's WGAN (CAMP-eXplain-AI/InputIBA @5f03549e,
``configs/deep_lstm.py`` / ``nlp_*.py``; ../shared/REFERENCE.md "InputIBA on text"): an LSTM of the
hidden width over the feature sequence ``(L, H)``, read at the last real token, then
``Linear(H, 128) -> LeakyReLU -> Linear(128, 1)``.

``B`` discriminators (one per review), each initialised from its review's generator (PyTorch's default
LSTM / Linear init: ``U(-1/sqrt(fan), 1/sqrt(fan))``), so a batch gives the results of one review at a
time. The LeakyReLU slope is the reference's 0.2 (``nlp_discriminator.py:20``: ``nn.LeakyReLU(0.2)``; an
earlier reading here took PyTorch's default 0.01, kept as ``slope``). Padded
positions are zeroed and never read (the LSTM is causal and read at the last real token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from xattr.methods.input_iba.wgan import Generators, _uniform

DISCRIMINATORS = ("lstm", "rnn")


class LSTMDiscriminators(nn.Module):
    """``B`` LSTM discriminators; input ``(B, N, L, H)``, output ``(B, N)``.

    Args:
        b: reviews; feat_shape: ``(L, H)``; mask: ``(B, L)`` bool, True on real tokens.
        hidden: LSTM width (``None``: the feature width ``H``, the reference's).
        head: width of the first linear layer (128).
        slope: the LeakyReLU's negative slope (reference 0.2).
    """

    def __init__(self, b: int, feat_shape: Sequence[int], mask: torch.Tensor, hidden: int | None = None,
                 gens: Generators = None, device: torch.device | str = "cpu", head: int = 128,
                 slope: float = 0.2) -> None:
        super().__init__()
        _l, d = feat_shape
        h = int(hidden or d)
        dev = torch.device(device)
        bound = 1 / math.sqrt(h)
        self.w_ih = nn.Parameter(_uniform((4 * h, d), bound, gens, b, dev))
        self.w_hh = nn.Parameter(_uniform((4 * h, h), bound, gens, b, dev))
        self.b_ih = nn.Parameter(_uniform((4 * h,), bound, gens, b, dev))
        self.b_hh = nn.Parameter(_uniform((4 * h,), bound, gens, b, dev))
        self.w1 = nn.Parameter(_uniform((head, h), bound, gens, b, dev))
        self.b1 = nn.Parameter(_uniform((head,), bound, gens, b, dev))
        self.w2 = nn.Parameter(_uniform((1, head), 1 / math.sqrt(head), gens, b, dev))
        self.b2 = nn.Parameter(_uniform((1,), 1 / math.sqrt(head), gens, b, dev))
        self.register_buffer("mask", mask.to(dev).bool())
        self.register_buffer("last", (mask.long().cumsum(1) * mask).argmax(1).to(dev))  # (B,)
        self.hidden, self.slope = h, float(slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, n = z.shape[:2]
        out = []
        for i in range(b):
            seq = z[i] * self.mask[i, None, :, None]  # (N, L, H)
            h0 = torch.zeros(1, n, self.hidden, device=z.device, dtype=z.dtype)
            states = torch._VF.lstm(seq, (h0, h0), [self.w_ih[i], self.w_hh[i], self.b_ih[i], self.b_hh[i]],
                                    True, 1, 0.0, self.training, False, True)[0]
            read = states[:, self.last[i]]  # (N, hidden)
            out.append(F.linear(F.leaky_relu(F.linear(read, self.w1[i], self.b1[i]), self.slope), self.w2[i], self.b2[i])[:, 0])
        return torch.stack(out)
