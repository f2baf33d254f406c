"""The one shell around every entry point (``python -m xattr.run | train | generate | demo | table``).

Each entry point keeps only its task (``run(cfg)``, ``train(cfg)``, ...) and says, through a :class:`Stop`,
what it keeps when stopped early and which folder it writes; the shell gives them all the same behaviour:

- **Ctrl-C and SIGTERM** (also to the whole process group, as ``timeout`` and cluster schedulers send it):
  SIGTERM behaves like Ctrl-C (the handler is installed before any Trainer, so Lightning keeps it), a
  DataLoader worker killed with its group counts as an interruption, the loader workers are let go, and the
  command prints ONE line on stderr, ``interrupted: <what is kept, where>; <how to resume>``, and exits 130.
  Finished work stays; no child process is left behind.
- **Bad input** (an :class:`~xattr.errors.XattrConfigError`, however deep Hydra or a DataLoader wrapped it):
  ``error: <one line>`` on stderr, exit 2, and the output folder is removed when this command made it and it
  holds no finished work (the entry point says what finished work is).
- **Permissions**: a file or folder that cannot be written (or read) is one line naming it, exit 2, also
  when Hydra meets it while making the run folder; the unfinished folder goes as on bad input. A file where
  the output folder must go (``hydra.run.dir=<a file>``, ``--out <a file>``) is one line the same way.
- Before any work: ``check_overrides(argv, config_name)`` for Hydra entry points (an unknown group option or
  key is one line), ``torch.set_float32_matmul_precision("high")`` where torch works. CPU threads are set by
  the task itself (``set_threads=True``) after its checks, so that a bad input stays one line.

Every ``main(argv)`` returns the exit code: 0, 2 (bad input), 130 (interrupted); Hydra's own errors
(an override it cannot parse) keep Hydra's message and exit 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from xattr.config import CONF_DIR, check_overrides, root_config_error
from xattr.core.signals import ignore_worker_deaths, install_terminate_handler, killed_with_its_group

T = TypeVar("T")
INTERRUPTED = 130
BAD_INPUT = 2
SLACK_S = 1.0  # file times may lag the clock a little: a file this much older than the command is still its own


def _nothing(_folder: Path) -> bool:
    return False


@dataclass
class Stop:
    """What one command keeps when it stops early, and where: the entry point's part of the shell.

    Attributes:
        interrupted: the text after ``interrupted: `` (``<what is kept, where>; <how to resume>``), or a
            callable giving it when the stop happens (e.g. counting the finished batches then).
        folder: the output folder the command writes (``None``: none, or not known yet; the task may set it
            as soon as it knows it).
        has_finished_work: ``has_finished_work(folder)``: whether the folder holds work worth keeping. On bad
            input the folder is removed when this is false and every file in it was written by this command.
        empty_parents: how many parent folders to remove as well when that leaves them empty (``run``: 1, the
            run name's folder, when this was its only run).
        writable: the valid choices named when a file cannot be written.
    """

    interrupted: str | Callable[[], str] = "nothing finished yet; the same command starts again"
    folder: Path | None = None
    has_finished_work: Callable[[Path], bool] = _nothing
    empty_parents: int = 0
    writable: str = "a writable folder"
    since: float = field(default_factory=time.time)  # when the command started (files older are not its own)

    def interrupted_line(self) -> str:
        text = self.interrupted() if callable(self.interrupted) else self.interrupted
        return f"interrupted: {text}"


def one_line(err: BaseException) -> str:
    """The last line of an error's message (a DataLoader worker wraps it in its traceback)."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] or [type(err).__name__]
    return lines[-1].split("XattrConfigError: ", 1)[-1].strip()


def is_interruption(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM (``KeyboardInterrupt``), Lightning's ``SystemExit(1)`` after one, or a DataLoader
    worker killed with its process group (:func:`~xattr.core.signals.killed_with_its_group`)."""
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "SIGTERMException":  # Lightning's, if it wins
        return True
    if isinstance(exc, RuntimeError):
        return killed_with_its_group(exc)
    if isinstance(exc, SystemExit) and exc.code not in (0, None):
        seen: set[int] = set()
        cause = exc.__context__ or exc.__cause__
        while cause is not None and id(cause) not in seen:  # Lightning: sys.exit(1) inside `except KeyboardInterrupt`
            if isinstance(cause, KeyboardInterrupt) or killed_with_its_group(cause):
                return True
            seen.add(id(cause))
            cause = cause.__context__ or cause.__cause__
    return False


def written_since(folder: Path, since: float) -> bool:
    """Whether every file under ``folder`` (links not followed) was written at or after ``since``: a folder
    this command made, not one it found with someone's files in it."""
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                if os.lstat(os.path.join(root, name)).st_mtime < since - SLACK_S:
                    return False
            except OSError:
                return False
    return True


def parents_to_outputs(folder: Path, cwd: Path | None = None) -> int:
    """How many parents of ``folder`` lie between it and ``./outputs`` (that one included), for
    :attr:`Stop.empty_parents`: a failed first command leaves no ``outputs/runs/<name>/`` behind. 0 for a
    folder elsewhere (a folder the user named: its parents are theirs)."""
    top = (cwd or Path.cwd()).resolve() / "outputs"
    try:
        return len(folder.resolve().relative_to(top).parts)
    except ValueError:
        return 0


def remove_unfinished(stop: Stop) -> bool:
    """Remove ``stop.folder`` when this command made it (every file in it is new) and it holds no finished
    work; then up to ``stop.empty_parents`` parents left empty. Returns whether it removed the folder."""
    folder = stop.folder
    if folder is None or not folder.is_dir() or stop.has_finished_work(folder):
        return False
    here = Path.cwd().resolve()
    mine = {here, *here.parents}  # never the working directory or a folder holding it
    if folder.resolve() in mine or not written_since(folder, stop.since):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    for _ in range(stop.empty_parents):
        if parent.resolve() in mine or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()
        parent = parent.parent
    return True


def _say(line: str) -> None:
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)


def _end_children() -> None:
    """Loader workers still alive on the way out (normally already gone with their iterator) are ended."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)


def permission_line(err: PermissionError, writable: str) -> str:
    """``error: cannot access <file>: permission denied; valid choices: <writable>`` (the file or folder the
    operating system refused, written or read)."""
    name = err.filename or one_line(err)
    return f"error: cannot access {name}: permission denied; valid choices: {writable}"


def in_the_way_line(err: OSError, writable: str) -> str:
    """``error: cannot make folder <path>: a file is in the way; valid choices: <writable>`` (a folder the
    command must make, ``hydra.run.dir=<a file>``, ``--out <a file>``, or one below a file)."""
    name = err.filename or one_line(err)
    return f"error: cannot make folder {name}: a file is in the way; valid choices: {writable}"


IN_THE_WAY = (FileExistsError, NotADirectoryError)


@contextlib.contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C inside; the previous handlers come back after (a caller in this process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_terminate_handler()
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _quiet_signals() -> None:
    """While the shell says its line and exits: a second Ctrl-C or SIGTERM must not print a traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def guarded(work: Callable[[], T], stop: Stop, *, uses_torch: bool = True) -> T:
    """Run ``work()`` under the shell's rules; on an interruption or bad input print the one line, clean up and
    raise ``SystemExit(130)`` or ``SystemExit(2)``. Other errors pass unchanged (a bug keeps its traceback).

    Args:
        work: the entry point's task, without arguments (it may fill in ``stop.folder`` when it knows it).
        stop: what is kept on a stop, the output folder and what counts as finished work in it.
        uses_torch: set ``torch.set_float32_matmul_precision("high")`` first (not for ``xattr.table``).
    """
    with _signals():
        try:
            if uses_torch:
                import torch

                torch.set_float32_matmul_precision("high")
            return work()
        except BaseException as e:  # noqa: BLE001 - sorted below, anything else is raised again
            if is_interruption(e):
                _quiet_signals()
                ignore_worker_deaths()
                _end_children()
                _say(stop.interrupted_line())
                raise SystemExit(INTERRUPTED) from None
            if isinstance(e, PermissionError):
                remove_unfinished(stop)
                _say(permission_line(e, stop.writable))
                raise SystemExit(BAD_INPUT) from None
            if isinstance(e, IN_THE_WAY):
                remove_unfinished(stop)
                _say(in_the_way_line(e, stop.writable))
                raise SystemExit(BAD_INPUT) from None
            err = root_config_error(e) if isinstance(e, Exception) else None
            if err is None:
                raise
            remove_unfinished(stop)
            _say(f"error: {one_line(err)}")
            raise SystemExit(BAD_INPUT) from None


def _code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def command(work: Callable[[], Any], stop: Stop, *, uses_torch: bool = True) -> int:
    """A plain entry point's ``main`` (``demo``, ``table``): :func:`guarded` returning the exit code."""
    try:
        guarded(work, stop, uses_torch=uses_torch)
    except SystemExit as e:
        return _code(e)
    return 0


def checked(argv: Sequence[str], config_name: str | None) -> int:
    """``check_overrides(argv, config_name)`` as an exit code: 0, or 2 after its one line."""
    try:
        check_overrides(list(argv), config_name)
    except SystemExit as e:
        return _code(e)
    return 0


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextlib.contextmanager
def _hydra_call(argv: Sequence[str]) -> Iterator[None]:
    """Hydra reads ``sys.argv``; it re-raises what it meets itself (making the run folder) only with
    ``HYDRA_FULL_ERROR=1``, so that the shell can say it in one line; both are put back after."""
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved_argv[0] if saved_argv else "xattr", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        sys.argv = saved_argv
        _set_env("HYDRA_FULL_ERROR", saved_env)
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()  # a caller in this process may compose again


def _hydra_error(e: Exception, user_full: bool) -> int:
    """Hydra's own errors (an override it cannot parse, a missing config) printed as Hydra prints them."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    if user_full or not isinstance(e, CompactHydraException):
        raise e
    sys.stderr.write(str(e) + os.linesep)
    if isinstance(e.__cause__, OmegaConfBaseException):
        sys.stderr.write(str(e.__cause__) + os.linesep)
    sys.stderr.write("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n")
    return 1


HELP_FLAGS = ("--help", "-h")


def help_text(prog: str, doc: str | None, config_name: str, argv: Sequence[str] = (),
              omit: Sequence[str] = ()) -> str:
    """``--help`` of a Hydra entry point: its own config groups only (those of ``conf/<config_name>.yaml``'s
    defaults once ``argv`` is applied, less ``omit``) with their options, then the composed config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from xattr.config import group_options

    args = [a for a in argv if a not in HELP_FLAGS and not a.startswith("-") and "=" in a]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        try:
            cfg = compose(config_name, overrides=args, return_hydra_config=True)
        except Exception:  # noqa: BLE001 - a bad override: the help of the plain config (running says what is bad)
            cfg = compose(config_name, return_hydra_config=True)
    # the config file's own defaults (list groups as metric: [...] too) and what they pull in (recipe=roar: roar)
    own = OmegaConf.load(CONF_DIR / f"{config_name}.yaml").get("defaults") or []
    named = {str(k) for d in own if OmegaConf.is_dict(d) for k in d} | {str(g) for g in cfg.hydra.runtime.choices}
    groups = [g for g in named if "/" not in g and g not in omit and group_options(g)]
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    summary = (doc or "").strip().split("\n\n")[0]
    lines = [f"usage: {prog} [group=option ...] [key=value ...]", "", summary, "",
             "Config groups (group=option; a list group takes [a,b]):"]
    lines += [f"  {g}: {', '.join(group_options(g))}" for g in sorted(groups)]
    lines += ["", "Config (override any key: key=value; docs/cli.md):", "",
              OmegaConf.to_yaml(cfg, resolve=False).rstrip()]
    return "\n".join(lines)


def hydra_command(config_name: str, task: Callable[[Any], Any], stop_for: Callable[[Any], Stop],
                  argv: Sequence[str] | None = None, *,
                  writable: str = "a writable folder (hydra.run.dir=... or run from a writable directory)") -> int:
    """A Hydra entry point's ``main``: pre-checks, ``@hydra.main(config_name)``, :func:`guarded`.

    Args:
        config_name: ``config`` (run), ``train``, ``generate``.
        task: ``task(cfg)``, the entry point's work (``lambda cfg: run(cfg, set_threads=True)``); Hydra names
            the job (and its log file) after the module that defines it.
        stop_for: ``stop_for(cfg) -> Stop``: what this configured command keeps and where it writes.
        argv: the command-line overrides (``sys.argv[1:]`` when ``None``).
        writable: the valid choices named when Hydra cannot make the run folder.

    Returns:
        The exit code: 0, 1 (Hydra's own error), 2 (bad input), 130 (interrupted).
    """
    import functools

    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):  # this entry point's groups, not every group of conf/
        module = sys.modules.get(getattr(task, "__module__", "") or "")
        spec = getattr(module, "__spec__", None)  # `python -m xattr.run`: the module runs as __main__
        name = spec.name if spec is not None else getattr(module, "__name__", "xattr")
        print(help_text(f"python -m {name}", getattr(module, "__doc__", None), config_name, argv))
        return 0
    since = time.time()
    code = checked(argv, config_name)
    if code:
        return code

    user_full = os.environ.get("HYDRA_FULL_ERROR")

    @functools.wraps(task)  # Hydra names the job after `task`'s module (run.log, train.log, generate.log)
    def job(cfg):
        stop = stop_for(cfg)
        stop.since = since
        _set_env("HYDRA_FULL_ERROR", user_full)  # the task's own child processes see the user's setting
        try:
            guarded(lambda: task(cfg), stop)
        finally:
            os.environ["HYDRA_FULL_ERROR"] = "1"

    hydra_job = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(job)
    with _signals():  # also while Hydra sets up, before the job
        try:
            with _hydra_call(argv):
                hydra_job()
        except SystemExit as e:
            return _code(e)
        except KeyboardInterrupt:  # before the job started: nothing to keep
            _quiet_signals()
            _say(Stop().interrupted_line())
            return INTERRUPTED
        except PermissionError as e:  # Hydra making the run folder
            _say(permission_line(e, writable))
            return BAD_INPUT
        except IN_THE_WAY as e:  # Hydra making the run folder where a file is
            _say(in_the_way_line(e, writable))
            return BAD_INPUT
        except Exception as e:
            err = root_config_error(e)
            if err is not None:
                _say(f"error: {one_line(err)}")
                return BAD_INPUT
            return _hydra_error(e, user_full == "1")
    return 0
