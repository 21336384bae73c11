"""Benchmark: a local Ray started the old way (every daemon) and the lean way, side by side.

    python tests/benchmarks/bench_ray_start.py [--repeat 5] [--actors 2]

Each start runs in a fresh Python process (so neither pays the other's
imports or caches), the two ways alternating. A start is timed from
``ray.init`` (the arguments ``simulation.launch.backend_config`` gives Flower)
until ``--actors`` one-CPU actors have answered a call, as a run's first round
needs; then the process counts Ray's processes, sums their memory (resident
and unique set sizes, psutil), times ``ray.shutdown`` and reports whether its
``/tmp/ray/session_*`` folder is still there (the old way's is removed by this
script afterwards, so nothing piles up). Prints each way's median and the ratio.
A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ONE_START = r"""
import contextlib, json, os, sys, time
import psutil, ray
from simulation import launch
from simulation.compat import ray as ray_compat

lean, actors = sys.argv[1] == "lean", int(sys.argv[2])
ray_compat.set_environment()
init = launch.backend_config()["init_args"]
start = ray_compat.lean_local_start() if lean else contextlib.nullcontext([])
with start:
    began = time.perf_counter()
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}}, **init)

    @ray.remote(num_cpus=1)
    class Ping:
        def ping(self):
            return os.getpid()

    pool = [Ping.remote() for _ in range(actors)]
    ray.get([p.ping.remote() for p in pool])
    ready = time.perf_counter() - began
    session = ray_compat.session_dir()
    rss = uss = 0
    names = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            info = child.memory_full_info()
            rss, uss = rss + info.rss, uss + info.uss
            names.append(child.name())
    began = time.perf_counter()
    ray.shutdown()
    stopped = time.perf_counter() - began
print(json.dumps({"ready": ready, "shutdown": stopped, "processes": len(names), "rss": rss,
                  "uss": uss, "session": str(session), "left": session.exists()}))
"""


def one_start(way: str, actors: int) -> dict:
    """Start and stop Ray once in a fresh process; what it measured."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", ONE_START, way, str(actors)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["left"]:  # the old way leaves its folder: remove it (it is this script's)
        shutil.rmtree(result["session"], ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    print(f"local Ray start to {args.actors} actors answering; {args.repeat} starts each way")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    results: dict[str, list[dict]] = {"old": [], "lean": []}
    for i in range(args.repeat):
        for way in ("old", "lean") if i % 2 == 0 else ("lean", "old"):
            results[way].append(r := one_start(way, args.actors))
            print(
                f"  {way:>4}: ready {r['ready']:5.2f} s, shutdown {r['shutdown']:4.2f} s, "
                f"{r['processes']:2d} processes, RSS {r['rss'] / 2**20:5.0f} MiB, "
                f"USS {r['uss'] / 2**20:5.0f} MiB, session folder left: {r['left']}"
            )
    medians = {
        way: {k: statistics.median(r[k] for r in rs) for k in ("ready", "shutdown", "rss", "uss")}
        for way, rs in results.items()
    }
    for way, m in medians.items():
        print(
            f"median {way:>4}: ready {m['ready']:.2f} s, shutdown {m['shutdown']:.2f} s, "
            f"{results[way][-1]['processes']} processes, RSS {m['rss'] / 2**20:.0f} MiB, "
            f"USS {m['uss'] / 2**20:.0f} MiB"
        )
    old, lean = medians["old"], medians["lean"]
    print(
        f"start saved: {old['ready'] - lean['ready']:.2f} s "
        f"(lean/old {lean['ready'] / old['ready']:.2f}); "
        f"memory saved: {(old['uss'] - lean['uss']) / 2**20:.0f} MiB USS"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}; finished {time.strftime('%H:%M:%S')}")


if __name__ == "__main__":
    main()
