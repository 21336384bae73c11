"""The one entry point of the cohort explorer: :func:`explore`.

The CLI and the page both call it, and nothing else returns cohort
numbers, so every answer passes the same checks in the same order:

1. the user exists and their role may explore cohorts (the CLI and the page
   have authenticated them);
2. the query is valid for the federation's schema (at most ``max_cells`` cells);
3. the query runs through the Flower analytics service: each hospital
   releases its aggregates through its own privacy gate (noise drawn once per
   quantity, the user's epsilon charged in that hospital's own ledger, or a
   refusal), and the guards suppress small and complementary cells on the
   noisy values;
4. the charge is copied to the central ledger (a view for the app; the
   hospitals' ledgers are what count) and the request audited.

Rejected, refused and failed requests are audited too and spend nothing.
The metrics store holds no budget that matters: pointing ``db`` at a fresh
file resets nothing, because every hospital keeps its own ledger.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

from healthsync import auth, telemetry
from healthsync.cohort import ledger
from healthsync.cohort.ledger import AuditEntry
from healthsync.cohort.plan import plan_query
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.cohort.result import Budget, CohortResult
from healthsync.cohort.service import (
    Executor,
    FlowerExecutor,
    Progress,
    federation_id,
    state_dir_for,
)
from healthsync.data import load_federation, open_hospital
from healthsync.data.accessor import preflight
from healthsync.errors import HealthSyncError
from healthsync.privacy.consent import withdrawn_hospitals
from healthsync.privacy.site import SiteRefusal
from healthsync.runs.store import MetricsStore

PERMISSION = "explore"


def explore(
    data_dir: str | Path,
    *,
    db: str | Path | MetricsStore,
    user: str,
    where: Sequence[str] = (),
    group_by: Sequence[str] = (),
    stats: Sequence[str] = (),
    home: str | Path | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    keep_warm: bool = True,
) -> CohortResult:
    """Answer a cohort question under the privacy guards, for ``user``.

    Parameters
    ----------
    data_dir : the federation.
    db : the metrics store (file or store object) holding the audit log and a view of
        spending; budgets are enforced by the hospitals, not here.
    user : who asks; must exist in ``home`` with a role that may explore (admin, analyst).
    where, group_by, stats : the query as text, e.g. ``["age >= 70"]``, ``["sex"]``,
        ``["prevalence:diabetes"]``; ``count`` when no statistic is given.
    home : credentials and policy directory (default ``HEALTHSYNC_HOME`` or ``.healthsync/``).
    executor : where queries run; unless a test passes another, the warm training engine
        when one runs for ``db`` (no start-up), else the Flower analytics service.
    progress : told, line by line, while the analytics service starts.
    keep_warm : leave an analytics service this call started running for the next query
        (until its idle timeout); ``False`` stops it once answered (a one-off command).

    Raises
    ------
    HealthSyncError
        For an unknown user or a role without access, an invalid query, a
        hospital's refusal (``SiteRefusal``: an exhausted budget), or a failed
        service; none of these spends budget.
    """
    telemetry.setup()  # a "cohort query" span when OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        with telemetry.tracer().start_as_current_span(
            "cohort query", attributes={"healthsync.query": _describe(where, group_by, stats)}
        ) as span:
            result = _explore(
                data_dir, db, user, where, group_by, stats, home, executor, progress, keep_warm
            )
            span.set_attribute("healthsync.cached", result.cached)
    finally:
        telemetry.flush()
    return result


def _explore(
    data_dir, db, user, where, group_by, stats, home, executor, progress, keep_warm
) -> CohortResult:
    """``explore`` without its span."""
    started = time.perf_counter()
    home = auth.resolve_home(home)
    store = open_store(db).check()
    entry = {"user": user, "query": _describe(where, group_by, stats), "data_dir": str(data_dir)}
    try:
        role = _check_user(home, user, data_dir)
        entry["role"] = role
        policy = CohortPolicy.from_home(home)
        federation = load_federation(data_dir)
        entry["federation"] = federation_id(federation)
        withdrawn = withdrawn_hospitals(federation.data_dir, federation.hospital_ids)
        plan = plan_query(
            federation,
            CohortQuery.parse(where, group_by, stats),
            max_cells=policy.max_cells,
            withdrawn=withdrawn,
        )
        # a broken hospital is named here, before any service starts (withdrawn ones are not
        # asked), once the query itself is known to be valid
        preflight(federation, [h for h in federation.hospital_ids if h not in withdrawn])
        entry["query"] = plan.query.describe()
    except HealthSyncError as err:
        ledger.write_audit(store, AuditEntry(status="rejected", message=str(err), **entry))
        raise
    engine_db = None if store.path == ":memory:" else store.path  # its warm engine answers
    own = executor is None
    executor = executor or FlowerExecutor(
        state_dir_for(store.path), progress=progress, engine_db=engine_db
    )
    try:
        try:
            release, budget = executor.release(federation, plan, policy, user)
        finally:
            if own and not keep_warm and executor.started:
                executor.stop(federation)
    except SiteRefusal as err:
        ledger.write_audit(store, AuditEntry(status="refused", message=str(err), **entry))
        raise
    except HealthSyncError as err:
        ledger.write_audit(store, AuditEntry(status="failed", message=str(err), **entry))
        raise
    repeated = release.epsilon == 0
    with store.connect(write=True) as con:
        ledger.ensure(con)
        if not repeated:
            ledger.record_charge(con, user, entry["federation"], plan.key, release.epsilon)
        ledger.audit(
            con,
            AuditEntry(
                status="cached" if repeated else "answered",
                epsilon=release.epsilon,
                suppressed=release.describe_suppression(),
                message="every number released before: same answer, nothing spent"
                if repeated
                else None,
                seconds=_since(started),
                **entry,
            ),
        )
    return CohortResult(
        federation.name,
        user,
        plan.query.to_dict(),
        release,
        repeated,
        release.epsilon,
        budget,
        withdrawn=tuple(withdrawn),
    )


def budget_status(
    data_dir: str | Path,
    *,
    db: str | Path | MetricsStore,
    user: str,
    home: str | Path | None = None,
) -> Budget:
    """``user``'s budget as the hospitals' own ledgers tell it: the tightest of them.

    Read-only (nothing is audited or charged). ``db`` is accepted for
    symmetry with :func:`explore`; the hospitals' ledgers are what count.
    """
    del db
    cap = CohortPolicy.from_home(auth.resolve_home(home)).budget_for(user)
    federation = load_federation(data_dir)
    total, spent = cap, 0.0
    for hospital in federation.hospital_ids:
        site = open_hospital(federation, hospital).site()
        total = min(total, site.policy.budget_for(user))
        spent = max(spent, site.spent(user))
    return Budget(total, spent)


def stop_service(data_dir: str | Path, *, db: str | Path) -> bool:
    """Stop the federation's analytics service if one runs for this store; whether one did."""
    return FlowerExecutor(state_dir_for(db)).stop(load_federation(data_dir))


def open_store(db: str | Path | MetricsStore) -> MetricsStore:
    """The store for ``db``: one object per file in this process, so its schema is made once."""
    return db if isinstance(db, MetricsStore) else _store(str(Path(db).resolve()))


@functools.lru_cache(maxsize=16)
def _store(path: str) -> MetricsStore:
    return MetricsStore(path)


def _check_user(home: Path, name: str, data_dir: str | Path) -> str:
    """The user's role, if they may explore cohorts on the federation at ``data_dir``."""
    found = auth.UserStore(home).get(name)
    if found is None:
        raise HealthSyncError(f"unknown user {name!r}; an admin adds users with `healthsync users`")
    if not found.can(PERMISSION):
        raise HealthSyncError(
            f"user {name!r} is a {found.role}, who may not explore cohorts "
            "(analysts and admins may)"
        )
    auth.AccessLists(home).check(found, data_dir)
    return found.role


def _describe(where: Sequence[str], group_by: Sequence[str], stats: Sequence[str]) -> str:
    parts = [", ".join(stats) or "count"]
    if where:
        parts.append("where " + " and ".join(where))
    if group_by:
        parts.append("by " + ", ".join(group_by))
    return " ".join(parts)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
