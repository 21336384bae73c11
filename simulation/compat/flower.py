"""Everything HealthSync relies on inside Flower 1.42 beyond its public API, in one place.

Flower's public API is what its packages ``flwr.app``, ``flwr.serverapp``
(with ``.strategy`` and ``.exception``), ``flwr.clientapp`` (with ``.mod``) and
``flwr.simulation`` export, plus the legacy ``flwr.server``, ``flwr.client`` and
``flwr.common`` that SecAgg+ still needs (names in their ``__all__``). Every
other module of HealthSync imports only those (``tests/test_compat.py`` walks
their imports). What speed or a missing public hook needs beyond them is here,
each part saying what it relies on; ``tests/test_compat.py`` has a canary for
each that fails loudly on a Flower version where that changed:

1. **Messages, replies and records built unchecked** (``same_asks``,
   ``unchecked_reply``, ``fill_unchecked``). ``HospitalGrid`` turns a block's reply into thousands
   of per-hospital replies a round; Flower's constructors check every argument
   and item, which costs more than the rest. Relies on: ``Message`` keeping
   ``_metadata``/``_content``/``_error`` and ``Metadata`` its twelve fields
   (``_run_id`` ... ``_delivered_at``) in ``__dict__``, derived for a reply as
   ``Message(content, reply_to=ask)`` derives them; ``FedAvg.configure_train``
   building its messages through ``self._construct_messages(record, node_ids,
   message_type)`` (``StackedAggregation`` builds them with ``same_asks``);
   and records
   (``TypedDict``) keeping their items in the dict ``_data``.
2. **Arrays as ``.npy`` bytes** (``NUMPY_STYPE``, ``npy_header``, ``NpyArray``,
   ``row_array``, ``fast_loading``, ``cached_row``). Relies on:
   ``Array.from_numpy_ndarray`` storing ``np.save``'s bytes as ``data``, with
   ``dtype``, ``shape`` and ``stype`` (``flwr.common.constant.SType.NUMPY``) as
   plain instance attributes; and on Flower serialising an object under its
   class's ``__qualname__``, so that ``NpyArray`` (a faster ``numpy()``) is
   written, and read back, as a plain ``Array``.
3. **FedAvg's reply logging and default metrics aggregation**
   (``log_train_replies``, ``DEFAULT_METRICS_AGGREGATION``). The stacked
   aggregation replaces ``FedAvg.aggregate_train`` and keeps Flower's log lines
   through the private ``FedAvg._check_and_log_replies(replies, is_train,
   validate)``; it only takes over when the strategy's ``train_metrics_aggr_fn``
   is Flower's default, ``strategy_utils.aggregate_metricrecords``.
4. **The in-memory grid's poll** (``poll_every``, ``poll_interval``): the
   ``pull_interval`` attribute (0.1 s) that ``InMemoryGrid.send_and_receive``
   sleeps between pulls.
5. **Client-side DP clipping per hospital** (``CLIPPING_NORM_KEY``,
   ``clip_update``). ``fixedclipping_mod`` clips a whole message; a block node
   clips each hospital's update with the helper the mod uses,
   ``flwr.supercore.differential_privacy.compute_clip_model_update``, to the
   norm the server's DP wrapper sends under ``KEY_CLIPPING_NORM``.
6. **Legacy SecAgg+ driven one round at a time** (``legacy_client_proxy``,
   ``start_workflow_round``, ``workflow_arrays``, ``SECAGG_CONFIGS_KEY``,
   ``fitres_to_recorddict``). Relies on ``GridClientProxy(node_id, grid,
   run_id)``; on ``SecAggPlusWorkflow`` reading the round and the global model
   from ``LegacyContext.state`` under ``workflow.constant``'s
   ``MAIN_CONFIGS_RECORD``/``Key.CURRENT_ROUND`` and ``MAIN_PARAMS_RECORD``
   (and writing the new model back there); on SecAgg+ stage messages carrying
   ``secaggplus_constants.RECORD_KEY_CONFIGS``; on
   ``recorddict_compat.fitres_to_recorddict``.
7. **The Ray backend with node-to-actor affinity and an adaptive poll**
   (``installed``, ``affinity_backend``). Flower's ``RayBackend`` hands each
   message to whichever actor is idle; a node of ours keeps its hospitals' rows
   in the actor process that served it (read once, cached), so under Flower's
   scheduling every actor ends up reading and holding every block: twice the
   memory on two CPUs, and a block sent to a "new" actor pays its loading
   again. Here node (partition) ``p`` is always served by actor
   ``p % actors``; Ray queues an actor's calls, and a few worker threads per
   actor keep every actor's queue fed. Flower's thread that moves queued
   messages to the backend polls every 0.1 s; ours waits in proportion to how
   long one pass over the nodes took (5 ms with a few block nodes, up to
   Flower's 0.1 s with thousands of one-hospital nodes), and a push to the
   in-memory grid wakes it at once. Flower 1.42 has no registry of backends,
   so ``installed()`` swaps, for one simulation, three things and restores
   them: ``vce.backend.raybackend.RayBackend`` (which ``vce_api.start_vce``
   imports from that module each time it builds a backend),
   ``vce_api.add_messages_to_queue(state, queue, nodes_mapping, f_stop)``
   (looked up as a module global by ``vce_api.run_api``; reads
   ``state.get_message_ins(node_id=, limit=)``) and
   ``InMemoryGrid.push_messages`` (the grid ``run_simulation`` builds). The
   subclasses rely on ``RayBackend``'s ``client_resources``, ``actor_kwargs``,
   ``pool``, ``app_fn``, ``build``, ``num_workers`` and ``process_message``,
   and on ``BasicActorPool``'s ``pool``, ``actors_capacity``, ``num_actors``,
   ``add_actors_to_pool`` and ``terminate_all_actors``. Its actors are
   ``simulation.compat.actor.HospitalActor``, Flower's ``ClientAppActor`` (``run(app_fn, message,
   cid, context)`` returning ``(cid, message, context)``, ``terminate``)
   without its module: importing ``flwr.simulation.ray_transport.ray_actor``
   imports all of ``flwr.simulation`` and the SuperLink's state (SQLAlchemy),
   0.5 s in each actor before its first message.
8. **``run_simulation``**, public but deprecated (see below).
9. **Ray started before Flower's backend** (``simulation.compat.ray.init_like_flower``,
   kept there so that starting Ray imports no Flower). ``RayBackend`` starts
   Ray only ``if not ray.is_initialized()``; a cold run starts it earlier
   (``simulation.launch.ray_running``), with the arguments and the workers'
   ``PYTHONPATH`` that ``RayBackend.init_ray`` gives.

Flower's deprecation of ``run_simulation``: the plan
---------------------------------------------------
Flower 1.42 logs (a ``WARNING`` line on the ``flwr`` logger, not a Python
warning, so no warning filter is involved) that ``run_simulation`` "will be
removed in a future version", naming no version; its replacement is
``flwr run <app dir> <connection>``: a SuperLink in simulation mode (started
by ``flwr run`` itself for the ``:local:`` connection, and left running)
launches the ServerApp in a ``flwr-simulation`` process, which builds the Ray
backend itself. Measured (seconds from the command, 3 hospitals as 3 nodes,
2 rounds, logreg; median of 3, of 2 for warm; a 2-core machine loaded by other
engineers' tests, load average ~6, so +-10 s; December 2026, interleaved runs
of ``launch.run`` and of ``flwr run . --stream --run-config ...`` against
``flower-superlink --insecure --simulation --isolation subprocess
--disable-runtime-dependency-installation``, started inside the timing (cold) or
before it (warm), the ServerApp writing a timestamp per round):

=================================  ===========  ===========  ==========  ========
path                               ServerApp    first round  all rounds  command
                                   starts       recorded     done        exits
=================================  ===========  ===========  ==========  ========
``run_simulation`` (today)         6.6          27.5         27.7        30.5
``flwr run``, SuperLink started    15.0         44.7         45.2        52.0
``flwr run``, SuperLink kept warm  5.2          22.7         23.2        28.7
=================================  ===========  ===========  ==========  ========

On the least loaded runs: 24.2 s (``run_simulation``), 25.2 s (cold) and
15.6 s (warm) to the first round. So a cold ``flwr run`` costs the SuperLink's
start (2-4 s idle, more under load) plus building and submitting the app and
spawning ``flwr-simulation`` (the ServerApp starts 3-4 s later); a SuperLink
kept warm costs about nothing. Two traps: by default the SuperLink installs the
app's dependencies with ``uv sync`` into a fresh environment per run (+50 s,
a 6.3 GB download, and a CUDA torch other than ``requirements.txt``'s) unless
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``; and nothing of
``launch.simulate`` runs in ``flwr-simulation``, so ``installed()``, the
collector tuning and the Ray settings are silently off: stock Flower
scheduling, the stress test's slower baseline at scale.

The plan:

1. Now: ``run_simulation`` below is the one call, so the switch touches one
   function; ``tests/test_compat.py`` fails first if Flower removes it or turns
   its deprecation into an error.
2. When a release removes it: run ``flwr run`` against a SuperLink that
   HealthSync owns and keeps warm (the warm engine starts it once, records its
   pid and stops it by pid; ``--isolation subprocess
   --disable-runtime-dependency-installation``), ``--federation-config
   num-supernodes=<blocks>`` per run (``launch.layout``), ``flwr stop`` to
   cancel. Warm, start-up stays as today's (measured above); the Launch page
   must not pay a cold SuperLink per run (+17 s median here).
3. Before that switch, the affinity backend, adaptive poll, collector tuning
   and Ray settings must be applied inside ``flwr-simulation`` (Flower 1.42
   has no backend registry): at import of ``simulation.server_app``, with its
   own canary here. Until then ``flwr run`` would lose the affinity that keeps
   each actor's hospitals in one process.
4. Fallback if 3 cannot be done on the new version: the in-process entry point
   ``run_simulation`` wraps (``flwr.simulation.run_simulation._run_simulation``
   in 1.42, kept in this module) keeps start-up and our backend, at the price
   of one more private name.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from queue import Queue
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, Metadata, RecordDict
from flwr.common.constant import PARTITION_ID_KEY, SType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_clip_model_update

from simulation.compat import actor

# ------------------------------------------------------------ 1. replies and records unchecked
Record = TypeVar("Record", bound=Mapping)


def unchecked_reply(ask: Message, content: RecordDict, now: float) -> Message:
    """``Message(content, reply_to=ask)``, sent at ``now``: the same metadata, built unchecked.

    Flower's constructor (argument checks, a clock read, message-type
    validation) costs more than the rest of each per-hospital reply. The
    metadata is derived as Flower derives a reply's: from the ask's, source and
    destination swapped, and a TTL that ends when the ask's does.
    """
    asked = ask.metadata.__dict__
    metadata = Metadata.__new__(Metadata)
    metadata.__dict__.update(
        _run_id=asked["_run_id"],
        _message_id="",
        _src_node_id=asked["_dst_node_id"],
        _dst_node_id=asked["_src_node_id"],
        _src_task_id=asked["_dst_task_id"],
        _dst_task_id=asked["_src_task_id"],
        _reply_to_message_id=asked["_message_id"],
        _group_id=asked["_group_id"],
        _created_at=now,
        _ttl=asked["_created_at"] + asked["_ttl"] - now,
        _message_type=asked["_message_type"],
        _delivered_at="",
    )
    message = Message.__new__(Message)
    message.__dict__.update(_metadata=metadata, _content=content, _error=None)
    return message


class SameAsks(Sequence[Message]):
    """``FedAvg._construct_messages``' list: a message per node, all carrying ``content``.

    Built only when read. The first is built by Flower (its checks run once);
    reading one by its position builds that one, iterating or slicing builds
    them all, each a copy of the first's metadata with its own destination
    (built unchecked): Flower's constructor costs
    about 5 µs a message, half a second a round at 100,000 hospitals. A grid
    that knows this class (``HospitalGrid``) groups the asks by ``node_ids``
    without building them.
    """

    def __init__(self, content: RecordDict, node_ids: Sequence[int], message_type: str) -> None:
        self.first = Message(content=content, message_type=message_type, dst_node_id=node_ids[0])
        self.node_ids = list(node_ids)
        self._all: list[Message] | None = None
        self._some: dict[int, Message] = {}  # built one by one (``one``)

    @property
    def built(self) -> bool:
        """Whether the messages exist (someone read them)."""
        return self._all is not None

    def one(self, position: int) -> Message:
        """The message at ``position``, without building the others (the same object later)."""
        if self._all is not None:
            return self._all[position]
        position = range(len(self.node_ids))[position]  # a negative one counts from the end
        if position not in self._some:
            self._some[position] = self._copy(self.node_ids[position]) if position else self.first
        return self._some[position]

    def _copy(self, node_id: int) -> Message:
        metadata = Metadata.__new__(Metadata)
        metadata.__dict__.update(self.first.metadata.__dict__, _dst_node_id=node_id)
        message = Message.__new__(Message)
        message.__dict__.update(_metadata=metadata, _content=self.first.content, _error=None)
        return message

    def _messages(self) -> list[Message]:
        if self._all is None:
            self._all = [self.one(p) for p in range(len(self.node_ids))]
        return self._all

    def __len__(self) -> int:
        return len(self.node_ids)

    def __getitem__(self, index):  # an int (only that message built) or a slice, as a list's
        return self.one(index) if isinstance(index, int) else self._messages()[index]

    def __iter__(self) -> Iterator[Message]:
        return iter(self._messages())


def same_asks(
    content: RecordDict, node_ids: list[int], message_type: str
) -> SameAsks | list[Message]:
    """``FedAvg._construct_messages``: a message per node, all carrying ``content`` (``SameAsks``)."""
    return SameAsks(content, node_ids, message_type) if node_ids else []


def fill_unchecked(record: Record, items: Mapping) -> Record:
    """``record`` with ``items`` added, skipping Flower's per-item checks and look-ups.

    For items the caller has already checked (or built itself) that pass
    Flower's rules: ``RecordDict.__setitem__`` looks each key up first (a
    caught ``KeyError`` per new key) and ``MetricRecord`` checks each list
    element through ``typing`` introspection, which costs more than everything
    else per hospital reply.
    """
    record.__dict__["_data"].update(items)
    return record


# ------------------------------------------------------------ 2. arrays as .npy bytes
NUMPY_STYPE = SType.NUMPY  # the ``stype`` of an Array holding np.save bytes


@cache
def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes | None:
    """The header ``np.save`` writes before a C-ordered array's bytes; ``None`` if it cannot."""
    try:
        empty = np.zeros(shape, dtype=dtype)
        buffer = io.BytesIO()
        np.save(buffer, empty, allow_pickle=False)
    except (TypeError, ValueError):
        return None
    data = buffer.getvalue()
    return data[: len(data) - empty.nbytes]


class NpyArray(Array):
    """An ``Array`` whose ``numpy()`` skips ``np.load``'s header parsing for the standard header.

    Flower writes an object's class name into its serialised form; this class
    goes by ``Array`` there, so a reply that is ever deflated (Flower's object
    store) is written, and read back, as a plain ``Array``.
    """

    def __setattr__(self, name: str, value) -> None:
        self.__dict__.pop("_row", None)  # the bytes may change: read them again
        super().__setattr__(name, value)

    def numpy(self) -> np.ndarray:
        row = self.__dict__.get("_row")  # set by ``row_array``: the array its bytes hold
        if row is not None:
            return row.copy()  # a fresh, writable array, as np.load's
        header = npy_header(self.dtype, tuple(self.shape)) if self.stype == NUMPY_STYPE else None
        if header is not None and self.data.startswith(header):
            body = np.frombuffer(self.data, dtype=self.dtype, offset=len(header))
            if body.size == math.prod(self.shape):
                return body.reshape(self.shape).copy()  # a fresh, writable array, as np.load's
        return super().numpy()


NpyArray.__qualname__ = Array.__qualname__


def row_array(fields: dict, row: np.ndarray) -> NpyArray:
    """``Array(**fields)`` unchecked, remembering ``row``, the array its ``.npy`` bytes hold."""
    array = NpyArray.__new__(NpyArray)
    array.__dict__.update(fields, _row=row)
    return array


def cached_row(array: Array) -> np.ndarray:
    """``array.numpy()``, or, for a ``row_array``, that row itself (for read-only use)."""
    row = array.__dict__.get("_row") if type(array) is NpyArray else None
    return array.numpy() if row is None else row


def fast_loading(record: ArrayRecord) -> ArrayRecord:
    """``record``, its arrays now ``NpyArray`` (the same fields and bytes, a faster ``numpy()``)."""
    for array in record.values():
        if type(array) is Array:
            array.__class__ = NpyArray
    return record


# ------------------------------------------------------------ 3. FedAvg's logging and default
DEFAULT_METRICS_AGGREGATION = aggregate_metricrecords  # FedAvg's train_metrics_aggr_fn default


def log_train_replies(strategy: FedAvg, replies: list[Message]) -> None:
    """Log the training replies as ``FedAvg.aggregate_train`` does (no validation)."""
    strategy._check_and_log_replies(replies, is_train=True, validate=False)


def log_train_counts(ok: int, failures: list[Message]) -> None:
    """The same log lines as ``log_train_replies``, from a count and the failed replies."""
    from flwr.common.logger import log

    log(
        logging.INFO,
        "%s: Received %s results and %s failures",
        "aggregate_train",
        ok,
        len(failures),
    )
    for msg in failures:
        log(
            logging.INFO,
            "\t> Received error in reply from node %d: %s",
            msg.metadata.src_node_id,
            msg.error.reason,
        )


# ------------------------------------------------------------ 4. the in-memory grid's poll
def poll_every(grid: Grid, seconds: float) -> None:
    """Make Flower's in-memory simulation grid poll for replies every ``seconds``.

    Its default, 0.1 s, adds up to ~0.2 s to every round (train and evaluate).
    Other grids (``flwr run``'s gRPC one) are left as they are.
    """
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = seconds


def poll_interval(grid: Grid, default: float) -> float:
    """How long ``grid`` sleeps between pulls for replies; ``default`` if it does not say."""
    return getattr(grid, "pull_interval", default)


# ------------------------------------------------------------ 5. client-side DP clipping
CLIPPING_NORM_KEY = KEY_CLIPPING_NORM  # where the DP wrapper puts the norm in a train config


def clip_update(new: list[np.ndarray], start: list[np.ndarray], norm: float) -> None:
    """Clip ``new - start`` to L2 ``norm`` in place, as Flower's ``fixedclipping_mod`` does."""
    compute_clip_model_update(new, start, norm)


# ------------------------------------------------------------ 6. legacy SecAgg+
SECAGG_CONFIGS_KEY = RECORD_KEY_CONFIGS  # the config record that marks a SecAgg+ stage message


def fitres_to_recorddict(fitres: Any) -> RecordDict:
    """A legacy ``FitRes`` as the records a SecAgg+ client answers with."""
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict as convert

    return convert(fitres, keep_input=False)


def legacy_client_proxy(node_id: int, grid: Grid) -> Any:
    """The legacy ``ClientProxy`` a ``ClientManager`` registers for one real node."""
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    return GridClientProxy(node_id, grid, 0)


def start_workflow_round(context: Any, server_round: int, arrays: ArrayRecord) -> None:
    """Tell a legacy workflow, through its ``LegacyContext``, the round and global model."""
    from flwr.app import ConfigRecord
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: server_round}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = arrays


def workflow_arrays(context: Any) -> ArrayRecord:
    """The global model a legacy workflow left in its ``LegacyContext``."""
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    return context.state.array_records[MAIN_PARAMS_RECORD]


# ------------------------------------------------------------ 7. the Ray backend
WORKERS_PER_ACTOR = 3  # Flower's executor runs at most min(32, CPUs + 4) worker threads
FASTEST_POLL, SLOWEST_POLL = 0.005, 0.1  # seconds between passes over the nodes
POLL_PER_PASS = 4.0  # wait this many times as long as the last pass took

_pushed = threading.Event()  # set when the server pushes messages: poll at once


@cache
def affinity_backend() -> type:
    """``RayBackend`` whose node ``p`` is always served by actor ``p % actors``.

    Built on first use: Flower's backend modules import Ray and its SuperLink,
    which a process that only builds messages (a test, a Ray worker) need not
    load.
    """
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    class AffinityActorPool(BasicActorPool):
        """Flower's actor pool, except that a given partition always goes to the same actor."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.actors: list[Any] = []

        def add_actors_to_pool(self, num_actors: int) -> None:
            adopted = actor.take_started_early(num_actors)
            self.pool.extend(adopted)
            self.num_actors += len(adopted)
            super().add_actors_to_pool(num_actors - len(adopted))
            self.actors = list(self.pool)  # ``pool`` stays whole: we never pop from it

        def run(self, partition_id: int, job: tuple) -> tuple[Message, Context]:
            """Run ``job`` (app loader, message, cid, context) on the partition's actor; wait."""
            actor = self.actors[partition_id % len(self.actors)]
            _, out_message, context = ray.get(actor.run.remote(*job))
            return out_message, context

    class AffinityRayBackend(raybackend.RayBackend):
        """``RayBackend`` whose node ``p`` is always served by actor ``p % actors``."""

        def build(self, app_fn) -> None:
            self.pool = AffinityActorPool(
                actor_type=actor.remote_actor(),
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

    return AffinityRayBackend


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


def waking_push(push):
    """``InMemoryGrid.push_messages`` that wakes the polling thread when it returns."""

    def push_messages(self, messages):
        try:
            return push(self, messages)
        finally:
            _pushed.set()

    return push_messages


@contextmanager
def installed() -> Iterator[None]:
    """Use the affinity backend and the woken, adaptive poll for simulations started inside."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    backend, poll = raybackend.RayBackend, vce_api.add_messages_to_queue
    push = InMemoryGrid.push_messages
    raybackend.RayBackend = affinity_backend()
    vce_api.add_messages_to_queue = add_messages_to_queue
    InMemoryGrid.push_messages = waking_push(push)
    try:
        yield
    finally:
        raybackend.RayBackend = backend
        vce_api.add_messages_to_queue = poll
        InMemoryGrid.push_messages = push


# ------------------------------------------------------------ 8. run_simulation
SIMULATION_MODULES = (
    "flwr.simulation",
    "flwr.server.superlink.fleet.vce.vce_api",
    "flwr.superlink.grid.inmemory_grid",
)  # what running a simulation imports: Flower's simulation, its Ray backend and grid


def load_simulation() -> None:
    """Import Flower's simulation and Ray backend modules now (before ``gc.freeze``, say)."""
    for name in SIMULATION_MODULES:
        importlib.import_module(name)
    affinity_backend()


def run_simulation(
    server_app: Any, client_app: Any, nodes: int, backend_config: dict, *, affinity: bool = True
) -> None:
    """Flower's ``run_simulation`` (deprecated; the plan is above), on our backend if ``affinity``.

    The one call of it: when Flower removes it, only this function changes.
    """
    from flwr.simulation import run_simulation as flower_run_simulation

    def run() -> None:
        flower_run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=nodes,
            backend_config=backend_config,
        )

    if not affinity:
        run()
        return
    with installed():
        run()
