"""``scripts/bench_readout.py`` on a tiny shape: both training paths run, train the same read-out, and the table
has each path's share of the limit row."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench_readout  # noqa: E402


def test_the_readout_bench_prints_both_paths_beside_the_limit_row(capsys):
    bench_readout.main(["--size", "32", "--batch", "2", "--steps", "2", "--repeat", "1", "--threads", "1",
                        "--device", "cpu"])
    out = capsys.readouterr().out
    assert "read-outs of both paths equal: True" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert [r.split("|")[1].strip() for r in rows] == [bench_readout.OLD, bench_readout.NEW,
                                                       rows[2].split("|")[1].strip()]
    assert rows[2].split("|")[5].strip() == "100%"
    old, new = (float(r.split("|")[3]) for r in rows[:2])
    assert new < old  # the self-check and the recording of every step are gone from the arithmetic
