"""``python -m simulation run --run-id ID --config-json JSON``: one run, in this process.

``healthsync.runs.lifecycle.start_run`` starts this as its own process, so a run
outlives the browser tab or terminal that started it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from healthsync.config import TrainConfig
from healthsync.runs import lifecycle, runlog
from healthsync.runs.store import MetricsStore
from simulation import launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one recorded training run")
    run.add_argument("--run-id", required=True)
    run.add_argument("--config-json", required=True)
    run.add_argument("--ray-address", default=None)
    run.add_argument(
        "--stock-flower",
        action="store_true",
        help="Flower's own Ray backend (the stress test's baseline), not HealthSync's",
    )
    args = parser.parse_args(argv)
    config = TrainConfig.from_json(args.config_json)
    code = run_recorded(config, args.run_id, args.ray_address, stock=args.stock_flower)
    if code:
        # Flower's own threads may still wait for a ServerApp that never started.
        os._exit(code)
    return 0


def run_recorded(
    config: TrainConfig, run_id: str, ray_address: str | None, *, stock: bool = False
) -> int:
    """Run it; if Flower's runtime crashes around the round loop, record why (exit status 1)."""
    try:
        lifecycle.report_phase(config.db, run_id, "starting Flower and Ray in a process of its own")
        launch.run(config, run_id, ray_address=ray_address, stock=stock)
    except Exception as err:
        logging.getLogger("healthsync.simulation").exception("simulation crashed")
        reason = f"the Flower simulation crashed: {root_cause(err)}"
        runlog.fail_if_active(MetricsStore(config.db), run_id, reason)
        return 1
    return 0


def root_cause(err: BaseException) -> str:
    """The innermost exception's message, where Flower wraps the real error twice."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]


if __name__ == "__main__":
    sys.exit(main())
