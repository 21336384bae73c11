"""Benchmark: the first read of a new data set by the nodes, before and after a change, side by side.

    python tests/benchmarks/bench_first_read.py [--hospitals 2000] [--before 08b04c0] [--repeat 3]

A run's first message (the scaling query) makes every hospital read its rows
through its own accessor, check them against the manifest and encode them;
on a new data set nothing is cached yet, and a 2,000-hospital run on the warm
engine waited on this for seconds. This generates a federation with
``healthsync data generate``, then times exactly what the nodes do: one
process per CPU (as the engine has one Ray actor per CPU), each the ClientApp
of one node answering the scaling query for its block of hospitals in chunks
of 64, as the server asks. Wall-clock seconds from "go" until every node has
answered, after every hospital's ``.cache`` folder is removed (first read), and
again in fresh processes with the caches left in place (a later run's read),
with the CPU seconds the nodes used: on a machine busy with other work the
wall-clock time mostly measures the share of the CPUs the nodes got.

"before" runs the ``healthsync`` and ``simulation`` packages of git ref
``--before`` (extracted to a temp folder), "after" this worktree's; each
repeat runs both, alternately, on the same files. Medians are printed with
the ratio. A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The commit before the read path was made faster (issue 14).
BEFORE = "08b04c0"

CLI = "import sys; from healthsync.cli import main; sys.exit(main())"  # `healthsync`
# One node: import everything first (untimed, as in a warm engine's actors), say "ready", wait for "go", then
# answer the scaling query for hospitals [first, last) as the server asks it.
NODE = r"""
import sys, time
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
import polars  # a warm engine's actors have it loaded (their rehearsal run read data)
from simulation.client_app import app

data_dir, target, partition, block, chunk, total = sys.argv[1:]
partition, block, chunk, total = int(partition), int(block), int(chunk), int(total)
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
context = Context(run_id=1, node_id=101 + partition, node_config={"partition-id": partition},
                  state=RecordDict(), run_config={})
first, last = partition * block, min(partition * block + block, total)
print("ready", flush=True)
sys.stdin.readline()
started, cpu = time.perf_counter(), time.process_time()
for start in range(first, last, chunk):
    config = {"data-dir": data_dir, "target": target, "block-size": block,
              "hospitals": list(range(start, min(start + chunk, last)))}
    msg = Message(content=RecordDict({"config": ConfigRecord(config)}), message_type="query",
                  dst_node_id=101 + partition)
    reply = app(msg, context)
    if reply.has_error() or len(reply.content["errors"]):
        raise SystemExit(f"node {partition}: {reply.error if reply.has_error() else dict(reply.content['errors'])}")
print(time.perf_counter() - started, time.process_time() - cpu, flush=True)
"""


def extract(ref: str, into: Path) -> Path:
    """The library and simulation packages as of git ``ref``, for the "before" side."""
    archive = subprocess.run(
        ["git", "archive", ref, "healthsync", "simulation"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def clear_caches(data_dir: Path) -> None:
    for cache in (data_dir / "hospitals").glob("*/.cache"):
        shutil.rmtree(cache)


def nodes_read(
    code: Path, data_dir: Path, hospitals: int, nodes: int, chunk: int
) -> tuple[float, float]:
    """Wall seconds for ``nodes`` node processes running ``code`` to answer for every
    hospital, and the CPU seconds they used (all their threads)."""
    block = -(-hospitals // nodes)
    env = {**os.environ, "PYTHONPATH": str(code)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                NODE,
                str(data_dir),
                "diabetes",
                *map(str, (p, block, chunk, hospitals)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for p in range(nodes)
    ]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a node did not start ({code})")
    started = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    cpu = 0.0
    for proc in procs:
        cpu += float(proc.stdout.readline().split()[1])
        if proc.wait() != 0:
            raise SystemExit(f"a node failed ({code})")
    return time.perf_counter() - started, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--before", default=BEFORE, help="git ref of the code to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk", type=int, default=64, help="hospitals per message")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fed"
        sizes = ["--hospitals", str(args.hospitals), "--patients", str(args.patients)]
        subprocess.run(
            [sys.executable, "-c", CLI, "data", "generate", "--out", str(data), *sizes],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        sides = {"before": extract(args.before, Path(tmp) / "before"), "after": ROOT}
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        print(
            f"{args.hospitals} hospitals x ~{args.patients} patients, {args.nodes} node "
            f"processes, load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)"
        )
        for _ in range(args.repeat):
            for side, code in sides.items():
                clear_caches(data)
                for read in ("first", "later"):
                    wall, cpu = nodes_read(code, data, args.hospitals, args.nodes, args.chunk)
                    runs.setdefault((read, side), []).append((wall, cpu))
                    print(f"  {side}, {read} read: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print()
    print(
        "read                      | before: wall, CPU (s) | after: wall, CPU (s) | ratio wall, CPU"
    )
    for read, what in (("first", "first (nothing cached)"), ("later", "later (fresh processes)")):
        b = [statistics.median(x) for x in zip(*runs[(read, "before")], strict=True)]
        a = [statistics.median(x) for x in zip(*runs[(read, "after")], strict=True)]
        print(
            f"{what:<25} | {b[0]:>11.2f}, {b[1]:>7.2f} | {a[0]:>10.2f}, {a[1]:>7.2f} | "
            f"{b[0] / a[0]:>5.1f}x, {b[1] / a[1]:.1f}x"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
