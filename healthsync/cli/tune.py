"""``healthsync tune``: search learning rate, local work and strategy by federated validation loss."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from healthsync.config import (
    DEFAULT_DATA,
    DEFAULT_DB,
    DEFAULT_TUNING_BUDGET,
    DEFAULT_TUNING_MIN_ROUNDS,
    MAX_TUNING_BUDGET,
    MODELS,
    TrainConfig,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    tune = subparsers.add_parser(
        "tune",
        help="find good training settings for a federation by federated validation loss",
        description="Search the learning rate, local work (--local-steps) and strategy "
        "(fedavg, fedprox with its mu, fedadam and fedyogi with their server learning rate) "
        "by successive halving: --budget seeded candidates train a few rounds each, the best "
        "third by federated validation loss train three times as many, until one is left. "
        "Every trial is a real federated run (on the warm engine when one is running), named "
        "'tune:<id> trial <k>'; only validation rows decide, never test rows. With --json the "
        "last line is one JSON object: best (settings `train` accepts), best_run_id, trials.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tune.add_argument("--data", default=str(DEFAULT_DATA), help="federation directory")
    tune.add_argument("--db", default=str(DEFAULT_DB), help="DuckDB metrics store")
    tune.add_argument(
        "--budget",
        type=int,
        default=DEFAULT_TUNING_BUDGET,
        help=f"candidates in the first rung, 1 to {MAX_TUNING_BUDGET}; about 1.5 x this many "
        "runs in all",
    )
    tune.add_argument(
        "--min-rounds",
        type=int,
        default=DEFAULT_TUNING_MIN_ROUNDS,
        help="the most rounds of a first-rung trial; each later rung trains 3 x as many",
    )
    tune.add_argument(
        "--max-rounds",
        type=int,
        default=d.max_rounds,
        help="no trial trains more rounds than this",
    )
    tune.add_argument("--target", default=None, help="binary outcome column; None: the data's own")
    tune.add_argument("--model", default=d.model, help=f"one of {', '.join(MODELS)}")
    tune.add_argument(
        "--validation-share",
        type=float,
        default=d.validation_share,
        help="share of each hospital's training rows held out to score trials by",
    )
    tune.add_argument("--seed", type=int, default=d.seed, help="candidates and runs are seeded")
    tune.add_argument("--json", action="store_true", help="print the result as one JSON object")
    tune.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from healthsync.errors import HealthSyncError
    from healthsync.runs import tuning

    tuning.check_budget(args.budget)
    if args.min_rounds < 1:
        raise HealthSyncError(f"min rounds must be >= 1, got {args.min_rounds}")
    config = TrainConfig(
        data_dir=args.data,
        db=args.db,
        target=args.target,
        model=args.model,
        seed=args.seed,
        validation_share=args.validation_share,
        max_rounds=args.max_rounds,
    )

    def report(trial: dict[str, Any]) -> None:
        loss = "none" if trial["val_loss"] is None else f"{trial['val_loss']:.4f}"
        print(
            f"trial {trial['trial']} (rung {trial['rung']}, <= {trial['rounds']} rounds) "
            f"{trial['run_id']} {trial['status']}: validation loss {loss}  "
            + " ".join(f"{k}={v}" for k, v in trial["settings"].items()),
            file=sys.stderr,
            flush=True,
        )

    result = tuning.tune(config, budget=args.budget, min_rounds=args.min_rounds, on_trial=report)
    if args.json:
        print(json.dumps(result))
    else:
        best = next(t for t in result["trials"] if t["run_id"] == result["best_run_id"])["settings"]
        print(f"{result['tuning_id']}: best run {result['best_run_id']}")
        print("train with: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in best.items()))
    return 0
