"""The hospital side: one Flower ClientApp per hospital, on that hospital's rows only.

Each simulated node is one hospital (its ``partition-id`` indexes the
federation's hospital list). The node reads its rows through the hospital's
own accessor, once per process (cached), and answers three kinds of message:

- ``query``: aggregate statistics (counts, sums, sums of squares) for
  federated feature scaling;
- ``train``: local training from the global model; returns the new weights;
- ``evaluate``: metrics of the global model on the hospital's test split.

Only weights and aggregates leave; never a row.
"""

from __future__ import annotations

from functools import lru_cache

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from healthsync.data import load_federation
from healthsync.features import Scaler, ScalingStats
from healthsync.model import build_model, set_arrays
from healthsync.training import HospitalArrays, evaluate_local, fit_from, hospital_arrays

app = ClientApp()


@lru_cache(maxsize=64)
def _hospital(data_dir: str, partition_id: int, target: str) -> HospitalArrays:
    federation = load_federation(data_dir)
    return hospital_arrays(federation, federation.hospitals[partition_id].id, target)


def _local(msg: Message, context: Context) -> tuple[HospitalArrays, ConfigRecord]:
    config = msg.content["config"]
    partition_id = int(context.node_config["partition-id"])
    hospital = _hospital(str(config["data-dir"]), partition_id, str(config["target"]))
    return hospital, config


def _fault_drill(hospital: HospitalArrays, config: ConfigRecord) -> None:
    """Fail on purpose when the run lists this hospital in ``fail-hospitals``."""
    if hospital.hospital_id in str(config.get("fail-hospitals", "")).split(","):
        raise RuntimeError(f"fault drill: hospital {hospital.hospital_id} raised on purpose")


def _scaler(config: ConfigRecord) -> Scaler:
    return Scaler.from_lists(config["scale-mean"], config["scale-std"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who this hospital is and its scaling statistics over its training rows."""
    hospital, _ = _local(msg, context)
    stats = ScalingStats.of(hospital.x_train)
    metrics = MetricRecord(
        {
            "partition-id": int(context.node_config["partition-id"]),
            "count": stats.count,
            "sums": stats.sums.tolist(),
            "sumsq": stats.sumsq.tolist(),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs of SGD from the global model; reply with the new weights."""
    hospital, config = _local(msg, context)
    _fault_drill(hospital, config)
    data = hospital.scaled(_scaler(config))
    model = build_model(str(config["model"]), data.x_train.shape[1])
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    seed = (
        int(config["seed"]) * 1_000_003
        + int(config["server-round"]) * 1_009
        + int(context.node_config["partition-id"])
    )
    new_arrays, loss = fit_from(
        model,
        arrays,
        data,
        epochs=int(config["local-epochs"]),
        batch_size=int(config["batch-size"]),
        lr=float(config["lr"]),
        seed=seed,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    metrics = MetricRecord({"num-examples": len(data.y_train), "train-loss": float(loss)})
    return Message(
        RecordDict({"arrays": ArrayRecord(numpy_ndarrays=new_arrays), "metrics": metrics}),
        reply_to=msg,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the global model on this hospital's test rows, plus a score histogram."""
    hospital, config = _local(msg, context)
    _fault_drill(hospital, config)
    data = hospital.scaled(_scaler(config))
    model = build_model(str(config["model"]), data.x_test.shape[1])
    set_arrays(model, msg.content["arrays"].to_numpy_ndarrays())
    result, histogram = evaluate_local(model, data.x_test, data.y_test)
    metrics = MetricRecord(
        {
            "num-examples": result.n,
            "loss": result.loss,
            "auc": result.auc,
            "accuracy": result.accuracy,
            "brier": result.brier,
            "hist-pos": histogram[:, 0].tolist(),
            "hist-neg": histogram[:, 1].tolist(),
            "hist-sum": histogram[:, 2].tolist(),
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
