"""cuDNN and RNN backward in eval mode: cuDNN refuses it ("cudnn RNN backward can only be called in
training mode"), which every attribution through an eval-mode LSTM / GRU on a GPU needs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def rnn_backward_ok(device: torch.device | str) -> Iterator[None]:
    """Disable cuDNN inside the block on CUDA so an eval-mode RNN can backpropagate (no-op elsewhere)."""
    if torch.device(device).type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield
