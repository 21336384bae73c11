"""Reference baselines, labelled as such, and the pooled / local / federated table.

- **pooled**: every hospital's training rows in one place. A simulation-only
  yardstick for what federated training could reach; never a deployment mode.
- **local**: each hospital trains alone on its own rows.
- **federated**: the recorded run (its kept round).
- **personalised (fine-tuned)**: each hospital fine-tunes the run's global
  model on its own training rows, stopping on its own validation rows.

Like with like: every method fits the same rows (each hospital's training
rows minus its validation rows, the run's seeded split) and is chosen by the
same rule on the same validation rows, never on test rows. A baseline's
"round" is one round's local work on its own rows (``local_epochs``, or under
``auto`` ``training.local_epochs_for`` its size); under ``--rounds auto`` it
keeps the round of lowest validation loss and stops after ``patience``
rounds without a better one, at most ``max_rounds``; with a fixed number of
rounds it trains that many and keeps the last, as the run does. The table's
``chosen`` column says what each method kept (``round R``, ``epoch E``).

Each is evaluated on every hospital's own test split and summarised overall
with test-example weights, as FLamby reports its benchmarks. The table is
stored as the release policy for training numbers allows
(``healthsync.privacy.training``): per-hospital figures of a test split too
small to show are withheld, for every method alike, and so is that
hospital's chosen epoch.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable

import numpy as np
import polars as pl
import torch

from healthsync.config import TrainConfig
from healthsync.data import load_federation
from healthsync.errors import HealthSyncError
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.metrics import BinaryMetrics, aggregate, binary_metrics
from healthsync.ml.model import SavedModel, initial_model, predict_proba, set_arrays
from healthsync.ml.selection import Patience
from healthsync.ml.training import (
    LocalData,
    evaluate_local,
    hospital_arrays,
    local_epochs_for,
    train_local,
)
from healthsync.privacy import training
from healthsync.runs import runlog
from healthsync.runs.lifecycle import check_config
from healthsync.runs.store import MetricsStore

COLUMNS = ("method", "hospital", "n", "loss", "auc", "accuracy", "brier", "chosen")


def _rows(
    method: str,
    per_hospital: dict[str, BinaryMetrics],
    overall: BinaryMetrics | None = None,
    *,
    chosen: dict[str, str] | None = None,
    chosen_overall: str | None = None,
) -> list[dict]:
    chosen = chosen or {}
    rows = [
        {"method": method, "hospital": h, **m.to_dict(), "chosen": chosen.get(h)}
        for h, m in per_hospital.items()
    ]
    if overall is None:
        overall = aggregate(list(per_hospital.values()))
    overall_row = {"method": method, "hospital": "overall", **overall.to_dict()}
    return [{**overall_row, "chosen": chosen_overall}, *rows]


def released_rows(rows: list[dict], counts: dict[str, tuple[int, int]]) -> list[dict]:
    """The table as it may be stored: each method's hospitals through the release policy.

    ``counts`` holds each hospital's positives and negatives in its test split,
    which every method is evaluated on; they decide, and are not stored.
    """
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        overall = next(r for r in group if r["hospital"] == "overall")
        hospitals = [
            {**r, "positives": counts[r["hospital"]][0], "negatives": counts[r["hospital"]][1]}
            for r in group
            if r["hospital"] != "overall"
        ]
        overall, hospitals = training.release_round(overall, hospitals)
        for row in hospitals:  # a withheld hospital's chosen epoch rests on its patients too
            if all(row.get(m) is None for m in training.HOSPITAL_METRICS):
                row["chosen"] = None
        out += [overall, *hospitals]
    return out


def fit_with_stopping(
    config: TrainConfig,
    width: int,
    data: LocalData,
    *,
    seed: int,
    start: list[np.ndarray] | None = None,
) -> tuple[torch.nn.Module, int]:
    """A baseline model trained and chosen as a federated run is: the model and its epochs.

    One "round" is ``local_epochs`` (or, under ``auto``, ``local_epochs_for``
    these rows) epochs; under ``rounds="auto"`` the round of lowest validation
    loss is kept, stopping after ``patience`` rounds without a better one.
    From ``start`` (fine-tuning a global model) that model itself is round 0:
    if no epoch improves on it, it is kept (0 epochs).
    """
    model = initial_model(config.model, width, config.seed)
    if start is not None:
        set_arrays(model, start)
    unit = (
        local_epochs_for(len(data.y_train), config.batch_size, config.local_steps)
        if config.local_epochs == "auto"
        else int(config.local_epochs)
    )
    settings = {"batch_size": config.batch_size, "lr": config.lr}
    has_validation = data.y_val is not None and len(data.y_val) > 0
    if start is not None and not has_validation:  # nothing to choose by: keep the start
        return model, 0
    if not config.auto_rounds or not has_validation:  # fixed: all rounds, keep the last
        epochs = config.round_limit * unit
        train_local(model, data.x_train, data.y_train, epochs=epochs, seed=seed, **settings)
        return model, epochs
    rule, best_state = Patience(config.patience), copy.deepcopy(model.state_dict())
    if start is not None:
        rule.update(0, binary_metrics(data.y_val, predict_proba(model, data.x_val)).loss)
    for rnd in range(1, config.round_limit + 1):
        train_local(
            model, data.x_train, data.y_train, epochs=unit, seed=seed * 1_009 + rnd, **settings
        )
        if rule.update(rnd, binary_metrics(data.y_val, predict_proba(model, data.x_val)).loss):
            best_state = copy.deepcopy(model.state_dict())
        if rule.stop:
            break
    model.load_state_dict(best_state)
    return model, rule.best_round * unit


def baseline_rows(
    config: TrainConfig, progress: Callable[[str], None] | None = None
) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """Train and evaluate the pooled and local-only baselines for ``config``.

    Also returns each hospital's positives and negatives in its test split,
    for the release policy.
    """
    config, federation = check_config(config)
    target = str(config.target)
    hospitals = [hospital_arrays(federation, h.id, target) for h in federation.hospitals]
    scaler = Scaler.from_stats(ScalingStats.combine(ScalingStats.of(h.x_train) for h in hospitals))
    # The same validation rows the run's hospitals held out (the same seeded split):
    # no method fits them, and every method is chosen on them.
    data = {
        h.hospital_id: h.scaled(scaler, validation_share=config.validation_share, seed=config.seed)
        for h in hospitals
    }
    width = next(iter(data.values())).x_train.shape[1]

    if progress:
        progress("pooled")
    parts = list(data.values())
    pooled_data = LocalData(
        np.concatenate([d.x_train for d in parts]),
        np.concatenate([d.y_train for d in parts]),
        np.zeros((0, width), np.float32),
        np.zeros(0, np.float32),
        np.concatenate([d.x_val for d in parts]),
        np.concatenate([d.y_val for d in parts]),
    )
    pooled, pooled_epochs = fit_with_stopping(config, width, pooled_data, seed=config.seed)
    pooled_metrics = {h: evaluate_local(pooled, d.x_test, d.y_test)[0] for h, d in data.items()}
    local_metrics: dict[str, BinaryMetrics] = {}
    local_chosen: dict[str, str] = {}
    for i, (h, d) in enumerate(data.items()):
        if progress:
            progress(f"local {i + 1}/{len(data)}")
        model, epochs = fit_with_stopping(config, width, d, seed=config.seed + i)
        local_metrics[h] = evaluate_local(model, d.x_test, d.y_test)[0]
        local_chosen[h] = f"epoch {epochs}"
    counts = {h: (int((d.y_test == 1).sum()), int((d.y_test == 0).sum())) for h, d in data.items()}
    pooled_rows = _rows(
        "pooled (reference)",
        pooled_metrics,
        chosen=dict.fromkeys(pooled_metrics, f"epoch {pooled_epochs}"),
        chosen_overall=f"epoch {pooled_epochs}",
    )
    local_rows = _rows(
        "local only", local_metrics, chosen=local_chosen, chosen_overall="each its own"
    )
    return pooled_rows + local_rows, counts


def federated_rows(store: MetricsStore, run_id: str) -> list[dict]:
    """The run's kept round, per hospital (as released) and overall (the run's final figures).

    The kept round is ``best_round`` (the last round for runs recorded before it).
    """
    run = runlog.get_run(store, run_id)
    hospitals = runlog.hospital_rounds_frame(store, run_id)
    if hospitals.is_empty():
        raise HealthSyncError(f"run {run_id} has no finished round to compare")
    kept = run.get("best_round") or hospitals["round"].max()
    last = hospitals.filter(pl.col("round") == kept).with_columns(
        pl.col("loss", "auc", "accuracy", "brier").fill_null(float("nan"))  # withheld: not in means
    )
    per_hospital = {
        r["hospital"]: BinaryMetrics(r["n"], r["loss"], r["auc"], r["accuracy"], r["brier"])
        for r in last.iter_rows(named=True)
    }
    final = BinaryMetrics(
        int(last["n"].sum()), *(run[f"final_{k}"] for k in ("loss", "auc", "accuracy", "brier"))
    )
    return _rows(
        f"federated ({run['strategy']})",
        per_hospital,
        final,
        chosen={h: f"round {kept}" for h in per_hospital},
        chosen_overall=f"round {kept}",
    )


PERSONALISED = "personalised (fine-tuned)"


def personalised_rows(
    config: TrainConfig,
    store: MetricsStore,
    run_id: str,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Each hospital fine-tunes the run's kept global model on its own training rows.

    It stops on its own validation rows by the shared rule (``rounds="auto"``
    whatever the run used: fine-tuning has no fixed length) and keeps the
    global model itself when no epoch improves on it ("epoch 0"). Rows are
    scaled with the run's own federated scaler, as the global model expects.
    """
    saved = SavedModel.from_bytes(runlog.load_model_blob(store, run_id))
    config, federation = check_config(config)
    tune = config.replace(rounds="auto")
    metrics: dict[str, BinaryMetrics] = {}
    chosen: dict[str, str] = {}
    for i, info in enumerate(federation.hospitals):
        if progress:
            progress(f"fine-tuning {i + 1}/{len(federation.hospitals)}")
        d = hospital_arrays(federation, info.id, str(config.target)).scaled(
            saved.scaler, validation_share=config.validation_share, seed=config.seed
        )
        model, epochs = fit_with_stopping(
            tune, d.x_train.shape[1], d, seed=config.seed + 7_919 + i, start=saved.arrays
        )
        metrics[info.id] = evaluate_local(model, d.x_test, d.y_test)[0]
        chosen[info.id] = f"epoch {epochs}"
    return _rows(PERSONALISED, metrics, chosen=chosen, chosen_overall="each its own")


def _shown_sizes(rows: list[dict], config: TrainConfig) -> list[dict]:
    """Each row's ``n`` as it may be shown (``privacy.training.shown_test_size``)."""
    federation = load_federation(config.data_dir)
    out = [
        r
        if r["hospital"] == "overall"
        else {**r, "n": training.shown_test_size(federation, r["hospital"], config.target, r["n"])}
        for r in rows
    ]
    totals: dict[str, int] = {}
    for r in out:
        if r["hospital"] != "overall":
            totals[r["method"]] = totals.get(r["method"], 0) + int(r["n"] or 0)
    return [
        {**r, "n": totals.get(r["method"], r["n"])} if r["hospital"] == "overall" else r
        for r in out
    ]


def compare_table(config: TrainConfig, run_id: str, *, progress: bool = False) -> pl.DataFrame:
    """The comparison table, also stored in the metrics store for the Runs page."""
    store = MetricsStore(config.db)
    run_config = TrainConfig.from_dict(runlog.get_run(store, run_id)["config"])
    say = (lambda step: print(f"baseline: {step}", flush=True)) if progress else None
    baselines, counts = baseline_rows(run_config, progress=say)
    personalised = personalised_rows(run_config, store, run_id, progress=say)
    rows = released_rows(
        _shown_sizes(baselines + federated_rows(store, run_id) + personalised, run_config),
        counts,
    )
    table = pl.DataFrame(rows).select(COLUMNS)
    comparison_id = f"cmp-{secrets.token_hex(4)}"
    store.executemany(
        "INSERT INTO comparisons (comparison_id, created_at, data_dir, target, model, method, hospital,"
        " n, loss, auc, accuracy, brier, run_id, chosen, released)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true)",
        [
            [
                comparison_id,
                runlog.now(),
                run_config.data_dir,
                run_config.target,
                run_config.model,
                r["method"],
                r["hospital"],
                r["n"],
                *(runlog.clean_number(r[k]) for k in ("loss", "auc", "accuracy", "brier")),
                run_id,
                r.get("chosen"),
            ]
            for r in rows
        ],
    )
    return table
