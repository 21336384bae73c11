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
import importlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from healthsync.config import block_hospitals
from healthsync.data import Federation, load_federation
from healthsync.ml import attacks
from healthsync.ml.arrays import HospitalArrays, LocalData, hospital_arrays
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.privacy.consent import consent_files, refuse_if_withdrawn
from simulation.compat import flower
from simulation.hospital_grid import block_reply
from simulation.secagg_mod import secure_aggregation
from simulation.strategies import HOSPITAL_WEIGHT

# SecAgg+ runs wrap training in Flower's secaggplus_mod; other messages pass through.
app = ClientApp(mods=[secure_aggregation])

#: The training side: PyTorch and the code that trains and scores with it.
TRAINING_MODULES = ("healthsync.ml.blocks", "healthsync.ml.training")


@cache
def load_training() -> None:
    """Import PyTorch and the training code (at an actor's start: ``simulation.preload``).

    Not at this module's import: Flower loads the ClientApp in the run's own
    process too (to check it loads), which trains nothing and would spend
    0.9 CPU-seconds of a cold start importing PyTorch. One thread: one Ray
    actor per CPU, no oversubscription, and the same reduction order (hence
    the same numbers) whichever actor serves a hospital.
    """
    import torch

    torch.set_num_threads(1)
    for name in TRAINING_MODULES:
        importlib.import_module(name)


def _forget_layouts() -> None:
    """Drop block training's remembered layouts, if block training was ever loaded."""
    if (blocks := sys.modules.get("healthsync.ml.blocks")) is not None:
        blocks.forget_layouts()


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
        _forget_layouts()
        _cached_federation[:] = [data_dir]


def _standardised(index: int, hospital: HospitalArrays, config: Config) -> LocalData:
    """``hospital``'s rows scaled with the run's federated scaler, kept for later rounds.

    The run's ``validation-share`` of its training rows is held out here, inside
    the hospital, by the seeded split of ``training.validation_mask``: training
    fits only the rest, and ``evaluate`` scores the held-out rows apart from the
    test rows, for both the one-hospital and the block path alike.
    """
    return _standardiser(config)(index, hospital)


def _standardiser(config: Config) -> Callable[[int, HospitalArrays], LocalData]:
    """:func:`_standardised` for one message's ``config``, its settings read once for the block."""
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
        _forget_layouts()  # of rows scaled another way
        _scaled_with[:] = [key]
    scaler = _scaler(config)

    def standardised(index: int, hospital: HospitalArrays) -> LocalData:
        if (data := _scaled_rows.get(index)) is None:
            data = _scaled_rows[index] = hospital.scaled(scaler, validation_share=share, seed=seed)
        return data

    return standardised


def _requested(msg: Message, context: Context) -> tuple[list[int], Config]:
    """The hospital indices this message asks for, checked against the node's own block."""
    # A plain dict: a ConfigRecord look-up of an absent key costs a caught KeyError.
    config = dict(msg.content["config"])
    _keep_only(str(config["data-dir"]))
    mine = block_hospitals(
        int(context.node_config["partition-id"]),
        int(config.get("block-size", 1)),
        len(_federation(str(config["data-dir"])).hospitals),
    )
    # In the federation's order, whatever order the strategy sampled them in: the block
    # then trains the same list of hospitals every round (``blocks.layout`` reuses it).
    wanted = sorted(int(i) for i in config.get("hospitals", list(mine)))
    foreign = [i for i in wanted if i not in mine]
    if foreign:
        raise ValueError(f"hospitals {foreign} are not served by this node")
    return wanted, config


def _consent(data_dir: str, wanted: list[int]) -> Callable[[int], None]:
    """A check that refuses any work for a hospital of ``wanted`` that withdrew, even when
    asked for it.

    Read from the hospital's own site folder on every message, so a withdrawal
    applies from the next round of a run that is already training. A hospital
    that never withdrew costs one ``access`` of a path built once per federation,
    all of the block's in one loop: ``access`` rather than ``exists``, which
    raises and catches a FileNotFoundError for each hospital without a history.
    """
    federation = _federation(data_dir)
    files = consent_files(data_dir, federation.hospital_ids)
    access, present = os.access, os.F_OK
    histories = {i for i in wanted if access(files[i], present)}

    def check(index: int) -> None:
        if index in histories:
            hospital = federation.hospitals[index].id
            refuse_if_withdrawn(Path(files[index]).parent, hospital)

    return check


def _listed(config: Config, key: str) -> frozenset[str]:
    """The hospital ids a comma-separated setting (``fail-hospitals``, ``adversaries``) lists."""
    return frozenset(str(config.get(key, "")).split(",")) - {""}


class HospitalAbsent(Exception):
    """A simulated dropout or straggler: the hospital does not answer this round."""


def _absence(config: Config) -> Callable[[int], None] | None:
    """A screen that raises ``HospitalAbsent`` for a simulated dropout or late straggler,
    or ``None`` when the run simulates neither (nobody can be absent)."""
    seed, server_round = int(config["seed"]), int(config["server-round"])
    dropout = float(config.get("dropout", 0.0))
    max_delay = float(config.get("straggler-delay", 0.0))
    timeout = float(config.get("round-timeout", 0.0))
    if dropout <= 0 and (max_delay <= 0 or timeout <= 0):
        return None

    def screen(index: int) -> None:
        why = attacks.absence(
            seed, server_round, index, dropout=dropout, max_delay=max_delay, timeout=timeout
        )
        if why:
            raise HospitalAbsent(why)

    return screen


def _serve(
    msg: Message,
    context: Context,
    work: Callable[[list[tuple[int, HospitalArrays]], Config], tuple[Columns, Stacked]],
    *,
    screen: Callable[[Config], Callable[[int], None] | None] | None = None,
) -> Message:
    """Run ``work(ready, config) -> (columns, stacked arrays)`` for the block, one row per
    ready hospital; failures stay per hospital.

    ``screen(config)`` may give a check that raises to keep one hospital out
    (its error is reported). A message's settings are read once for the block,
    not once per hospital: at 100,000 hospitals that per-hospital reading cost
    more than a logistic regression's training.
    """
    wanted, config = _requested(msg, context)
    records: dict = {}
    errors: dict[str, str] = {}
    ready: list[tuple[int, HospitalArrays]] = []
    data_dir, target = str(config["data-dir"]), str(config["target"])
    consent = _consent(data_dir, wanted)
    check = screen(config) if screen else None
    # The fault drill: the run lists hospitals that fail on purpose (not the scaling query).
    drill = _listed(config, "fail-hospitals") if msg.metadata.message_type != "query" else ()
    for index in wanted:
        try:
            consent(index)
            if check:
                check(index)
            hospital = _hospital(data_dir, index, target)
            if hospital.hospital_id in drill:
                raise RuntimeError(
                    f"fault drill: hospital {hospital.hospital_id} raised on purpose"
                )
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


def _attacks(config: Config) -> Callable[[HospitalArrays], str]:
    """The attack a hospital carries out (``""`` for an honest one), for this message."""
    attackers, attack = _listed(config, "adversaries"), str(config.get("attack", ""))
    return lambda hospital: attack if hospital.hospital_id in attackers else ""


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
    if max_delay <= 0:
        return
    delays = [
        attacks.straggler_delay(int(config["seed"]), int(config["server-round"]), i, max_delay)
        for i, _ in ready
    ]
    time.sleep(max(delays, default=0.0))


def _epochs(data: list[LocalData], config: Config) -> list[int]:
    """Each hospital's local epochs: the run's number, or chosen from its own size (``auto``)."""
    from healthsync.ml.training import local_epochs_for

    epochs = config["local-epochs"]
    if str(epochs) != "auto":
        return [int(epochs)] * len(data)
    batch, steps = int(config["batch-size"]), int(config["local-steps"])
    return [local_epochs_for(len(d.y_train), batch, steps) for d in data]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs of SGD from the global model; one new set of weights per hospital."""
    load_training()
    from healthsync.ml.blocks import train_block_stacked
    from healthsync.ml.model import build_model
    from healthsync.ml.training import fit_from

    arrays = msg.content["arrays"].to_numpy_ndarrays()

    def work(ready, config):
        _wait_like_stragglers(ready, config)
        standardised, attack_of = _standardiser(config), _attacks(config)
        data = [standardised(index, hospital) for index, hospital in ready]
        attack = [attack_of(hospital) for _, hospital in ready]  # "" for an honest hospital
        for row, kind in enumerate(attack):
            if kind == "label-flip":
                flipped = attacks.flip_labels(data[row].y_train)
                data[row] = dataclasses.replace(data[row], y_train=flipped)
        epochs = _epochs(data, config)
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
        if flower.CLIPPING_NORM_KEY in config or any(attack):
            # Client-side DP clips, and attackers change, their own hospital's update.
            updates = [
                _outgoing(
                    [a[row] for a in stacked],
                    arrays,
                    config,
                    attack[row],
                    _seed(config, index),
                )
                for row, (index, _) in enumerate(ready)
            ]
            stacked = [np.stack([u[p] for u in updates]) for p in range(len(arrays))]
        columns = {
            "num-examples": [len(d.y_train) for d in data],
            "train-loss": np.asarray(losses, dtype=np.float64).tolist(),
            HOSPITAL_WEIGHT: [1] * len(ready),
        }
        return columns, {str(p): a for p, a in enumerate(stacked)}

    return _serve(msg, context, work, screen=_absence)


def _evaluated(kind: str, arrays: list[np.ndarray], data: list[LocalData]):
    """``(metrics, histogram)`` of the global model on each hospital's test slot."""
    from healthsync.ml.blocks import evaluate_block
    from healthsync.ml.model import build_model, set_arrays
    from healthsync.ml.training import evaluate_local

    if len(data) == 1:  # the classic path: one hospital, an ordinary PyTorch model
        model = build_model(kind, data[0].x_test.shape[1])
        set_arrays(model, arrays)
        return [evaluate_local(model, data[0].x_test, data[0].y_test)]
    return evaluate_block(kind, arrays, data)


def _evaluated_columns(
    kind: str, arrays: list[np.ndarray], data: list[LocalData]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`_evaluated` as ``blocks.evaluate_columns`` gives it: columns and stacked histograms."""
    from healthsync.ml.blocks import evaluate_columns

    if len(data) > 1:
        return evaluate_columns(kind, arrays, data)
    ((metrics, histogram),) = _evaluated(kind, arrays, data)
    columns = {key: np.array([value]) for key, value in metrics.to_dict().items()}
    return columns, np.asarray(histogram, dtype=np.float64)[np.newaxis]


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the global model on each hospital's test rows, plus a score histogram.

    Also the log loss on each hospital's validation rows (``val-loss`` over
    ``val-n`` rows), which the server sums into the federated validation loss
    that chooses the round to keep.
    """
    load_training()
    arrays = msg.content["arrays"].to_numpy_ndarrays()

    def work(ready, config):
        standardised = _standardiser(config)
        data = [standardised(index, hospital) for index, hospital in ready]
        kind = str(config["model"])
        metrics, histograms = _evaluated_columns(kind, arrays, data)
        share = float(config.get("validation-share", 0.0))
        if share > 0 and any(d.y_val is not None and len(d.y_val) for d in data):
            held_out, _ = _evaluated_columns(kind, arrays, [d.validation() for d in data])
            validation = {"val-n": held_out["n"].tolist(), "val-loss": held_out["loss"].tolist()}
        else:  # none held out (validation share 0): what scoring no rows gives, without a pass
            validation = {"val-n": [0] * len(data), "val-loss": [float("nan")] * len(data)}
        columns = {
            "num-examples": metrics["n"].tolist(),
            **{
                key: metrics[key].astype(float).tolist()
                for key in ("loss", "auc", "accuracy", "brier")
            },
            **validation,
        }
        return columns, {"histogram": np.asarray(histograms, dtype=np.float64)}

    return _serve(msg, context, work)


@app.query("cohort")
def cohort(msg: Message, context: Context) -> Message:
    """A cohort query's per-hospital answers (``simulation.analytics_client``).

    Imported on the first query: the cohort code brings Polars and the
    explorer's dependencies, a quarter of a second of every actor's start
    that a training run, waiting for its actors, never uses.
    """
    from simulation.analytics_client import answer_cohort

    return answer_cohort(msg, context)
