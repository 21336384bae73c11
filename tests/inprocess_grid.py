"""A Flower ``Grid`` that calls the client app in this process: the round loop without Ray.

Real runs cost 15-30 s each, mostly Ray start-up; this grid hands each message
straight to ``simulation.client_app.app`` with the node's ``partition-id``, so
tests can drive ``FederatedRun`` through many rounds and settings in seconds.
As in a Flower simulation, each message is copied on the way out (as
serialisation would), an exception in the client app becomes an error reply,
and each node keeps its own state across messages, changed only by messages it
handled without error (SecAgg+ keeps its keys there).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from healthsync.config import TrainConfig
from healthsync.data import load_federation
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from simulation import server_app
from simulation.client_app import app as client_app

SERVER_NODE = 0


def allow_messages() -> None:
    """Messages read the current task's identity, which only a Flower process sets."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE, 1


class InProcessGrid(Grid):
    """``nodes`` Flower nodes (ids 101, 102, ...) answered by the client app in this process."""

    pull_interval = 0.002  # replies are ready when pushed; a caller's poll need not wait long

    def __init__(self, nodes: int) -> None:
        allow_messages()
        self.partitions = {101 + p: p for p in range(nodes)}
        self.states = {node: RecordDict() for node in self.partitions}
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.waiting: dict[str, Message] = {}  # message id -> its reply, not yet pulled

    def get_node_ids(self) -> Iterable[int]:
        return list(self.partitions)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Answer each message at once; its reply waits to be pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = message_id = f"m{len(self.sent)}"
            node = msg.metadata.dst_node_id
            context = Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": self.partitions[node]},
                state=copy.deepcopy(self.states[node]),
                run_config={},
            )
            self.sent.append(msg)
            try:
                reply = client_app(copy.deepcopy(msg), context)
            except Exception as err:  # Flower reports it as an error reply
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(err)), reply_to=msg
                )
            else:  # as in Flower, a node's state changes only when its app succeeds
                self.states[node] = context.state
            self.waiting[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = [self.waiting.pop(i) for i in message_ids if i in self.waiting]
        self.received.extend(replies)
        return replies

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id)

    def set_run(self, run_id: int) -> None:
        pass

    @property
    def run(self):
        raise NotImplementedError


def run_in_process(config: TrainConfig) -> tuple[dict[str, Any], InProcessGrid]:
    """Run ``config`` through ``FederatedRun`` on an in-process grid; the run's detail and the grid."""
    hospitals = len(load_federation(config.data_dir).hospitals)
    config = config.replace(block_size=config.block_size_for(hospitals))
    store = MetricsStore(config.db)
    run_id = runlog.new_run_id()
    runlog.create_run(store, run_id, config)
    grid = InProcessGrid(-(-hospitals // config.block_size))
    server_app.execute(grid, config, run_id)
    return runlog.run_detail(store, run_id), grid


def trained_models(grid: InProcessGrid) -> dict[int, list]:
    """Each hospital's trained model as its node sent it: its row of the block's reply."""
    models = {}
    for reply in grid.received:
        content = reply.content if not reply.has_error() else {}
        if reply.metadata.message_type != "train" or "arrays" not in content:
            continue
        stacked = content["arrays"].to_numpy_ndarrays()
        for row, index in enumerate(content["metrics"]["hospital"]):
            models[int(index)] = [a[row] for a in stacked]
    return models
