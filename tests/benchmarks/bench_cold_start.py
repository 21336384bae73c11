"""Benchmark: where a cold run's time to its first round goes.

    python tests/benchmarks/bench_cold_start.py [--hospitals 10] [--repeat 3]

Generates a small federation in a temporary folder, then starts ``--repeat``
cold runs of it one after another (``lifecycle.start_run(warm=False)``: a
process of its own with its own Ray, as ``healthsync bench``'s ``healthsync``
way does) and prints, for each, the seconds from the call to each phase the
run reports (its phase file: process up, ServerApp started, connecting to
the Flower nodes, reading the hospitals' data, training round 1) and to its
first recorded round. The phase file is a small JSON file, read every 20 ms;
the store only every 0.5 s, so watching costs the run next to nothing.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from healthsync.bench import BENCH_WORK
from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.runs import lifecycle, runlog
from healthsync.runs.store import MetricsStore


def timeline(data: Path, db: Path) -> list[tuple[float, str]]:
    """(seconds since the start call, what happened) for one cold run, until it ends."""
    config = TrainConfig(data_dir=str(data), db=str(db), model="mlp", rounds=2).replace(
        **BENCH_WORK
    )
    began = time.time()
    run_id = lifecycle.start_run(config, warm=False)
    events = [(time.time() - began, "process spawned")]
    phase_file, store = lifecycle.phase_file(db, run_id), MetricsStore(db)
    seen, asked = None, 0.0
    while True:
        try:
            phase = json.loads(phase_file.read_text())["phase"]
        except (OSError, ValueError, KeyError):
            phase = None
        if phase is not None and phase != seen:
            events.append((time.time() - began, f"phase: {phase}"))
            seen = phase
        if time.time() - asked > 0.5:
            asked = time.time()
            rounds = runlog.rounds_frame(store, run_id)
            if rounds.height:
                first = rounds.row(0, named=True)
                at = first["recorded_at"].timestamp() - began
                events.append((at, f"round 1 recorded ({first['seconds']:.2f} s in the round)"))
                break
            if runlog.get_run(store, run_id)["status"] in lifecycle.FINISHED:
                events.append((time.time() - began, "ended before a round"))
                break
        time.sleep(0.02)
    while runlog.get_run(store, run_id)["status"] not in lifecycle.FINISHED:
        time.sleep(0.5)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        data = Path(tmp) / "fed"
        generate_federation(data, hospitals=args.hospitals, patients=100, seed=0)
        for repeat in range(args.repeat):
            print(f"cold run {repeat + 1} of {args.repeat}, {args.hospitals} hospitals")
            for seconds, what in timeline(data, Path(tmp) / "m.duckdb"):
                print(f"  {seconds:6.2f} s  {what}")


if __name__ == "__main__":
    main()
