"""The hospital side: each Flower node serves a block of hospitals, each on its own rows.

Node ``partition-id`` p serves hospitals ``p*B .. p*B+B-1`` of the federation's
list (``block-size`` B; B = 1 is the classic one-client-per-hospital path).
A node reads each hospital's rows through that hospital's own accessor, once
per process (cached across rounds), and answers:

- ``query.identify``: which block it serves;
- ``query``: per-hospital counts, sums and sums of squares for federated scaling;
- ``train``: local training of each requested hospital from the global model;
  B > 1 trains the whole block in one vectorised call (``healthsync.ml.blocks``);
- ``evaluate``: the global model's metrics on each hospital's test split.

Replies keep hospitals apart: a column per metric and a stacked array per
parameter, one row per hospital, plus ``errors`` for the hospitals that did not
answer (``simulation.hospital_grid.block_reply``), so the server can hand every
strategy one update per hospital. Only weights and aggregates leave; never a row.

Privacy and robustness drills act per hospital, also inside a block: a hospital
that drops out or is later than the round timeout (``healthsync.ml.attacks``)
answers with an error and does not train; the block sleeps as long as its
slowest on-time hospital, never past the timeout. With client-side DP each
hospital clips its own update to the norm the server's DP wrapper sends
(Flower's ``fixedclipping_mod`` cannot: it wraps the whole block message). An
adversarial hospital then applies its attack, so it does not honour clipping.
Under secure aggregation, Flower's SecAgg+ mod masks the trained model before
it leaves (``simulation.secagg_mod``); SecAgg+ runs use one hospital per node.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from healthsync.config import block_hospitals
from healthsync.data import Federation, load_federation
from healthsync.ml import attacks
from healthsync.ml.blocks import evaluate_block, train_block_stacked
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.model import build_model, set_arrays
from healthsync.ml.training import (
    HospitalArrays,
    LocalData,
    evaluate_local,
    fit_from,
    hospital_arrays,
    local_epochs_for,
)
from healthsync.privacy.consent import consent_files, refuse_if_withdrawn
from simulation.compat import flower
from simulation.hospital_grid import block_reply
from simulation.secagg_mod import secure_aggregation
from simulation.strategies import HOSPITAL_WEIGHT

# One Ray actor per CPU, one thread per actor: no oversubscription, and the same
# reduction order (hence the same numbers) whichever actor serves a hospital.
torch.set_num_threads(1)
# SecAgg+ runs wrap training in Flower's secaggplus_mod; other messages pass through.
app = ClientApp(mods=[secure_aggregation])

Config = Mapping[str, Any]  # a message's settings
Columns = dict[str, list]  # a block reply's metric columns, one row per hospital
Stacked = dict[str, np.ndarray]  # a block reply's arrays, stacked over its hospitals


@cache
def _federation(data_dir: str) -> Federation:
    return load_federation(data_dir)


@cache
def _hospital(data_dir: str, index: int, target: str) -> HospitalArrays:
    federation = _federation(data_dir)
    return hospital_arrays(federation, federation.hospitals[index].id, target)


_cached_federation: list[str] = []
# Hospital index -> its rows standardised with the run's scaler, for the scaler in
# ``_scaled_with``: every round of a run (and of the next run on the same data) uses
# the same federated scaler, so rows are standardised once rather than every round.
_scaled_rows: dict[int, LocalData] = {}
_scaled_with: list[tuple] = []


def _keep_only(data_dir: str) -> None:
    """Drop cached rows of other federations: a warm engine's actors serve run after run."""
    if _cached_federation != [data_dir]:
        # As the run process does (``simulation.launch``): each round makes a few objects
        # per hospital, and at 100,000 hospitals collecting the young ones every 700
        # allocations set off full collections over every hospital's cached rows.
        gc.set_threshold(10_000, 10, 10)
        _hospital.cache_clear()
        _federation.cache_clear()
        _scaled_rows.clear()
        _cached_federation[:] = [data_dir]


def _standardised(index: int, hospital: HospitalArrays, config: Config) -> LocalData:
    """``hospital``'s rows scaled with the run's federated scaler, kept for later rounds.

    The run's ``validation-share`` of its training rows is held out here, inside
    the hospital, by the seeded split of ``training.validation_mask``: training
    fits only the rest, and ``evaluate`` scores the held-out rows apart from the
    test rows, for both the one-hospital and the block path alike.
    """
    share, seed = float(config.get("validation-share", 0.0)), int(config["seed"])
    key = (
        str(config["target"]),
        tuple(config["scale-mean"]),
        tuple(config["scale-std"]),
        share,
        seed,
    )
    if _scaled_with != [key]:
        _scaled_rows.clear()
        _scaled_with[:] = [key]
    if (data := _scaled_rows.get(index)) is None:
        data = _scaled_rows[index] = hospital.scaled(
            _scaler(config), validation_share=share, seed=seed
        )
    return data


def _requested(msg: Message, context: Context) -> tuple[list[int], Config]:
    """The hospital indices this message asks for, checked against the node's own block."""
    # A plain dict: the block looks settings up per hospital, and a ConfigRecord
    # look-up of an absent key costs a caught KeyError each time.
    config = dict(msg.content["config"])
    _keep_only(str(config["data-dir"]))
    mine = block_hospitals(
        int(context.node_config["partition-id"]),
        int(config.get("block-size", 1)),
        len(_federation(str(config["data-dir"])).hospitals),
    )
    wanted = [int(i) for i in config.get("hospitals", list(mine))]
    foreign = [i for i in wanted if i not in mine]
    if foreign:
        raise ValueError(f"hospitals {foreign} are not served by this node")
    return wanted, config


def _consent(data_dir: str) -> Callable[[int], None]:
    """A check that refuses any work for a hospital that withdrew, even when asked for it.

    Read from the hospital's own site folder on every message, so a withdrawal
    applies from the next round of a run that is already training. A hospital
    that never withdrew costs one ``stat`` of a path built once per federation.
    """
    federation = _federation(data_dir)
    files = consent_files(data_dir, federation.hospital_ids)

    def check(index: int) -> None:
        if os.path.exists(files[index]):
            hospital = federation.hospitals[index].id
            refuse_if_withdrawn(Path(files[index]).parent, hospital)

    return check


def _fault_drill(hospital: HospitalArrays, config: Config) -> None:
    """Fail on purpose when the run lists this hospital in ``fail-hospitals``."""
    if hospital.hospital_id in str(config.get("fail-hospitals", "")).split(","):
        raise RuntimeError(f"fault drill: hospital {hospital.hospital_id} raised on purpose")


class HospitalAbsent(Exception):
    """A simulated dropout or straggler: the hospital does not answer this round."""


def _absent(index: int, config: Config) -> None:
    why = attacks.absence(
        int(config["seed"]),
        int(config["server-round"]),
        index,
        dropout=float(config.get("dropout", 0.0)),
        max_delay=float(config.get("straggler-delay", 0.0)),
        timeout=float(config.get("round-timeout", 0.0)),
    )
    if why:
        raise HospitalAbsent(why)


def _serve(
    msg: Message,
    context: Context,
    work: Callable[[list[tuple[int, HospitalArrays]], Config], tuple[Columns, Stacked]],
    *,
    screen: Callable[[int, Config], None] | None = None,
) -> Message:
    """Run ``work(ready, config) -> (columns, stacked arrays)`` for the block, one row per
    ready hospital; failures stay per hospital.

    ``screen(index, config)`` may raise to keep one hospital out (its error is reported).
    """
    wanted, config = _requested(msg, context)
    records: dict = {}
    errors: dict[str, str] = {}
    ready: list[tuple[int, HospitalArrays]] = []
    consent = _consent(str(config["data-dir"]))
    for index in wanted:
        try:
            consent(index)
            if screen:
                screen(index, config)
            hospital = _hospital(str(config["data-dir"]), index, str(config["target"]))
            if msg.metadata.message_type != "query":
                _fault_drill(hospital, config)
            ready.append((index, hospital))
        except Exception as err:  # reported per hospital; the block goes on
            errors[str(index)] = f"{type(err).__name__}: {err}"
    if ready:
        records.update(block_reply([i for i, _ in ready], *work(ready, config)))
    records["errors"] = ConfigRecord(errors)
    return Message(RecordDict(records), reply_to=msg)


def _scaler(config: Config) -> Scaler:
    return Scaler.from_lists(config["scale-mean"], config["scale-std"])


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    """Which block of hospitals this node serves."""
    metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Each hospital's scaling statistics over its training rows."""

    def work(ready, config):
        stats = [ScalingStats.of(hospital.x_train) for _, hospital in ready]
        columns = {"count": [s.count for s in stats]}
        return columns, {
            "sums": np.stack([s.sums for s in stats]),
            "sumsq": np.stack([s.sumsq for s in stats]),
        }

    return _serve(msg, context, work)


def _seed(config: Config, index: int) -> int:
    return int(config["seed"]) * 1_000_003 + int(config["server-round"]) * 1_009 + index


def _attack(hospital: HospitalArrays, config: Config) -> str:
    """The attack this hospital carries out, or ``""`` for an honest one."""
    attackers = str(config.get("adversaries", "")).split(",")
    return str(config.get("attack", "")) if hospital.hospital_id in attackers else ""


def _local_data(index: int, hospital: HospitalArrays, config: Config) -> LocalData:
    data = _standardised(index, hospital, config)
    if _attack(hospital, config) == "label-flip":
        data = dataclasses.replace(data, y_train=attacks.flip_labels(data.y_train))
    return data


def _outgoing(
    new: list[np.ndarray], start: list[np.ndarray], config: Config, attack: str, seed: int
) -> list[np.ndarray]:
    """The update a hospital sends: clipped if the server asks (client-side DP), then attacked."""
    if flower.CLIPPING_NORM_KEY in config:
        flower.clip_update(new, start, float(config[flower.CLIPPING_NORM_KEY]))
    return attacks.poison(attack, new, start, seed=seed)


def _wait_like_stragglers(ready: list[tuple[int, HospitalArrays]], config: Config) -> None:
    """Sleep as long as the block's slowest on-time hospital (absent ones were screened out)."""
    max_delay = float(config.get("straggler-delay", 0.0))
    delays = [
        attacks.straggler_delay(int(config["seed"]), int(config["server-round"]), i, max_delay)
        for i, _ in ready
    ]
    time.sleep(max(delays, default=0.0))


def _epochs(rows: int, config: Config) -> int:
    """This hospital's local epochs: the run's number, or chosen from its own size (``auto``)."""
    epochs = config["local-epochs"]
    if str(epochs) != "auto":
        return int(epochs)
    return local_epochs_for(rows, int(config["batch-size"]), int(config["local-steps"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs of SGD from the global model; one new set of weights per hospital."""
    arrays = msg.content["arrays"].to_numpy_ndarrays()

    def work(ready, config):
        _wait_like_stragglers(ready, config)
        data = [_local_data(index, hospital, config) for index, hospital in ready]
        epochs = [_epochs(len(d.y_train), config) for d in data]
        settings = {
            "batch_size": int(config["batch-size"]),
            "lr": float(config["lr"]),
            "proximal_mu": float(config.get("proximal-mu", 0.0)),
        }
        if len(ready) == 1:  # the classic path: one hospital, an ordinary PyTorch loop
            model = build_model(str(config["model"]), data[0].x_train.shape[1])
            new, loss = fit_from(
                model,
                arrays,
                data[0],
                seed=_seed(config, ready[0][0]),
                epochs=epochs[0],
                **settings,
            )
            stacked, losses = [a[np.newaxis] for a in new], [loss]
        else:
            seeds = [_seed(config, index) for index, _ in ready]
            stacked, losses = train_block_stacked(
                str(config["model"]), arrays, data, epochs=epochs, seeds=seeds, **settings
            )
        if flower.CLIPPING_NORM_KEY in config or any(_attack(h, config) for _, h in ready):
            # Client-side DP clips, and attackers change, their own hospital's update.
            updates = [
                _outgoing(
                    [a[row] for a in stacked],
                    arrays,
                    config,
                    _attack(hospital, config),
                    _seed(config, index),
                )
                for row, (index, hospital) in enumerate(ready)
            ]
            stacked = [np.stack([u[p] for u in updates]) for p in range(len(arrays))]
        columns = {
            "num-examples": [len(d.y_train) for d in data],
            "train-loss": [float(loss) for loss in losses],
            HOSPITAL_WEIGHT: [1] * len(ready),
        }
        return columns, {str(p): a for p, a in enumerate(stacked)}

    return _serve(msg, context, work, screen=_absent)


def _evaluated(kind: str, arrays: list[np.ndarray], data: list[LocalData]):
    """``(metrics, histogram)`` of the global model on each hospital's test slot."""
    if len(data) == 1:  # the classic path: one hospital, an ordinary PyTorch model
        model = build_model(kind, data[0].x_test.shape[1])
        set_arrays(model, arrays)
        return [evaluate_local(model, data[0].x_test, data[0].y_test)]
    return evaluate_block(kind, arrays, data)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the global model on each hospital's test rows, plus a score histogram.

    Also the log loss on each hospital's validation rows (``val-loss`` over
    ``val-n`` rows), which the server sums into the federated validation loss
    that chooses the round to keep.
    """
    arrays = msg.content["arrays"].to_numpy_ndarrays()

    def work(ready, config):
        data = [_standardised(index, hospital, config) for index, hospital in ready]
        kind = str(config["model"])
        results = _evaluated(kind, arrays, data)
        held_out = [d.validation() for d in data]
        if any(len(d.y_test) for d in held_out):
            validation = [(m.n, float(m.loss)) for m, _ in _evaluated(kind, arrays, held_out)]
        else:  # none held out (validation share 0): what scoring no rows gives, without a pass
            validation = [(0, float("nan"))] * len(data)
        metrics = [result for result, _ in results]
        columns = {
            "num-examples": [m.n for m in metrics],
            "loss": [float(m.loss) for m in metrics],
            "auc": [float(m.auc) for m in metrics],
            "accuracy": [float(m.accuracy) for m in metrics],
            "brier": [float(m.brier) for m in metrics],
            "val-n": [n for n, _ in validation],
            "val-loss": [loss for _, loss in validation],
        }
        histograms = np.stack([np.asarray(h, dtype=np.float64) for _, h in results])
        return columns, {"histogram": histograms}

    return _serve(msg, context, work)


from simulation.analytics_client import answer_cohort  # noqa: E402

app.query("cohort")(answer_cohort)
