"""What the metrics store records about runs: writes by the simulation, reads for app and CLI.

Reads return Polars frames or plain dicts. Every write is one short
transaction (see ``healthsync.runs.store``), so a run's rounds become visible to
readers in other processes as soon as each round ends.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from healthsync.background.processes import process_alive
from healthsync.config import TrainConfig
from healthsync.data.pseudonyms import SiteLabels
from healthsync.errors import HealthSyncError
from healthsync.ml.metrics import BinaryMetrics
from healthsync.privacy import training
from healthsync.runs.store import MetricsStore

ROUND_KEYS = (
    "round",
    "loss",
    "auc",
    "accuracy",
    "brier",
    "seconds",
    "hospitals_sampled",
    "hospitals_ok",
    "hospitals_failed",
    "epsilon",
    "val_loss",
)
HOSPITAL_SCHEMA = {
    "hospital": pl.String,
    "round": pl.Int32,
    "n": pl.Int32,
    "loss": pl.Float64,
    "auc": pl.Float64,
    "accuracy": pl.Float64,
    "brier": pl.Float64,
}
HOSPITAL_KEYS = tuple(HOSPITAL_SCHEMA)
ACTIVE = ("queued", "running")
#: What a run is for (``runs.kind``). A training run is ``"federated"``, the kind every run
#: had before stress-test runs were told apart (``runs show --json`` printed it, so it
#: stays); a stress-test measurement is ``"benchmark"``, shown on the Stress-test page
#: only and left out of the training views (Live, Run history, Model, Overview).
TRAINING = "federated"
BENCHMARK = "benchmark"
KINDS = (TRAINING, BENCHMARK)
#: The longest run name: a picker label still fits on one line.
NAME_LENGTH = 80


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_run_id() -> str:
    """Sortable and unique: ``run-YYYYmmdd-HHMMSS-xxxx``."""
    return f"run-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def clean_name(name: str | None) -> str | None:
    """A run's name as stored: trimmed, ``None`` when blank; a clear error when too long.

    A name is for people telling runs apart in pickers and listings; the run id
    stays the run's identity, so names need not be unique.
    """
    name = " ".join((name or "").split())
    if len(name) > NAME_LENGTH:
        raise HealthSyncError(f"a run name is at most {NAME_LENGTH} characters, got {len(name)}")
    return name or None


# ---------------------------------------------------------------- writes
def create_run(
    store: MetricsStore,
    run_id: str,
    config: TrainConfig,
    *,
    kind: str = TRAINING,
    name: str | None = None,
    status: str = "queued",
    pid: int | None = None,
) -> None:
    """Record a new run; ``kind`` says whether training views show it (see ``KINDS``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
    store.execute(
        "INSERT INTO runs (run_id, kind, name, status, config, data_dir, target, model, strategy,"
        " rounds_planned, created_at, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            kind,
            clean_name(name),
            status,
            config.to_json(),
            config.data_dir,
            config.target,
            config.model,
            config.strategy,
            config.round_limit,
            now(),
            pid,
        ],
    )


def mark_running(store: MetricsStore, run_id: str, *, pid: int, target: str) -> None:
    store.execute(
        "UPDATE runs SET status = 'running', started_at = ?, pid = ?, target = ? WHERE run_id = ?",
        [now(), pid, target, run_id],
    )


def record_round(
    store: MetricsStore,
    run_id: str,
    round_row: dict[str, Any],
    hospital_rows: list[dict[str, Any]] | pl.DataFrame,
) -> dict[str, Any]:
    """One finished round and its per-hospital metrics, in one transaction; the round as stored.

    Both pass the release policy first (``privacy.training.release_round``):
    hospital rows carry ``positives`` and ``negatives`` of their test split,
    which decide what is shown and are not stored. A caller reporting the
    round elsewhere (the run's final figures) uses the returned row, so every
    surface shows the same value. Per-hospital rows go in as one Arrow batch:
    row-by-row inserts cost ~0.2 ms each, which at thousands of hospitals
    would rival the round itself; a run hands its rows over as one frame.
    """
    round_row, hospital_rows = training.release_round(round_row, hospital_rows)
    with store.connect(write=True) as con:
        con.execute(
            f"INSERT INTO rounds (run_id, {', '.join(ROUND_KEYS)}, recorded_at)"
            f" VALUES (?, {', '.join('?' for _ in ROUND_KEYS)}, ?)",
            [run_id, *(clean_number(round_row.get(k)) for k in ROUND_KEYS), now()],
        )
        if len(hospital_rows):
            if not isinstance(hospital_rows, pl.DataFrame):
                hospital_rows = pl.DataFrame(
                    {k: [clean_number(r.get(k)) for r in hospital_rows] for k in HOSPITAL_KEYS},
                    schema=HOSPITAL_SCHEMA,
                )
            batch = (
                hospital_rows.select(
                    pl.col(k).cast(t) if k in hospital_rows.columns else pl.lit(None, t).alias(k)
                    for k, t in HOSPITAL_SCHEMA.items()
                )
                .with_columns(pl.col(pl.Float64).fill_nan(None))
                .to_arrow()
            )
            con.register("hospital_batch", batch)
            con.execute(
                f"INSERT INTO hospital_rounds (run_id, {', '.join(HOSPITAL_KEYS)}, released)"
                f" SELECT ?, {', '.join(HOSPITAL_KEYS)}, true FROM hospital_batch",
                [run_id],
            )
            con.unregister("hospital_batch")
    return round_row


def record_phases(store: MetricsStore, run_id: str, rnd: int, seconds: dict[str, float]) -> None:
    """Where round ``rnd``'s time went: seconds per phase (``healthsync.telemetry.PhaseClock``).

    Timings of the coordinating process only, nothing about any hospital's data.
    """
    if seconds:
        store.executemany(
            "INSERT INTO round_phases (run_id, round, phase, seconds) VALUES (?, ?, ?, ?)",
            [(run_id, rnd, phase, float(s)) for phase, s in seconds.items()],
        )


def phases_frame(store: MetricsStore, run_id: str) -> pl.DataFrame:
    """Every recorded round's phase seconds: ``round``, ``phase``, ``seconds``."""
    return store.frame(
        "SELECT round, phase, seconds FROM round_phases WHERE run_id = ? ORDER BY round",
        [run_id],
    )


def record_event(
    store: MetricsStore,
    run_id: str,
    kind: str,
    message: str,
    *,
    round: int | None = None,
    hospital: str | None = None,
) -> None:
    store.execute(
        "INSERT INTO events (run_id, recorded_at, round, hospital, kind, message) VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, now(), round, hospital, kind, message[:2000]],
    )


def finish_run(
    store: MetricsStore,
    run_id: str,
    status: str,
    *,
    reason: str | None = None,
    final: BinaryMetrics | None = None,
) -> None:
    """Set the end state once; a run already ended keeps its first end state."""
    f = final or BinaryMetrics(0, *(float("nan"),) * 4)
    store.execute(
        "UPDATE runs SET status = ?, reason = ?, finished_at = ?, final_loss = ?, final_auc = ?,"
        " final_accuracy = ?, final_brier = ? WHERE run_id = ? AND status IN ('queued', 'running')",
        [
            status,
            reason,
            now(),
            clean_number(f.loss),
            clean_number(f.auc),
            clean_number(f.accuracy),
            clean_number(f.brier),
            run_id,
        ],
    )


def set_best_round(store: MetricsStore, run_id: str, rnd: int) -> None:
    """The round whose global model the run keeps (saved model, final figures)."""
    store.execute("UPDATE runs SET best_round = ? WHERE run_id = ?", [rnd, run_id])


def request_cancel(store: MetricsStore, run_id: str) -> bool:
    """Ask a run to stop after its current round; False if it is not active."""
    get_run(store, run_id)
    with store.connect(write=True) as con:
        con.execute(
            "UPDATE runs SET cancel_requested = true WHERE run_id = ? AND status IN ('queued', 'running')",
            [run_id],
        )
        row = con.execute(
            "SELECT cancel_requested FROM runs WHERE run_id = ?", [run_id]
        ).fetchall()[0]
    return bool(row and row[0])


def save_model(store: MetricsStore, run_id: str, blob: bytes) -> None:
    with store.connect(write=True) as con:
        con.execute("DELETE FROM models WHERE run_id = ?", [run_id])
        con.execute("INSERT INTO models VALUES (?, ?, ?)", [run_id, now(), blob])


def save_score_bins(store: MetricsStore, run_id: str, histogram: np.ndarray) -> None:
    """The federation's summed score histogram of the final model (ROC and calibration).

    Only released bins are written (``privacy.training.histogram_bins``): merged
    until each holds enough patients of both classes, or none at all.
    """
    rows = [[run_id, *bin] for bin in training.histogram_bins(histogram).iter_rows()]
    with store.connect(write=True) as con:
        con.execute("DELETE FROM score_bins WHERE run_id = ?", [run_id])
        if rows:
            con.executemany("INSERT INTO score_bins VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def fail_if_active(store: MetricsStore, run_id: str, reason: str) -> bool:
    """Mark a run failed unless it already ended (its own loop recorded how); whether it did."""
    if get_run(store, run_id)["status"] not in ACTIVE:
        return False
    finish_run(store, run_id, "failed", reason=reason)
    record_event(store, run_id, "failed", reason)
    return True


def reconcile_dead_runs(store: MetricsStore) -> list[str]:
    """Mark runs whose process is gone as failed, so none stays ``running`` forever."""
    active = store.frame("SELECT run_id, pid FROM runs WHERE status IN ('queued', 'running')")
    dead = [
        r["run_id"]
        for r in active.iter_rows(named=True)
        if r["pid"] and not process_alive(r["pid"])
    ]
    for run_id in dead:
        finish_run(
            store,
            run_id,
            "failed",
            reason="the simulation process exited without finishing (killed or out of memory)",
        )
        record_event(store, run_id, "failed", "simulation process disappeared; marked failed")
    return dead


# ---------------------------------------------------------------- reads
def list_runs(
    store: MetricsStore,
    *,
    limit: int | None = None,
    kind: str | None = None,
    data_dir: str | Path | None = None,
) -> pl.DataFrame:
    """Newest first: id, name, kind, status, settings and final numbers of every run.

    ``kind`` keeps runs of that kind only (training views pass ``TRAINING``);
    ``data_dir`` keeps runs on that federation (as given or resolved, as
    ``runs.check_config`` records it).
    """
    where, params = [], []
    if kind is not None:
        where.append("r.kind = ?")
        params.append(kind)
    if data_dir is not None:
        where.append("r.data_dir IN (?, ?)")
        params += [str(data_dir), str(Path(data_dir).resolve())]
    sql = (
        "SELECT r.run_id, r.name, r.kind, r.status, r.data_dir, r.target, r.model, r.strategy,"
        " r.rounds_planned, coalesce(d.rounds_done, 0) AS rounds_done, r.created_at, r.started_at,"
        " r.finished_at, r.final_loss, r.final_auc, r.final_accuracy, r.final_brier, r.reason"
        " FROM runs r LEFT JOIN (SELECT run_id, count(*) AS rounds_done FROM rounds GROUP BY run_id) d"
        " USING (run_id)"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " ORDER BY r.created_at DESC, r.run_id DESC"
    )
    if limit:
        sql += f" LIMIT {int(limit)}"
    return store.frame(sql, params)


def get_run(store: MetricsStore, run_id: str) -> dict[str, Any]:
    frame = store.frame("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if frame.is_empty():
        raise HealthSyncError(f"no run {run_id!r} in metrics store {store.path}")
    row = frame.row(0, named=True)
    row["config"] = json.loads(row["config"])
    return row


def rounds_frame(store: MetricsStore, run_id: str) -> pl.DataFrame:
    return store.frame(
        f"SELECT {', '.join(ROUND_KEYS)}, recorded_at FROM rounds WHERE run_id = ? ORDER BY round",
        [run_id],
    )


def hospital_rounds_frame(store: MetricsStore, run_id: str) -> pl.DataFrame:
    """Per-hospital metrics of every round, as released (``privacy.training``)."""
    return training.released_hospital_metrics(
        store.frame(
            f"SELECT {', '.join(HOSPITAL_KEYS)}, released FROM hospital_rounds WHERE run_id = ?"
            " ORDER BY round, hospital",
            [run_id],
        )
    )


def events_frame(store: MetricsStore, run_id: str) -> pl.DataFrame:
    return store.frame(
        "SELECT recorded_at, round, hospital, kind, message FROM events WHERE run_id = ? ORDER BY recorded_at",
        [run_id],
    )


#: A hospital that failed in more than this share of a run's rounds earns the run a
#: warning (``run_warnings``); ``train --strict`` turns warnings into exit status 1.
WARN_FAILED_SHARE = 0.5


def run_warnings(store: MetricsStore, run_id: str, labels: SiteLabels | None = None) -> list[str]:
    """One line per hospital that failed in more than ``WARN_FAILED_SHARE`` of the rounds.

    A run completes when enough hospitals answer each round, so a hospital
    whose partition broke can fail every round of a "completed" run; this is
    how the CLI, Runs and Live say so. Simulated absences (dropout drills) are
    not failures and do not count.

    ``labels`` is how the reader sees the run's hospitals
    (``views.tenancy.site_labels``); without it, real names and ids, as the
    operator's CLI shows them. Hospitals the reader may not see named are
    counted in one line, and the failure messages are scrubbed of them.
    """
    fixed = None if labels is None else (lambda data_dir: labels)
    return warnings_by_run(store, [run_id], fixed).get(run_id, [])


def warnings_by_run(
    store: MetricsStore,
    run_ids: Sequence[str],
    labels: Callable[[str | None], SiteLabels] | None = None,
) -> dict[str, list[str]]:
    """``run_warnings`` for many runs in one query (the Runs page shows them all).

    ``labels`` gives the reader's labels for a run's data set (``run_warnings``).
    """
    if not run_ids:
        return {}
    marks = ", ".join("?" * len(run_ids))
    failed = store.frame(
        f"""
        WITH done AS (
            SELECT run_id, count(*) AS rounds FROM rounds WHERE run_id IN ({marks}) GROUP BY run_id
        ), failed AS (
            SELECT run_id, hospital, count(DISTINCT round) AS rounds, min(message) AS why
            FROM events WHERE run_id IN ({marks}) AND kind = 'hospital_failed'
                AND hospital IS NOT NULL
            GROUP BY run_id, hospital
        )
        SELECT f.run_id, f.hospital, least(f.rounds, d.rounds) AS failed, d.rounds AS done,
               f.why, r.data_dir
        FROM failed f JOIN done d USING (run_id) JOIN runs r USING (run_id)
        WHERE f.rounds > {WARN_FAILED_SHARE} * d.rounds
        ORDER BY f.run_id, f.hospital
        """,
        [*run_ids, *run_ids],
    )
    out: dict[str, list[str]] = {}
    seen: dict[str | None, SiteLabels] = {}
    hidden: dict[str, int] = {}
    for row in failed.iter_rows(named=True):
        if row["data_dir"] not in seen:
            seen[row["data_dir"]] = (labels or _real_labels)(row["data_dir"])
        shown = seen[row["data_dir"]]
        who = shown.describe(row["hospital"])
        if who is None:
            hidden[row["run_id"]] = hidden.get(row["run_id"], 0) + 1
            continue
        out.setdefault(row["run_id"], []).append(
            f"hospital {who} failed {row['failed']} of {row['done']} "
            f"round(s): {shown.scrub(row['why'])}"
        )
    for run_id, count in hidden.items():
        out.setdefault(run_id, []).append(
            f"{count} other hospital{'s' if count > 1 else ''} failed in more than half of the "
            "rounds"
        )
    return out


def _real_labels(data_dir: str | None) -> SiteLabels:
    """Real names and ids from the run's manifest; ids alone if it is gone or broken."""
    from healthsync.data import load_federation

    try:
        return SiteLabels.real(load_federation(data_dir) if data_dir else None)
    except HealthSyncError:
        return SiteLabels({})


def load_model_blob(store: MetricsStore, run_id: str) -> bytes:
    get_run(store, run_id)
    blob = store.scalar("SELECT blob FROM models WHERE run_id = ?", [run_id])
    if blob is None:
        raise HealthSyncError(f"run {run_id!r} has no saved model (it did not finish a round)")
    return bytes(blob)


def score_bins_frame(store: MetricsStore, run_id: str) -> pl.DataFrame:
    """The final model's score bins, merged again as released: old stores hold raw ones."""
    return training.merge_bins(
        store.frame(
            "SELECT bin, lower, upper, positives, negatives, score_sum FROM score_bins"
            " WHERE run_id = ? ORDER BY bin",
            [run_id],
        )
    )


def run_detail(store: MetricsStore, run_id: str) -> dict[str, Any]:
    """The ``runs show --json`` document: run, config, rounds and per-hospital rounds.

    ``best_round`` is the round whose model the run kept: under ``--rounds auto``
    the one with the lowest federated validation loss, else the last round.
    """
    run = get_run(store, run_id)
    final = {k: _clean(run[f"final_{k}"]) for k in ("loss", "auc", "accuracy", "brier")}
    return {
        "run_id": run_id,
        "status": run["status"],
        "kind": run["kind"],
        "name": run["name"],
        "reason": run["reason"],
        "created_at": str(run["created_at"]),
        "finished_at": None if run["finished_at"] is None else str(run["finished_at"]),
        "config": run["config"],
        "best_round": run.get("best_round"),
        "final": final,
        "rounds": to_records(rounds_frame(store, run_id).drop("recorded_at")),
        "hospitals": to_records(hospital_rounds_frame(store, run_id)),
        "warnings": run_warnings(store, run_id),
        "events": to_records(
            events_frame(store, run_id).with_columns(pl.col("recorded_at").cast(pl.String))
        ),
    }


def to_records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in row.items()} for row in frame.iter_rows(named=True)]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes null."""
    if isinstance(value, float) and value != value:
        return None
    return value


def clean_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    return _clean(value)


def cancel_requested(store: MetricsStore, run_id: str) -> bool:
    return bool(store.scalar("SELECT cancel_requested FROM runs WHERE run_id = ?", [run_id]))
