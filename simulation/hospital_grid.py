"""A Flower ``Grid`` whose nodes are hospitals, even when one real node serves many.

Strategies sample, message and aggregate per node. With block execution one
real Flower node (a Ray actor) serves a block of hospitals, so this grid
presents one virtual node per hospital (``hospital index + 1``): it groups the
strategy's per-hospital messages into one message per real node, and splits
each block reply back into one reply per hospital. Every strategy, robust and
DP ones included, therefore sees exactly the replies it would see with one
client per hospital.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from healthsync.errors import HealthSyncError

BLOCK_FAILED = 1  # error code for a hospital whose whole block failed


class HospitalGrid(Grid):
    """One virtual node per hospital over ``grid``, whose nodes serve ``block_size`` hospitals each."""

    def __init__(
        self, grid: Grid, hospitals: int, block_size: int, *, wait_seconds: float = 60.0
    ) -> None:
        self.inner = grid
        if hasattr(grid, "pull_interval"):
            # Flower's in-memory simulation grid polls for replies every 0.1 s by default,
            # which adds up to ~0.2 s to every round (train and evaluate); poll faster.
            grid.pull_interval = 0.01
        self.hospitals = hospitals
        self.block_size = block_size
        self.blocks = -(-hospitals // block_size)
        self.node_of_block = self._identify(wait_seconds)

    # ------------------------------------------------------------ set-up
    def _identify(self, wait_seconds: float) -> dict[int, int]:
        deadline = time.monotonic() + wait_seconds
        while len(nodes := list(self.inner.get_node_ids())) < self.blocks:
            if time.monotonic() > deadline:
                raise HealthSyncError(
                    f"only {len(nodes)} of {self.blocks} Flower nodes came online; each block of "
                    f"{self.block_size} hospital(s) needs its own node (with `flwr run`, set "
                    "num-supernodes to the number of blocks)"
                )
            time.sleep(0.05)
        asks = [
            Message(
                content=RecordDict(), message_type=f"{MessageType.QUERY}.identify", dst_node_id=n
            )
            for n in nodes
        ]
        mapping = {}
        for reply in self.inner.send_and_receive(asks):
            if reply.has_error():
                raise HealthSyncError(f"a Flower node failed to start: {reply.error.reason}")
            mapping[int(reply.content["metrics"]["partition-id"])] = reply.metadata.src_node_id
        return mapping

    # ------------------------------------------------------------ the Grid API
    def get_node_ids(self) -> Iterable[int]:
        return range(1, self.hospitals + 1)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        by_block: dict[int, list[Message]] = defaultdict(list)
        for msg in messages:
            by_block[(msg.metadata.dst_node_id - 1) // self.block_size].append(msg)
        outgoing, requests = [], {}
        for block, group in by_block.items():
            first = group[0]
            if any(m.content is not first.content for m in group[1:]):
                raise HealthSyncError(
                    "per-hospital message contents are not supported with block execution"
                )
            config = dict(first.content.get("config", ConfigRecord()))
            config["hospitals"] = [m.metadata.dst_node_id - 1 for m in group]
            config["block-size"] = self.block_size
            content = RecordDict({k: v for k, v in first.content.items() if k != "config"})
            content["config"] = ConfigRecord(config)
            out = Message(
                content=content,
                message_type=first.metadata.message_type,
                dst_node_id=self.node_of_block[block],
            )
            outgoing.append(out)
            requests[out.metadata.dst_node_id] = group
        replies: list[Message] = []
        answered = set()
        for reply in self.inner.send_and_receive(outgoing, timeout=timeout):
            node = reply.metadata.src_node_id
            answered.add(node)
            replies.extend(self._split(reply, requests[node]))
        for node, group in requests.items():
            if node not in answered:
                replies.extend(
                    _failed(m, "no reply from its node before the timeout") for m in group
                )
        return replies

    def _split(self, reply: Message, group: list[Message]) -> list[Message]:
        if reply.has_error():
            return [_failed(m, reply.error.reason) for m in group]
        errors = reply.content["errors"]
        out = []
        for msg in group:
            index = msg.metadata.dst_node_id - 1
            if str(index) in errors:
                out.append(_failed(msg, str(errors[str(index)])))
                continue
            records = RecordDict({"metrics": reply.content[f"metrics/{index}"]})
            if f"arrays/{index}" in reply.content:
                records["arrays"] = reply.content[f"arrays/{index}"]
            out.append(_reply(msg, records))
        return out

    # ------------------------------------------------------------ delegated / unsupported
    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(
            content=content,
            message_type=message_type,
            dst_node_id=dst_node_id,
            group_id=group_id,
            ttl=ttl,
        )

    def set_run(self, run_id: int) -> None:
        self.inner.set_run(run_id)

    @property
    def run(self):
        return self.inner.run

    def push_messages(self, messages):
        raise NotImplementedError("HospitalGrid supports send_and_receive only")

    def pull_messages(self, message_ids):
        raise NotImplementedError("HospitalGrid supports send_and_receive only")


def _reply(msg: Message, records: RecordDict) -> Message:
    """A reply that looks as if hospital ``msg.dst`` had answered ``msg`` itself."""
    return Message(records, reply_to=msg)


def _failed(msg: Message, reason: str) -> Message:
    return Message(Error(code=BLOCK_FAILED, reason=reason), reply_to=msg)
