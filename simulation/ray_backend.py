"""Flower's Ray backend with node-to-actor affinity, and the one place it is swapped in.

Flower's ``RayBackend`` hands each message to whichever actor is idle. A node
of ours keeps its hospitals' rows in the actor process that served it (read
once, cached), so under Flower's scheduling every actor ends up reading and
holding every block: twice the memory on two CPUs, and a round that happens to
send a block to a "new" actor pays that block's loading again. Here node
(partition) ``p`` is always served by actor ``p % actors``; Ray queues an
actor's calls, and a few worker threads per actor keep every actor's queue fed.

Flower 1.42 has no registry of backends: ``vce_api.start_vce`` imports
``RayBackend`` from its module each time it builds one. ``installed()`` swaps
that module attribute for the duration of one simulation and restores it.
Within the same swap, the thread that moves queued messages to the backend
polls adaptively: Flower's polls every 0.1 s, adding up to 0.1 s per
message round trip; ours waits in proportion to how long one pass over the
nodes took (from 5 ms with a few block nodes, up to Flower's 0.1 s with
thousands of one-hospital nodes, where a pass is itself slow), so it takes no
more of the server's time than Flower's; and a push to the in-memory grid
wakes it at once, so a new message waits for no poll at all.
``tests/test_ray_backend.py`` checks that the Flower hooks still look as
assumed here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Queue
from typing import Any

import ray
from flwr.app import Context, Message
from flwr.common.constant import PARTITION_ID_KEY
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

WORKERS_PER_ACTOR = 3  # Flower's executor runs at most min(32, CPUs + 4) worker threads
FASTEST_POLL, SLOWEST_POLL = 0.005, 0.1  # seconds between passes over the nodes
POLL_PER_PASS = 4.0  # wait this many times as long as the last pass took


class AffinityActorPool(BasicActorPool):
    """Flower's actor pool, except that a given partition always goes to the same actor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.actors: list[Any] = []

    def add_actors_to_pool(self, num_actors: int) -> None:
        super().add_actors_to_pool(num_actors)
        self.actors = list(self.pool)  # ``pool`` stays whole: we never pop from it

    def actor_for(self, partition_id: int) -> Any:
        """The actor that serves ``partition_id``, every time."""
        return self.actors[partition_id % len(self.actors)]

    def run(self, partition_id: int, job: tuple) -> tuple[Message, Context]:
        """Run ``job`` (app loader, message, cid, context) on the partition's actor; wait."""
        _, out_message, context = ray.get(self.actor_for(partition_id).run.remote(*job))
        return out_message, context


class AffinityRayBackend(raybackend.RayBackend):
    """``RayBackend`` whose node ``p`` is always served by actor ``p % actors``."""

    def build(self, app_fn) -> None:
        self.pool = AffinityActorPool(
            actor_type=ClientAppActor,
            client_resources=self.client_resources,
            actor_kwargs=self.actor_kwargs,
        )
        self.pool.add_actors_to_pool(self.pool.actors_capacity)
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        """Worker threads Flower starts: several per actor, so no actor waits for a thread."""
        return self.pool.num_actors * WORKERS_PER_ACTOR if self.pool else 0

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self.pool is None or self.app_fn is None:
            raise ValueError("build() the backend before processing messages")
        partition_id = int(context.node_config[PARTITION_ID_KEY])
        return self.pool.run(partition_id, (self.app_fn, message, str(partition_id), context))


_pushed = threading.Event()  # set when the server pushes messages: poll at once


def add_messages_to_queue(
    state, queue: Queue[Message], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """Flower's ``vce_api.add_messages_to_queue``, woken by a push, with an adaptive wait."""
    while not f_stop.is_set():
        _pushed.clear()  # a push during the pass below wakes the wait after it
        started = time.perf_counter()
        for node_id in nodes_mapping:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        spent = time.perf_counter() - started
        _pushed.wait(min(SLOWEST_POLL, max(FASTEST_POLL, POLL_PER_PASS * spent)))


def _waking_push(push):
    """``InMemoryGrid.push_messages`` that wakes the polling thread when it returns."""

    def push_messages(self, messages):
        try:
            return push(self, messages)
        finally:
            _pushed.set()

    return push_messages


@contextmanager
def installed() -> Iterator[None]:
    """Use ``AffinityRayBackend`` and the woken, adaptive poll for simulations started inside."""
    backend, poll = raybackend.RayBackend, vce_api.add_messages_to_queue
    push = InMemoryGrid.push_messages
    raybackend.RayBackend = AffinityRayBackend
    vce_api.add_messages_to_queue = add_messages_to_queue
    InMemoryGrid.push_messages = _waking_push(push)
    try:
        yield
    finally:
        raybackend.RayBackend = backend
        vce_api.add_messages_to_queue = poll
        InMemoryGrid.push_messages = push
