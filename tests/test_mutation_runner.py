"""scripts/mutation.py's lock: one runner at a time (runners share the scratch copy, so a second runner's mutant
would be imported by the first one's tests, session 10)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutation.py"


def runner(tmp_path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location("mutation_runner", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "OUT", tmp_path)
    return mod


def test_a_second_runner_stops_in_one_line_and_a_stale_lock_is_taken_over(tmp_path, monkeypatch):
    mod = runner(tmp_path, monkeypatch)
    lock = tmp_path / "runner.lock"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(alive.pid))
        with pytest.raises(SystemExit, match=rf"^error: another mutation run \(pid {alive.pid}\) holds .*runner.lock; "
                                             r"runs share the scratch copy, so wait for it or stop it$"):
            mod.hold_lock()
        assert lock.read_text() == str(alive.pid)  # left to its holder
    finally:
        alive.kill()
        alive.wait()
    mod.hold_lock()  # the holder is gone: taken over
    assert lock.read_text() == str(os.getpid())
    mod.hold_lock()  # this process's own lock
    assert lock.read_text() == str(os.getpid())


def test_a_runner_started_from_a_mutants_tests_stops_at_once(tmp_path, monkeypatch, capsys):
    """Readout's ``devices=1 -> 2`` mutant made Lightning's DDP launcher start ``[python, *sys.argv]`` for rank 1, i.e.
    the runner again, from a forked child (session 10's runaway runner): a runner started with the children's
    variable set takes no lock and runs nothing."""
    mod = runner(tmp_path, monkeypatch)
    monkeypatch.setenv(mod.CHILD_ENV, "mutant")
    monkeypatch.setattr(mod, "hold_lock", lambda: pytest.fail("took the lock"))
    assert mod.main(["methods/iba/readout.py"]) == 3
    assert capsys.readouterr().err == ("error: started from a runner's mutant child (a test re-ran sys.argv, e.g. "
                                       "Lightning's DDP launcher); not running\n")
    assert not (tmp_path / "runner.lock").exists()
