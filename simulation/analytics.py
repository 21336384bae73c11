"""The cohort analytics service: a Flower ServerApp that waits for queries and asks hospitals.

``python -m simulation.analytics serve --data DIR --state FILE`` runs one
Flower simulation on Ray for as long as queries keep coming. Its ServerApp
waits for every hospital's node, warms them up (each Ray actor reads and
keeps its hospitals' rows), then answers each query by sending a
``query.cohort`` message to every node and handing the replies to the
library's guards (:func:`healthsync.cohort.guards.release`); only the
guarded answer goes back over the local channel
(:mod:`healthsync.cohort.service`). It exits after ``--idle-timeout``
seconds without a query.

Stock Flower costs several milliseconds per message, so past
``MAX_NODES`` hospitals one node answers for a block of hospitals, each
hospital still read through its own accessor and answered separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from healthsync.cohort.guards import release
from healthsync.cohort.local import Aggregates, from_record
from healthsync.cohort.noise import fresh_generator
from healthsync.cohort.plan import QueryPlan, plan_query
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.cohort.service import IDLE_SECONDS, federation_id, serve
from healthsync.data import Federation, load_federation
from healthsync.errors import HealthSyncError
from simulation.analytics_client import RECORD_PREFIX

log = logging.getLogger("healthsync.analytics")
MAX_NODES = 100
NODE_WAIT_SECONDS = 120.0
QUERY_TIMEOUT_SECONDS = 120.0
MESSAGE_TYPE = "query.cohort"


def default_block_size(hospitals: int, max_nodes: int = MAX_NODES) -> int:
    """One hospital per node up to ``max_nodes`` hospitals, then even blocks."""
    return max(1, math.ceil(hospitals / max_nodes))


class CohortServer:
    """Sends cohort queries to the hospitals' nodes and guards the combined replies."""

    def __init__(self, grid: Grid, federation: Federation, block_size: int) -> None:
        self.grid = grid
        self.federation = federation
        self.block_size = block_size
        self.nodes: list[int] = []

    def wait_for_hospitals(self) -> None:
        expected = math.ceil(len(self.federation.hospitals) / self.block_size)
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        while len(nodes := list(self.grid.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise HealthSyncError(f"only {len(nodes)} of {expected} nodes came online")
            time.sleep(0.05)
        self.nodes = sorted(nodes)

    def aggregates(self, plan: QueryPlan, max_cells: int) -> dict[str, Aggregates]:
        """Every hospital's exact aggregates for ``plan`` (never leaves this process)."""
        config = ConfigRecord(
            {
                "data-dir": str(self.federation.data_dir),
                "query": json.dumps(plan.query.to_dict()),
                "max-cells": max_cells,
                "block-size": self.block_size,
            }
        )
        messages = [
            Message(RecordDict({"config": config}), message_type=MESSAGE_TYPE, dst_node_id=node)
            for node in self.nodes
        ]
        replies = self.grid.send_and_receive(messages, timeout=QUERY_TIMEOUT_SECONDS)
        per_hospital: dict[str, Aggregates] = {}
        for reply in replies:
            if reply.has_error():
                reason = str(reply.error.reason).strip().splitlines() or ["unknown error"]
                raise HealthSyncError(f"a hospital failed to answer: {reason[-1][:300]}")
            for key, record in reply.content.metric_records.items():
                per_hospital[key.removeprefix(RECORD_PREFIX)] = from_record(record, plan)
        return per_hospital

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One query request from the library's executor: the guarded release, as JSON."""
        if request.get("federation") != federation_id(self.federation):
            raise HealthSyncError("this analytics service serves another version of the data")
        policy = CohortPolicy.from_settings(request.get("policy", {}))
        query = CohortQuery.from_dict(request.get("query", {}))
        plan = plan_query(self.federation, query, max_cells=policy.max_cells)
        started = time.perf_counter()
        answer = release(self.aggregates(plan, policy.max_cells), plan, policy, fresh_generator())
        log.info("answered %s in %.3f s", plan.query.describe(), time.perf_counter() - started)
        return {"ok": True, "release": answer.to_dict()}


def make_server_app(
    data_dir: Path, state_path: Path, *, idle_timeout: float, block_size: int
) -> ServerApp:
    """A ServerApp that serves cohort queries until idle for ``idle_timeout`` seconds."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if hasattr(grid, "pull_interval"):
            grid.pull_interval = 0.01  # the in-memory grid polls for replies; 0.1 s by default
        federation = load_federation(data_dir)
        server = CohortServer(grid, federation, block_size)
        started = time.perf_counter()
        server.wait_for_hospitals()
        warm_up = plan_query(federation, CohortQuery(), max_cells=1)
        server.aggregates(warm_up, 1)  # every actor reads its hospitals' rows now, not later
        log.info("%d nodes ready in %.1f s", len(server.nodes), time.perf_counter() - started)
        state = {"data_dir": str(data_dir), "federation": federation_id(federation)}
        serve(server.handle, state_path, state, idle_timeout=idle_timeout)
        log.info("analytics service stopping")

    return server_app


def run(data_dir: Path, state_path: Path, *, idle_timeout: float, block_size: int | None) -> None:
    """Run the service in this process until it stops."""
    from simulation.launch import simulate

    hospitals = len(load_federation(data_dir).hospitals)
    block_size = block_size or default_block_size(hospitals)
    server_app = make_server_app(
        data_dir, state_path, idle_timeout=idle_timeout, block_size=block_size
    )
    simulate(server_app, math.ceil(hospitals / block_size))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.analytics")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("serve", help="serve cohort queries for one federation until idle")
    cmd.add_argument("--data", required=True, type=Path, help="federation directory")
    cmd.add_argument("--state", required=True, type=Path, help="state file to announce the port")
    cmd.add_argument("--idle-timeout", type=float, default=IDLE_SECONDS, help="seconds")
    cmd.add_argument(
        "--block-size", type=int, default=None, help=f"default: blocks past {MAX_NODES}"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    run(
        args.data.resolve(),
        args.state,
        idle_timeout=args.idle_timeout,
        block_size=args.block_size,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
