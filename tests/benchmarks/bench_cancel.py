"""Benchmark: how soon a cancel request stops a run, in rounds and seconds.

    python tests/benchmarks/bench_cancel.py [--hospitals 100] [--cancel-at 5] [--cold]

Starts a long run (logreg, FedAvg) on the warm training engine (``--cold``:
in a process of its own), while a reader polls the store the way the Live
training page does (run, rounds, per-hospital rounds, events, once a second),
cancels it at round ``--cancel-at`` through ``lifecycle.cancel_run`` (what the page
and the CLI call) and prints: seconds the cancel call took, the round showing
when it was made, the last round recorded, and seconds from the call to the
run's ``cancelled`` status. A benchmark, not a test: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from healthsync.config import TrainConfig
from healthsync.data.synthetic import generate_federation
from healthsync.runs import engine, lifecycle, runlog
from healthsync.runs.store import MetricsStore


def poll_like_the_live_page(db: Path, run_id: str, stop: threading.Event) -> None:
    store = MetricsStore(db)
    while not stop.is_set():
        runlog.list_runs(store)
        runlog.get_run(store, run_id)
        runlog.rounds_frame(store, run_id)
        runlog.hospital_rounds_frame(store, run_id)
        runlog.events_frame(store, run_id)
        stop.wait(1.0)


def measure(config: TrainConfig, cancel_at: int, *, warm: bool) -> dict[str, float]:
    store = MetricsStore(config.db)
    run_id = lifecycle.start_run(config, warm=warm)
    stop = threading.Event()
    reader = threading.Thread(
        target=poll_like_the_live_page, args=(Path(config.db), run_id, stop), daemon=True
    )
    reader.start()
    count = "SELECT count(*) FROM rounds WHERE run_id = ?"
    try:
        while (seen := int(store.scalar(count, [run_id]) or 0)) < cancel_at:
            time.sleep(0.02)
        clicked = time.perf_counter()
        lifecycle.cancel_run(config.db, run_id)
        call = time.perf_counter() - clicked
        run = lifecycle.wait_for_run(config.db, run_id, poll_seconds=0.02, timeout=300)
        stopped = time.perf_counter() - clicked
    finally:
        stop.set()
        reader.join()
    last = int(store.scalar(count, [run_id]) or 0)
    rounds = runlog.rounds_frame(store, run_id)
    per_round = float(rounds["seconds"].mean()) if rounds.height else float("nan")
    return {
        "status": run["status"],
        "call_s": call,
        "seen": seen,
        "last": last,
        "stopped_s": stopped,
        "round_s": per_round,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=100)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--cancel-at", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="runs in their own process")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = root / "m.duckdb"
        fed = generate_federation(root / "fed", hospitals=args.hospitals, patients=args.patients)
        config = TrainConfig(data_dir=str(fed.data_dir), db=str(db), rounds=1000)
        if not args.cold:
            engine.start(db, idle_timeout=300)
            engine.wait_ready(db)
        try:
            for _ in range(args.repeat):
                m = measure(config, args.cancel_at, warm=not args.cold)
                print(
                    f"{m['status']}: cancel call {m['call_s']:.3f} s at round {m['seen']}, "
                    f"stopped after round {m['last']} ({m['last'] - m['seen']} more), "
                    f"{m['stopped_s']:.2f} s after the call; {m['round_s']:.3f} s per round"
                )
        finally:
            if not args.cold:
                engine.stop(db)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
