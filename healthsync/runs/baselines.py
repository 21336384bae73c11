"""Reference baselines, labelled as such, and the pooled / local / federated table.

- **pooled**: every hospital's training rows in one place. A simulation-only
  yardstick for what federated training could reach; never a deployment mode.
- **local**: each hospital trains alone on its own rows.
- **federated**: the recorded run.

Each is evaluated on every hospital's own test split and summarised overall
with test-example weights, as FLamby reports its benchmarks. Baselines train
for ``rounds x local_epochs`` epochs with the run's model, learning rate and
batch size, so the three see the same amount of optimisation. The table is
stored as the release policy for training numbers allows
(``healthsync.privacy.training``): per-hospital figures of a test split too
small to show are withheld, for every method alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np
import polars as pl

from healthsync.config import TrainConfig
from healthsync.errors import HealthSyncError
from healthsync.ml.features import Scaler, ScalingStats
from healthsync.ml.metrics import BinaryMetrics, aggregate
from healthsync.ml.model import initial_model
from healthsync.ml.training import evaluate_local, hospital_arrays, train_local
from healthsync.privacy import training
from healthsync.runs import runlog
from healthsync.runs.lifecycle import check_config
from healthsync.runs.store import MetricsStore

COLUMNS = ("method", "hospital", "n", "loss", "auc", "accuracy", "brier")


def _rows(
    method: str, per_hospital: dict[str, BinaryMetrics], overall: BinaryMetrics | None = None
) -> list[dict]:
    rows = [{"method": method, "hospital": h, **m.to_dict()} for h, m in per_hospital.items()]
    if overall is None:
        overall = aggregate(list(per_hospital.values()))
    return [{"method": method, "hospital": "overall", **overall.to_dict()}, *rows]


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
        out += [overall, *hospitals]
    return out


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
    # no method fits them, so all three are trained on the same rows.
    data = {
        h.hospital_id: h.scaled(scaler, validation_share=config.validation_share, seed=config.seed)
        for h in hospitals
    }
    epochs = config.rounds * config.local_epochs
    width = next(iter(data.values())).x_train.shape[1]

    def fit(d_x: np.ndarray, d_y: np.ndarray, seed: int):
        model = initial_model(config.model, width, config.seed)
        train_local(
            model, d_x, d_y, epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=seed
        )
        return model

    if progress:
        progress("pooled")
    pooled = fit(
        np.concatenate([d.x_train for d in data.values()]),
        np.concatenate([d.y_train for d in data.values()]),
        config.seed,
    )
    pooled_metrics = {h: evaluate_local(pooled, d.x_test, d.y_test)[0] for h, d in data.items()}
    local_metrics: dict[str, BinaryMetrics] = {}
    for i, (h, d) in enumerate(data.items()):
        if progress:
            progress(f"local {i + 1}/{len(data)}")
        local_metrics[h] = evaluate_local(
            fit(d.x_train, d.y_train, config.seed + i), d.x_test, d.y_test
        )[0]
    counts = {h: (int((d.y_test == 1).sum()), int((d.y_test == 0).sum())) for h, d in data.items()}
    return _rows("pooled (reference)", pooled_metrics) + _rows("local only", local_metrics), counts


def federated_rows(store: MetricsStore, run_id: str) -> list[dict]:
    """The run's last round, per hospital (as released) and overall (the run's final figures)."""
    run = runlog.get_run(store, run_id)
    hospitals = runlog.hospital_rounds_frame(store, run_id)
    if hospitals.is_empty():
        raise HealthSyncError(f"run {run_id} has no finished round to compare")
    last = hospitals.filter(pl.col("round") == hospitals["round"].max()).with_columns(
        pl.col("loss", "auc", "accuracy").fill_null(float("nan"))  # withheld: left out of means
    )
    per_hospital = {
        r["hospital"]: BinaryMetrics(r["n"], r["loss"], r["auc"], r["accuracy"], float("nan"))
        for r in last.iter_rows(named=True)
    }
    final = BinaryMetrics(
        int(last["n"].sum()), *(run[f"final_{k}"] for k in ("loss", "auc", "accuracy", "brier"))
    )
    return _rows(f"federated ({run['strategy']})", per_hospital, final)


def compare_table(config: TrainConfig, run_id: str, *, progress: bool = False) -> pl.DataFrame:
    """The comparison table, also stored in the metrics store for the Runs page."""
    store = MetricsStore(config.db)
    run_config = TrainConfig.from_dict(runlog.get_run(store, run_id)["config"])
    say = (lambda step: print(f"baseline: {step}", flush=True)) if progress else None
    baselines, counts = baseline_rows(run_config, progress=say)
    rows = released_rows(baselines + federated_rows(store, run_id), counts)
    table = pl.DataFrame(rows).select(COLUMNS)
    comparison_id = f"cmp-{secrets.token_hex(4)}"
    store.executemany(
        "INSERT INTO comparisons (comparison_id, created_at, data_dir, target, model, method, hospital,"
        " n, loss, auc, accuracy, brier, run_id, released)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true)",
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
            ]
            for r in rows
        ],
    )
    return table
