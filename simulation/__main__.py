"""``python -m simulation run --run-id ID --config-json JSON``: one run, in this process.

``healthsync.runs.start_run`` starts this as its own process, so a run
outlives the browser tab or terminal that started it.
"""

from __future__ import annotations

import argparse
import sys

from healthsync.config import TrainConfig
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
    launch.run(config, args.run_id, ray_address=args.ray_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
