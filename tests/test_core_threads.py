"""``threads: auto``: the cores other jobs leave free, by hand on made-up loads; the entry point says so."""

from __future__ import annotations

import os

import pytest

from xattr.core.threads import choose_threads, free_cores
from xattr.errors import XattrConfigError


@pytest.mark.parametrize(("cores", "load", "free"), [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 4.0, 1), (16, 3.2, 13), (16, 3.6, 12), (8, 40.0, 1),
])
def test_free_cores_rounds_the_load_to_whole_cores(cores, load, free):
    assert free_cores(cores, load) == free


def test_auto_lowers_threads_only_on_a_busy_machine_and_never_against_the_user():
    assert choose_threads("auto", 2, 0.1, current=2, env={}) is None      # idle: torch's default stays
    assert choose_threads("auto", 2, 3.9, current=2, env={}) == 1         # 4 jobs on 2 cores: one thread
    assert choose_threads(None, 16, 4.0, current=16, env={}) == 12
    assert choose_threads("auto", 2, 3.9, current=1, env={}) is None      # already at one: nothing to do
    assert choose_threads("auto", 2, 3.9, current=2, env={"OMP_NUM_THREADS": "2"}) is None  # the user chose
    assert choose_threads("auto", 2, None, current=2, env={}) is None     # no load average (not Unix)
    assert choose_threads(3, 2, 0.0, current=2, env={"OMP_NUM_THREADS": "1"}) == 3  # threads=N wins
    assert choose_threads("4", 8, 0.0, current=8, env={}) == 4            # from the command line as text
    assert choose_threads(2, 2, 5.0, current=2, env={}) is None           # already so


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5])
def test_bad_threads_names_the_value_and_the_choices(bad):
    with pytest.raises(XattrConfigError, match=r"bad threads .*valid choices: auto, or an integer >= 1"):
        choose_threads(bad, 2, 0.0, current=2, env={})


def test_apply_threads_sets_torch_and_says_why(monkeypatch, capsys):
    import os

    import torch

    from xattr.core import threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    assert threads.apply_threads("auto") == 1 and seen == [1]
    assert capsys.readouterr().err.strip() == (
        "CPU busy (load 7.0 on 8 cores): torch uses 1 thread (threads=N or OMP_NUM_THREADS to choose)")
    assert threads.apply_threads(2) == 2 and capsys.readouterr().err == ""  # asked for: no message
    monkeypatch.undo()
    assert torch.get_num_threads() == before


def test_the_loader_has_no_more_workers_than_the_cores_this_process_may_use(monkeypatch):
    """Under ``taskset -c 1`` torch warns that 2 workers exceed the 1 usable core (console noise on every run)."""
    from xattr.core import threads
    from xattr.run import make_loader

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    assert threads.usable_cores() == 1
    assert make_loader(list(range(4)), 2, 2).num_workers == 1
    assert make_loader(list(range(4)), 2, 0).num_workers == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert make_loader(list(range(4)), 2, 2).num_workers == 2
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.usable_cores() == 3
