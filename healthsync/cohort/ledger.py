"""The cohort explorer's tables in the metrics store: a view of spending, and the audit log.

- ``privacy_ledger``: one row per query that spent epsilon, as the hospitals
  charged it. A *view* for the app: each hospital's own ledger
  (:mod:`healthsync.privacy.site`) is what is enforced, so this table can be
  lost or pointed elsewhere without resetting anyone's budget.
- ``cohort_audit``: every request, answered or not: who, when, what, the
  epsilon spent and what the guards hid.

Both hold descriptions only, never a patient row or a released number.
The tables are created here, lazily, with ``CREATE TABLE IF NOT EXISTS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl

from healthsync.runs.store import MetricsStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    user_name VARCHAR NOT NULL, federation VARCHAR NOT NULL, query_key VARCHAR NOT NULL,
    epsilon DOUBLE NOT NULL, spent_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS cohort_audit (
    asked_at TIMESTAMP NOT NULL, user_name VARCHAR, role VARCHAR, federation VARCHAR,
    data_dir VARCHAR, query VARCHAR, status VARCHAR NOT NULL, epsilon DOUBLE NOT NULL,
    suppressed VARCHAR, message VARCHAR, seconds DOUBLE
);
"""
#: ``status`` in the audit log.
STATUSES = ("answered", "cached", "refused", "rejected", "failed")


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    user: str
    status: str
    query: str
    role: str | None = None
    federation: str | None = None
    data_dir: str | None = None
    epsilon: float = 0.0
    suppressed: str | None = None
    message: str | None = None
    seconds: float | None = None

    def row(self) -> list[Any]:
        return [
            _now(),
            self.user,
            self.role,
            self.federation,
            self.data_dir,
            self.query,
            self.status,
            self.epsilon,
            self.suppressed,
            self.message,
            self.seconds,
        ]


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables if this store has never seen a cohort query."""
    con.execute(SCHEMA)


def record_charge(
    con: duckdb.DuckDBPyConnection, user: str, federation: str, key: str, epsilon: float
) -> None:
    """Copy what the hospitals charged for one query into the view (caller's transaction)."""
    con.execute(
        "INSERT INTO privacy_ledger VALUES (?, ?, ?, ?, ?)",
        [user, federation, key, epsilon, _now()],
    )


def audit(con: duckdb.DuckDBPyConnection, entry: AuditEntry) -> None:
    """Append one line to the audit log."""
    con.execute("INSERT INTO cohort_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", entry.row())


def write_audit(store: MetricsStore, entry: AuditEntry) -> None:
    """Append one line in its own transaction (for requests refused before any other write)."""
    with store.connect(write=True) as con:
        ensure(con)
        audit(con, entry)


def audit_frame(store: MetricsStore, *, limit: int | None = 1000) -> pl.DataFrame:
    """The audit log, newest first (``limit=None`` for all of it)."""
    with store.connect(write=True) as con:
        ensure(con)
    sql = (
        "SELECT asked_at AS time, user_name AS user, role, federation, data_dir, query, status, epsilon, "
        "suppressed, message, seconds FROM cohort_audit ORDER BY asked_at DESC"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return store.frame(sql)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
