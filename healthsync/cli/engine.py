"""``healthsync engine start|status|stop``: the warm training engine (``healthsync.runs.engine``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from healthsync.config import DEFAULT_DB


def register(subparsers: argparse._SubParsersAction) -> None:
    engine = subparsers.add_parser(
        "engine",
        help="keep Flower and Ray warm so runs start in about a second",
        description="The training engine keeps one Flower simulation on Ray running; local "
        "runs (`healthsync train`, the Launch page) go to it while it is free, and skip the "
        "10-15 s cold start. It exits after --idle-minutes without a run.",
    )
    sub = engine.add_subparsers(dest="engine_command", metavar="COMMAND", required=True)

    start = sub.add_parser("start", help="start the engine and wait until it is ready")
    start.add_argument("--db", default=str(DEFAULT_DB), help="runs go to this metrics store")
    start.add_argument("--idle-minutes", type=float, default=15.0)
    start.add_argument("--no-wait", action="store_true", help="return once it is starting")
    start.add_argument(
        "--foreground",
        action="store_true",
        help="become the engine instead of starting it in the background (for a container)",
    )
    start.set_defaults(func=cmd_start)

    status = sub.add_parser("status", help="whether an engine is running, and busy")
    status.add_argument("--db", default=str(DEFAULT_DB))
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    stop = sub.add_parser("stop", help="stop the engine (after the run it is serving)")
    stop.add_argument("--db", default=str(DEFAULT_DB))
    stop.set_defaults(func=cmd_stop)


def cmd_start(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from healthsync.errors import HealthSyncError
    from healthsync.runs import engine

    if args.idle_minutes <= 0:
        raise HealthSyncError(f"idle minutes must be > 0, got {args.idle_minutes:g}")
    if args.foreground:  # this process becomes the engine: its log is this terminal
        if engine.status(args.db) is not None:
            raise HealthSyncError(f"an engine is already running for {args.db}")
        cmd = engine.serve_command(args.db, idle_timeout=args.idle_minutes * 60)
        sys.stdout.flush()
        os.execv(cmd[0], cmd)
        return 0  # not reached (but where execv is replaced, as in a test)
    pid = engine.start(args.db, idle_timeout=args.idle_minutes * 60)
    if pid is None and (running := engine.status(args.db)):
        print(f"engine already running (pid {running['pid']}, {running['nodes']} nodes)")
        return 0
    if args.no_wait:
        print(
            f"engine starting (pid {pid or 'already starting'}); log: {engine.state_path(args.db).with_suffix('.log')}"
        )
        return 0
    with tqdm(
        desc="starting Flower and Ray", unit="s", file=sys.stderr, bar_format="{desc}: {elapsed}"
    ) as bar:
        ready = engine.wait_ready(args.db, progress=lambda _: bar.refresh())
    print(
        f"engine ready (pid {ready['pid']}, {ready['nodes']} nodes); it stops after {args.idle_minutes:g} idle minutes"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from healthsync.runs import engine

    state = engine.status(args.db)
    if args.json:
        print(json.dumps({"running": state is not None, **(state or {})}))
        return 0
    if state is None:
        print("no engine running: runs start cold (start one with `healthsync engine start`)")
    else:
        what = "busy with a run" if state["busy"] else "idle"
        print(
            f"engine running (pid {state['pid']}, {state['nodes']} nodes), {what}; "
            f"{state['runs_served']} run(s) served"
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from healthsync.runs import engine

    outcome = engine.stop(args.db)
    messages = {
        None: "no engine was running",
        "stopped": "engine stopped",
        "stopping": "engine stopping: it exits when the run it is serving ends",
    }
    print(messages[outcome])
    return 0
