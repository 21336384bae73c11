"""``python -m simulation.warm_engine serve``: the warm training engine (see ``healthsync.runs.engine``).

One Flower simulation on Ray with ``--nodes`` nodes. Its ServerApp warms
every Ray actor up with a tiny throwaway run, announces itself, then runs each
run the library hands it (its block layout fixed as a cold run's, by
``simulation.launch.layout``) through the same round loop as a cold run
(``simulation.server_app.execute``), one at a time, until it is idle for
``--idle-timeout`` seconds or asked to stop. Runs record this process's pid,
so one that dies with the engine is marked failed like any other. Between and
beside runs it answers cohort queries on the same nodes (:class:`CohortQueries`),
so the first query needs no analytics service of its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from healthsync.cohort.service import federation_id
from healthsync.config import TrainConfig, auto_block_size
from healthsync.data import load_federation
from healthsync.data.synthetic import generate_federation
from healthsync.errors import HealthSyncError
from healthsync.runs import runlog
from healthsync.runs.engine import ENGINE_NODES, IDLE_SECONDS, EngineServer
from healthsync.runs.store import MetricsStore
from simulation.analytics import CohortServer
from simulation.launch import layout, simulate
from simulation.server_app import execute

log = logging.getLogger("healthsync.runs.engine")


def laid_out(nodes: int):
    """A run's settings with their block layout fixed, refused if it needs more than ``nodes``."""

    def prepare(config: TrainConfig) -> TrainConfig:
        config, needed = layout(config)
        if needed > nodes:
            raise HealthSyncError(f"needs {needed} Flower nodes, the engine has {nodes}")
        return config

    return prepare


def rehearse(grid: Grid, nodes: int) -> None:
    """One tiny throwaway run through the whole path, so the first real run finds everything warm.

    The first run in fresh actors pays ~3 s of one-off work (torch's first
    training and evaluation calls, lazy imports on both sides); a synthetic
    federation with one hospital per CPU reaches every actor.
    """
    with tempfile.TemporaryDirectory() as tmp:
        hospitals = min(max(os.cpu_count() or 1, 2), nodes)
        federation = generate_federation(Path(tmp) / "fed", hospitals=hospitals, patients=40)
        config = TrainConfig(
            data_dir=str(federation.data_dir), db=str(Path(tmp) / "m.duckdb"), rounds=1
        )
        runlog.create_run(MetricsStore(config.db), "rehearsal", config)
        outcome = execute(grid, config, "rehearsal")
        if outcome != "completed":
            raise HealthSyncError(f"the engine's rehearsal run {outcome}")


class CohortQueries:
    """Cohort requests answered by the engine's nodes, whose ClientApp handles ``query.cohort``.

    The analytics service's own server (:class:`simulation.analytics.CohortServer`)
    asks the engine's grid instead of a simulation of its own: each hospital
    still answers through its own privacy gate, and its replies are guarded
    the same way. Hospitals are laid out in blocks as a training run's are
    (:func:`healthsync.config.auto_block_size`, within the engine's nodes).
    One query at a time; a query asked during a run shares the nodes with it
    (each Ray actor queues its calls), and Flower's in-memory grid keeps
    messages apart by id, so neither sees the other's replies.
    """

    def __init__(self, grid: Grid, nodes: int) -> None:
        self.grid = grid
        self.nodes = nodes
        self.lock = threading.Lock()
        self.server: CohortServer | None = None  # for the federation asked last

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The guarded release for ``request`` (the analytics service's request plus ``data-dir``)."""
        data_dir = request.get("data-dir")
        if not isinstance(data_dir, str) or not data_dir:
            raise HealthSyncError("a cohort request to the engine must name its data-dir")
        with self.lock:
            federation = load_federation(data_dir)
            server = self.server
            if server is None or federation_id(server.federation) != federation_id(federation):
                block = auto_block_size(len(federation.hospitals), max_blocks=self.nodes)
                server = CohortServer(self.grid, federation, block)
                server.wait_for_hospitals()
                self.server = server
            return server.handle(request)


def make_server_app(state_file: Path, *, nodes: int, idle_timeout: float) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        started = time.perf_counter()
        rehearse(grid, nodes)  # its grid waits for the nodes and starts every actor's app
        server = EngineServer(
            state_file,
            nodes=nodes,
            prepare=laid_out(nodes),
            queries=CohortQueries(grid, nodes).handle,
        )
        log.info("engine ready: %d nodes in %.1f s", nodes, time.perf_counter() - started)
        try:
            while (job := server.next_run(idle_timeout)) is not None:
                run_id, config = job
                log.info("run %s started", run_id)
                try:
                    outcome = execute(grid, config, run_id)
                finally:
                    server.run_finished()
                log.info("run %s %s", run_id, outcome)
        finally:
            server.close()
        log.info("engine stopping")

    return server_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.warm_engine")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="keep Flower and Ray warm and run training runs in turn")
    serve.add_argument("--state", required=True, type=Path, help="state file to announce the port")
    serve.add_argument("--nodes", type=int, default=ENGINE_NODES)
    serve.add_argument("--idle-timeout", type=float, default=IDLE_SECONDS, help="seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)

    server_app = make_server_app(args.state, nodes=args.nodes, idle_timeout=args.idle_timeout)
    try:
        simulate(server_app, args.nodes)
    except Exception:
        log.exception("the engine's Flower simulation crashed")
        # Flower's threads may wait forever for a ServerApp that is gone; a run it was
        # serving is marked failed by the next reader, since this pid is gone.
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
