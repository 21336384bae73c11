"""``healthsync train``, ``healthsync predict`` and ``healthsync compare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from healthsync.config import (
    ATTACKS,
    DEFAULT_DATA,
    DEFAULT_DB,
    DP_SIDES,
    MODELS,
    STRATEGIES,
    TrainConfig,
    parse_rounds,
)
from healthsync.errors import HealthSyncError


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="run federated training (Flower on Ray) and record it in the metrics store",
        description="Run federated training: every hospital is a Flower client on Ray. "
        "Shows a progress bar by round; with --json the last line is one JSON object.",
    )
    add_training_arguments(train)
    train.add_argument(
        "--name",
        default=None,
        help="a name for the run, shown with its id in the app's run pickers and `runs list`",
    )
    train.add_argument("--json", action="store_true", help="print the result as one JSON object")
    train.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when the run has warnings (a hospital failed in more than half the rounds)",
    )
    train.set_defaults(func=cmd_train)

    predict = subparsers.add_parser(
        "predict",
        help="score new patients with a run's global model",
        description="Print each patient's predicted risk from the run's final global model.",
    )
    predict.add_argument("--run", required=True, metavar="RUN_ID")
    predict.add_argument("--db", default=str(DEFAULT_DB))
    predict.add_argument("--input", required=True, metavar="PATIENTS.csv")
    predict.add_argument("--json", action="store_true", help="print a JSON list instead of CSV")
    predict.set_defaults(func=cmd_predict)

    compare = subparsers.add_parser(
        "compare",
        help="pooled vs local-only vs federated vs personalised, per hospital and overall",
        description="Train the reference baselines (pooled: a simulation-only yardstick; "
        "local-only: each hospital alone) and compare them with a federated run "
        "(--run, or a new one with the same settings) and its personalised models (each "
        "hospital fine-tunes the run's global model on its own rows). Every method fits the "
        "same rows and is chosen on the same validation rows by the same rule (--rounds "
        "auto: lowest validation loss, --patience); the chosen column says which round or "
        "epoch each kept.",
    )
    add_training_arguments(compare)
    compare.add_argument("--run", metavar="RUN_ID", help="compare against this finished run")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=cmd_compare)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="federation directory (default: %(default)s)"
    )
    parser.add_argument(
        "--db", default=str(DEFAULT_DB), help="DuckDB metrics store (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds",
        type=_rounds,
        default=d.rounds,
        metavar="N|auto",
        help=f"rounds to train (default: {d.rounds}). auto stops when the federated "
        f"validation loss has not improved for --patience rounds (default {d.patience}), "
        f"at most --max-rounds (default {d.max_rounds}), and keeps the best round's model; "
        "N trains exactly N rounds and keeps the last",
    )
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=d.max_rounds,
        help=f"the most rounds --rounds auto may train (default: {d.max_rounds})",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="--rounds auto stops after this many rounds without a lower validation loss "
        f"(default: {d.patience})",
    )
    parser.add_argument(
        "--validation-share",
        type=float,
        default=d.validation_share,
        metavar="SHARE",
        help="share of each hospital's training rows held out, stratified and seeded, to "
        "choose the round (and the baselines' epoch) by; never test rows "
        f"(default: {d.validation_share})",
    )
    parser.add_argument(
        "--strategy",
        default=d.strategy,
        help=f"one of {', '.join(STRATEGIES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--model", default=d.model, help=f"one of {', '.join(MODELS)} (default: %(default)s)"
    )
    parser.add_argument(
        "--target", default=None, help="binary outcome column (default: the data's)"
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=d.fraction,
        help="share of hospitals sampled for training each round (default: %(default)s)",
    )
    parser.add_argument(
        "--local-epochs",
        type=_local_epochs,
        default=d.local_epochs,
        metavar="N|auto",
        help=f"epochs each hospital trains per round (default: {d.local_epochs}). auto: each "
        "hospital picks ceil(--local-steps / its batches per epoch) epochs from its own "
        "training rows, at least 1, so small and large sites both take about --local-steps "
        "optimiser steps a round; N: every hospital trains N epochs",
    )
    parser.add_argument(
        "--local-steps",
        type=int,
        default=d.local_steps,
        help=f"--local-epochs auto's target optimiser steps per round (default: {d.local_steps})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="rows per SGD step (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help="SGD learning rate of every hospital and of the baselines (default: %(default)s; "
        "why: README, Defaults that fit the data)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seeds splits, batches and models (default: %(default)s)",
    )
    parser.add_argument(
        "--proximal-mu", type=float, default=d.proximal_mu, help="FedProx mu (default: %(default)s)"
    )
    parser.add_argument(
        "--server-lr",
        type=float,
        default=d.server_lr,
        help="server learning rate of FedAdam/Yogi/Adagrad (default: %(default)s)",
    )
    parser.add_argument(
        "--trim-beta",
        type=float,
        default=d.trim_beta,
        help="share FedTrimmedAvg trims at each end (default: %(default)s)",
    )
    parser.add_argument(
        "--krum-f",
        type=int,
        default=d.krum_f,
        help="Krum's tolerated attackers (default: %(default)s)",
    )
    parser.add_argument(
        "--min-hospitals",
        type=int,
        default=d.min_hospitals,
        help="the run fails if fewer hospitals answer a round (default: %(default)s)",
    )
    parser.add_argument(
        "--fail-hospital",
        action="append",
        default=[],
        metavar="ID",
        help="fault drill: this hospital's client raises every round",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=d.block_size,
        help="hospitals one Flower client trains at once, vectorised (1: one client per "
        "hospital; 0: automatic; default: %(default)s)",
    )
    parser.add_argument("--ray-address", default=None, help="run on an existing Ray cluster")
    add_privacy_arguments(parser, d)


def add_privacy_arguments(parser: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Differential privacy, secure aggregation, and the dropout/straggler/attack drills."""
    dp = parser.add_argument_group("privacy (docs/privacy.md)")
    dp.add_argument(
        "--dp-noise",
        type=float,
        default=d.dp_noise,
        metavar="MULTIPLIER",
        help="differential privacy: Gaussian noise multiplier (with --dp-clip; default: "
        "%(default)s, off)",
    )
    dp.add_argument(
        "--dp-clip",
        type=float,
        default=d.dp_clip,
        metavar="NORM",
        help="differential privacy: clip each hospital's update to this L2 norm (default: "
        "%(default)s, off)",
    )
    dp.add_argument(
        "--dp-delta",
        type=float,
        default=d.dp_delta,
        metavar="D",
        help="report epsilon at this delta (default: %(default)s)",
    )
    dp.add_argument(
        "--dp-epsilon-budget",
        type=float,
        default=d.dp_epsilon_budget,
        metavar="E",
        help="stop (completed) before a round would spend more epsilon (default: "
        "%(default)s, no budget)",
    )
    dp.add_argument(
        "--dp-side",
        default=d.dp_side,
        help=f"where to clip: {', '.join(DP_SIDES)} (default: %(default)s)",
    )
    dp.add_argument(
        "--secagg",
        action="store_true",
        help="secure aggregation (Flower's SecAgg+): the server sees only the sum of the "
        "hospitals' models; fedavg/fedprox, one Flower node per hospital, no DP",
    )
    drills = parser.add_argument_group("robustness drills")
    drills.add_argument(
        "--dropout",
        type=float,
        default=d.dropout,
        metavar="P",
        help="chance that a hospital sits out a round's training (default: %(default)s)",
    )
    drills.add_argument(
        "--straggler-delay",
        type=float,
        default=d.straggler_delay,
        metavar="SECONDS",
        help="each hospital's simulated delay per round is uniform in [0, SECONDS) "
        "(default: %(default)s)",
    )
    drills.add_argument(
        "--round-timeout",
        type=float,
        default=d.round_timeout,
        metavar="SECONDS",
        help="hospitals later than this are dropped from the round (0: no timeout; "
        "default: %(default)s)",
    )
    drills.add_argument(
        "--adversarial",
        type=int,
        default=d.adversarial,
        metavar="K",
        help="K hospitals, chosen from the seed, attack every round (with --attack; "
        "default: %(default)s)",
    )
    drills.add_argument("--attack", default=d.attack, help=f"one of {', '.join(ATTACKS)}")


def _rounds(text: str) -> int | str:
    """``--rounds``: a whole number or ``auto``."""
    try:
        return parse_rounds(text)
    except HealthSyncError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _local_epochs(text: str) -> int | str:
    """``--local-epochs``: a whole number or ``auto``."""
    try:
        return parse_rounds(text, "local epochs")
    except HealthSyncError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data_dir=args.data,
        db=args.db,
        target=args.target,
        model=args.model,
        strategy=args.strategy,
        rounds=args.rounds,
        max_rounds=args.max_rounds,
        patience=args.patience,
        validation_share=args.validation_share,
        fraction=args.fraction,
        local_epochs=args.local_epochs,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        proximal_mu=args.proximal_mu,
        server_lr=args.server_lr,
        trim_beta=args.trim_beta,
        krum_f=args.krum_f,
        min_hospitals=args.min_hospitals,
        fail_hospitals=tuple(args.fail_hospital),
        block_size=args.block_size,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        dp_delta=args.dp_delta,
        dp_epsilon_budget=args.dp_epsilon_budget,
        dp_side=args.dp_side,
        secagg=args.secagg,
        dropout=args.dropout,
        straggler_delay=args.straggler_delay,
        round_timeout=args.round_timeout,
        adversarial=args.adversarial,
        attack=args.attack,
    )


def run_and_watch(
    config: TrainConfig, *, ray_address: str | None, quiet: bool, name: str | None = None
) -> dict[str, Any]:
    """Start the run (named ``name``) and show a progress bar until it ends.

    Ctrl-C asks the run to stop after its current round (status ``cancelled``).
    """
    from tqdm import tqdm

    from healthsync.runs import lifecycle, runlog
    from healthsync.runs.store import MetricsStore

    run_id = lifecycle.start_run(config, ray_address=ray_address, name=name)
    log_file = Path(config.db).resolve().parent / "logs" / f"{run_id}.log"
    print(f"run {run_id} started (log: {log_file})", file=sys.stderr)
    bar = tqdm(
        total=config.round_limit,
        desc=run_id,
        unit="round",
        file=sys.stderr,
        disable=quiet and not sys.stderr.isatty(),
    )

    def advance(done: int) -> None:
        bar.update(done - bar.n)

    try:
        lifecycle.wait_for_run(config.db, run_id, on_round=advance)
    except KeyboardInterrupt:
        lifecycle.cancel_run(config.db, run_id)
        print(f"\ncancelling {run_id} after the current round...", file=sys.stderr)
        lifecycle.wait_for_run(config.db, run_id, on_round=advance)
    finally:
        bar.close()
    return runlog.run_detail(MetricsStore(config.db), run_id)


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    detail = run_and_watch(config, ray_address=args.ray_address, quiet=args.json, name=args.name)
    summary = {k: detail[k] for k in ("run_id", "status", "reason", "final", "warnings")}
    summary["rounds_done"] = len(detail["rounds"])
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        f = summary["final"]
        print(
            f"{summary['run_id']}: {summary['status']} after {summary['rounds_done']} round(s)"
            + (f" ({summary['reason']})" if summary["reason"] else "")
        )
        if f["auc"] is not None:
            print(
                f"final  loss {f['loss']:.4f}  AUC {f['auc']:.4f}  accuracy {f['accuracy']:.4f}  Brier {f['brier']:.4f}"
            )
    if summary["status"] != "completed":
        return 1
    return 1 if args.strict and summary["warnings"] else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from healthsync.runs.store import MetricsStore

    MetricsStore.existing(args.db)  # before torch is imported: a typo answers at once
    from healthsync.runs.predict import predict_file

    risks = predict_file(args.db, args.run, args.input)
    if args.json:
        print(json.dumps(risks.to_dicts()))
    else:
        sys.stdout.write(risks.write_csv())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from healthsync.runs.baselines import compare_table

    config = config_from_args(args)
    run_id = args.run
    if run_id is None:
        detail = run_and_watch(config, ray_address=args.ray_address, quiet=args.json)
        run_id = detail["run_id"]
        if detail["status"] != "completed":
            print(
                f"error: federated run {run_id} {detail['status']}: {detail['reason']}",
                file=sys.stderr,
            )
            return 1
    table = compare_table(config, run_id, progress=not args.json)
    if args.json:
        from healthsync.runs.runlog import to_records

        print(json.dumps({"run_id": run_id, "rows": to_records(table)}))
    else:
        import polars as pl

        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, float_precision=4):
            print(table)
    return 0
