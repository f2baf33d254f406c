"""``python -m xattr.table <id> <run dirs...> [--out DIR]``: print and save a paper table with ours beside it."""

from __future__ import annotations

import argparse
import sys

from xattr.errors import XattrConfigError
from xattr.tables.build import build_table, load_published


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xattr.table", description=__doc__)
    ap.add_argument("table_id", help="one of: " + ", ".join(sorted(load_published())))
    ap.add_argument("runs", nargs="*", default=["outputs"], help="run folders (searched recursively)")
    ap.add_argument("--out", default="outputs/tables")
    args = ap.parse_args(argv)
    try:
        build_table(args.table_id, args.runs, args.out)
    except XattrConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(open(f"{args.out}/{args.table_id}.md").read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
