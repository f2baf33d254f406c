"""How many CPU threads torch uses: ``threads: auto`` (the entry points' default) leaves the cores other
jobs keep busy to them.

PyTorch starts one OpenMP thread per core. On a machine shared with other jobs that oversubscribes the CPU
and every parallel region waits for its slowest thread: runs measured 5-40x slower here under load than
with ``OMP_NUM_THREADS=1``. ``auto`` reads the 1-minute load average once at start-up (before this process
adds to it) and uses the cores it leaves free, at least one; a user who sets ``OMP_NUM_THREADS`` (or
``threads: N``) decides instead. Written here because neither torch nor Lightning looks at the load.
"""

from __future__ import annotations

import math
import os
import sys

from xattr.errors import XattrConfigError


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under ``taskset``), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores(cores: int, load: float) -> int:
    """Cores not taken by other jobs: ``cores - load`` rounded to the nearest core, between 1 and ``cores``."""
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def choose_threads(setting: int | str | None, cores: int, load: float | None, current: int,
                   env: dict[str, str] | None = None) -> int | None:
    """Threads to set, or ``None`` to leave torch as it is.

    Args:
        setting: ``auto`` (or ``None``): the free cores when the machine is busy; an int >= 1: that many.
        cores: the machine's cores; load: its 1-minute load average (``None``: unknown); current: torch's
            threads now; env: the environment (``OMP_NUM_THREADS`` set there wins over ``auto``).
    """
    if isinstance(setting, str) and setting.isdigit():
        setting = int(setting)
    if isinstance(setting, int) and not isinstance(setting, bool):
        if setting < 1:
            raise XattrConfigError(f"bad threads {setting!r}; valid choices: auto, or an integer >= 1")
        return setting if setting != current else None
    if setting not in (None, "auto"):
        raise XattrConfigError(f"bad threads {setting!r}; valid choices: auto, or an integer >= 1")
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS") or load is None:
        return None
    n = free_cores(cores, load)
    return n if n < current else None


def apply_threads(setting: int | str | None = "auto") -> int | None:
    """Set torch's CPU threads per :func:`choose_threads`; say so in one line when ``auto`` lowers them."""
    import torch

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    cores = os.cpu_count() or 1
    n = choose_threads(setting, cores, load, torch.get_num_threads())
    if n is None:
        return None
    torch.set_num_threads(n)
    if setting in (None, "auto"):
        print(f"CPU busy (load {load:.1f} on {cores} cores): torch uses {n} thread{'s' * (n > 1)} "
              "(threads=N or OMP_NUM_THREADS to choose)", file=sys.stderr, flush=True)
    return n
