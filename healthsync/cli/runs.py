"""``healthsync runs list|show|cancel``: the run history in the metrics store."""

from __future__ import annotations

import argparse
import json

from healthsync.cli.credentials import PASSWORD_VARIABLE
from healthsync.config import DEFAULT_DB


def register(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser("runs", help="list, show and cancel recorded runs")
    sub = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)

    listing = sub.add_parser("list", help="every run, newest first")
    listing.add_argument("--db", default=str(DEFAULT_DB))
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="one run: config, rounds, per-hospital metrics")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--db", default=str(DEFAULT_DB))
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    for parser in (listing, show):
        parser.add_argument(
            "--user",
            default=None,
            help="show only what this user may see (their data sets; a steward's own "
            "hospital; pseudonyms where the data set hides its sites), as the app does. "
            "Without it: the operator's view of the whole store",
        )
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help=f"read --user's password from standard input (otherwise ${PASSWORD_VARIABLE})",
        )
        parser.add_argument(
            "--home", default=None, help="credentials directory (default: $HEALTHSYNC_HOME)"
        )

    cancel = sub.add_parser("cancel", help="stop a run after its current round")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--db", default=str(DEFAULT_DB))
    cancel.set_defaults(func=cmd_cancel)


def cmd_list(args: argparse.Namespace) -> int:
    import polars as pl

    from healthsync.runs import runlog
    from healthsync.runs.store import MetricsStore

    store = MetricsStore.existing(args.db)
    user = _signed_in(args)
    runlog.reconcile_dead_runs(store)
    frame = runlog.list_runs(store)
    if user is not None:
        from healthsync.auth import AccessLists, resolve_home
        from healthsync.views.tenancy import visible_runs

        frame = visible_runs(frame, user, AccessLists(resolve_home(args.home)))
    if args.json:
        print(
            json.dumps(runlog.to_records(frame.with_columns(pl.col(pl.Datetime).cast(pl.String))))
        )
        return 0
    if frame.is_empty():
        print("no runs yet: start one with `healthsync train`")
        return 0
    cols = [
        "run_id",
        "name",
        "kind",
        "status",
        "strategy",
        "model",
        "target",
        "rounds_done",
        "rounds_planned",
        "final_auc",
    ]
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_hide_dataframe_shape=True,
        float_precision=4,
        tbl_width_chars=200,
    ):
        print(frame.select(cols).with_columns(pl.col("name").fill_null("")))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import polars as pl

    from healthsync.runs import runlog
    from healthsync.runs.store import MetricsStore

    store = MetricsStore.existing(args.db)
    user = _signed_in(args)
    runlog.reconcile_dead_runs(store)
    if user is None:
        detail = runlog.run_detail(store, args.run_id)
    else:
        from healthsync.auth import AccessLists, resolve_home
        from healthsync.views.tenancy import run_detail_for

        data_dir = runlog.get_run(store, args.run_id)["data_dir"]
        if data_dir and user.role != "admin":
            AccessLists(resolve_home(args.home)).check(user, data_dir)
        detail = run_detail_for(store, args.run_id, user)
    if args.json:
        print(json.dumps(detail))
        return 0
    print(
        f"{detail['run_id']}"
        + (f" ({detail['name']})" if detail["name"] else "")
        + f": {detail['status']}"
        + (f" ({detail['reason']})" if detail["reason"] else "")
    )
    print("config: " + ", ".join(f"{k}={v}" for k, v in detail["config"].items()))
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, float_precision=4):
        print(pl.DataFrame(detail["rounds"]) if detail["rounds"] else "no rounds recorded yet")
    return 0


def _signed_in(args: argparse.Namespace):
    """The ``--user`` whose password checks out (``None``: the operator's view)."""
    if args.user is None:
        return None
    from healthsync import auth
    from healthsync.cli.credentials import authenticate, read_password

    authenticate(args.user, read_password(args.password_stdin), args.home)
    return auth.UserStore(auth.resolve_home(args.home)).get(args.user)


def cmd_cancel(args: argparse.Namespace) -> int:
    from healthsync.runs.lifecycle import cancel_run
    from healthsync.runs.store import MetricsStore

    MetricsStore.existing(args.db)
    if cancel_run(args.db, args.run_id):
        print(f"cancel requested for {args.run_id}; it stops after its current round")
        return 0
    print(f"{args.run_id} is not running")
    return 1
