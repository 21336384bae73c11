"""The metrics store: aggregated, anonymised run metrics in one DuckDB file.

DuckDB lets one process open a file read-write, or several processes read-only,
never both at once. The app, the CLI and each running simulation are separate
processes, so nobody keeps the file open: every operation opens a connection,
does its work in one transaction and closes again (milliseconds), and an open
that meets another process's lock is retried with backoff. A run's writer
therefore never blocks readers for longer than one round's insert, and a
reader sees each round as soon as the writer's transaction has committed.

No table here has a patient-level row: only per-run, per-round and
per-hospital aggregates, events, model parameters and score histograms.
Per-hospital test metrics and score histograms are written only as the
release policy allows (``healthsync.privacy.training``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from healthsync.errors import HealthSyncError
from healthsync.runs.duckdb_compat import is_lock_conflict

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, status VARCHAR NOT NULL,
    config JSON NOT NULL, data_dir VARCHAR, target VARCHAR, model VARCHAR, strategy VARCHAR,
    rounds_planned INTEGER, created_at TIMESTAMP NOT NULL, started_at TIMESTAMP,
    finished_at TIMESTAMP, pid INTEGER, reason VARCHAR,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    final_loss DOUBLE, final_auc DOUBLE, final_accuracy DOUBLE, final_brier DOUBLE
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id VARCHAR NOT NULL, round INTEGER NOT NULL,
    loss DOUBLE, auc DOUBLE, accuracy DOUBLE, brier DOUBLE, seconds DOUBLE,
    hospitals_sampled INTEGER, hospitals_ok INTEGER, hospitals_failed INTEGER,
    epsilon DOUBLE, recorded_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS hospital_rounds (
    run_id VARCHAR NOT NULL, round INTEGER NOT NULL, hospital VARCHAR NOT NULL,
    n INTEGER, loss DOUBLE, auc DOUBLE, accuracy DOUBLE
);
CREATE TABLE IF NOT EXISTS events (
    run_id VARCHAR NOT NULL, recorded_at TIMESTAMP NOT NULL, round INTEGER, hospital VARCHAR,
    kind VARCHAR NOT NULL, message VARCHAR
);
CREATE TABLE IF NOT EXISTS models (
    run_id VARCHAR PRIMARY KEY, saved_at TIMESTAMP NOT NULL, blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS score_bins (
    run_id VARCHAR NOT NULL, bin INTEGER NOT NULL, lower DOUBLE, upper DOUBLE,
    positives BIGINT, negatives BIGINT, score_sum DOUBLE
);
CREATE TABLE IF NOT EXISTS comparisons (
    comparison_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, data_dir VARCHAR,
    target VARCHAR, model VARCHAR, method VARCHAR NOT NULL, hospital VARCHAR NOT NULL,
    n INTEGER, loss DOUBLE, auc DOUBLE, accuracy DOUBLE, brier DOUBLE, run_id VARCHAR
);
-- Whether a row's figures went through the release policy (healthsync.privacy.training);
-- null in stores written before it, whose per-hospital figures readers then withhold.
ALTER TABLE hospital_rounds ADD COLUMN IF NOT EXISTS released BOOLEAN;
ALTER TABLE comparisons ADD COLUMN IF NOT EXISTS released BOOLEAN;
-- The federated validation loss of each round (healthsync.ml.training.validation_mask), the
-- round whose model a run kept (its lowest validation loss under --rounds auto), and the
-- round or epoch each method of a comparison chose.
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS val_loss DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS best_round INTEGER;
ALTER TABLE comparisons ADD COLUMN IF NOT EXISTS chosen VARCHAR;
-- Each hospital's Brier score of the round's global model (released like its other figures).
ALTER TABLE hospital_rounds ADD COLUMN IF NOT EXISTS brier DOUBLE;
-- Federated tuning (healthsync.runs.tuning): each search and its trials, which are runs.
CREATE TABLE IF NOT EXISTS tunings (
    tuning_id VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, data_dir VARCHAR,
    target VARCHAR, model VARCHAR, budget INTEGER, seed BIGINT, status VARCHAR NOT NULL,
    best JSON, best_run_id VARCHAR
);
CREATE TABLE IF NOT EXISTS tuning_trials (
    tuning_id VARCHAR NOT NULL, trial INTEGER NOT NULL, rung INTEGER NOT NULL, run_id VARCHAR,
    rounds INTEGER, settings JSON NOT NULL, val_loss DOUBLE, status VARCHAR
);
-- Seconds of each phase of a round (configure, train, aggregate, evaluate, record;
-- healthsync.telemetry.PHASES), written in the round's own transaction.
CREATE TABLE IF NOT EXISTS round_phases (
    run_id VARCHAR NOT NULL, round INTEGER NOT NULL, phase VARCHAR NOT NULL, seconds DOUBLE
);
CREATE INDEX IF NOT EXISTS rounds_run ON rounds(run_id);
CREATE INDEX IF NOT EXISTS hospital_rounds_run ON hospital_rounds(run_id);
"""
#: Changes for stores written by older versions: ``((table, column), sql)``. A store
#: without that column gets it from ``sql``, in one transaction, once.
MIGRATIONS = (
    (
        ("runs", "name"),
        """
        -- A run's optional name, shown in run pickers (healthsync.runs.runlog.create_run).
        ALTER TABLE runs ADD COLUMN name VARCHAR;
        -- Every run had kind 'federated' before stress-test runs were told apart
        -- (healthsync.runs.runlog.BENCHMARK). Those ran on the sweep's own federations,
        -- <work dir>/bench/h<hospitals>x<patients>s<seed> (healthsync.bench.sweep.dataset),
        -- which the app lists nowhere else.
        UPDATE runs SET kind = 'benchmark'
        WHERE regexp_matches(data_dir, '(^|/)bench/h[0-9]+x[0-9]+s[0-9]+/?$');
        """,
    ),
)

_process_lock = threading.RLock()


@functools.cache
def _schema_objects() -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
    """Every ``(table, column)`` and index the schema defines, read from a copy in memory."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(SCHEMA)
        return _objects(con)
    finally:
        con.close()


def _objects(con: duckdb.DuckDBPyConnection) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
    columns = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main'"
    ).fetchall()
    indexes = con.execute("SELECT index_name FROM duckdb_indexes()").fetchall()
    return frozenset(columns), frozenset(name for (name,) in indexes)


def _has_schema(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store behind ``con`` has every table, column and index of ``SCHEMA``
    and every migration's column (then nothing needs creating or migrating)."""
    columns, indexes = _objects(con)
    wanted_columns, wanted_indexes = _schema_objects()
    migrated = {key for key, _ in MIGRATIONS}
    return wanted_columns | migrated <= columns and wanted_indexes <= indexes


class MetricsStore:
    """Open-use-close access to the DuckDB metrics file, safe across processes.

    Parameters
    ----------
    path : the DuckDB file, or ``":memory:"`` for tests (one connection kept).
    timeout : seconds to keep retrying while another process holds the file.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._memory = duckdb.connect(":memory:") if self.path == ":memory:" else None
        self._ready = False
        self._held: duckdb.DuckDBPyConnection | None = None  # set inside batch()

    @classmethod
    def existing(cls, path: str | Path, *, timeout: float = 30.0) -> MetricsStore:
        """A store that must already exist: read-only commands never create one."""
        if str(path) != ":memory:" and not Path(path).is_file():
            raise HealthSyncError(
                f"no metrics store at {path}: runs create it (`healthsync train --db {path}`)"
            )
        return cls(path, timeout=timeout).check()

    def check(self) -> MetricsStore:
        """Open the store once, so a file that is not a metrics store fails here, named.

        Commands call this before they start anything (a service, a run), so a
        wrong ``--db`` leaves no lock, log or half-started process behind.
        """
        with self.connect():
            pass
        return self

    # ------------------------------------------------------------ connections
    @contextmanager
    def connect(self, *, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; ``write=False`` opens read-only when the file exists."""
        with _process_lock:
            if self._held is not None:  # inside batch(): its connection and transaction
                yield self._held
                return
            if self._memory is not None:
                self._ensure_schema(self._memory)
                cursor = self._memory.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
                return
            # A new store object (every page render, every CLI command) used to run the
            # whole schema's DDL on a connection of its own first: two opens and ~70 ms.
            # Now the connection it needs anyway checks that the schema is all there.
            exists = self._ready or Path(self.path).exists()
            con = self._open(read_only=not write) if exists else None
            if not self._ready:
                if con is not None and _has_schema(con):
                    self._ready = True
                else:
                    if con is not None:
                        con.close()
                    self._create()
                    con = self._open(read_only=not write)
            try:
                if write:
                    con.execute("BEGIN TRANSACTION")
                    yield con
                    con.execute("COMMIT")
                else:
                    yield con
            except BaseException:
                if write:
                    con.execute("ROLLBACK")
                raise
            finally:
                con.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every read and write inside shares one connection and one transaction.

        Opening the file costs tens of milliseconds once it holds many runs; a
        training round writes its round, model and score bins, so it opens once
        instead of three times, and readers see all of them or none.
        """
        with _process_lock:
            if self._held is not None or self._memory is not None:
                yield
                return
            with self.connect(write=True) as con:
                self._held = con
                try:
                    yield
                finally:
                    self._held = None

    def _create(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        con = self._open(read_only=False)
        try:
            self._ensure_schema(con)
        finally:
            con.close()
        self._ready = True

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self._ready:
            con.execute(SCHEMA)
            for (table, column), sql in MIGRATIONS:
                present = con.execute(
                    "SELECT count(*) FROM information_schema.columns"
                    " WHERE table_name = ? AND column_name = ?",
                    [table, column],
                ).fetchall()[0][0]
                if not present:
                    con.execute("BEGIN TRANSACTION")
                    con.execute(sql)
                    con.execute("COMMIT")
            self._ready = True

    def _open(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as err:
                if not is_lock_conflict(err):
                    raise HealthSyncError(f"cannot open metrics store {self.path}: {err}") from err
                if time.monotonic() > deadline:
                    raise HealthSyncError(
                        f"metrics store {self.path} stayed locked by another process "
                        f"for {self.timeout:.0f} s"
                    ) from err
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    # ------------------------------------------------------------ helpers
    def execute(self, sql: str, params: Sequence[Any] | None = None, *, write: bool = True) -> None:
        """Run one statement in its own transaction."""
        with self.connect(write=write) as con:
            con.execute(sql, params or [])

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows in one transaction (nothing happens for no rows)."""
        if not rows:
            return
        with self.connect(write=True) as con:
            con.executemany(sql, rows)

    def frame(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run a read query and return a Polars frame."""
        with self.connect() as con:
            return con.sql(sql, params=list(params or [])).pl()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row, or ``None``."""
        with self.connect() as con:
            rows = con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None
