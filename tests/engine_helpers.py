"""Shared helpers for tests that run the engine end to end."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from healthsync.cli import main
from healthsync.data.synthetic import generate_federation
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore


def make_federation(root: Path, name: str, **kwargs) -> Path:
    """A small synthetic federation under ``root/name`` (generated once per call)."""
    out = root / name
    generate_federation(
        out, **{"hospitals": 4, "patients": 150, "seed": 0, "heterogeneity": 0.5, **kwargs}
    )
    return out


def cli_json(capsys, *argv: str) -> tuple[int, dict]:
    """Run the CLI and parse the JSON object on the last line of stdout."""
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


@contextlib.contextmanager
def polling_like_the_live_page(store: MetricsStore, run_id: str) -> Iterator[None]:
    """A thread reading what the Live page reads, every 0.2 s, for the duration."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            runlog.list_runs(store)
            runlog.rounds_frame(store, run_id)
            runlog.hospital_rounds_frame(store, run_id)
            runlog.events_frame(store, run_id)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join()


def stop_processes_naming(*marks: bytes) -> set[int]:
    """Stop the processes whose command line holds any of ``marks``, and all they started.

    For tests that start things in their own sessions (Ray clusters, runs, the
    cohort service): only what names the test's own folder or port is touched,
    never a developer's engine. SIGTERM, then SIGKILL; returns what outlived both.
    """
    import contextlib
    import os
    import signal
    import time

    import psutil

    from healthsync.bench import proctree

    def ours() -> set[int]:
        found: set[int] = set()
        for process in psutil.process_iter(["cmdline"]):
            if process.pid == os.getpid():
                continue
            cmdline = "\0".join(process.info["cmdline"] or []).encode()
            if any(mark in cmdline for mark in marks):
                found |= proctree.descendants(process.pid)
        return proctree.alive(found)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for _ in range(100):
            if not ours():
                return set()
            time.sleep(0.1)
    return ours()


def assert_ray_session_removed(pid: int, timeout: float = 30.0) -> None:
    """Wait for process ``pid`` to exit, then check its Ray session folder went with it."""
    import contextlib

    import psutil

    from simulation.compat import ray as ray_compat

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=timeout)
    assert ray_compat.sessions_of(pid) == [], f"process {pid} left its Ray session folder"
