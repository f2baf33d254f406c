"""What a new user meets: every bad input is one line naming key and value (exit 2, no folder left), an
unreadable image is named (or skipped and listed), run folders round-trip through method=saved, SIGTERM
stops cleanly keeping finished batches and leaving no process behind, the console has no warnings."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import compose_cfg
from xattr.errors import XattrConfigError
from xattr.run import run

REPO = Path(__file__).resolve().parents[1]
# the CLI's behaviour (errors, resume, signals, console) does not depend on the network: the small example CNN
# at 32 px (model=custom); the real EfficientNet-Lite0's quiet console: test_api's quickstart and test_demo
BASE = ["model=custom", "model.preprocess.size=32", "dataset=samples", "target=top1", "trainer=cpu", "logger=none",
        "metric=[]"]


def _cli(args, cwd, env=None, timeout=300):
    env = {**os.environ, "XATTR_ROOT": str(REPO), "PYTHONPATH": str(REPO / "src"), **(env or {})}  # this checkout
    return subprocess.run([sys.executable, "-m", "xattr.run", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


# bad values as a subprocess of each entry point: tests/test_bad_input.py (one interpreter for all rows)


def test_truncated_image_is_named_or_skipped_and_listed(tmp_path, caplog, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(REPO / "assets" / "samples", photos)
    bad = photos / "cat.jpg"
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated JPEG
    cfg = compose_cfg([*BASE, f"dataset.root={photos}", "method=random"], output_dir=tmp_path / "stop")
    with pytest.raises(XattrConfigError, match=r"cannot read image .*cat\.jpg"):
        run(cfg)
    cfg = compose_cfg([*BASE, f"dataset.root={photos}", "method=random", "dataset.on_error=skip"],
                      output_dir=tmp_path / "skip")
    with caplog.at_level("WARNING", logger="xattr"):
        run_dir = run(cfg)
    import pandas as pd

    ids = pd.read_parquet(run_dir / "per_image.parquet")["id"].tolist()
    assert "cat" not in ids and len(ids) == 6
    assert any("skipped unreadable image" in r.message and "cat.jpg" in r.message for r in caplog.records)
    assert f"test: 6 images (1 of 7 unreadable, skipped), 1 batches computed, 0 skipped -> {run_dir}" in capsys.readouterr().out


def test_run_folder_round_trips_through_method_saved(tmp_path):
    first = _cli([*BASE, "method=random", "dataset.limit=2", "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    line = next(ln for ln in first.stdout.splitlines() if " -> " in ln)
    run_dir = line.split(" -> ")[-1].strip()
    assert "=" not in Path(run_dir).name and "," not in Path(run_dir).name
    # no dataset.limit: the saved run's images (its dataset.limit=2), not all seven photos
    again = _cli([*BASE, "method=saved", f"method.run_dir={run_dir}", "metric=[insertion_deletion]",
                  "metric.insertion_deletion.per_step=25000", "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"method=saved: the 2 images of {run_dir} (dataset.limit=2" in again.stdout
    assert "2 images, 1 batches computed" in again.stdout


def test_console_of_a_small_run_has_no_warnings(tmp_path):
    p = _cli([*BASE, "method=gradient", "dataset.limit=2", "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    noise = [ln for ln in (p.stdout + p.stderr).splitlines()
             if "Warning" in ln or "warn" in ln.lower() or "Lightning" in ln or "💡" in ln or "LeafSpec" in ln]
    assert not noise, noise


def _children_of(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_keeps_finished_batches_and_leaves_no_process(tmp_path, group):
    """SIGTERM to the main process, or to the whole group as ``timeout`` and schedulers send it (the loader
    workers die with it): one line, exit 130, no traceback (not even an "Exception ignored" one)."""
    run_dir = tmp_path / "slowrun"
    args = [*BASE, "method=random", "method._target_=tests.slow_method.SlowRandom", "batch_size=1",
            "dataset.num_workers=2", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    env = {**os.environ, "XATTR_ROOT": str(REPO), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
    proc = subprocess.Popen([sys.executable, "-m", "xattr.run", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((run_dir / "heatmaps").glob("*.npz"))) < 2:
        time.sleep(0.3)
    assert len(list((run_dir / "heatmaps").glob("*.npz"))) >= 2, proc.stderr.read() if proc.poll() is not None else ""
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("interrupted: ") and "finished batches kept" in lines[-1]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    kept = len(list((run_dir / "heatmaps").glob("*.npz")))
    assert kept >= 2
    time.sleep(1.0)
    assert _children_of(str(run_dir)) == []


def test_cost_model_counts_forwards_and_a_long_cpu_run_says_its_duration(tmp_path, capsys, monkeypatch):
    import torch

    from xattr.engine import cost
    from xattr.methods.baselines.integrated_gradients import IntegratedGradients
    from xattr.methods.iba import PerSampleIBA
    from xattr.metrics.insertion_deletion import InsertionDeletion
    from xattr.models.tiny import TinyCNN

    net = TinyCNN().eval()
    iba = PerSampleIBA(net, "conv2", steps=10, copies=10)
    assert iba.forwards_per_image((3, 16, 16)) == 304  # 3 x steps x copies + the fx tail's set-up (4)
    assert IntegratedGradients(net, n_steps=50).forwards_per_image((3, 16, 16)) == 150
    assert InsertionDeletion(per_step=10).forwards_per_image((3, 20, 20), 0) == 2 * 40 + 1
    # ``points``: that many steps per curve (the default config's 100), never more than the curve has
    assert InsertionDeletion(per_step=1, points=100).forwards_per_image((3, 20, 20), 0) == 2 * 100 + 1
    assert InsertionDeletion(per_step=10, points=100).forwards_per_image((3, 20, 20), 0) == 2 * 40 + 1
    monkeypatch.setattr(cost, "seconds_per_forward", lambda net, x, batch=4: 0.01)
    sec, what = cost.estimate(iba, {"insertion_deletion": InsertionDeletion(per_step=10)}, net,
                              torch.zeros(1, 3, 20, 20), n_images=100)
    assert sec == pytest.approx(100 * (304 + 81) * 0.01) and "iba ~304" in what and "insertion_deletion ~81" in what
    assert cost.human(sec) == "6 min"


def test_timings_behind_the_estimate_count_the_processs_own_cores(monkeypatch):
    """``own_seconds``: the lesser of wall and process CPU time. Faked clocks: beside two other jobs (wall 3 s,
    CPU 1 s) it says 1 s, what the work takes on a core of its own; with 2 threads on free cores (wall 1 s, CPU
    2 s) it says 1 s, the wall time. ``seconds_per_forward`` takes the median of 3 such timings per image."""
    from types import SimpleNamespace

    import torch

    from xattr.engine import cost

    clocks = {"wall": 0.0, "cpu": 0.0}
    monkeypatch.setattr(cost, "time", SimpleNamespace(perf_counter=lambda: clocks["wall"],
                                                      process_time=lambda: clocks["cpu"]))

    def work(wall, cpu):
        def fn():
            clocks["wall"] += wall
            clocks["cpu"] += cpu
        return fn

    assert cost.own_seconds(work(3.0, 1.0)) == 1.0  # shared CPU: its CPU time
    assert cost.own_seconds(work(1.0, 2.0)) == 1.0  # threads on free cores: its wall time
    net = lambda x: work(0.6, 0.2)()  # noqa: E731 - a "network" that spends 0.2 s of CPU in 0.6 s of wall time
    assert cost.seconds_per_forward(net, torch.zeros(1, 3), batch=4) == pytest.approx(0.2 / 4)
