"""The My hospital page's tables, for a hospital's own data steward.

Everything here is about one hospital, the steward's own (``User.hospital`` of
``User.federation``): its statistics as it published them for its steward
(``healthsync.data.own_statistics``), what each run used and how its site
took part, what the federation gave it, and the privacy spent on its patients
from its own ledger. Nothing here reads a patient row, and nothing names
another hospital's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from healthsync.auth import User
from healthsync.data import Federation, load_federation, own_statistics
from healthsync.data.accessor import hospital_folder
from healthsync.errors import HealthSyncError
from healthsync.privacy import consent
from healthsync.privacy.site import SITE_DIR, Site, policy_history
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from healthsync.views import dashboard

#: Events that count as a round the site did not take part in.
MISSED = ("hospital_failed", "hospital_dropped")


@dataclass(frozen=True)
class MySite:
    """The steward's hospital: its federation, id, name and folders."""

    federation: Federation
    hospital: str
    name: str

    @property
    def folder(self) -> Path:
        return hospital_folder(self.federation.data_dir, self.hospital)

    @property
    def site_dir(self) -> Path:
        return self.folder / SITE_DIR

    def withdrawal(self) -> consent.ConsentChange | None:
        return consent.withdrawal(self.site_dir)


def my_site(user: User) -> MySite:
    """The hospital ``user`` is the steward of; a clear error for anyone else."""
    if user.role != "steward" or not user.federation or not user.hospital:
        raise HealthSyncError(f"{user.name} is not a hospital's data steward")
    federation = load_federation(user.federation)
    return MySite(federation, user.hospital, federation.hospital(user.hospital).name)


def statistics(site: MySite) -> dict | None:
    """The hospital's own statistics, if it published them for its data's current version."""
    return own_statistics.read(site.federation.data_dir, site.hospital)


def site_runs(store: MetricsStore, site: MySite) -> pl.DataFrame:
    """Per training run on the steward's federation: how their site took part.

    ``test_patients`` is the number of this hospital's test patients each round
    evaluated; training used its whole training split (see the statistics).
    """
    runs = runlog.list_runs(store, kind=runlog.TRAINING, data_dir=site.federation.data_dir)
    rows = []
    for run in runs.iter_rows(named=True):
        mine = store.frame(
            "SELECT count(DISTINCT round) AS joined, max(n) AS test_patients"
            " FROM hospital_rounds WHERE run_id = ? AND hospital = ?",
            [run["run_id"], site.hospital],
        ).row(0, named=True)
        events = store.frame(
            "SELECT kind, count(*) AS n FROM events WHERE run_id = ? AND hospital = ?"
            " GROUP BY kind",
            [run["run_id"], site.hospital],
        )
        kinds = dict(events.iter_rows())
        rows.append(
            {
                "run": run["name"] or run["run_id"],
                "status": run["status"],
                "rounds": int(run["rounds_done"]),
                "rounds_joined": int(mine["joined"] or 0),
                "rounds_missed": int(sum(kinds.get(k, 0) for k in MISSED)),
                "withdrawn": bool(kinds.get("hospital_withdrawn")),
                "test_patients": mine["test_patients"],
                "created_at": run["created_at"],
            }
        )
    schema = {
        "run": pl.String,
        "status": pl.String,
        "rounds": pl.Int64,
        "rounds_joined": pl.Int64,
        "rounds_missed": pl.Int64,
        "withdrawn": pl.Boolean,
        "test_patients": pl.Int64,
        "created_at": pl.Datetime,
    }
    return pl.DataFrame(rows, schema=schema)


def what_federation_gave(store: MetricsStore, site: MySite) -> pl.DataFrame:
    """Per compared run, the AUC at this hospital: federated vs local-only vs pooled."""
    runs = runlog.list_runs(store, kind=runlog.TRAINING, data_dir=site.federation.data_dir)
    parts = []
    for run in runs.iter_rows(named=True):
        table = dashboard.latest_comparison(store, run["run_id"])
        mine = table.filter(pl.col("hospital") == site.hospital)
        if not mine.is_empty():
            parts.append(
                mine.select(pl.lit(run["name"] or run["run_id"]).alias("run"), "method", "n", "auc")
            )
    if not parts:
        return pl.DataFrame(
            schema={"run": pl.String, "method": pl.String, "n": pl.Int64, "auc": pl.Float64}
        )
    return pl.concat(parts, how="vertical_relaxed")


#: One row per charge in a hospital's ledger (``Site.charges``).
CHARGE_SCHEMA = {
    "user": pl.String,
    "epsilon": pl.Float64,
    "time": pl.Float64,
    "query": pl.String,
    "fresh": pl.Int64,
    "reused": pl.Int64,
}


def _charges(ledger: Site) -> pl.DataFrame:
    return pl.DataFrame(ledger.charges(), schema=CHARGE_SCHEMA)


def privacy_by_analyst(site: MySite) -> pl.DataFrame:
    """Epsilon each user spent on this hospital's patients, from its own ledger."""
    ledger = Site(site.folder)
    charges = _charges(ledger)
    budget = ledger.policy
    return (
        charges.group_by("user")
        .agg(pl.col("epsilon").sum().alias("epsilon_spent"), pl.len().alias("queries"))
        .with_columns(
            pl.col("user")
            .map_elements(budget.budget_for, return_dtype=pl.Float64)
            .alias("epsilon_budget")
        )
        .sort("epsilon_spent", descending=True)
    )


def query_audit(site: MySite) -> pl.DataFrame:
    """Every request that touched this hospital's data, newest first, from its own ledger."""
    frame = _charges(Site(site.folder))
    return frame.with_columns(pl.from_epoch(pl.col("time"), time_unit="s").alias("time")).reverse()


def consent_history(site: MySite) -> pl.DataFrame:
    """The hospital's consent history, newest first."""
    rows = [c.__dict__ for c in consent.history(site.site_dir)]
    schema = {"action": pl.String, "by": pl.String, "at": pl.String, "reason": pl.String}
    return pl.DataFrame(rows, schema=schema).reverse()


def policy_changes(site: MySite) -> pl.DataFrame:
    """The hospital's policy history, newest first, one row per change."""
    rows = [
        {
            "at": c["at"],
            "by": f"{c['by']} ({c['role']})",
            "after": ", ".join(f"{k} {v:g}" for k, v in c["after"].items()),
            "loosened": ", ".join(c["loosened"]),
            "reason": c["reason"],
        }
        for c in policy_history(site.folder)
    ]
    schema = dict.fromkeys(("at", "by", "after", "loosened", "reason"), pl.String)
    return pl.DataFrame(rows, schema=schema).reverse()
