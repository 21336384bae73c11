"""``healthsync cohort``: count, prevalence, mean, deviation and histograms across hospitals.

Every answer is computed inside each hospital and passes the privacy
guards (small-cell suppression, differential-privacy noise, a per-user
budget) before it is printed; see docs/cohort.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  healthsync cohort --data data/demo --db data/healthsync.duckdb --user alice \\
      --where "age >= 70" --where "sex == F" --group-by smoking --stat prevalence:diabetes
  healthsync cohort --data data/demo --db data/healthsync.duckdb --user alice \\
      --stat mean:bmi --stat histogram:age --json

Counts from 1 to 10 (and 0) show as <11; cells that would give one away show as
"suppressed". Each new query spends privacy budget; repeating one is free.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cohort",
        help="explore patient cohorts across hospitals under privacy guards",
        description="Explore patient cohorts across the federation. Statistics are computed "
        "inside each hospital (through the Flower analytics service, started on first use) "
        "and only guarded aggregates are shown.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, type=Path, help="federation directory")
    parser.add_argument("--db", required=True, type=Path, help="metrics store (DuckDB file)")
    parser.add_argument("--user", required=True, help="who asks (an analyst or admin)")
    parser.add_argument(
        "--where",
        action="extend",
        nargs="+",
        default=[],
        metavar="EXPR",
        help="condition such as 'age >= 70' or 'sex == F' (==, !=, <, <=, >, >=); "
        "several are joined by and",
    )
    parser.add_argument(
        "--group-by",
        action="extend",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="hospital, a feature or an outcome; numeric columns group by clinical bands",
    )
    parser.add_argument(
        "--stat",
        action="extend",
        nargs="+",
        default=[],
        metavar="STAT",
        help="count (default), prevalence:OUTCOME, mean:FEATURE, std:FEATURE, histogram:FEATURE",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--home", default=None, help="credentials directory (default: $HEALTHSYNC_HOME)"
    )
    parser.set_defaults(func=cmd_cohort)


def cmd_cohort(args: argparse.Namespace) -> int:
    """Run one guarded cohort query and print it."""
    from healthsync.cohort import explore

    result = explore(
        args.data,
        db=args.db,
        user=args.user,
        where=args.where,
        group_by=args.group_by,
        stats=args.stat,
        home=args.home,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(result.budget.describe(), file=sys.stderr)
        print(result.to_json())
    else:
        print(result.text())
    return 0
