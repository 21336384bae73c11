"""Cohort explorer: federated analytics whose answers pass privacy guards.

Analysts count patients, and ask prevalences, means, deviations and
histograms, filtered and grouped, across every hospital, while each
hospital's rows stay in that hospital. :func:`explore` is the one way in;
see ``docs/cohort.md`` for the guards and their guarantees.

Modules, one concept each: ``query`` (the words), ``bands`` (fixed clinical
bands and bounds), ``plan`` (a query checked against a schema), ``local``
(a hospital's exact aggregates), ``noise`` and ``suppression`` (the two
guards), ``guards`` (combining hospitals and applying both), ``result``
(what is shown), ``policy``, ``ledger`` (budget, cache, audit), ``service``
(the warm Flower service), ``explorer`` (the entry point), ``form`` (the
page's choices) and ``charts``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from healthsync.cohort.explorer import budget_status, explore, stop_service
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.result import Budget, CohortResult
from healthsync.runs.store import MetricsStore

__all__ = [
    "Budget",
    "CohortPolicy",
    "CohortResult",
    "audit_log",
    "budget_status",
    "explore",
    "stop_service",
]


def audit_log(db: str | Path | MetricsStore, *, limit: int | None = 1000) -> pl.DataFrame:
    """Every cohort request, newest first: user, time, query, status, epsilon, what was hidden.

    For admins (the Admin page shows it); holds no patient data.
    """
    from healthsync.cohort.explorer import open_store
    from healthsync.cohort.ledger import audit_frame

    return audit_frame(open_store(db), limit=limit)
