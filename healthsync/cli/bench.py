"""``healthsync bench``: the stress-test sweep, printed as a table with ratios."""

from __future__ import annotations

import argparse
import os
import sys

from healthsync.config import BENCH_WAYS, DEFAULT_DB, MODELS


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="stress test: Flower one-client-per-hospital vs HealthSync blocks vs a vectorised loop "
        "vs the roofline",
        description="Run the same federated workload several ways at each hospital count: stock Flower "
        "with one client per hospital (flower), HealthSync's blocks in a cold process (healthsync) and "
        "on the warm training engine (warm), a single-process vectorised loop (vectorised), and the "
        "roofline (roofline): the same multiply-adds as single large matrix products over all rows, "
        "with no per-hospital separation. Prints seconds per round, hospital updates per second, peak "
        "memory and time to the first round, with the ratios healthsync/vectorised, "
        "flower/healthsync and each way's time over the roofline's (flower/roofline, "
        "healthsync/roofline, warm/roofline, vectorised/roofline). Results are also kept in the "
        "metrics store.",
    )
    bench.add_argument("--hospitals", type=int, nargs="+", default=[10, 100, 1000, 10000])
    bench.add_argument("--patients", type=int, default=500)
    bench.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    bench.add_argument(
        "--ways",
        nargs="+",
        default=list(BENCH_WAYS),
        choices=BENCH_WAYS,
        help="which ways to run (default: all); a ratio needs both of its ways",
    )
    bench.add_argument(
        "--rounds", type=int, default=4, help="per-round time is the median of rounds 2..R"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--work-dir", default="data/bench", help="where the sweep's federations are generated"
    )
    bench.add_argument("--db", default=str(DEFAULT_DB))
    bench.add_argument(
        "--max-flower-hospitals",
        type=int,
        default=1000,
        help="skip one-client-per-hospital above this many hospitals",
    )
    bench.add_argument("--sweep-id", default=None, help=argparse.SUPPRESS)
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import polars as pl
    from tqdm import tqdm

    from healthsync.bench.sweep import SweepConfig, ratios, run_sweep

    config = SweepConfig(
        hospitals=tuple(args.hospitals),
        patients=args.patients,
        models=tuple(args.models),
        ways=tuple(args.ways),
        rounds=args.rounds,
        seed=args.seed,
        work_dir=args.work_dir,
        db=args.db,
        max_flower_hospitals=args.max_flower_hospitals,
    )
    total = len(config.hospitals) * len(config.models) * len(config.ways)
    load_before = os.getloadavg()
    bar = tqdm(total=total, unit="measurement", file=sys.stderr)

    def progress(done: int, _total: int, result) -> None:
        bar.set_postfix_str(f"{result.way} {result.model} {result.hospitals}: {result.status}")
        bar.update(1)

    table = run_sweep(config, sweep_id=args.sweep_id, progress=progress)
    bar.close()
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=240,
        fmt_str_lengths=60,
        float_precision=3,
        tbl_hide_dataframe_shape=True,
    ):
        print(table)
        print(ratios(table))
    # The machine may be shared: a ratio means more next to how busy it was.
    print(
        f"load average (1, 5, 15 min): before {_load(load_before)}; after {_load(os.getloadavg())}"
    )
    return 0


def _load(averages: tuple[float, float, float]) -> str:
    return ", ".join(f"{a:.2f}" for a in averages)
