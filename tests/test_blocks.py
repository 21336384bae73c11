"""Block execution: many hospitals in one vectorised call give each hospital's own update."""

import dataclasses
import math

import numpy as np
import pytest

from healthsync.config import (
    AUTO_BLOCK_THRESHOLD,
    MAX_AUTO_BLOCK,
    TrainConfig,
    auto_block_size,
    block_hospitals,
)
from healthsync.data.synthetic import generate_federation
from healthsync.errors import HealthSyncError
from healthsync.ml import blocks
from healthsync.ml.blocks import evaluate_block, train_block
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.model import build_model, get_arrays, initial_model, set_arrays
from healthsync.ml.training import LocalData, evaluate_local, hospital_arrays, train_local


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    fed = generate_federation(
        tmp_path_factory.mktemp("blocks") / "fed",
        hospitals=64,
        patients=60,
        seed=3,
        heterogeneity=1.0,
    )
    arrays = [hospital_arrays(fed, h.id, "diabetes") for h in fed.hospitals]
    scaler = Scaler.from_stats(ScalingStats.combine(ScalingStats.of(a.x_train) for a in arrays))
    return [a.scaled(scaler) for a in arrays]


@pytest.mark.parametrize("chunk_rows", [48, 100_000])  # 3 hospitals a chunk, or all at once
@pytest.mark.parametrize(("kind", "mu"), [("logreg", 0.0), ("mlp", 0.0), ("mlp", 0.5)])
def test_block_of_64_matches_one_hospital_at_a_time(hospitals, kind, mu, chunk_rows, monkeypatch):
    monkeypatch.setattr(blocks, "CHUNK_ROWS", chunk_rows)
    start = get_arrays(initial_model(kind, hospitals[0].x_train.shape[1], seed=0))
    seeds = [1000 + i for i in range(len(hospitals))]
    settings = {"epochs": 2, "batch_size": 16, "lr": 0.1, "proximal_mu": mu}
    block, block_losses = train_block(kind, start, hospitals, seeds=seeds, **settings)
    assert len({len(d.y_train) for d in hospitals}) > 5  # sizes differ: masking is exercised
    for i, data in enumerate(hospitals):
        model = build_model(kind, data.x_train.shape[1])
        set_arrays(model, start)
        loss = train_local(model, data.x_train, data.y_train, seed=seeds[i], **settings)
        for ours, theirs in zip(block[i], get_arrays(model), strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        assert block_losses[i] == pytest.approx(loss, abs=1e-5)


def test_block_evaluation_matches(hospitals):
    arrays = get_arrays(initial_model("mlp", hospitals[0].x_train.shape[1], seed=1))
    model = build_model("mlp", hospitals[0].x_train.shape[1])
    set_arrays(model, arrays)
    # add a hospital whose test split has one class only (AUC undefined)
    one_class = dataclasses.replace(hospitals[0], y_test=np.zeros_like(hospitals[0].y_test))
    data = [*hospitals, one_class]
    for (ours, hist), d in zip(evaluate_block("mlp", arrays, data), data, strict=True):
        theirs, their_hist = evaluate_local(model, d.x_test, d.y_test)
        assert ours.n == theirs.n
        for key in ("loss", "auc", "accuracy", "brier"):
            assert getattr(ours, key) == pytest.approx(
                getattr(theirs, key), abs=1e-6, nan_ok=True
            ), key
        np.testing.assert_allclose(hist, their_hist, atol=1e-6)
    assert np.isnan(evaluate_block("mlp", arrays, [one_class])[0][0].auc)


def test_block_evaluation_in_chunks_equals_one_pass(hospitals, monkeypatch):
    arrays = get_arrays(initial_model("mlp", hospitals[0].x_train.shape[1], seed=1))
    whole, whole_hist = blocks.evaluate_columns("mlp", arrays, hospitals)
    monkeypatch.setattr(blocks, "CHUNK_ROWS", 7)  # forward passes of 7 rows
    blocks._layouts.clear()
    chunked, chunked_hist = blocks.evaluate_columns("mlp", arrays, hospitals)
    for key, column in whole.items():  # float32 products of other heights: equal to 1e-6
        np.testing.assert_allclose(column, chunked[key], atol=1e-6)
    np.testing.assert_allclose(whole_hist, chunked_hist, atol=1e-5)


def test_a_layout_is_reused_only_for_the_same_hospital_objects(hospitals):
    """Rounds reuse a block's concatenated rows; a changed hospital (a label flip) does not."""
    data = hospitals[:5]
    first = blocks.layout(data)
    assert blocks.layout(list(data)) is first  # a new list of the same objects
    flipped = dataclasses.replace(data[2], y_train=1 - data[2].y_train)
    changed = blocks.layout([*data[:2], flipped, *data[3:]])
    assert changed is not first
    assert changed.train.y.sum() == (
        first.train.y.sum() - data[2].y_train.sum() + flipped.y_train.sum()
    )
    assert blocks.layout(data[:4]) is not first  # fewer hospitals: another layout


def test_a_layout_is_not_mistaken_for_one_of_objects_that_died(hospitals):
    """A dead object's id may be reused by a new one: its old layout must not answer for it."""
    blocks.forget_layouts()
    copies = [dataclasses.replace(h) for h in hospitals[:3]]
    old = blocks.layout(copies)
    assert old.train.count == 3 and not old.dead
    del copies
    import gc

    gc.collect()
    assert old.dead
    fresh = [dataclasses.replace(h, y_train=1 - h.y_train) for h in hospitals[:3]]
    blocks._layouts[tuple(map(id, fresh))] = old  # as if the new objects had the old ids
    got = blocks.layout(fresh)
    assert got is not old
    np.testing.assert_array_equal(got.train.y.numpy().sum(), sum(f.y_train.sum() for f in fresh))
    assert old not in blocks._layouts.values()  # dead layouts are dropped when another is made


def test_layouts_are_dropped_least_recently_used_first_within_their_byte_budget(
    hospitals, monkeypatch
):
    blocks.forget_layouts()
    a, b, c = hospitals[0:4], hospitals[4:8], hospitals[8:12]
    three = sum(blocks.Layout(d).train.nbytes for d in (a, b, c))
    monkeypatch.setattr(blocks, "LAYOUT_BYTES", three - 1)  # room for any two, not three
    first = blocks.layout(a)
    assert first.nbytes == 0 and first.train.count == 4  # parts are built when read
    assert blocks.layout(b).train.count == 4
    assert blocks.layout(a) is first  # a is now the most recently used
    blocks.layout(c).train  # noqa: B018  (built: now three would not fit)
    blocks.layout(hospitals[12:13])  # the next new layout finds no room: b goes
    assert blocks.layout(a) is first
    assert tuple(map(id, b)) not in blocks._layouts
    assert tuple(map(id, c)) in blocks._layouts


def test_a_run_lays_out_each_block_once_whatever_order_fedavg_samples_in(tmp_path, monkeypatch):
    """FedAvg asks a block's hospitals in a new random order each round; the block trains
    and scores them in the federation's order, so one layout serves every round."""
    from tests.inprocess_grid import run_in_process

    made = []
    original = blocks.Layout.__init__
    monkeypatch.setattr(
        blocks.Layout, "__init__", lambda self, data: made.append(len(data)) or original(self, data)
    )
    blocks._layouts.clear()
    fed = generate_federation(tmp_path / "fed", hospitals=40, patients=40, seed=5)
    config = TrainConfig(  # validation rows held out: scored every round from their own layout
        data_dir=str(fed.data_dir),
        db=str(tmp_path / "m.duckdb"),
        rounds=3,
        block_size=20,
        local_epochs=1,
        validation_share=0.2,
    )
    detail, grid = run_in_process(config)
    assert detail["status"] == "completed", detail
    asked = [
        m.content["config"]["hospitals"] for m in grid.sent if m.metadata.message_type == "train"
    ]
    assert any(list(h) != sorted(h) for h in asked)  # the strategy's order is not the federation's
    assert made == [20, 20, 20, 20]  # per block: its rows, its validation rows; for 3 rounds


def test_block_auc_handles_ties():
    from healthsync.ml.blocks import evaluate_block as block_eval
    from healthsync.ml.metrics import auc_score

    rng = np.random.default_rng(0)
    x = np.zeros((40, 3), dtype=np.float32)  # every score equal: all ties, AUC 0.5
    y = (rng.random(40) < 0.4).astype(np.float32)
    data = LocalData(x, y, x, y)
    arrays = [np.zeros((1, 3), np.float32), np.zeros(1, np.float32)]
    ((metrics, _),) = block_eval("logreg", arrays, [data, data])[:1]
    assert metrics.auc == pytest.approx(auc_score(y, np.full(40, 0.5))) == pytest.approx(0.5)


def test_automatic_block_size():
    config = TrainConfig()
    assert config.block_size_for(10, cpus=2) == 1  # small federations: one client per hospital
    assert config.block_size_for(1000, cpus=2) == 500
    assert config.block_size_for(100_000, cpus=2) == 12_500  # at most 16,384: 8 blocks on 2 CPUs
    assert TrainConfig(block_size=64).block_size_for(10) == 10


@pytest.mark.parametrize("hospitals", [1, 10, 32, 33, 101, 1000, 10_000, 100_000])
@pytest.mark.parametrize("cpus", [1, 2, 3, 8])
def test_one_block_rule_covers_every_hospital_once_and_keeps_every_cpu_busy(hospitals, cpus):
    block = auto_block_size(hospitals, cpus)
    blocks = math.ceil(hospitals / block)
    members = [i for b in range(blocks) for i in block_hospitals(b, block, hospitals)]
    assert members == list(range(hospitals))
    if hospitals <= AUTO_BLOCK_THRESHOLD:
        assert block == 1
    else:  # no CPU idles while another works through an extra block
        assert blocks % cpus == 0 or blocks < cpus
    assert block <= MAX_AUTO_BLOCK
    assert math.ceil(hospitals / auto_block_size(hospitals, cpus, max_blocks=7)) <= 7


def test_training_runs_and_cohort_queries_lay_out_hospitals_by_the_same_rule(tmp_path, monkeypatch):
    """A run and the cohort service over one federation ask for the same Flower nodes."""
    from simulation import analytics, launch

    fed = generate_federation(tmp_path / "fed", hospitals=AUTO_BLOCK_THRESHOLD + 9, patients=20)
    asked = []
    monkeypatch.setattr(launch, "simulate", lambda _app, nodes: asked.append(nodes))
    analytics.run(fed.data_dir, tmp_path / "state.json", idle_timeout=1, block_size=None)
    config, run_nodes = launch.layout(TrainConfig(data_dir=str(fed.data_dir)))
    assert asked == [run_nodes] and config.block_size > 1  # blocks, not one node per hospital


def test_block_replies_codec_is_byte_identical_to_flowers():
    from flwr.app import ArrayRecord

    from simulation.compat.flower import fast_loading
    from simulation.hospital_grid import arrays_record

    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((1, 18)).astype(np.float32),
        rng.standard_normal(1).astype(np.float32),
        rng.standard_normal((3, 4)),  # float64
        np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),  # Fortran order
        rng.standard_normal((5, 4)).astype(np.float32)[:, 1],  # strided view
        np.array(2.5, dtype=np.float32),  # 0-d
        np.arange(6, dtype=np.int64).reshape(2, 3),
    ]
    ours, flowers = arrays_record(arrays), ArrayRecord(numpy_ndarrays=arrays)
    assert list(ours) == list(flowers)
    for key in flowers:
        assert (ours[key].dtype, ours[key].shape, ours[key].data) == (
            flowers[key].dtype,
            flowers[key].shape,
            flowers[key].data,
        )
    loaded = fast_loading(ours)
    for got, want in zip(loaded.to_numpy_ndarrays(), flowers.to_numpy_ndarrays(), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable
    first = loaded["0"].numpy()
    first += 1.0  # a fresh array each call, as np.load gives: the record is unchanged
    np.testing.assert_array_equal(loaded["0"].numpy(), arrays[0])
    assert loaded.object_id == flowers.object_id


def _train_replies(count: int, kind: str, *, weight_key: str, seed: int = 0):
    """``count`` training replies (every fifth an error) as the grid hands them to a strategy."""
    from flwr.app import Error, Message, MetricRecord, RecordDict

    from simulation.compat.flower import fast_loading
    from simulation.hospital_grid import arrays_record
    from tests.inprocess_grid import allow_messages

    allow_messages()
    rng = np.random.default_rng(seed)
    shapes = [a.shape for a in get_arrays(build_model(kind, 7))]
    replies = []
    for i in range(count):
        ask = Message(RecordDict(), dst_node_id=i + 1, message_type="train")
        ask.metadata.__dict__["_message_id"] = f"ask-{i}"
        if i % 5 == 4:
            replies.append(Message(Error(code=1, reason="dropped out"), reply_to=ask))
            continue
        arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        metrics = {"num-examples": int(rng.integers(20, 400)), "train-loss": float(rng.random())}
        metrics[weight_key] = metrics.get(weight_key, 1)
        content = RecordDict(
            {"arrays": fast_loading(arrays_record(arrays)), "metrics": MetricRecord(metrics)}
        )
        replies.append(Message(content, reply_to=ask))
    return replies


@pytest.mark.parametrize(
    ("kind", "weight_key"), [("logreg", "num-examples"), ("mlp", "hospital-weight")]
)
def test_stacked_fedavg_equals_flowers_fedavg(kind, weight_key):
    from flwr.serverapp.strategy import FedAvg, FedProx

    from simulation.hospital_grid import BlockFedAvg, BlockFedProx

    replies = _train_replies(300, kind, weight_key=weight_key)
    for ours, theirs in (
        (BlockFedAvg(weighted_by_key=weight_key), FedAvg(weighted_by_key=weight_key)),
        (BlockFedProx(weighted_by_key=weight_key), FedProx(weighted_by_key=weight_key)),
    ):
        _assert_same_mean(ours.aggregate_train(1, replies), theirs.aggregate_train(1, replies))


def _assert_same_mean(ours, theirs) -> None:
    """Two ``aggregate_train`` results: the same arrays (float32) and metrics, to 1e-6."""
    (arrays, metrics), (their_arrays, their_metrics) = ours, theirs
    assert list(arrays) == list(their_arrays)
    for a, b in zip(arrays.to_numpy_ndarrays(), their_arrays.to_numpy_ndarrays(), strict=True):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert list(metrics) == list(their_metrics)
    for key in metrics:
        assert metrics[key] == pytest.approx(their_metrics[key], abs=1e-6)


def test_stacked_fedavg_leaves_irregular_replies_to_flower():
    from flwr.app import MetricRecord
    from flwr.serverapp.exception import InconsistentMessageReplies
    from flwr.serverapp.strategy import FedAvg

    from simulation.hospital_grid import BlockFedAvg

    replies = _train_replies(6, "logreg", weight_key="num-examples")
    replies[0].content["metrics"] = MetricRecord({"num-examples": 50, "train-loss": [0.5, 0.25]})
    replies[1].content["metrics"] = MetricRecord({"num-examples": 70, "train-loss": [0.1, 0.2]})
    replies[2].content["metrics"] = MetricRecord({"num-examples": 90, "train-loss": [0.3, 0.4]})
    replies[3].content["metrics"] = MetricRecord({"num-examples": 10, "train-loss": [0.7, 0.8]})
    replies[5].content["metrics"] = MetricRecord({"num-examples": 30, "train-loss": [0.9, 1.0]})
    ours, theirs = BlockFedAvg().aggregate_train(1, replies), FedAvg().aggregate_train(1, replies)
    np.testing.assert_allclose(ours[1]["train-loss"], theirs[1]["train-loss"])  # lists: Flower's
    del replies[5].content["metrics"]
    for strategy in (BlockFedAvg(), FedAvg()):
        with pytest.raises(InconsistentMessageReplies):
            strategy.aggregate_train(1, replies)


def test_metrics_record_equals_flowers_and_keeps_its_checks():
    from flwr.app import MetricRecord

    from simulation.hospital_grid import metrics_record

    values = {
        "num-examples": 120,
        "loss": 0.5,
        "auc": float("nan"),
        "hist-pos": [1.0, 0.0, 3.0],
        "counts": [1, 2],
        "empty": [],
    }
    ours, flowers = metrics_record(dict(values)), MetricRecord(dict(values))
    assert type(ours) is MetricRecord and list(ours.items()) == list(flowers.items())
    assert ours.object_id == flowers.object_id
    ours["extra"] = 1.0  # still a working, checked record
    with pytest.raises(TypeError):
        ours["bad"] = "text"
    for bad in ({"flag": True}, {"mixed": [1.0, 2]}, {"text": "x"}, {3: 1.0}):
        with pytest.raises(TypeError):
            metrics_record(bad)
    assert list(metrics_record({"x": np.float64(0.5)}).items()) == [("x", 0.5)]  # Flower's path


def _asks(indices):
    """Per-hospital training messages, as a strategy hands them to the grid."""
    from flwr.app import Message, RecordDict

    from tests.inprocess_grid import allow_messages

    allow_messages()
    asks = [Message(RecordDict(), dst_node_id=i + 1, message_type="train") for i in indices]
    for i, ask in zip(indices, asks, strict=True):
        ask.metadata.__dict__["_message_id"] = f"ask-{i}"
    return asks


def _block_answer(records: dict, errors: dict[str, str]):
    from flwr.app import ConfigRecord, Message, RecordDict

    node_ask = _asks([0])[0]
    return Message(RecordDict({**records, "errors": ConfigRecord(errors)}), reply_to=node_ask)


def test_split_block_reply_gives_each_hospital_what_its_own_node_would_send():
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from simulation.hospital_grid import _split, block_reply, read_block

    rng = np.random.default_rng(1)
    hospitals, asked = [4, 7, 9], [4, 5, 7, 9]
    models = [[rng.standard_normal((1, 18)).astype(np.float32), rng.random(1)] for _ in hospitals]
    columns = {"num-examples": [120, 80, 33], "train-loss": [0.5, float("nan"), 0.25]}
    stacked = {str(p): np.stack([m[p] for m in models]) for p in range(2)}
    answer = _block_answer(block_reply(hospitals, columns, stacked), {"5": "dropped out"})

    block = read_block(answer, asked)
    assert block.hospitals == hospitals and block.errors == {5: "dropped out"}
    asks = _asks(asked)
    replies = _split(block, asks)
    assert sorted(replies) == asked
    assert replies[5].has_error() and replies[5].error.reason == "dropped out"
    for row, index in enumerate(hospitals):
        reply, ask = replies[index], asks[asked.index(index)]
        assert reply.metadata.reply_to_message_id == ask.metadata.message_id
        assert reply.metadata.src_node_id == index + 1
        own = RecordDict(
            {
                "metrics": MetricRecord({k: v[row] for k, v in columns.items()}),
                "arrays": ArrayRecord(numpy_ndarrays=models[row]),
            }
        )
        assert list(reply.content) == list(own)
        assert reply.content.object_id == own.object_id  # byte for byte, record by record
        ours, flowers = (
            dict(reply.metadata.__dict__),
            dict(Message(own, reply_to=ask).metadata.__dict__),
        )
        assert ours.pop("_created_at") == pytest.approx(flowers.pop("_created_at"), abs=5.0)
        assert ours.pop("_ttl") == pytest.approx(flowers.pop("_ttl"), abs=5.0)  # ends with the ask
        assert ours == flowers and not reply.has_error()
        for got, want in zip(reply.content["arrays"].to_numpy_ndarrays(), models[row], strict=True):
            assert got.dtype == want.dtype and got.flags.writeable
            np.testing.assert_array_equal(got, want)
    first = replies[hospitals[0]].content["arrays"]["0"]
    first.numpy()[:] = 7.0  # a copy: the reply keeps its own values
    np.testing.assert_array_equal(first.numpy(), models[0][0])
    first.data = ArrayRecord(numpy_ndarrays=[np.zeros((1, 18), np.float32)])["0"].data
    np.testing.assert_array_equal(first.numpy(), np.zeros((1, 18)))  # new bytes are read


@pytest.mark.parametrize("weight_key", ["num-examples", "hospital-weight"])
def test_fedavg_reads_the_blocks_columns_and_equals_flowers_fedavg_over_each_reply(weight_key):
    """At 100,000 hospitals, building a Flower reply per hospital only for FedAvg to restack
    them was the server's largest cost a round; the mean must be the same without them."""
    from flwr.app import Error, Message
    from flwr.serverapp.strategy import FedAvg

    from simulation.hospital_grid import (
        BLOCK_FAILED,
        BlockFedAvg,
        HospitalReplies,
        block_reply,
        read_block,
    )

    rng = np.random.default_rng(3)
    shapes = [a.shape for a in get_arrays(build_model("mlp", 7))]
    order = [int(i) for i in rng.permutation(40)]  # the strategy's sampled order, not the blocks'
    asks = _asks(order)
    by_index = {i: ask for i, ask in zip(order, asks, strict=True)}
    answers = []
    for first in range(0, 36, 12):  # three blocks of 12; hospitals 36-39 withdrew
        asked = list(range(first, first + 12))
        failed = {str(first + 5): "dropped out"}
        hospitals = [i for i in asked if str(i) not in failed]
        models = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in hospitals]
        columns = {
            "num-examples": [int(n) for n in rng.integers(20, 400, len(hospitals))],
            "train-loss": [float(x) for x in rng.random(len(hospitals))],
        }
        columns.setdefault(weight_key, [1] * len(hospitals))
        stacked = {str(p): np.stack([m[p] for m in models]) for p in range(len(shapes))}
        block = read_block(_block_answer(block_reply(hospitals, columns, stacked), failed), asked)
        answers.append((block, asked))
    early = {
        i: Message(Error(code=BLOCK_FAILED, reason="withdrew"), reply_to=by_index[i])
        for i in range(36, 40)
    }

    replies = HospitalReplies(asks, early, answers)
    ours = BlockFedAvg(weighted_by_key=weight_key).aggregate_train(1, replies)
    assert not replies.built  # read in columns
    failures = replies.failures()
    assert [m.metadata.src_node_id - 1 for m in failures] == [
        i for i in order if i >= 36 or i % 12 == 5
    ]

    each = list(HospitalReplies(asks, early, answers))  # one Flower reply per hospital
    assert [m.metadata.src_node_id for m in each] == [a.metadata.dst_node_id for a in asks]
    assert [(m.metadata.src_node_id, m.error.reason) for m in each if m.has_error()] == [
        (m.metadata.src_node_id, m.error.reason) for m in failures
    ]
    _assert_same_mean(ours, FedAvg(weighted_by_key=weight_key).aggregate_train(1, each))

    # A block whose parameter has another shape is not averaged in columns (it would
    # broadcast); the replies go to Flower's own checks instead.
    first = answers[0][0]
    odd = dataclasses.replace(first, arrays={**first.arrays, "1": first.arrays["1"][:, :1]})
    assert (
        HospitalReplies(asks, early, [(odd, answers[0][1]), *answers[1:]]).stacked(weight_key)
        is None
    )


def test_read_block_fails_every_hospital_of_a_failed_or_malformed_block():
    from flwr.app import Error, Message

    from simulation.hospital_grid import block_reply, read_block

    good = block_reply([0, 1], {"count": [3, 4]}, {"sums": np.ones((2, 5))})
    assert read_block(_block_answer(good, {}), [0, 1]).errors == {}

    short = block_reply([0, 1], {"count": [3]}, {})
    foreign = block_reply([0, 8], {"count": [3, 4]}, {})
    twice = block_reply([0, 0], {"count": [3, 4]}, {})  # a column mean would count it twice
    for records in (short, foreign, twice):
        block = read_block(_block_answer(records, {}), [0, 1])
        assert block.hospitals == [] and sorted(block.errors) == [0, 1]
        assert all(why.startswith("malformed block reply") for why in block.errors.values())

    failed = Message(Error(code=1, reason="actor died"), reply_to=_asks([0])[0])
    assert read_block(failed, [0, 1]).errors == {0: "actor died", 1: "actor died"}

    silent = read_block(_block_answer(block_reply([1], {"count": [4]}, {}), {}), [0, 1])
    assert silent.hospitals == [1]
    assert silent.errors == {0: "its block's reply has no answer for this hospital"}


def test_a_refused_or_silent_block_fails_its_hospitals_and_the_others_answer(tmp_path):
    from flwr.app import ConfigRecord, MessageType

    from simulation.hospital_grid import HospitalGrid
    from tests.engine_helpers import make_federation
    from tests.inprocess_grid import InProcessGrid

    class Lossy(InProcessGrid):
        """Once ``lossy``: Flower refuses the first message and the last one's reply is lost."""

        lossy = False
        lost = ""

        def push_messages(self, messages):
            ids = super().push_messages(messages)
            if not self.lossy:
                return ids
            self.lost = ids[-1]
            return ids[1:]

        def pull_messages(self, message_ids):
            return super().pull_messages([i for i in message_ids if i != self.lost])

    fed = make_federation(tmp_path, "fed", hospitals=6, patients=40)
    ask = {"config": ConfigRecord({"data-dir": str(fed), "target": "diabetes"})}
    inner = Lossy(3)
    grid = HospitalGrid(inner, hospitals=6, block_size=2)  # blocks [0, 1], [2, 3], [4, 5]
    blocks = grid.broadcast(MessageType.QUERY, ask)
    assert sorted(i for b in blocks for i in b.hospitals) == list(range(6))
    assert not any(b.errors for b in blocks)

    inner.lossy = True
    blocks = grid.broadcast(MessageType.QUERY, ask, timeout=0.5)
    assert [i for b in blocks for i in b.hospitals] == [2, 3]
    errors = {i: why for b in blocks for i, why in b.errors.items()}
    assert errors == {
        0: "Flower did not accept the message for its node",
        1: "Flower did not accept the message for its node",
        4: "no reply from its node before the timeout",
        5: "no reply from its node before the timeout",
    }


def test_fedavgs_asks_are_grouped_unbuilt_and_answered_as_the_built_messages_would_be(tmp_path):
    """At 100,000 hospitals, building (and then reading) a Flower message per hospital cost
    the server more than a logistic regression's training: FedAvg's asks stay unbuilt."""
    from flwr.app import ConfigRecord, RecordDict

    from healthsync.privacy.consent import WITHDRAWN_MARK
    from simulation.compat.flower import SameAsks
    from simulation.hospital_grid import HospitalGrid
    from tests.engine_helpers import make_federation
    from tests.inprocess_grid import InProcessGrid

    fed = make_federation(tmp_path, "fed", hospitals=6, patients=40)
    content = RecordDict({"config": ConfigRecord({"data-dir": str(fed), "target": "diabetes"})})
    nodes = [5, 1, 4, 2, 6, 3]  # the strategy's sampled order; hospital 3 (node 4) withdrew
    grid = HospitalGrid(InProcessGrid(3), hospitals=6, block_size=2, sample_withdrawn=True)
    grid.withdrawn = lambda: {3: "withdrew for the test"}

    def answered(replies):
        return [
            (
                r.metadata.src_node_id,
                r.error.reason if r.has_error() else r.content["metrics"]["count"],
            )
            for r in replies
        ]

    lazy = SameAsks(content, nodes, "query")
    replies = grid.send_and_receive(lazy)
    assert replies.stacked("count") is not None
    assert [m.metadata.src_node_id for m in replies.failures()] == [4]
    assert not lazy.built  # grouped, asked, counted and read in columns: no message built
    built = grid.send_and_receive(list(SameAsks(content, nodes, "query")))
    assert answered(replies) == answered(built)
    assert [node for node, _ in answered(replies)] == nodes
    assert answered(replies)[2] == (4, f"{WITHDRAWN_MARK} withdrew for the test")

    # Every sampled hospital withdrew (after the strategy sampled them): nothing to ask.
    grid.withdrawn = lambda: {3: "withdrew for the test", 1: "so did this one"}
    replies = grid.send_and_receive(SameAsks(content, [4, 2], "query"))
    assert [m.metadata.src_node_id for m in replies.failures()] == [4, 2]


def test_a_broadcast_in_chunks_gives_the_same_answers_and_reports_each_chunk(tmp_path):
    """The scaling query reads every hospital first: chunks let a run count them aloud."""
    from flwr.app import ConfigRecord, MessageType

    from simulation.hospital_grid import HospitalGrid
    from tests.engine_helpers import make_federation
    from tests.inprocess_grid import InProcessGrid

    fed = make_federation(tmp_path, "fed", hospitals=7, patients=40)
    ask = {"config": ConfigRecord({"data-dir": str(fed), "target": "diabetes"})}
    grid = HospitalGrid(InProcessGrid(2), hospitals=7, block_size=4)  # blocks [0-3], [4-6]
    whole = grid.broadcast(MessageType.QUERY, ask)
    heard = []
    chunked = grid.broadcast(MessageType.QUERY, ask, chunk=2, on_block=heard.append)
    assert sorted(len(b.hospitals) for b in chunked) == [1, 2, 2, 2]  # [0,1] [2,3] [4,5] [6]
    assert heard == chunked

    def sums(blocks):
        rows = {i: b.arrays["sums"][r] for b in blocks for r, i in enumerate(b.hospitals)}
        return np.stack([rows[i] for i in range(7)])

    np.testing.assert_array_equal(sums(whole), sums(chunked))


def test_automatic_local_work_gives_small_sites_more_epochs_and_every_site_its_steps():
    from healthsync.ml.training import local_epochs_for

    assert local_epochs_for(48, 32, 10) == 5  # 2 batches an epoch: 5 epochs, 10 steps
    assert local_epochs_for(10, 32, 10) == 10  # one batch: at most the target in epochs
    assert local_epochs_for(320, 32, 10) == 1  # 10 batches: one epoch
    assert local_epochs_for(5000, 32, 10) == 1  # never fewer than one epoch


def test_a_block_with_different_epochs_per_hospital_matches_one_hospital_at_a_time(hospitals):
    data = hospitals[:12]
    start = get_arrays(initial_model("mlp", data[0].x_train.shape[1], seed=0))
    seeds = [50 + i for i in range(len(data))]
    epochs = [1 + i % 3 for i in range(len(data))]
    block, losses = train_block(
        "mlp", start, data, epochs=epochs, seeds=seeds, batch_size=16, lr=0.1
    )
    for i, d in enumerate(data):
        model = build_model("mlp", d.x_train.shape[1])
        set_arrays(model, start)
        loss = train_local(
            model, d.x_train, d.y_train, epochs=epochs[i], batch_size=16, lr=0.1, seed=seeds[i]
        )
        for ours, theirs in zip(block[i], get_arrays(model), strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        assert losses[i] == pytest.approx(loss, abs=1e-5)


def test_a_run_in_blocks_equals_one_client_per_hospital_in_process(tmp_path, monkeypatch):
    """The whole round loop on the federation layout (a folder per hospital, preflight memo,
    cached matrices): blocks of 32 read FedAvg's mean from the blocks' columns, and equal
    one client per hospital and the per-reply mean to 1e-5 (the Ray version is in
    test_scale_e2e, extended tier)."""
    from healthsync.runs import runlog
    from healthsync.runs.predict import load_saved_model
    from healthsync.runs.store import MetricsStore
    from simulation.hospital_grid import HospitalReplies
    from tests.inprocess_grid import run_in_process

    fed = generate_federation(tmp_path / "fed", hospitals=40, patients=40, seed=5, heterogeneity=1)
    base = TrainConfig(
        data_dir=str(fed.data_dir), db=str(tmp_path / "m.duckdb"), model="mlp", rounds=2, seed=1
    )
    runs = {}
    for name, block in (("one", 1), ("blocks", 32), ("per-reply", 32)):
        with monkeypatch.context() as patch:
            if name == "per-reply":  # as any strategy other than FedAvg reads them
                patch.setattr(HospitalReplies, "stacked", lambda self, key: None)
            detail, _ = run_in_process(base.replace(block_size=block))
        assert detail["status"] == "completed", detail
        runs[name] = detail["run_id"]
    models = {name: load_saved_model(base.db, run).arrays for name, run in runs.items()}
    store = MetricsStore(base.db)
    rounds = {name: runlog.rounds_frame(store, run) for name, run in runs.items()}
    for name in ("blocks", "per-reply"):
        for a, b in zip(models["one"], models[name], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        for metric in ("loss", "auc", "accuracy", "brier"):
            np.testing.assert_allclose(rounds["one"][metric], rounds[name][metric], atol=1e-5)


@pytest.mark.parametrize(("kind", "mu"), [("logreg", 0.0), ("mlp", 0.0), ("mlp", 0.5)])
def test_one_hospitals_sgd_steps_are_torchs_own(hospitals, kind, mu):
    """``train_local`` steps by hand (PyTorch's first optimiser imports ``torch._dynamo``,
    0.75 s of a cold run's first round); its steps are ``torch.optim.SGD``'s exactly."""
    import torch

    data = hospitals[5]
    start = get_arrays(initial_model(kind, data.x_train.shape[1], seed=2))
    ours = build_model(kind, data.x_train.shape[1])
    set_arrays(ours, start)
    loss = train_local(
        ours, data.x_train, data.y_train, epochs=3, batch_size=8, lr=0.3, seed=9, proximal_mu=mu
    )

    theirs = build_model(kind, data.x_train.shape[1])
    set_arrays(theirs, start)
    anchor = [p.detach().clone() for p in theirs.parameters()]
    optimiser = torch.optim.SGD(theirs.parameters(), lr=0.3)
    generator = torch.Generator().manual_seed(9)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(3):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start_row in range(0, len(order), 8):
            idx = order[start_row : start_row + 8]
            optimiser.zero_grad()
            batch = torch.nn.BCEWithLogitsLoss()(theirs(x[idx]).squeeze(-1), y[idx])
            if mu:
                batch = batch + mu / 2 * sum(
                    ((p - a) ** 2).sum() for p, a in zip(theirs.parameters(), anchor, strict=True)
                )
            batch.backward()
            optimiser.step()
            total += batch.item() * len(idx)
    for mine, torchs in zip(get_arrays(ours), get_arrays(theirs), strict=True):
        np.testing.assert_array_equal(mine, torchs)
    assert loss == pytest.approx(total / len(x), rel=1e-12)


def test_a_first_round_in_a_fresh_process_does_not_load_torch_dynamo(tmp_path):
    """What a cold run's actor does first (read a hospital, train it, evaluate it) loads no
    ``torch._dynamo``: 0.75 s that every cold first round would otherwise wait for."""
    import subprocess
    import sys

    fed = generate_federation(tmp_path / "fed", hospitals=1, patients=40, seed=1)
    script = f"""
import sys
from healthsync.data import load_federation
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.training import fit_from, evaluate_local, hospital_arrays
from healthsync.ml.model import build_model, get_arrays, initial_model
fed = load_federation({str(fed.data_dir)!r})
rows = hospital_arrays(fed, fed.hospitals[0].id, "diabetes")
data = rows.scaled(Scaler.from_stats(ScalingStats.of(rows.x_train)))
model = build_model("mlp", data.x_train.shape[1])
start = get_arrays(initial_model("mlp", data.x_train.shape[1], seed=0))
fit_from(model, start, data, seed=1, epochs=2, batch_size=8, lr=0.1, proximal_mu=0.1)
evaluate_local(model, data.x_test, data.y_test)
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_the_starting_weights_drawn_without_torch_are_torchs_own(kind):
    """``initial_arrays`` (the run's own process, which loads no PyTorch) gives what
    ``initial_model`` (PyTorch's own initialisation, seeded) gives, bit for bit."""
    from healthsync.ml.model import initial_arrays

    for width in (1, 2, 13, 20, 64):
        for seed in (0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32 + 7):
            theirs = get_arrays(initial_model(kind, width, seed))
            ours = initial_arrays(kind, width, seed)
            assert [a.shape for a in ours] == [a.shape for a in theirs]
            for mine, torchs in zip(ours, theirs, strict=True):
                assert mine.dtype == torchs.dtype == np.float32
                np.testing.assert_array_equal(mine, torchs)
    with pytest.raises(HealthSyncError, match="unknown model"):
        initial_arrays("forest", 3, 0)
    with pytest.raises(HealthSyncError, match="no feature column"):
        initial_arrays(kind, 0, 0)


def test_the_runs_own_process_loads_no_torch():
    """A run's process imports its ServerApp, Flower's simulation and the ClientApp (Flower
    loads it there to check it loads) and draws the starting weights: no PyTorch, 0.9
    CPU-seconds of a cold start on two cores that also start Ray and two actors. The
    actors' first message (or their preload) loads the training side."""
    import subprocess
    import sys

    script = """
import sys
from simulation import __main__, launch, server_app
from simulation.compat import flower
flower.load_simulation()
from simulation import client_app
from healthsync.ml.model import initial_arrays
initial_arrays("mlp", 12, seed=3)
print("torch" in sys.modules)
import torch
torch.set_num_threads(2)
client_app.load_training()
print(torch.get_num_threads())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "1"], out.stderr


def test_answers_join_the_blocks_rows_in_hospital_order():
    """A round's evaluation reads every hospital's answer as columns, in hospital order
    whatever order the blocks came back in; a column one block lacks is NaN there."""
    from simulation.hospital_grid import Answers, BlockReply

    late = BlockReply([4, 5], {"loss": [0.4, 0.5]}, {"h": np.array([[4.0], [5.0]])}, {})
    early = BlockReply(
        [0, 2], {"loss": [0.0, 0.2], "val-n": [3, 1]}, {"h": np.array([[0.0], [2.0]])}, {}
    )
    answers = Answers.of([late, early])
    np.testing.assert_array_equal(answers.index, [0, 2, 4, 5])
    np.testing.assert_array_equal(answers.columns["loss"], [0.0, 0.2, 0.4, 0.5])
    np.testing.assert_array_equal(answers.columns["val-n"], [3, 1, np.nan, np.nan])
    np.testing.assert_array_equal(answers.arrays["h"][:, 0], [0.0, 2.0, 4.0, 5.0])
    assert Answers.of([]).index.size == 0
    # Rows out of order within a block (blocks overlapping): sorted all the same.
    mixed = BlockReply([3, 1], {"loss": [0.3, 0.1]}, {"h": np.array([[3.0], [1.0]])}, {})
    answers = Answers.of([late, mixed, early])
    np.testing.assert_array_equal(answers.index, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(answers.columns["loss"], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_array_equal(answers.arrays["h"][:, 0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
