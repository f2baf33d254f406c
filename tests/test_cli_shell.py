"""The one CLI shell (``xattr.cli``) around the five entry points: Ctrl-C / SIGTERM (also to the whole process
group) stop every one of them with one line on stderr, exit 130, no process left, finished work kept; a bad
value is one line, exit 2, and no output folder is left; a folder that cannot be written is one line.

Most tests call each entry point's ``main(argv)`` in this process (the same code a subprocess runs, minus the
interpreter start). As subprocesses in their own process group, SIGTERM to the group once work has started:
train and generate here, run in tests/test_first_hour.py (make test), run and demo again marked ``slow``
(make test-slow; demo's run is the longest); table finishes too fast to signal from outside, so it gets a
real SIGTERM in this process. Every bad input of every entry point: tests/test_bad_input.py (one interpreter
for all rows); the real exit code 2 of ``python -m xattr.table`` here (the others ``slow``)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_cfg
from xattr import cli
from xattr.core.store import RunStore
from xattr.errors import XattrConfigError

REPO = Path(__file__).resolve().parents[1]
RUN = ["model=efficientnet_lite0", "dataset=samples", "target=top1", "trainer=cpu", "logger=none", "metric=[]",
       "trainer.enable_progress_bar=false"]
TRAIN = ["recipe=synthetic_cxr", "dataset.n_train=40", "dataset.n_test=20", "dataset.size=32", "batch_size=10",
         "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
         "logger=none"]
GENERATE = ["model=custom", "axioms=cpu", "device=cpu", "batch_size=1"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run an entry point's ``main`` here: in ``tmp_path``, with Hydra's logging set-up and the signal
    handlers put back afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XATTR_ROOT", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # `threads: auto` would say so on stderr on a busy machine
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sigs = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    yield tmp_path
    root.handlers[:] = handlers
    root.setLevel(level)
    for s, h in sigs.items():
        signal.signal(s, h)


def _one_line(capfd) -> tuple[str, str]:
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err[-3000:]
    return lines[0], out


def _main(name: str) -> Callable[[list[str]], int]:
    import importlib

    return importlib.import_module(f"xattr.{name}").main


# ----------------------------------------------------------------------------- bad input: one line, exit 2
@pytest.mark.parametrize("name,argv,named", [
    ("run", [*RUN, "method=iba", "method.beta=-1"], "bad method.beta -1; valid choices: a number > 0"),
    ("run", [*RUN, "model=vgg61"], "unknown model 'vgg61'; valid choices: "),
    ("train", [*TRAIN, "monitor=val_accc"], "unknown monitor 'val_accc'; valid choices: val_acc, val_loss"),
    ("generate", [*GENERATE, "axioms.n=0"], "bad axioms.n 0; valid choices: an integer >= 1"),
    ("demo", ["dataset.limit=0"], "bad dataset.limit 0; valid choices: an integer >= 1"),
    ("demo", ["model=vgg61"], "unknown model 'vgg61'; valid choices: "),
    ("table", ["iba_t9"], "unknown table 'iba_t9'; valid choices: axioms_t1"),
], ids=["run-beta", "run-model", "train-monitor", "generate-n", "demo-limit", "demo-model", "table-id"])
def test_a_bad_value_is_one_line_exit_2_and_leaves_no_folder(in_tmp, capfd, name, argv, named):
    if name == "generate":
        argv = [*argv, f"axioms.out={in_tmp}/outputs/axioms"]
    if name == "demo":
        argv = [*argv, f"demo.out_dir={in_tmp}/outputs/demo"]
    assert _main(name)(argv) == 2
    line, _ = _one_line(capfd)
    assert line.startswith("error: ") and named in line, line
    assert not (in_tmp / "outputs").exists(), sorted(str(p) for p in (in_tmp / "outputs").rglob("*"))


def test_a_folder_with_someone_elses_files_is_kept_on_bad_input(in_tmp, capfd):
    """The shell removes only what the failed command wrote: an output folder found with older files stays."""
    out = in_tmp / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    old = time.time() - 3600
    os.utime(out / "notes.txt", (old, old))
    assert _main("generate")([*GENERATE, "axioms.n=0", f"axioms.out={out}"]) == 2
    _one_line(capfd)
    assert (out / "notes.txt").read_text() == "mine"


def test_an_unwritable_run_folder_is_one_line_exit_2(in_tmp, capfd):
    """Hydra makes the run folder before the run starts; the shell still says it in one line."""
    probe = Path("/sys/xattr-test")
    try:
        probe.mkdir()
        probe.rmdir()
        pytest.skip("/sys is writable here")
    except PermissionError:
        pass
    except OSError:
        pytest.skip("no /sys here")
    assert _main("run")([*RUN, "hydra.run.dir=/sys/xattr-test/run"]) == 2
    line, _ = _one_line(capfd)
    assert line.startswith("error: cannot access /sys/xattr-test: permission denied; valid choices: a writable")


def test_a_permission_error_inside_the_task_is_one_line(in_tmp, capfd):
    def work():
        raise PermissionError(13, "Permission denied", "/data/locked.csv")

    assert cli.command(work, cli.Stop(writable="a writable folder (--out DIR)"), uses_torch=False) == 2
    line, _ = _one_line(capfd)
    assert line == ("error: cannot access /data/locked.csv: permission denied; valid choices: a writable folder "
                    "(--out DIR)")


# ----------------------------------------------------------------------------- stops: one line, exit 130
def test_lightnings_exit_after_ctrl_c_and_a_worker_killed_with_its_group_are_interruptions(in_tmp, capfd):
    def lightning():  # what Lightning does on KeyboardInterrupt: tear down, then sys.exit(1)
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    def worker():
        raise RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly: killed by signal: Terminated")

    for work in (lightning, worker):
        assert cli.command(work, cli.Stop(interrupted="3 batches kept in x; the same command resumes"),
                           uses_torch=False) == 130
        line, _ = _one_line(capfd)
        assert line == "interrupted: 3 batches kept in x; the same command resumes"
    with pytest.raises(RuntimeError, match="a real bug"):  # any other error keeps its traceback
        cli.command(lambda: (_ for _ in ()).throw(RuntimeError("a real bug")), cli.Stop(), uses_torch=False)


def test_sigterm_stops_table_with_one_line_and_keeps_the_tables_written(in_tmp, capfd, monkeypatch):
    """``python -m xattr.table`` reads finished runs and takes a second, too short to signal from outside; a
    SIGTERM sent to itself while it builds shows the handler is installed (the other four: subprocesses below)."""
    import xattr.table

    out = in_tmp / "tables"
    out.mkdir()
    (out / "iba_t1_beta.md").write_text("| kept |")

    def build_table(*_a, **_k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the table")

    monkeypatch.setattr(xattr.table, "build_table", build_table)
    before = signal.getsignal(signal.SIGTERM)
    assert xattr.table.main(["iba_t2_bbox", str(in_tmp), "--out", str(out)]) == 130
    line, _ = _one_line(capfd)
    assert line == f"interrupted: the tables written before are kept in {out}; the same command builds iba_t2_bbox again"
    assert (out / "iba_t1_beta.md").read_text() == "| kept |"
    assert signal.getsignal(signal.SIGTERM) == before  # the shell puts the caller's handler back


def test_sigterm_to_a_run_in_this_process_keeps_its_batches(in_tmp, capfd, monkeypatch):
    """The real handler and Lightning in this process: SIGTERM after the first batch -> 130, one line, the
    batch kept, the run resumable."""
    from tests.slow_method import SlowRandom

    def attribute(self, x, target):
        if self.calls:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        self.calls += 1
        return super(SlowRandom, self)._attribute(x, target)

    monkeypatch.setattr(SlowRandom, "calls", 0, raising=False)
    monkeypatch.setattr(SlowRandom, "_attribute", attribute)
    run_dir = in_tmp / "outputs" / "stopped"
    code = _main("run")([*RUN, "method=random", "method._target_=tests.slow_method.SlowRandom", "batch_size=1",
                         "dataset.limit=3", f"hydra.run.dir={run_dir}"])
    assert code == 130
    line, _ = _one_line(capfd)
    assert line == f"interrupted: 1 finished batches kept in {run_dir}; the same command resumes"
    assert RunStore(run_dir).done_keys() == ["b0000000-1"]


# ----------------------------------------------------------------------------- method=saved: asked of its class
def test_a_saved_run_records_the_method_of_the_run_it_reads(tmp_path):
    from xattr.run import _record_source_method

    src = tmp_path / "src"
    src.mkdir()
    OmegaConf.save(OmegaConf.create({"method_name": "iba", "method": {"beta": 10}}), src / "config.yaml")
    cfg = compose_cfg([*RUN, "method=saved", f"method.run_dir={src}"])
    _record_source_method(cfg)
    assert cfg.method_name == "iba" and cfg.source_method.beta == 10
    cfg = compose_cfg([*RUN, "method=gradient"])
    _record_source_method(cfg)
    assert cfg.method_name == "gradient" and "source_method" not in cfg


def test_the_shell_removes_only_unfinished_folders_it_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "runs" / "name" / "a"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("x")
    stop = cli.Stop(folder=run_dir, has_finished_work=lambda d: bool(RunStore(d).done_keys()),
                    empty_parents=cli.parents_to_outputs(run_dir), since=time.time() - 10)
    assert stop.empty_parents == 3
    assert cli.remove_unfinished(stop) and not (tmp_path / "outputs").exists()
    (run_dir / "heatmaps").mkdir(parents=True)
    (run_dir / "heatmaps" / "000000.npz").write_bytes(b"")
    assert not cli.remove_unfinished(stop) and run_dir.is_dir()  # finished work: kept
    assert cli.parents_to_outputs(tmp_path / "elsewhere" / "run") == 0
    here = cli.Stop(folder=tmp_path, since=time.time() - 10)
    assert not cli.remove_unfinished(here) and tmp_path.is_dir()  # never the working directory


def test_bad_config_errors_are_found_behind_hydras_wrapping(in_tmp, capfd):
    def work():
        try:
            raise XattrConfigError("bad method.layer 'conv9'; valid choices: conv1, conv2")
        except XattrConfigError as e:
            raise RuntimeError("Error in call to target 'xattr.methods.iba.PerSampleIBA':\n" + str(e)) from e

    assert cli.command(work, cli.Stop(), uses_torch=False) == 2
    line, _ = _one_line(capfd)
    assert line == "error: bad method.layer 'conv9'; valid choices: conv1, conv2"


# ----------------------------------------------------------------------------- subprocesses, SIGTERM to the group
def _group_alive(pgid: int) -> list[str]:
    """Processes (not zombies) still in process group ``pgid``, as ``pid state cmdline``."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                cmd = (d / "cmdline").read_bytes().replace(bytes(1), b" ").decode(errors="replace")
                alive.append(f"{d.name} {fields[0]} {cmd}")
        except (OSError, ValueError):
            pass
    return alive


def _sigterm_group_when(name: str, args: list[str], cwd: Path, ready: Callable[[], bool],
                        timeout: float = 300) -> tuple[int, str, str]:
    """``python -m xattr.<name> args`` in its own process group; SIGTERM to the group once ``ready()``; returns
    (exit code, stdout, stderr) after checking that no process of the group is left."""
    env = {**os.environ, "XATTR_ROOT": str(REPO), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}",
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", f"xattr.{name}", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"{name} ended before it was stopped ({proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
            assert time.time() - t0 < timeout, f"{name}: no sign of work after {timeout} s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        deadline = time.time() + 10
        while _group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert _group_alive(proc.pid) == [], "left behind"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


def _stopped_with_one_line(code: int, err: str) -> str:
    assert code == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err[-3000:]
    return lines[0]


@pytest.mark.slow
def test_sigterm_to_the_group_stops_run(tmp_path):
    run_dir = tmp_path / "run"
    args = [*RUN, "method=random", "method._target_=tests.slow_method.SlowRandom", "batch_size=1",
            "dataset.num_workers=2", f"hydra.run.dir={run_dir}"]
    code, _, err = _sigterm_group_when("run", args, tmp_path, lambda: len(RunStore(run_dir).done_keys()) >= 2)
    line = _stopped_with_one_line(code, err)
    kept = len(RunStore(run_dir).done_keys())
    assert kept >= 2 and line == f"interrupted: {kept} finished batches kept in {run_dir}; the same command resumes"


def test_sigterm_to_the_group_stops_train(tmp_path):
    run_dir = tmp_path / "train"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = [*TRAIN, "trainer.max_epochs=500", "dataset.num_workers=1", f"hydra.run.dir={run_dir}"]
    code, _, err = _sigterm_group_when("train", args, tmp_path, last.is_file)
    line = _stopped_with_one_line(code, err)
    assert line == (f"interrupted: finished epochs are kept in {run_dir}/checkpoints/last.ckpt; the same command "
                    "with ckpt_path=last resumes")
    assert last.is_file()


def test_sigterm_to_the_group_stops_generate(tmp_path):
    out = tmp_path / "axioms"
    done = out / "custom" / "null" / "samples" / "000000.pt"  # a finished sample (the store checks its file)
    done.parent.mkdir(parents=True)
    done.write_bytes(b"finished")
    meta = out / "custom" / "null" / "meta.json"  # written just before the generation starts
    code, _, err = _sigterm_group_when("generate", [*GENERATE, "axioms.n=2", f"axioms.out={out}"], tmp_path,
                                       meta.is_file)
    line = _stopped_with_one_line(code, err)
    assert line == f"interrupted: 1 finished samples kept in {out}/custom/null; the same command resumes"
    assert done.read_bytes() == b"finished"


@pytest.mark.slow
def test_sigterm_to_the_group_stops_demo(tmp_path):
    out = tmp_path / "demo"
    code, _, err = _sigterm_group_when("demo", ["dataset.limit=2", f"demo.out_dir={out}"], tmp_path,
                                       lambda: bool(RunStore(out / "gradient").done_keys()))
    line = _stopped_with_one_line(code, err)
    assert line == f"interrupted: each method's finished batches are kept in {out}/<method>; the same command resumes"
    assert RunStore(out / "gradient").done_keys()


@pytest.mark.parametrize("name,argv,named", [
    pytest.param("train", [*TRAIN, "monitor=val_accc"], "unknown monitor 'val_accc'", marks=pytest.mark.slow),
    pytest.param("generate", [*GENERATE, "axioms.n=0", "axioms.out=outputs/axioms"], "bad axioms.n 0",
                 marks=pytest.mark.slow),
    pytest.param("demo", ["dataset.limit=0", "demo.out_dir=outputs/demo"], "bad dataset.limit 0", marks=pytest.mark.slow),
    ("table", ["iba_t9"], "unknown table 'iba_t9'"),
    pytest.param("report", ["nope"], "bad runs path 'nope': it does not exist", marks=pytest.mark.slow),
])
def test_a_bad_value_in_a_subprocess_exits_2(tmp_path, name, argv, named):
    """The real exit code of ``python -m xattr.<name>`` (``raise SystemExit(main())``): table in make test, the
    others slow (their ``main`` returning 2 on every bad input: tests/test_bad_input.py; train's and generate's
    real exit code 130: the SIGTERM tests above)."""
    env = {**os.environ, "XATTR_ROOT": str(REPO), "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    p = subprocess.run([sys.executable, "-m", f"xattr.{name}", *argv], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {named}"), p.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("name,groups", [
    ("run", "analysis dataset experiment half logger method metric model row trainer"),
    ("train", "dataset logger loss model net optimizer recipe scheduler trainer"),
    ("generate", "axioms model"),
    ("demo", "analysis dataset logger metric model trainer"),  # method: each of the demo's own
])
def test_help_lists_only_the_entry_points_own_groups(in_tmp, capsys, name, groups):
    assert _main(name)(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m xattr.{name} ")
    listed = out.split("Config groups")[1].split("\n\n")[0].splitlines()[1:]
    assert sorted(ln.split(":")[0].strip() for ln in listed) == groups.split()
    assert not (in_tmp / "outputs").exists()


def test_a_sigchld_pending_with_the_sigterm_prints_nothing(tmp_path):
    """A SIGTERM to the group ends the loader workers, so a SIGCHLD is pending beside the SIGTERM. Python runs
    the SIGTERM handler first; if that handler left SIGCHLD without a Python handler, the pending SIGCHLD
    printed "OSError: Signal 17 ignored due to race condition" (seen on a stopped ReadoutIBA training). Both
    signals are made pending together here (blocked, sent, unblocked), so the order is the real one."""
    script = tmp_path / "race.py"
    script.write_text(
        "import os, signal, sys\n"
        "from xattr.core.signals import install_terminate_handler\n"
        "signal.signal(signal.SIGCHLD, lambda *a: None)  # as torch's loader installs one\n"
        "install_terminate_handler()\n"
        "both = {signal.SIGTERM, signal.SIGCHLD}\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, both)\n"
        "os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGCHLD)\n"
        "try:\n"
        "    signal.pthread_sigmask(signal.SIG_UNBLOCK, both)\n"
        "    for _ in range(1000): pass\n"
        "except KeyboardInterrupt:\n"
        "    for _ in range(1000): pass\n"
        "    print('stopped')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "stopped" and out.stderr == "", out.stderr
