"""``make bench-gpu`` (scripts/bench_gpu.py, issue 31) and the benches' limit row (scripts/timing.limit), tried
on the CPU: every GPU call is accepted by its bench's own parser, a dry run writes the one table, and the limit
row's arithmetic equals the closed form of a known conv stack."""

from __future__ import annotations

import re
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
    assert len(rows) == 3  # neuron_mct, input_intgrad and the gated pass, each with a limit and a share of it
    assert "gated pass" in rows[-1]
    assert all(line.split("|")[8].strip().endswith("%") for line in rows)


@pytest.mark.slow
def test_dry_run_of_every_bench(tmp_path):
    assert bench_gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "bench-gpu.md").read_text()
    for b in bench_gpu.BENCHES:
        assert f"| {b.name} | 0 |" in text


def test_limit_row_counts_a_conv_stack_in_closed_form_and_the_ratio_is_a_share(one_thread):
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
    # a hot loop doing the same arithmetic and 30 elementwise passes over its output besides (no FLOPs counted
    # for them) reaches a share of the limit below 1. (One image at a time is no such loop on a CPU: this stack
    # ran 1.6x faster per image than batched on one thread here, its activations fitting the cache.)
    def slowed(z):
        y = stack(z)
        for _ in range(30):
            y = y * 1.0001
        return y

    hot = limit(slowed, x, "cpu", params=list(stack.parameters()), repeat=5, clock="process")
    assert hot["gflop"] == fwd["gflop"]
    share = ratio(hot["rate"], fwd["rate"])
    assert 0 < share < 0.9
    assert ratio(1.0, float("nan")) != ratio(1.0, float("nan"))  # NaN when the limit is missing


def test_greedy_breakdown_times_the_modules_own_pieces_and_leaves_them_in_place(one_thread):
    """``bench_pathways.py --breakdown``: one row per piece GreedyPruning's module calls, the pieces put back after
    the run (a bench must not leave the method patched), ceilings as shares, and the scored pass the largest piece
    (it holds the network's passes)."""
    import bench_pathways
    from xattr.methods.pathways import greedy
    from xattr.models import load_model

    before = {k: getattr(greedy, k) for k in bench_pathways.GREEDY_PIECES}
    torch.manual_seed(0)
    net = load_model("cifar_resnet20", "random").net
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = net(x).argmax(1)
    lines = bench_pathways.greedy_breakdown(net, x, t, torch.device("cpu"), "process", plain_ms=1.0)
    assert {k: getattr(greedy, k) for k in bench_pathways.GREEDY_PIECES} == before
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in lines if line.startswith("| ")
            and line.split("|")[2].strip().replace(".", "").isdigit()}
    assert set(bench_pathways.GREEDY_PIECES.values()) <= set(rows)
    scored = rows[bench_pathways.GREEDY_PIECES["flat_mct_scores"]]
    assert scored > 0 and scored == max(rows.values())
    assert re.fullmatch(r"\nceiling of % of limit: every piece but the scored pass free \d+%; the selection at its floor \d+%",
                        lines[-1])
