"""Benchmark ``healthsync data generate`` at scale: wall time and peak memory.

    python tests/benchmarks/bench_generate.py                  # 10,000 hospitals x 500 patients
    python tests/benchmarks/bench_generate.py --hospitals 1000 # a quicker look

Runs the real command in a child process and samples the resident memory of
that process and all its descendants, so any worker processes count too.
Targets: at most 60 s wall time on 2 cores and a peak below 4 GiB. Exits 1 if
either is missed. Not a pytest test (it takes tens of seconds and ~200 MB of disk).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from healthsync.bench.proctree import descendants, rss_bytes

TARGET_SECONDS = 60.0
TARGET_BYTES = 4 * 1024**3


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant."""
    return rss_bytes(descendants(root))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--heterogeneity", type=float, default=0.5)
    parser.add_argument("--keep", type=Path, help="write here and keep it (default: a temp dir)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="healthsync-bench-"))
    out = args.keep or workdir / "federation"
    command = [
        sys.executable, "-m", "healthsync", "data", "generate",
        "--hospitals", str(args.hospitals), "--patients", str(args.patients),
        "--heterogeneity", str(args.heterogeneity), "--seed", "0", "--out", str(out), "--force",
    ]  # fmt: skip
    peak = 0
    start = time.perf_counter()
    child = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(child.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    # ru_maxrss of the largest single child, in KiB on Linux: a cross-check of the sampling.
    max_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    peak = max(peak, max_child)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if code == 0 else 0
    shutil.rmtree(workdir, ignore_errors=True)

    ok = code == 0 and seconds <= TARGET_SECONDS and peak < TARGET_BYTES
    print(
        f"{args.hospitals} hospitals x {args.patients} patients: wall {seconds:.1f} s, "
        f"peak RSS {peak / 1024**2:.0f} MiB (incl. children), output {size / 1024**2:.0f} MiB, "
        f"{os.cpu_count()} cores -> {'PASS' if ok else 'FAIL'} "
        f"(targets <= {TARGET_SECONDS:.0f} s, < {TARGET_BYTES / 1024**3:.0f} GiB)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
