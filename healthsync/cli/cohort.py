"""``healthsync cohort``: count, prevalence, mean, deviation and histograms across hospitals.

Every answer is computed inside each hospital and passes the privacy
guards (differential-privacy noise drawn by each hospital against its own
ledger and policy, then small-cell suppression on the noisy values) before it
is printed; see docs/cohort.md. The user must prove who they are: their
password on standard input (``--password-stdin``) or in ``HEALTHSYNC_PASSWORD``,
because budgets are kept per user.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from healthsync.cli.credentials import PASSWORD_VARIABLE, authenticate, read_password
from healthsync.errors import HealthSyncError

EPILOG = """\
examples:
  healthsync cohort --data data/demo --db data/healthsync.duckdb --user alice \\
      --password-stdin --where "age >= 70" --where "sex == F" --group-by smoking \\
      --stat prevalence:diabetes < alice-password.txt
  HEALTHSYNC_PASSWORD=... healthsync cohort --data data/demo --db data/healthsync.duckdb \\
      --user alice --stat mean:bmi --stat histogram:age --json

Counts from 1 to 10 (and 0) show as <11; cells that would give one away show as
"suppressed". Each new query spends privacy budget at every hospital it asks;
asking for numbers already released (in any spelling) is free and returns them unchanged.
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
        "--password-stdin",
        action="store_true",
        help=f"read the user's password from the first line of standard input "
        f"(otherwise from ${PASSWORD_VARIABLE})",
    )
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
        "--keep-warm",
        action="store_true",
        help="leave the analytics service this query starts running for later queries "
        "(it exits after 15 idle minutes); by default a one-off query stops what it started",
    )
    parser.add_argument(
        "--home", default=None, help="credentials directory (default: $HEALTHSYNC_HOME)"
    )
    parser.set_defaults(func=cmd_cohort)


def cmd_cohort(args: argparse.Namespace) -> int:
    """Run one guarded cohort query and print it."""
    from healthsync.cohort import explore

    authenticate(args.user, read_password(args.password_stdin), args.home)
    labels = _site_labels(args.data, args.user, args.home)
    result = explore(
        args.data,
        db=args.db,
        user=args.user,
        where=[_hospital_by_label(text, labels) for text in args.where],
        group_by=args.group_by,
        stats=args.stat,
        home=args.home,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        keep_warm=args.keep_warm,
    )
    shown = labels if labels.hide_ids else None  # else ids, as the operator's tools show them
    if shown:  # the query as the analyst wrote it ("Site B"), not as the hospitals ran it
        result = dataclasses.replace(result, query={**result.query, "where": list(args.where)})
    if args.json:
        print(result.budget.describe(), file=sys.stderr)
        print(result.to_json(shown))
    else:
        print(result.text(shown))
    return 0


def _site_labels(data: Path, user: str, home: str | None):
    """How ``user`` sees the federation's hospitals: the app's rule (``tenancy.site_labels``).

    An analyst's own command line shows what the explorer shows them: on a
    pseudonymous data set, "Site C" and never a hospital's name or id.
    """
    from healthsync import auth
    from healthsync.views.tenancy import site_labels

    return site_labels(data, auth.UserStore(auth.resolve_home(home)).get(user))


def _hospital_by_label(text: str, labels) -> str:
    """``hospital == Site C`` as the query the hospitals run (by id), where ids are hidden.

    On a pseudonymous data set a filter naming a hospital by its id (or real
    name) is refused: answering it would tie that id to its pseudonym.
    """
    from healthsync.cohort.plan import HOSPITAL
    from healthsync.cohort.query import Condition

    condition = Condition.parse(text)
    if condition.column != HOSPITAL or not labels.hide_ids:
        return text
    by_label = {label: hospital for hospital, label in labels.items()}
    if condition.value not in by_label:
        raise HealthSyncError(
            f"this data set shows its hospitals as {', '.join(sorted(by_label)[:3])}…: "
            f"filter on one of those names, not {condition.value!r}"
        )
    return f"{condition.column} {condition.op} {by_label[condition.value]}"
