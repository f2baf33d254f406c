"""``make bench-gpu`` (scripts/bench_gpu.py, issue 31) and the benches' limit row (scripts/timing.limit), tried
on the CPU: every GPU call is accepted by its bench's own parser, a dry run writes the one table, and the limit
row's arithmetic equals the closed form of a known conv stack."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench_gpu  # noqa: E402
from timing import limit, ratio  # noqa: E402


@pytest.mark.parametrize("bench", bench_gpu.BENCHES, ids=lambda b: b.name)
def test_every_gpu_call_is_accepted_by_its_bench(bench):
    ns = bench_gpu.parsed_args(bench, gpu=True)
    assert ns is not None
    assert bench_gpu.parsed_args(bench, gpu=False) is not None


def test_a_bad_option_fails_the_parse():
    bad = bench_gpu.Bench("x", 1, "bench_pathways.py", ("--no-such-option",), ())
    with pytest.raises(SystemExit):
        bench_gpu.parsed_args(bad)


def test_the_gpu_call_fits_eight_minutes():
    assert sum(b.seconds for b in bench_gpu.BENCHES) <= 8 * 60


def test_dry_run_writes_one_table_with_the_rows(tmp_path):
    rc = bench_gpu.main(["--dry-run", "--only", "pathways", "--out", str(tmp_path)])
    text = (tmp_path / "bench-gpu.md").read_text()
    assert rc == 0, (tmp_path / "pathways.err").read_text()
    assert text.startswith("# bench-gpu: CPU (--dry-run")
    rows = [line for line in text.splitlines() if line.startswith("| pathways | cifar_resnet20 |")]
    assert len(rows) == 2  # neuron_mct and input_intgrad, each with a limit and a share of it
    assert all(line.split("|")[8].strip().endswith("%") for line in rows)


@pytest.mark.slow
def test_dry_run_of_every_bench(tmp_path):
    assert bench_gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "bench-gpu.md").read_text()
    for b in bench_gpu.BENCHES:
        assert f"| {b.name} | 0 |" in text


def test_limit_row_counts_a_conv_stack_in_closed_form_and_the_ratio_is_a_share():
    torch.manual_seed(0)
    c, h, n = 32, 40, 16  # ~20 ms a pass: far above the clock's noise
    stack = torch.nn.Sequential(torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(c, c, 3, padding=1, groups=2), torch.nn.ReLU())
    x = torch.randn(n, 3, h, h)
    macs = n * h * h * 9 * (3 * c + c * c // 2)  # per output position: k^2 x in-channels per group x out-channels
    fwd = limit(stack, x, "cpu", repeat=5, clock="process")  # CPU time: other jobs do not inflate it
    assert fwd["gflop"] * 1e9 == 2 * macs and fwd["batch"] == n and fwd["rate"] > 0
    # input-gradient backward, weights frozen: the second conv's input gradient (= its forward) is added; the
    # first conv's input gradient is its forward again (the input needs a gradient); no weight gradients
    both = limit(stack, x, "cpu", backward=True, repeat=3)
    assert both["gflop"] * 1e9 == 2 * 2 * macs
    assert all(p.requires_grad for p in stack.parameters())  # flags restored
    # a hot loop doing the same pass one row at a time cannot beat the batched limit by much
    one_at_a_time = limit(lambda z: torch.cat([stack(z[i:i + 1]) for i in range(n)]), x, "cpu",
                          params=list(stack.parameters()), repeat=5, clock="process")
    share = ratio(one_at_a_time["rate"], fwd["rate"])
    assert 0 < share <= 1.2
    assert ratio(1.0, float("nan")) != ratio(1.0, float("nan"))  # NaN when the limit is missing
