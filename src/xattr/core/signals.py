"""Stopping a long run cleanly: SIGTERM behaves like Ctrl-C in the main process, loader workers leave the
interrupt to it (no traceback per worker), and a worker killed with its process group counts as a stop."""

from __future__ import annotations

import signal


def terminate_like_ctrl_c(signum, _frame) -> None:
    """SIGTERM handler for the main process: raise KeyboardInterrupt, so Lightning shuts down as on Ctrl-C
    and the entry point prints its one line. Install it before the Trainer exists (Lightning then keeps it).

    A SIGTERM usually reaches the loader workers too (``timeout`` and schedulers signal the whole group), so
    torch's SIGCHLD handler is dropped first: the loader iterator's ``__del__`` would otherwise raise (and
    print, as an "Exception ignored" traceback) "DataLoader worker ... killed by signal" while unwinding."""
    ignore_worker_deaths()
    raise KeyboardInterrupt


def install_terminate_handler() -> None:
    signal.signal(signal.SIGTERM, terminate_like_ctrl_c)


def worker_ignores_interrupts(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C (sent to the whole terminal group) is the main process's to
    handle; SIGTERM ends the worker quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def killed_with_its_group(exc: BaseException) -> bool:
    """A DataLoader error raised because a worker got the SIGTERM/SIGINT sent to the whole process group
    (``timeout``, ``kill -- -pgid``, a cluster scheduler): an interruption, not a failure."""
    msg = str(exc)
    return isinstance(exc, RuntimeError) and "DataLoader worker" in msg and (
        "Terminated" in msg or "Interrupt" in msg or "killed by signal" in msg)


def _worker_died(_signum, _frame) -> None:
    """SIGCHLD handler on the way out: nothing to do (see :func:`ignore_worker_deaths`)."""


def ignore_worker_deaths() -> None:
    """On the way out after an interrupt: loader workers die with the group, and torch's SIGCHLD handler would
    raise (and print at shutdown) "DataLoader worker ... killed by signal" after the one line; let them go.

    The replacement is a Python handler that does nothing, not ``SIG_DFL``: a SIGCHLD that arrived with the
    SIGTERM is already pending when this runs (inside the SIGTERM handler), and Python reports a pending signal
    whose handler became ``SIG_DFL`` as "OSError: Signal 17 ignored due to race condition" on stderr."""
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, _worker_died)
