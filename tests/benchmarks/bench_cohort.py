"""Benchmark: cohort queries over 100 hospitals x 5,000 patients through the Flower service.

    python tests/benchmarks/bench_cohort.py [--hospitals 100] [--patients 5000] [--block-size N]

Generates the federation with `healthsync data generate` (as a user would),
then asks cohort queries through the library's one entry point as an
analyst: the first starts the warm analytics service (Flower simulation on
Ray) and waits for it; the next ones are all different (no cache hits); the
last repeats one (a cache hit). Prints seconds per query, end to end in the
asking process (planning, ledger, audit, Flower round trip, guards).
``--block-size`` sets hospitals per Flower node (default: a training run's
layout, one per hospital up to 32 hospitals). ``--engine`` starts the warm training engine first (as the
app does) and times the same queries answered by its nodes instead: no service
starts. A benchmark, not a test: numbers depend on machine and load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from healthsync import auth
from healthsync.cohort import explore, stop_service
from healthsync.cohort.policy import POLICY_NAME
from healthsync.cohort.service import FlowerExecutor, state_dir_for
from healthsync.runs import engine

QUERIES = [  # (where, group_by, stats): all different
    ([], ["sex"], ["prevalence:diabetes"]),
    (["smoking == current"], ["age"], ["mean:bmi", "std:bmi"]),
    (["diabetes == 1"], [], ["histogram:age"]),
    ([], ["hospital", "smoking"], ["count"]),  # (count by hospital alone is Overview's: free)
    ([], ["hospital", "sex"], ["prevalence:hypertension"]),
    (["age >= 60"], ["bmi"], ["mean:systolic_bp"]),
    ([], ["diabetes"], ["histogram:hba1c"]),
    (["sex == F", "age >= 40", "age < 65"], ["smoking", "physical_activity"], ["count"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=100)
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--engine", action="store_true", help="ask the warm training engine")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, db, home = Path(tmp) / "fed", Path(tmp) / "store.duckdb", Path(tmp) / "home"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "healthsync", "data", "generate", "--hospitals",
             str(args.hospitals), "--patients", str(args.patients), "--heterogeneity", "0",
             "--out", str(data)],
            check=True, capture_output=True,
        )  # fmt: skip
        print(
            f"generated {args.hospitals} x {args.patients} in {time.perf_counter() - started:.1f} s"
        )
        users = auth.UserStore(home, rounds=4)
        users.ensure()
        users.add("bench", "analyst", "a-long-password")
        (home / POLICY_NAME).write_text("budget: 100\n")  # room for every query below
        if args.engine:
            started = time.perf_counter()
            engine.start(db, idle_timeout=600)
            engine.wait_ready(db)
            print(f"training engine ready in {time.perf_counter() - started:.1f} s (once)")
        executor = FlowerExecutor(
            state_dir_for(db),
            block_size=args.block_size,
            progress=lambda line: print(f"  {line}", flush=True),
            engine_db=db if args.engine else None,
        )

        def ask(where, group_by, stats) -> tuple[float, bool]:
            t = time.perf_counter()
            result = explore(
                data, db=db, user="bench", where=where, group_by=group_by, stats=stats,
                home=home, executor=executor,
            )  # fmt: skip
            return time.perf_counter() - t, result.cached

        try:
            print(f"cpus: {os.cpu_count()}, block size: {args.block_size or 'default'}")
            cold, _ = ask(*QUERIES[0])
            first = (
                "first (the warm engine answers)"
                if args.engine
                else "cold (starts the service, then answers)"
            )
            print(f"{first}: {cold:6.2f} s")
            warm = []
            for query in QUERIES[1:]:
                seconds, cached = ask(*query)
                assert not cached
                warm.append(seconds)
                print(f"warm {_describe(query):<70} {seconds:6.3f} s")
            cached_seconds, cached = ask(*QUERIES[0])
            assert cached
            print(
                f"repeat of the first query (every number released before, asked of the hospitals again): {cached_seconds:6.3f} s"
            )
            print(
                f"warm: median {statistics.median(warm):.3f} s, max {max(warm):.3f} s "
                f"over {len(warm)} different queries"
            )
        finally:
            stop_service(data, db=db)
            if args.engine:
                engine.stop(db)


def _describe(query) -> str:
    where, group_by, stats = query
    text = ",".join(stats)
    if where:
        text += " where " + " and ".join(where)
    if group_by:
        text += " by " + ",".join(group_by)
    return text


if __name__ == "__main__":
    main()
