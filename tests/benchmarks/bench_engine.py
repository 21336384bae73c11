"""Benchmark: time from start to the first recorded round, cold start against the warm engine.

    python tests/benchmarks/bench_engine.py [--hospitals 10 1000] [--repeat 2]

For each federation size (x 500 patients, generated in a temp folder) it
starts the same run (logreg, FedAvg, 3 rounds) side by side:

- cold: its own simulation process, as with no engine running (Python
  imports, Ray start, actor start-up, partition loading);
- warm: handed to the training engine (``healthsync engine start``), which
  was started once beforehand; its start-up time is printed too.

Seconds are wall-clock from ``lifecycle.start_run`` to the first round recorded in
the store. The first warm run on a federation also loads its partitions into
the engine's actors; later ones find them cached, so both are shown.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.runs import engine, lifecycle
from healthsync.runs.store import MetricsStore


def first_round(config: TrainConfig) -> tuple[float, int]:
    """Seconds from start to the first recorded round, and the pid that ran it."""
    started = time.time()
    run_id = lifecycle.start_run(config)
    run = lifecycle.wait_for_run(config.db, run_id, poll_seconds=0.02)
    assert run["status"] == "completed", run
    first = MetricsStore(config.db).scalar(
        "SELECT min(epoch(recorded_at)) FROM rounds WHERE run_id = ?", [run_id]
    )
    return float(first) - started, int(run["pid"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / "m.duckdb"
        feds = {}
        for n in args.hospitals:
            feds[n] = root / f"fed{n}"
            generate_federation(feds[n], hospitals=n, patients=args.patients, seed=1)

        def config(n: int) -> TrainConfig:
            return TrainConfig(data_dir=str(feds[n]), db=str(db), rounds=3)

        cold = {n: [first_round(config(n))[0] for _ in range(args.repeat)] for n in feds}
        started = time.time()
        engine.start(db, idle_timeout=600)
        ready = engine.wait_ready(db)
        print(f"engine start-up (once): {time.time() - started:.1f} s, {ready['nodes']} nodes")
        try:
            warm = {}
            for n in feds:
                times = []
                for _ in range(args.repeat + 1):
                    seconds, pid = first_round(config(n))
                    assert pid == ready["pid"], "the run did not go to the engine"
                    times.append(seconds)
                warm[n] = times
        finally:
            engine.stop(db)
    print()
    print("hospitals | cold first round (s) | warm, first on this data (s) | warm, data cached (s)")
    for n in feds:
        print(
            f"{n:>9} | {statistics.median(cold[n]):>20.2f} | {warm[n][0]:>28.2f} | "
            f"{statistics.median(warm[n][1:]):>21.2f}"
        )
        print(
            f"          cold runs: {', '.join(f'{t:.2f}' for t in cold[n])}; "
            f"warm runs: {', '.join(f'{t:.2f}' for t in warm[n])}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
