"""Benchmark: memory the app's background processes hold after a demo session (target: under 3 GiB).

    python tests/benchmarks/bench_demo_memory.py [--hospitals 10] [--patients 500]
        [--cohort-via service|engine]

In a fresh temp folder: generates a federation (``healthsync data generate``),
starts the warm training engine, does one run on it, three cohort queries
(by default through the analytics service, kept warm as the Cohort page keeps
it; ``--cohort-via engine`` lets the engine answer them, as it does when it
runs for the same store) and the smallest sensible stress-test sweep
(``healthsync bench``: 10 hospitals, logreg, cold and warm, 2 rounds). Then it
sums the memory of every HealthSync and Ray process still alive that the
session started (this script's descendants, and any process naming the temp
folder): unique set size (USS, what stopping them would free) and resident
set size (RSS, which counts shared libraries once per process), and the
proportional set size between them (PSS). Prints each
process, the totals against 3 GiB, then stops everything it started and
checks that nothing (process or ``/tmp/ray`` session folder) is left.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from healthsync import auth
from healthsync.cohort import explore, stop_service
from healthsync.cohort.service import FlowerExecutor, state_dir_for
from healthsync.config import TrainConfig
from healthsync.runs import engine, lifecycle

TARGET = 3 * 2**30
ROOT = Path(__file__).resolve().parents[2]
QUERIES = [
    {"where": ["age >= 60"], "group_by": ["hospital"], "stats": ["count"]},
    {"where": [], "group_by": ["sex"], "stats": ["prevalence:diabetes", "mean:bmi"]},
    {"where": ["bmi >= 30"], "group_by": [], "stats": ["histogram:age"]},
]


def healthsync(*args: str) -> None:
    """Run one ``healthsync`` command as a user would; stop the benchmark if it fails."""
    subprocess.run([sys.executable, "-m", "healthsync", *args], check=True, cwd=ROOT)


def session_processes(folder: Path) -> list[psutil.Process]:
    """This script's descendants, and every process whose command line names ``folder``."""
    found = {p.pid: p for p in psutil.Process().children(recursive=True)}
    mark = str(folder)
    for process in psutil.process_iter(["cmdline"]):
        if mark in " ".join(process.info["cmdline"] or ()):
            found.setdefault(process.pid, process)
    return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def describe(process: psutil.Process) -> str:
    """A short name: the Ray role (``ray::...``) or the Python module it runs."""
    cmd = process.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if "-m" in cmd:
        return " ".join(cmd[cmd.index("-m") + 1 : cmd.index("-m") + 3])
    return Path(cmd[0]).name if cmd else process.name()


def measure(folder: Path) -> tuple[dict[str, int], list[psutil.Process]]:
    """USS, PSS and RSS summed over the session's processes (printed one by one), and those."""
    total = {"uss": 0, "pss": 0, "rss": 0}
    alive = session_processes(folder)
    for process in sorted(alive, key=lambda p: p.pid):
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()._asdict()
            total = {k: total[k] + info.get(k, 0) for k in total}
            sizes = "  ".join(f"{k.upper()} {info.get(k, 0) / 2**20:5.0f} MiB" for k in total)
            print(f"  {process.pid:>7}  {sizes}  {describe(process)}")
    return total, alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--cohort-via", choices=("service", "engine"), default="service")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hsdemo-"))
    data, db, home = (
        folder / "data" / "demo",
        folder / "data" / "healthsync.duckdb",
        folder / "home",
    )
    os.environ["HEALTHSYNC_HOME"] = str(home)
    started = time.perf_counter()
    print(f"demo session in {folder}; load average {os.getloadavg()[0]:.1f}")
    drivers: list[int] = []  # the engine's and the service's pids: their Ray session folders
    try:
        healthsync(
            "data", "generate", "--hospitals", str(args.hospitals), "--patients",
            str(args.patients), "--seed", "0", "--out", str(data),
        )  # fmt: skip
        users = auth.UserStore(home, rounds=4)
        users.ensure()
        users.add("alice", "analyst", "a-long-password")

        engine.start(db)
        ready = engine.wait_ready(db)
        print(f"engine ready: {ready['nodes']} nodes, pid {ready['pid']}")
        run_id = lifecycle.start_run(TrainConfig(data_dir=str(data), db=str(db), rounds=3))
        run = lifecycle.wait_for_run(db, run_id, poll_seconds=0.2)
        print(f"run {run_id}: {run['status']} (on the engine: {run.get('pid') == ready['pid']})")

        executor = None if args.cohort_via == "engine" else FlowerExecutor(state_dir_for(db))
        for query in QUERIES:
            result = explore(data, db=db, user="alice", executor=executor, **query)
            print(f"cohort query answered: {result.query}")

        healthsync(
            "bench", "--hospitals", str(args.hospitals), "--patients", "200", "--models",
            "logreg", "--ways", "healthsync", "warm", "--rounds", "2", "--work-dir",
            str(folder / "bench"), "--db", str(db),
        )  # fmt: skip
        time.sleep(5)  # processes that are ending on their own have ended
        print(f"after the demo session ({time.perf_counter() - started:.0f} s), still alive:")
        total, alive = measure(folder)
        drivers = [p.pid for p in alive if describe(p).startswith("simulation.")]
        verdict = "under" if total["uss"] < TARGET else "OVER"
        print(
            f"{len(alive)} processes: total USS {total['uss'] / 2**30:.2f} GiB ({verdict} the "
            f"3 GiB target), PSS {total['pss'] / 2**30:.2f} GiB, RSS {total['rss'] / 2**30:.2f} GiB "
            "(RSS counts shared libraries once per process)"
        )
    finally:
        print("stopping:", engine.stop(db), "engine;", stop_service(data, db=db), "service")
        deadline = time.monotonic() + 60
        while (left := session_processes(folder)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in left:
            with contextlib.suppress(psutil.Error):
                print(f"  killing leftover {process.pid} {describe(process)}")
                process.kill()
        sessions = [s.name for pid in drivers for s in Path("/tmp/ray").glob(f"session_*_{pid}")]
        print(f"left behind: {len(left)} processes, Ray session folders {sessions or 'none'}")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
