"""``python -m xattr.table <id> <run dirs...> [--out DIR]``: print and save a paper table with ours beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from xattr.cli import Stop, command, parents_to_outputs
from xattr.tables.build import build_table, load_published


def _print_table(table_id: str, runs: list[str], out: str) -> None:
    build_table(table_id, runs, out)
    print(open(f"{out}/{table_id}.md").read())


def main(argv: list[str] | None = None) -> int:
    """``python -m xattr.table``: build, save and print one table in the CLI shell (:mod:`xattr.cli`): an
    unknown table id is one line (exit 2), Ctrl-C / SIGTERM one line (exit 130); returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m xattr.table", description=__doc__)
    ap.add_argument("table_id", help="one of: " + ", ".join(sorted(load_published())))
    ap.add_argument("runs", nargs="*", default=["outputs"], help="run folders (searched recursively)")
    ap.add_argument("--out", default="outputs/tables")
    args = ap.parse_args(argv)
    out = Path(args.out)
    stop = Stop(interrupted=f"the tables written before are kept in {out}; the same command builds "
                            f"{args.table_id} again",
                folder=out, has_finished_work=lambda d: any(d.iterdir()), empty_parents=parents_to_outputs(out),
                writable="a writable folder (--out DIR)")
    return command(lambda: _print_table(args.table_id, args.runs, args.out), stop, uses_torch=False)


if __name__ == "__main__":
    raise SystemExit(main())
