"""Exact training resume: what a killed run needs besides weights, optimizer and loop counters.

A run killed after any epoch and resumed with ``ckpt_path=last`` ends bitwise equal to an uninterrupted run
on CPU (``tests/test_train_resume.py``). Three pieces make it so:

- :class:`~xattr.core.trainer.LastEveryEpoch`: ``checkpoints/last.ckpt`` is written at the end of every epoch, whatever
  ``monitor`` says (Lightning's ``save_last`` follows the best checkpoint: after an epoch that did not
  improve, ``last.ckpt`` was an older epoch).
- :class:`RandomState` (a callback with state): every random number generator a training draws from, saved
  with each checkpoint and put back when one is loaded: torch's CPU and CUDA generators, numpy's, Python's,
  and the data module's own generators (:meth:`~xattr.training.data.ClassificationData.generators`: the
  training order and each item's augmentation seed, so the next epoch's data is the one the uninterrupted
  run draws). Only tensors, numbers and strings are stored: the checkpoint loads with
  ``torch.load(weights_only=True)``.
- the loaders never draw from the global generator on their own (each has its own for the workers' base
  seeds), and an augmentation is seeded per item (:class:`~xattr.training.data.SeededSampler`,
  :class:`~xattr.training.data.Augmented`), so it does not depend on which worker loads the item.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of every generator a training draws from, as tensors, numbers and strings."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "data": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        if k in state.get("data", {}):
            g.set_state(state["data"][k])


class RandomState(pl.Callback):
    """Saves every generator's state with each checkpoint and restores it on load (see the module docstring).

    Args:
        generators: ``name -> torch.Generator`` of the data module (shuffling, worker seeds).
    """

    def __init__(self, generators: dict[str, torch.Generator] | None = None) -> None:
        self.generators = dict(generators or {})

    @property
    def state_key(self) -> str:
        return "xattr.RandomState"

    def state_dict(self) -> dict[str, Any]:
        return rng_state(self.generators)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_state(state_dict, self.generators)
