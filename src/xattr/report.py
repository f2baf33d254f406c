"""``python -m xattr.report <run or multirun folder...> [--out DIR]``: one self-contained report (Markdown and a
static HTML page with its images beside it) comparing the methods and metrics of the runs below the folders,
from what they stored (nothing is recomputed; :mod:`xattr.engine.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xattr.cli import Stop, command, parents_to_outputs
from xattr.engine.compare import load_runs, write
from xattr.tables.match import check_run_paths, no_runs


def _report(paths: list[str], out: Path, n_boot: int) -> None:
    check_run_paths(paths)
    runs = load_runs(paths)
    if not runs:
        raise no_runs(paths)
    page = write(runs, out, n_boot)
    print(f"report: {page} (and {out / 'report.md'})")


def main(argv: list[str] | None = None) -> int:
    """Build the report in the CLI shell (:mod:`xattr.cli`): a folder without a finished run is one line
    (exit 2), Ctrl-C / SIGTERM one line (exit 130); returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m xattr.report", description=__doc__)
    ap.add_argument("runs", nargs="+", help="run or multirun folders (searched recursively)")
    ap.add_argument("--out", default=None, help="where to write (default: <first folder>/report)")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the images (200)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report"
    stop = Stop(interrupted=f"the report is rebuilt by the same command into {out}", folder=out,
                has_finished_work=lambda d: any(d.iterdir()), empty_parents=parents_to_outputs(out),
                writable="a writable folder (--out DIR)")
    return command(lambda: _report(args.runs, out, args.n_boot), stop, uses_torch=False)


if __name__ == "__main__":
    raise SystemExit(main())
