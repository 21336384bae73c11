"""The cohort analytics service: a Flower ServerApp that waits for queries and asks hospitals.

``python -m simulation.analytics serve --data DIR --state FILE`` runs one
Flower simulation on Ray for as long as queries keep coming. Its ServerApp
waits for every hospital's node, warms them up (each Ray actor reads and
keeps its hospitals' rows, and each hospital publishes the federation facts
Overview shows, if it has not yet), then answers each query by sending a
``query.cohort`` message to every node and handing the replies (each
hospital's noisy aggregates, drawn by the hospital's own privacy gate, or its
refusal) to the library's guards (:func:`healthsync.cohort.guards.answer`);
only the guarded answer goes back over the local channel
(:mod:`healthsync.cohort.service`). It exits after ``--idle-timeout``
seconds without a query.

Stock Flower costs several milliseconds per message, so past
``AUTO_BLOCK_THRESHOLD`` hospitals one node answers for a block of hospitals
(laid out by the same rule as a training run's,
:func:`healthsync.config.auto_block_size`), each hospital still read through
its own accessor and answered separately.
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

from healthsync.cohort.facts import facts_plan
from healthsync.cohort.guards import answer
from healthsync.cohort.local import HospitalReply, from_record
from healthsync.cohort.plan import QueryPlan, plan_query
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.cohort.service import IDLE_SECONDS, federation_id, serve
from healthsync.config import AUTO_BLOCK_THRESHOLD, auto_block_size
from healthsync.data import Federation, load_federation
from healthsync.errors import HealthSyncError
from healthsync.privacy.consent import withdrawn_hospitals
from healthsync.privacy.site import PUBLIC, SiteRefusal
from simulation.analytics_client import ACCOUNTING_PREFIX, RECORD_PREFIX, REFUSAL_PREFIX
from simulation.compat import flower

log = logging.getLogger("healthsync.analytics")
NODE_WAIT_SECONDS = 120.0
QUERY_TIMEOUT_SECONDS = 120.0
MESSAGE_TYPE = "query.cohort"


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

    def replies(self, plan: QueryPlan, policy: CohortPolicy, user: str) -> dict[str, HospitalReply]:
        """Every asked hospital's reply for ``plan``: its noisy aggregates, or its refusal."""
        config = ConfigRecord(
            {
                "data-dir": str(self.federation.data_dir),
                "query": json.dumps(plan.query.to_dict()),
                "max-cells": max(plan.n_cells, 1),  # checked against the policy already
                "block-size": self.block_size,
                "user": user,
                "epsilon": policy.epsilon_per_query,
                "budget": policy.budget_for(user),
            }
        )
        messages = [
            Message(RecordDict({"config": config}), message_type=MESSAGE_TYPE, dst_node_id=node)
            for node in self.nodes
        ]
        replies = self.grid.send_and_receive(messages, timeout=QUERY_TIMEOUT_SECONDS)
        per_hospital: dict[str, HospitalReply] = {}
        for reply in replies:
            if reply.has_error():
                reason = str(reply.error.reason).strip().splitlines() or ["unknown error"]
                raise HealthSyncError(f"a hospital failed to answer: {reason[-1][:300]}")
            records = reply.content.metric_records
            for key, record in records.items():
                if key.startswith(RECORD_PREFIX):
                    hospital = key.removeprefix(RECORD_PREFIX)
                    accounting = records[ACCOUNTING_PREFIX + hospital]
                    per_hospital[hospital] = HospitalReply.from_records(
                        from_record(record, plan), accounting
                    )
            for key, record in reply.content.config_records.items():
                if key.startswith(REFUSAL_PREFIX):
                    refusal = HospitalReply(None, refusal=str(record["reason"]))
                    per_hospital[key.removeprefix(REFUSAL_PREFIX)] = refusal
        return per_hospital

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One query request from the library's executor: the guarded release, as JSON."""
        if request.get("federation") != federation_id(self.federation):
            raise HealthSyncError("this analytics service serves another version of the data")
        policy = CohortPolicy.from_settings(request.get("policy", {}))
        query = CohortQuery.from_dict(request.get("query", {}))
        user = request.get("user")
        if not isinstance(user, str) or not user:
            raise HealthSyncError("a cohort request must name its user")
        withdrawn = withdrawn_hospitals(self.federation.data_dir, self.federation.hospital_ids)
        plan = plan_query(self.federation, query, max_cells=policy.max_cells, withdrawn=withdrawn)
        started = time.perf_counter()
        try:
            guarded, budget = answer(self.replies(plan, policy, user), plan, policy)
        except SiteRefusal as refusal:
            return {"ok": False, "refused": True, "error": str(refusal)}
        log.info("answered %s in %.3f s", plan.query.describe(), time.perf_counter() - started)
        return {"ok": True, "release": guarded.to_dict(), "budget": budget.to_dict()}


def make_server_app(
    data_dir: Path, state_path: Path, *, idle_timeout: float, block_size: int
) -> ServerApp:
    """A ServerApp that serves cohort queries until idle for ``idle_timeout`` seconds."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        flower.poll_every(grid, 0.01)  # the in-memory grid polls for replies; 0.1 s by default
        federation = load_federation(data_dir)
        server = CohortServer(grid, federation, block_size)
        started = time.perf_counter()
        server.wait_for_hospitals()
        # Every actor reads its hospitals' rows now, not at the first query, and each
        # hospital publishes Overview's facts if it has not yet (free once published).
        server.replies(facts_plan(federation), CohortPolicy(), PUBLIC)
        log.info("%d nodes ready in %.1f s", len(server.nodes), time.perf_counter() - started)
        state = {"data_dir": str(data_dir), "federation": federation_id(federation)}
        serve(server.handle, state_path, state, idle_timeout=idle_timeout)
        log.info("analytics service stopping")

    return server_app


def run(data_dir: Path, state_path: Path, *, idle_timeout: float, block_size: int | None) -> None:
    """Run the service in this process until it stops."""
    from simulation.launch import simulate

    hospitals = len(load_federation(data_dir).hospitals)
    block_size = block_size or auto_block_size(hospitals)
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
        "--block-size",
        type=int,
        default=None,
        help=f"default: as a training run's (one per hospital up to {AUTO_BLOCK_THRESHOLD})",
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
