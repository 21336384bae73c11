"""Node-to-actor affinity on Ray: a node's messages always reach the same actor process.

The one in-process simulation here also checks how Ray was started: only
GCS, raylet, its agents and our actors, and its session folder gone after.
"""

import contextlib
import os
import threading
import time
from collections import defaultdict
from queue import Queue

import psutil
import pytest
from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from healthsync.config import TrainConfig
from simulation import launch
from simulation.compat import flower
from simulation.compat import ray as ray_compat

pid_app = ClientApp()


@pid_app.query()
def _whoami(msg: Message, context: Context) -> Message:
    metrics = MetricRecord(
        {"pid": os.getpid(), "partition-id": int(context.node_config["partition-id"])}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def test_a_push_wakes_the_poll_at_once(monkeypatch):
    # Polls an hour apart: only the push's wake-up can move the message in time.
    monkeypatch.setattr(flower, "FASTEST_POLL", 3600.0)
    monkeypatch.setattr(flower, "SLOWEST_POLL", 3600.0)
    waiting: list[str] = []

    class State:
        def get_message_ins(self, node_id, limit):
            return [waiting.pop()] if waiting else []

    class Grid:
        def push_messages(self, messages):
            waiting.extend(messages)
            return list(messages)

    queue, stop = Queue(), threading.Event()
    poller = threading.Thread(
        target=flower.add_messages_to_queue, args=(State(), queue, {1: 0}, stop)
    )
    poller.start()
    try:
        time.sleep(0.2)  # let the first (empty) pass go by and the long wait begin
        flower.waking_push(Grid.push_messages)(Grid(), ["hello"])
        assert queue.get(timeout=60) == "hello"
    finally:
        stop.set()
        flower._pushed.set()
        poller.join(timeout=10)


def test_automatic_blocks_are_evened_out_over_the_cpus():
    auto = TrainConfig()
    assert auto.block_size_for(100_000, cpus=2) == 12_500  # 8 blocks, not 7
    assert auto.block_size_for(10_000, cpus=2) == 5000  # one block per CPU
    assert auto.block_size_for(1000, cpus=2) == 500
    assert auto.block_size_for(10, cpus=2) == 1  # small: one client per hospital
    assert TrainConfig(block_size=2048).block_size_for(10_000, cpus=2) == 2048


def _ray_commands() -> list[str]:
    commands = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone since listed
            commands.append(" ".join(child.cmdline()))
    return commands


@pytest.mark.slow
def test_each_node_is_always_served_by_the_same_actor():
    nodes, rounds = 6, 4
    seen: dict[int, set[int]] = defaultdict(set)
    server = ServerApp()
    started: dict = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + 60
        while len(ids := list(grid.get_node_ids())) < nodes and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(rounds):
            asks = [
                Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in ids
            ]
            for reply in grid.send_and_receive(asks, timeout=120):
                m = reply.content["metrics"]
                seen[int(m["partition-id"])].add(int(m["pid"]))
        started["session"], started["commands"] = ray_compat.session_dir(), _ray_commands()

    launch.simulate(server, nodes, client_app=pid_app)
    assert sorted(seen) == list(range(nodes))
    assert all(len(pids) == 1 for pids in seen.values()), seen
    actor_of = {p: next(iter(pids)) for p, pids in seen.items()}
    actors = len(set(actor_of.values()))
    assert actors == min(os.cpu_count() or 1, nodes)
    assert all(actor_of[p] == actor_of[p % actors] for p in actor_of)  # node p on actor p % actors

    # Ray ran lean: no dashboard head, autoscaler monitor or log monitor ...
    commands = "\n".join(started["commands"])
    assert "gcs_server" in commands and "raylet" in commands, commands
    for skipped in ("dashboard/dashboard.py", "autoscaler/_private/monitor.py", "log_monitor.py"):
        assert skipped not in commands, commands
    # ... and its session folder (only that one) is gone with it.
    assert started["session"].name.startswith("session_") and not started["session"].exists()
