"""Shared helpers for tests that run the engine end to end."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from healthsync import runlog
from healthsync.cli import main
from healthsync.data.synthetic import generate_federation
from healthsync.store import MetricsStore


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
