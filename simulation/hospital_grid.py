"""A Flower ``Grid`` whose nodes are hospitals, even when one real node serves many.

Strategies sample, message and aggregate per node. With block execution one
real Flower node (a Ray actor) serves a block of hospitals, so this grid
presents one virtual node per hospital (``hospital index + 1``): it groups the
strategy's per-hospital messages into one message per real node, and splits
each block reply back into one reply per hospital. Every strategy, robust and
DP ones included, therefore sees exactly the replies it would see with one
client per hospital.

A block answers in columns (``block_reply``): one ``MetricRecord`` whose lists
hold each answering hospital's value (``hospital`` names the hospitals, in row
order), one ``ArrayRecord`` whose arrays stack the hospitals' arrays along a
leading axis, and ``errors`` for the hospitals that did not answer. Thousands of
per-hospital records would cost more to build, ship and read than the training
itself. The server reads a block with ``read_block``; ``send_and_receive`` then
rebuilds, for each hospital, the records a node of its own would have sent
(with a byte-identical ``.npy`` codec that skips ``np.save``/``np.load``; what
that needs of Flower's internals is in ``simulation.compat.flower``), while
the round loop's own queries and evaluation read the columns directly
(``broadcast``), since no strategy looks at those.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from healthsync import telemetry
from healthsync.errors import HealthSyncError
from healthsync.privacy.consent import WITHDRAWN_MARK
from simulation.compat import flower

BLOCK_FAILED = 1  # error code for a hospital whose whole block failed
HOSPITAL_COLUMN = "hospital"  # a block reply's column of hospital indices
HTTP_PULL_SECONDS = 3.0  # how often Flower's own deployment grid polls for replies
MEAN_ROWS = 2048  # hospitals' updates weighted and summed at a time (``_weighted_means``)


@dataclass(frozen=True)
class BlockReply:
    """What one block answered: row ``r`` of every column and array is ``hospitals[r]``'s."""

    hospitals: list[int]
    columns: dict[str, list]
    arrays: dict[str, np.ndarray]
    errors: dict[int, str]  # hospital index -> why it gave no answer


@dataclass
class Answers:
    """Every answering hospital's reply as columns, in hospital order.

    Row ``r`` of every column and array is hospital ``index[r]``'s (its
    position in the federation). A round's evaluation at 100,000 hospitals
    then builds no Python object per hospital on the way to the store.
    """

    index: np.ndarray
    columns: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]

    @classmethod
    def of(cls, blocks: Sequence[BlockReply]) -> Answers:
        """The blocks' rows together, sorted by hospital (a column a block lacks is NaN there)."""
        if not blocks:
            return cls(np.zeros(0, dtype=np.int64), {}, {})
        # Blocks come as they finish; in the order of their first hospital their rows
        # usually are in hospital order already, and need no second copy to sort them.
        blocks = sorted(blocks, key=lambda b: b.hospitals[0] if b.hospitals else -1)
        index = np.concatenate([np.asarray(b.hospitals, dtype=np.int64) for b in blocks])
        ordered = bool(np.all(index[1:] > index[:-1]))
        order = slice(None) if ordered else np.argsort(index, kind="stable")  # a view, or a copy

        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts)[order]

        def column(block: BlockReply, key: str) -> np.ndarray:
            if key in block.columns:
                return np.asarray(block.columns[key])
            return np.full(len(block.hospitals), np.nan)

        keys = dict.fromkeys(k for b in blocks for k in b.columns)
        columns = {k: joined([column(b, k) for b in blocks]) for k in keys}
        arrays = {k: joined([b.arrays[k] for b in blocks]) for k in blocks[0].arrays}
        return cls(index[order], columns, arrays)


class HospitalGrid(Grid):
    """One virtual node per hospital over ``grid``, whose nodes serve ``block_size`` hospitals each."""

    def __init__(
        self,
        grid: Grid,
        hospitals: int,
        block_size: int,
        *,
        wait_seconds: float = 60.0,
        withdrawn: Callable[[], Mapping[int, str]] | None = None,
        sample_withdrawn: bool = False,
    ) -> None:
        """``withdrawn()`` names the hospitals that withdrew consent (``simulation.consent``):
        they are never asked. They are left out of sampling too, unless ``sample_withdrawn``
        (DP runs: the accountant assumed every hospital could be sampled, so a sampled
        withdrawn hospital counts as one that sent nothing, which keeps the guarantee).
        """
        self.inner = grid
        self.withdrawn = withdrawn or dict
        self.sample_withdrawn = sample_withdrawn
        flower.poll_every(grid, 0.002)
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
        if self.sample_withdrawn:
            return range(1, self.hospitals + 1)
        gone = self.withdrawn()
        return [i + 1 for i in range(self.hospitals) if i not in gone]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """One message per hospital in, one reply per hospital out (in the same order)."""
        if isinstance(messages, flower.SameAsks) and not messages.built:
            return self._send_same(messages, timeout)
        messages = list(messages)
        gone = self.withdrawn()
        replies: dict[int, Message] = {}
        by_block: dict[int, list[Message]] = defaultdict(list)
        for msg in messages:
            if (why := gone.get(msg.metadata.dst_node_id - 1)) is not None:
                replies[msg.metadata.dst_node_id - 1] = _failed(msg, f"{WITHDRAWN_MARK} {why}")
                continue
            by_block[(msg.metadata.dst_node_id - 1) // self.block_size].append(msg)
        groups = {}
        for block, group in by_block.items():
            first = group[0]
            if any(m.content is not first.content for m in group[1:]):
                raise HealthSyncError(
                    "per-hospital message contents are not supported with block execution"
                )
            groups[block] = (first, [m.metadata.dst_node_id - 1 for m in group])
        return self._replies(messages, replies, groups, timeout)

    def _send_same(self, messages: flower.SameAsks, timeout: float | None) -> HospitalReplies:
        """``send_and_receive`` of asks that all carry the same content, grouped without
        building a message per hospital: by their destinations, in arrays."""
        index = np.asarray(messages.node_ids, dtype=np.int64) - 1
        replies: dict[int, Message] = {}
        if gone := self.withdrawn():
            out = np.isin(index, np.fromiter(gone, dtype=np.int64, count=len(gone)))
            for position in np.flatnonzero(out).tolist():
                why = gone[int(index[position])]
                replies[int(index[position])] = _failed(
                    messages[position], f"{WITHDRAWN_MARK} {why}"
                )
            index = index[~out]
        block_of = index // self.block_size
        order = np.argsort(block_of, kind="stable")  # each block's hospitals in the asks' order
        index, block_of = index[order], block_of[order]
        starts = np.flatnonzero(np.r_[True, block_of[1:] != block_of[:-1]]) if len(index) else []
        ends = [*starts[1:], len(index)] if len(index) else []
        groups = {
            int(block_of[a]): (messages.first, index[a:b].tolist())
            for a, b in zip(starts, ends, strict=True)
        }
        return self._replies(messages, replies, groups, timeout)

    def _replies(
        self,
        messages: Sequence[Message],
        early: dict[int, Message],
        groups: dict[int, tuple[Message, list[int]]],
        timeout: float | None,
    ) -> HospitalReplies:
        """Ask each block its group; the replies, built only when read."""
        pushed = time.time_ns()
        answers = []
        for block, answer in self._exchange(groups, timeout):
            answers.append((block, answer))
            telemetry.block_span(  # from the push to this block's answer (docs/telemetry.md)
                f"{groups[block][0].metadata.message_type} block",
                pushed,
                {"healthsync.block": block, "healthsync.hospitals": len(groups[block][1])},
            )
        return HospitalReplies(messages, early, [(a, groups[b][1]) for b, a in sorted(answers)])

    def broadcast(
        self,
        message_type: str,
        records: dict,
        *,
        timeout: float | None = None,
        on_block: Callable[[BlockReply], None] | None = None,
        chunk: int | None = None,
    ) -> list[BlockReply]:
        """Send ``records`` to every hospital that takes part; each block's answer, in columns.

        For the round loop's own queries and evaluation, whose answers no
        strategy sees: no Message per hospital on either side. ``on_block``
        sees each answer as it arrives; ``chunk`` asks a block's hospitals in
        messages of at most that many (to the same node), so that answers, and
        a run's count of the hospitals that have read their data, come more
        often than once per block.
        """
        template = Message(content=RecordDict(records), message_type=message_type, dst_node_id=1)
        gone = self.withdrawn()
        groups = {}
        for first in range(0, self.hospitals, self.block_size):
            members = [
                i
                for i in range(first, min(first + self.block_size, self.hospitals))
                if i not in gone
            ]
            if not members:
                continue
            step = chunk or len(members)
            for start in range(0, len(members), step):
                groups[len(groups)] = (template, members[start : start + step])
        answers = []
        for _, answer in self._exchange(groups, timeout):
            answers.append(answer)
            if on_block:
                on_block(answer)
        return answers

    def _exchange(
        self, groups: dict[int, tuple[Message, list[int]]], timeout: float | None
    ) -> Iterator[tuple[int, BlockReply]]:
        """Ask each group (a template message, the hospitals wanted, all of one block); yield
        each answer with the group's key.

        Answers are yielded as they arrive, so the caller reads one block while
        the others are still training (Flower's own ``send_and_receive`` waits
        for all). The polling loop is Flower's: pull, then sleep the inner grid's
        poll interval, until every block answered or ``timeout`` passed.
        """
        outgoing, asked = [], []
        for block, (template, hospitals) in groups.items():
            config = dict(template.content.get("config", ConfigRecord()))
            config["hospitals"] = hospitals
            config["block-size"] = self.block_size
            content = RecordDict({k: v for k, v in template.content.items() if k != "config"})
            content["config"] = ConfigRecord(config)
            node = self.node_of_block[hospitals[0] // self.block_size]  # a group is in one block
            outgoing.append(
                Message(
                    content=content, message_type=template.metadata.message_type, dst_node_id=node
                )
            )
            asked.append((block, hospitals))
        ids = list(self.inner.push_messages(outgoing))
        if len(ids) != len(outgoing):  # Flower dropped some: match by the ids it set
            ids = [m.metadata.message_id if m.metadata.message_id in ids else "" for m in outgoing]
        waiting = {}
        for message_id, (block, hospitals) in zip(ids, asked, strict=True):
            if message_id:
                waiting[message_id] = (block, hospitals)
            else:
                why = "Flower did not accept the message for its node"
                yield block, BlockReply([], {}, {}, dict.fromkeys(hospitals, why))
        end = time.time() + (timeout or 0.0)
        while waiting and (timeout is None or time.time() < end):
            for reply in self.inner.pull_messages(list(waiting)):
                block, hospitals = waiting.pop(reply.metadata.reply_to_message_id)
                yield block, read_block(reply, hospitals)
            if waiting:
                time.sleep(flower.poll_interval(self.inner, HTTP_PULL_SECONDS))
        for block, hospitals in waiting.values():
            why = "no reply from its node before the timeout"
            yield block, BlockReply([], {}, {}, dict.fromkeys(hospitals, why))

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


def _failed(msg: Message, reason: str) -> Message:
    return Message(Error(code=BLOCK_FAILED, reason=reason), reply_to=msg)


class HospitalReplies(Sequence[Message]):
    """One reply per hospital message, in the messages' order, each built only when read.

    Building a Flower reply per hospital (``_split``) is the largest per-hospital
    cost on the server at 100,000 hospitals, and FedAvg through
    ``StackedAggregation`` only restacks them: it reads the blocks' columns
    instead (``stacked``). Anything else that reads a reply (another strategy,
    Flower's DP wrapper, a test) gets every reply, built as before.
    """

    def __init__(
        self,
        messages: Sequence[Message],
        early: dict[int, Message],
        answers: list[tuple[BlockReply, list[int]]],
    ) -> None:
        """``early``: replies settled before asking (withdrawn hospitals), by hospital index;
        ``answers``: each block's answer with the hospitals it was asked for, in block order."""
        self.messages = messages
        self.early = early
        self.answers = answers
        self._built: list[Message] | None = None
        self._positions: dict[int, int] | None = None

    def _destinations(self) -> list[int]:
        """The hospital each message asks, in the messages' order (none built to say so)."""
        if isinstance(self.messages, flower.SameAsks):
            return [node - 1 for node in self.messages.node_ids]
        return [m.metadata.dst_node_id - 1 for m in self.messages]

    def _ask(self, index: int) -> Message:
        """Hospital ``index``'s message (only that one built, for FedAvg's asks)."""
        if self._positions is None:
            self._positions = {h: p for p, h in enumerate(self._destinations())}
        return self.messages[self._positions[index]]

    @property
    def built(self) -> bool:
        """Whether the per-hospital replies exist (someone read them)."""
        return self._built is not None

    def _replies(self) -> list[Message]:
        if self._built is None:
            replies = dict(self.early)
            for answer, hospitals in self.answers:
                replies.update(_split(answer, [self._ask(i) for i in hospitals]))
            self._built = [replies[m.metadata.dst_node_id - 1] for m in self.messages]
        return self._built

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, index):  # an int or a slice, as a list's
        return self._replies()[index]

    def __iter__(self) -> Iterator[Message]:
        return iter(self._replies())

    def failures(self) -> list[Message]:
        """The error replies, in the messages' order, without building the others."""
        if self._built is not None:
            return [r for r in self._built if r.has_error()]
        errors = dict(self.early)
        for answer, _ in self.answers:
            if answer.errors:  # most blocks have none: no message looked up
                errors.update(_error_replies(answer, {i: self._ask(i) for i in answer.errors}))
        if not errors:
            return []
        return [errors[h] for h in self._destinations() if h in errors]

    def stacked(self, weight_key: str):
        """``(weights, arrays, metrics)`` of the hospitals that answered, block by block.

        Arrays keep their stacked rows (one per hospital), metrics their columns;
        ``None`` unless every answering block sent the same float arrays and
        scalar metrics, ``weight_key`` among them (then ``StackedAggregation``
        reads the replies one by one, as Flower's FedAvg would).
        """
        parts = [answer for answer, _ in self.answers if answer.hospitals]
        if not parts:
            return None
        names, columns = list(parts[0].arrays), list(parts[0].columns)
        if weight_key not in columns or not names:
            return None
        layout = {n: (a.dtype, a.shape[1:]) for n, a in parts[0].arrays.items()}
        for answer in parts:
            if list(answer.arrays) != names or list(answer.columns) != columns:
                return None
            if any((a.dtype, a.shape[1:]) != layout[n] for n, a in answer.arrays.items()):
                return None  # blocks disagree on a parameter's shape: Flower's checks say so
            if not all(np.issubdtype(a.dtype, np.floating) for a in answer.arrays.values()):
                return None
            if any(any(type(v) not in (int, float) for v in answer.columns[c]) for c in columns):
                return None
        arrays = {n: [answer.arrays[n] for answer in parts] for n in names}
        metrics = {
            c: np.concatenate([np.asarray(a.columns[c], dtype=np.float64) for a in parts])
            for c in columns
        }
        weights = metrics.pop(weight_key)
        return weights, arrays, metrics


# ------------------------------------------------------------ the block wire format
def block_reply(
    hospitals: Sequence[int], columns: dict[str, list], arrays: dict[str, np.ndarray]
) -> dict:
    """A block's answer as records: row ``r`` of each column and stacked array is ``hospitals[r]``'s."""
    records = {"metrics": metrics_record({HOSPITAL_COLUMN: list(hospitals), **columns})}
    if arrays:
        records["arrays"] = arrays_record(arrays)
    return records


def read_block(reply: Message, requested: list[int]) -> BlockReply:
    """A block's answer in columns; a failed or malformed answer fails all its hospitals."""
    if reply.has_error():
        return BlockReply([], {}, {}, dict.fromkeys(requested, str(reply.error.reason)))
    content = reply.content
    try:
        errors = {int(k): str(v) for k, v in content["errors"].items()}
        if "metrics" in content:
            columns = dict(content["metrics"])
            hospitals = [int(i) for i in columns.pop(HOSPITAL_COLUMN)]
            stacked = flower.fast_loading(content.get("arrays", ArrayRecord()))
            arrays = {k: a.numpy() for k, a in stacked.items()}
        else:
            hospitals, columns, arrays = [], {}, {}
        rows = {len(v) for v in [*columns.values(), *arrays.values()]}
        if rows - {len(hospitals)} or not set(hospitals) | set(errors) <= set(requested):
            raise ValueError("its rows do not match the hospitals asked")
        if len(set(hospitals)) != len(hospitals):  # one row each, or a mean would count it twice
            raise ValueError("it answers for a hospital twice")
    except (KeyError, TypeError, ValueError) as err:
        why = f"malformed block reply: {err}"
        return BlockReply([], {}, {}, dict.fromkeys(requested, why))
    for index in set(requested) - set(hospitals) - set(errors):
        errors[index] = "its block's reply has no answer for this hospital"
    return BlockReply(hospitals, columns, arrays, errors)


def _by_hospital(group: list[Message]) -> dict[int, Message]:
    """The messages of ``group`` by the hospital index each asks."""
    return {m.metadata.dst_node_id - 1: m for m in group}


def _error_replies(block: BlockReply, asked: dict[int, Message]) -> dict[int, Message]:
    """An error reply for each asked hospital that ``block`` says gave no answer."""
    return {i: _failed(asked[i], why) for i, why in block.errors.items() if i in asked}


def _split(block: BlockReply, group: list[Message]) -> dict[int, Message]:
    """One reply per hospital message in ``group``, as a node of its own would have sent it."""
    asked = _by_hospital(group)
    out = _error_replies(block, asked)
    # Every row of a stacked array has the same dtype, shape and strides: one layout each.
    layouts = {n: _npy_layout(a[0]) if len(a) else None for n, a in block.arrays.items()}
    now = time.time()
    for row, index in enumerate(block.hospitals):
        # One row of a valid MetricRecord's lists: valid metric values, no checks needed.
        metrics = flower.fill_unchecked(
            MetricRecord(), {k: v[row] for k, v in block.columns.items()}
        )
        records = {"metrics": metrics}
        if layouts:
            records["arrays"] = _row_record(block.arrays, row, layouts)
        out[index] = flower.unchecked_reply(
            asked[index], flower.fill_unchecked(RecordDict(), records), now
        )
    return out


# ------------------------------------------------------------ the arrays' codec
@cache
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # as Flower names it; slow enough in NumPy to be worth remembering


NpyLayout = tuple[dict, bytes]  # an Array's fields but its data, and the .npy header


def _npy_layout(a: np.ndarray) -> NpyLayout | None:
    """What ``Array(a)`` would hold besides ``a``'s bytes; ``None`` if only Flower can say."""
    dtype = _dtype_name(a.dtype)
    header = flower.npy_header(dtype, a.shape)
    if header is None or (a.flags.f_contiguous and not a.flags.c_contiguous):
        return None
    return {"dtype": dtype, "shape": tuple(a.shape), "stype": flower.NUMPY_STYPE}, header


def _npy_fields(a: np.ndarray, layout: NpyLayout | None) -> dict | None:
    """The fields ``Array(a)`` would hold (same ``.npy`` bytes), given ``a``'s layout."""
    if layout is None:
        return None
    fields, header = layout
    return {**fields, "data": header + a.tobytes()}


def _array(a: np.ndarray) -> Array:
    fields = _npy_fields(a, _npy_layout(a))
    return Array.from_numpy_ndarray(a) if fields is None else Array(**fields)


def arrays_record(arrays: list[np.ndarray] | dict[str, np.ndarray]) -> ArrayRecord:
    """``ArrayRecord(numpy_ndarrays=arrays)`` (or of named arrays), byte for byte, no ``np.save``."""
    named = arrays if isinstance(arrays, dict) else {str(i): a for i, a in enumerate(arrays)}
    record = ArrayRecord()
    for key, a in named.items():
        record[key] = _array(np.asarray(a))
    return record


def _row_record(
    stacked: dict[str, np.ndarray], row: int, layouts: dict[str, NpyLayout | None]
) -> ArrayRecord:
    """The ``ArrayRecord`` of row ``row`` of a block's stacked arrays, built unchecked.

    Thousands per round: each ``Array`` gets its fields (the same ``.npy`` bytes
    ``Array(a[row])`` holds) and the record its items unchecked, skipping
    Flower's per-item validation, which these types (str keys, ``Array`` values
    of C-ordered numeric rows) pass.
    """
    items = {}
    for key, a in stacked.items():
        values = a[row]
        fields = _npy_fields(values, layouts[key])
        items[key] = (
            Array.from_numpy_ndarray(values) if fields is None else flower.row_array(fields, values)
        )
    return flower.fill_unchecked(ArrayRecord(), items)


def metrics_record(values: dict[str, int | float | list[int] | list[float]]) -> MetricRecord:
    """``MetricRecord(values)``, with Flower's type rules checked in bulk.

    A block answers with a record per hospital, histograms included, and
    ``MetricRecord`` checks every list element through ``typing`` introspection.
    The rules here are the same (``str`` keys; ``int`` or ``float`` values, not
    ``bool``; a list holds one such type); anything else goes to ``MetricRecord``
    itself, which raises as usual.
    """
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        kind = type(items[0]) if items else int
        if (
            not isinstance(key, str)
            or kind not in (int, float)
            or any(type(v) is not kind for v in items)
        ):
            return MetricRecord(values)
    return flower.fill_unchecked(MetricRecord(), values)


# ------------------------------------------------------------ FedAvg over thousands of hospitals
class StackedAggregation:
    """FedAvg's ``aggregate_train``, with the weighted means taken over stacked arrays.

    Flower's FedAvg walks every reply's records in Python (building record views
    and parsing arrays one hospital at a time), which at 10,000 hospitals costs
    about a second per round. This mixin first checks, with plain lookups, what
    Flower's ``validate_message_reply_consistency`` checks (one ArrayRecord and
    one MetricRecord per reply, the same keys everywhere, a scalar weight) and
    that arrays are floating point and metrics scalars; then it stacks each
    array over the hospitals and takes the weighted mean with one ``tensordot``
    (in float64, so it equals Flower's float32 running sum to about 1e-7). Any
    other input, or a custom ``train_metrics_aggr_fn``, goes to Flower's own
    code unchanged. It still receives one reply per hospital.
    """

    def _construct_messages(
        self, record: RecordDict, node_ids: list[int], message_type: str
    ) -> list[Message]:
        """FedAvg's messages to the sampled hospitals, the same content each (built unchecked)."""
        return flower.same_asks(record, node_ids, message_type)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        default = self.train_metrics_aggr_fn is flower.DEFAULT_METRICS_AGGREGATION
        blocks = None
        if isinstance(replies, HospitalReplies) and not replies.built and default:
            blocks = replies.stacked(self.weighted_by_key)  # read in columns: no reply built
        if blocks is not None:
            failures = replies.failures()
            flower.log_train_counts(len(replies) - len(failures), failures)
            return _weighted_means(*blocks)
        replies = list(replies)
        valid = [r.content for r in replies if not r.has_error()]
        stacked = _stacked(valid, self.weighted_by_key) if valid and default else None
        if stacked is None:
            return super().aggregate_train(server_round, replies)
        flower.log_train_replies(self, replies)  # Flower's own log lines
        weights, arrays, metrics = stacked
        return _weighted_means(weights, {k: [rows] for k, rows in arrays.items()}, metrics)


def _weighted_means(
    weights: np.ndarray, arrays: dict[str, list[np.ndarray]], metrics: dict[str, np.ndarray]
) -> tuple[ArrayRecord, MetricRecord]:
    """FedAvg's means: each array's rows (in parts, summed in order) and each metric column,
    weighted by ``weights`` (in float64; the arrays keep their own type)."""
    factors = weights / weights.sum()
    means = {}
    for key, parts in arrays.items():
        total, start = None, 0
        for rows in parts:
            # A few thousand rows at a time: float32 rows widened to float64 stay in cache
            # (a block of 12,500 MLP updates is 64 MiB widened).
            for first in range(0, len(rows), MEAN_ROWS):
                chunk = rows[first : first + MEAN_ROWS]
                share = np.tensordot(factors[start : start + len(chunk)], chunk, axes=1)
                total = share if total is None else total + share
                start += len(chunk)
        means[key] = Array(total.astype(parts[0].dtype))
    return ArrayRecord(means), MetricRecord(
        {key: float(np.dot(factors, column)) for key, column in metrics.items()}
    )


def _stacked(contents: list[RecordDict], weight_key: str):
    """Weights, arrays stacked per key and metric columns; ``None`` unless all is regular."""
    first = contents[0]
    array_keys, metric_keys = list(first.array_records), list(first.metric_records)
    if len(first) != 2 or len(array_keys) != 1 or len(metric_keys) != 1:
        return None
    array_key, metric_key = array_keys[0], metric_keys[0]
    names, columns = list(first[array_key]), list(first[metric_key])
    if weight_key not in columns:
        return None
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    values: dict[str, list[float]] = {name: [] for name in columns}
    for content in contents:
        try:
            records, metrics = content[array_key], content[metric_key]
        except KeyError:
            return None
        if (
            len(content) != 2
            or not isinstance(records, ArrayRecord)
            or not isinstance(metrics, MetricRecord)
            or list(records) != names
            or list(metrics) != columns
        ):
            return None
        for name in names:
            rows[name].append(flower.cached_row(records[name]))
        for name in columns:
            value = metrics[name]
            if isinstance(value, list):
                return None
            values[name].append(value)
    arrays = {name: np.stack(parts) for name, parts in rows.items()}
    if not all(np.issubdtype(a.dtype, np.floating) for a in arrays.values()):
        return None
    weights = np.asarray(values.pop(weight_key), dtype=np.float64)
    return weights, arrays, {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}


class BlockFedAvg(StackedAggregation, FedAvg):
    """Flower's ``FedAvg``, aggregating through ``StackedAggregation``."""


class BlockFedProx(StackedAggregation, FedProx):
    """Flower's ``FedProx``, aggregating through ``StackedAggregation``."""
