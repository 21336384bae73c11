"""``python -m simulation run --run-id ID --config-json JSON``: one run, in this process.

``healthsync.runs.start_run`` starts this as its own process, so a run
outlives the browser tab or terminal that started it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from healthsync import runlog
from healthsync.config import TrainConfig
from healthsync.store import MetricsStore
from simulation import launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one recorded training run")
    run.add_argument("--run-id", required=True)
    run.add_argument("--config-json", required=True)
    run.add_argument("--ray-address", default=None)
    args = parser.parse_args(argv)
    config = TrainConfig.from_json(args.config_json)
    code = run_recorded(config, args.run_id, args.ray_address)
    if code:
        # Flower's own threads may still wait for a ServerApp that never started.
        os._exit(code)
    return 0


def run_recorded(config: TrainConfig, run_id: str, ray_address: str | None) -> int:
    """Run it; if Flower's runtime crashes around the round loop, record why (exit status 1)."""
    try:
        launch.run(config, run_id, ray_address=ray_address)
    except Exception as err:
        logging.getLogger("healthsync.simulation").exception("simulation crashed")
        fail_unfinished(config.db, run_id, f"the Flower simulation crashed: {root_cause(err)}")
        return 1
    return 0


def root_cause(err: BaseException) -> str:
    """The innermost exception's message, where Flower wraps the real error twice."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]


def fail_unfinished(db: str, run_id: str, reason: str) -> None:
    """Mark the run failed unless its round loop already recorded how it ended."""
    store = MetricsStore(db)
    if runlog.get_run(store, run_id)["status"] in runlog.ACTIVE:
        runlog.finish_run(store, run_id, "failed", reason=reason)
        runlog.record_event(store, run_id, "failed", reason)


if __name__ == "__main__":
    sys.exit(main())
