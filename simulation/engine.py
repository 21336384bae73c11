"""``python -m simulation.engine serve``: the warm training engine (see ``healthsync.engine``).

One Flower simulation on Ray with ``--nodes`` nodes. Its ServerApp waits for
the nodes, warms every Ray actor up with a tiny throwaway run, announces itself, then runs each run the
library hands it through the same round loop as a cold run
(``simulation.server_app.execute``), one at a time, until it is idle for
``--idle-timeout`` seconds or asked to stop. Runs record this process's pid,
so one that dies with the engine is marked failed like any other.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from healthsync import runlog
from healthsync.config import TrainConfig
from healthsync.data import load_federation
from healthsync.data.synthetic import generate_federation
from healthsync.engine import ENGINE_NODES, IDLE_SECONDS, EngineServer
from healthsync.errors import HealthSyncError
from healthsync.store import MetricsStore
from simulation.launch import balanced_block_size, simulate
from simulation.server_app import execute

log = logging.getLogger("healthsync.engine")
NODE_WAIT_SECONDS = 120.0


def fits(nodes: int):
    """Why a run cannot be served by an engine of ``nodes`` nodes (``None`` if it can)."""

    def why_not(config: TrainConfig) -> str | None:
        hospitals = len(load_federation(config.data_dir).hospitals)
        blocks = -(-hospitals // balanced_block_size(config, hospitals))
        if blocks > nodes:
            return f"needs {blocks} Flower nodes, the engine has {nodes}"
        return None

    return why_not


def warm_up(grid: Grid, nodes: int) -> None:
    """Wait for every node and ask each who it is, so every Ray actor has started its client app."""
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while len(ids := list(grid.get_node_ids())) < nodes:
        if time.monotonic() > deadline:
            raise HealthSyncError(f"only {len(ids)} of {nodes} Flower nodes came online")
        time.sleep(0.05)
    asks = [
        Message(RecordDict(), message_type=f"{MessageType.QUERY}.identify", dst_node_id=n)
        for n in ids
    ]
    for reply in grid.send_and_receive(asks):
        if reply.has_error():
            raise HealthSyncError(f"a Flower node failed to start: {reply.error.reason}")


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


def run_one(grid: Grid, config: TrainConfig, run_id: str) -> str:
    """One accepted run, with the same block layout as a cold run; how it ended."""
    try:
        hospitals = len(load_federation(config.data_dir).hospitals)
        config = config.replace(block_size=balanced_block_size(config, hospitals))
    except Exception as err:  # e.g. its data went away since it was accepted
        runlog.fail_if_active(MetricsStore(config.db), run_id, str(err).splitlines()[0][:300])
        return "failed"
    return execute(grid, config, run_id)


def make_server_app(state_file: Path, *, nodes: int, idle_timeout: float) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        started = time.perf_counter()
        warm_up(grid, nodes)
        rehearse(grid, nodes)
        server = EngineServer(state_file, nodes=nodes, fits=fits(nodes))
        log.info("engine ready: %d nodes in %.1f s", nodes, time.perf_counter() - started)
        try:
            while (job := server.next_run(idle_timeout)) is not None:
                run_id, config = job
                log.info("run %s started", run_id)
                try:
                    outcome = run_one(grid, config, run_id)
                finally:
                    server.run_finished()
                log.info("run %s %s", run_id, outcome)
        finally:
            server.close()
        log.info("engine stopping")

    return server_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.engine")
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
