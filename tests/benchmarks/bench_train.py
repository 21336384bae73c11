"""Benchmark: the default demo run end to end, and the wait until its first round is recorded.

    python tests/benchmarks/bench_train.py [--hospitals 10] [--rounds 10] [--repeat 2]

Generates the demo federation (10 hospitals x 500 patients) in a temp folder,
then runs `healthsync train` as a user would (its own simulation process,
Flower on Ray) and prints, for each repetition: seconds from start to the
first recorded round, seconds per later round, and seconds end to end.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.runs import lifecycle
from healthsync.runs.store import MetricsStore


def one_run(data: Path, db: Path, rounds: int) -> tuple[float, float, float]:
    started = time.time()
    run_id = lifecycle.start_run(TrainConfig(data_dir=str(data), db=str(db), rounds=rounds))
    run = lifecycle.wait_for_run(db, run_id, poll_seconds=0.05)
    total = time.time() - started
    assert run["status"] == "completed", run
    times = (
        MetricsStore(db)
        .frame(
            "SELECT round, epoch(recorded_at) AS at FROM rounds WHERE run_id = ? ORDER BY round",
            [run_id],
        )["at"]
        .to_list()
    )
    first = times[0] - started
    per_round = (times[-1] - times[0]) / max(len(times) - 1, 1)
    return first, per_round, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        generate_federation(
            data, hospitals=args.hospitals, patients=args.patients, seed=0, heterogeneity=0.5
        )
        print(
            f"demo run: {args.hospitals} hospitals x {args.patients} patients, {args.rounds} rounds, logreg, fedavg"
        )
        print(f"{'run':>3}  {'first round (s)':>15}  {'per round (s)':>13}  {'end to end (s)':>14}")
        results = []
        for i in range(args.repeat):
            first, per_round, total = one_run(data, Path(tmp) / "m.duckdb", args.rounds)
            results.append((first, per_round, total))
            print(f"{i + 1:>3}  {first:>15.2f}  {per_round:>13.3f}  {total:>14.2f}")
        print(
            f"median: first round {statistics.median(r[0] for r in results):.2f} s, "
            f"end to end {statistics.median(r[2] for r in results):.2f} s"
        )


if __name__ == "__main__":
    main()
