"""The one entry point of the cohort explorer: :func:`explore`.

The CLI and the page both call it, and nothing else returns cohort
numbers, so every answer passes the same checks in the same order:

1. the user exists and their role may explore cohorts;
2. the query is valid for the federation's schema (at most ``max_cells`` cells);
3. an answer already given to this user for this canonical query is
   returned as it was (no new noise, no new spending);
4. a query that would exceed the user's budget is refused;
5. the query runs through the Flower analytics service, whose guards add
   noise and suppress small and complementary cells;
6. the epsilon is charged, the answer cached, and the request audited.

Rejected and refused requests are audited too and spend nothing. Steps 3–6
hold a lock per store, so two windows asking at once cannot both spend
the last of a budget or both draw fresh noise for the same query.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from healthsync import auth
from healthsync.cohort import ledger
from healthsync.cohort.ledger import AuditEntry
from healthsync.cohort.plan import QueryPlan, plan_query
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.cohort.result import Budget, CohortResult, Release
from healthsync.cohort.service import (
    Executor,
    FlowerExecutor,
    Progress,
    federation_id,
    state_dir_for,
)
from healthsync.data import Federation, load_federation
from healthsync.errors import HealthSyncError
from healthsync.processes import file_lock
from healthsync.store import MetricsStore

PERMISSION = "explore"
_memory_lock = threading.Lock()


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
) -> CohortResult:
    """Answer a cohort question under the privacy guards, for ``user``.

    Parameters
    ----------
    data_dir : the federation.
    db : the metrics store (file or store object) holding the ledger, the cache and the
        audit log.
    user : who asks; must exist in ``home`` with a role that may explore (admin, analyst).
    where, group_by, stats : the query as text, e.g. ``["age >= 70"]``, ``["sex"]``,
        ``["prevalence:diabetes"]``; ``count`` when no statistic is given.
    home : credentials and policy directory (default ``HEALTHSYNC_HOME`` or ``.healthsync/``).
    executor : where queries run; the Flower analytics service unless a test passes another.
    progress : told, line by line, while the analytics service starts.

    Raises
    ------
    HealthSyncError
        For an unknown user or a role without access, an invalid query, an
        exhausted budget, or a failed service; none of these spends budget.
    """
    started = time.perf_counter()
    home = auth.resolve_home(home)
    store = open_store(db)
    entry = {"user": user, "query": _describe(where, group_by, stats), "data_dir": str(data_dir)}
    try:
        role = _check_user(home, user)
        entry["role"] = role
        policy = CohortPolicy.from_home(home)
        federation = load_federation(data_dir)
        entry["federation"] = federation_id(federation)
        plan = plan_query(
            federation, CohortQuery.parse(where, group_by, stats), max_cells=policy.max_cells
        )
        entry["query"] = plan.query.describe()
    except HealthSyncError as err:
        ledger.write_audit(store, AuditEntry(status="rejected", message=str(err), **entry))
        raise
    executor = executor or FlowerExecutor(state_dir_for(store.path), progress=progress)
    with _exclusive(store):
        return _answer(store, federation, plan, policy, executor, entry, started)


def _answer(
    store: MetricsStore,
    federation: Federation,
    plan: QueryPlan,
    policy: CohortPolicy,
    executor: Executor,
    entry: dict,
    started: float,
) -> CohortResult:
    user, fid = entry["user"], entry["federation"]
    key = _cache_key(plan, policy)
    total = policy.budget_for(user)
    # Audit inside the transaction, raise after it: a raise inside would roll the audit back.
    with store.connect(write=True) as con:
        ledger.ensure(con)
        spent = ledger.spent(con, user, fid)
        answer = ledger.cached(con, user, fid, key)
        refusal = None if answer is not None else _refusal(spent, total, policy, entry, federation)
        if answer is not None:
            cached = AuditEntry(
                status="cached", seconds=_since(started), message="same answer", **entry
            )
            ledger.audit(con, cached)
        elif refusal is not None:
            ledger.audit(con, AuditEntry(status="refused", message=refusal, **entry))
    if refusal is not None:
        raise HealthSyncError(refusal)
    if answer is not None:
        release = Release.from_dict(answer)
        return _result(federation, user, plan, release, True, 0.0, Budget(total, spent))

    try:
        release = executor.release(federation, plan, policy)
    except HealthSyncError as err:
        ledger.write_audit(store, AuditEntry(status="failed", message=str(err), **entry))
        raise
    epsilon = policy.epsilon_per_query
    with store.connect(write=True) as con:
        ledger.record_answer(con, user, fid, key, epsilon, release.to_dict())
        ledger.audit(
            con,
            AuditEntry(
                status="answered",
                epsilon=epsilon,
                suppressed=release.describe_suppression(),
                seconds=_since(started),
                **entry,
            ),
        )
    return _result(federation, user, plan, release, False, epsilon, Budget(total, spent + epsilon))


def budget_status(
    data_dir: str | Path,
    *,
    db: str | Path | MetricsStore,
    user: str,
    home: str | Path | None = None,
) -> Budget:
    """How much of ``user``'s budget on this federation is spent (nothing is audited)."""
    policy = CohortPolicy.from_home(auth.resolve_home(home))
    fid = federation_id(load_federation(data_dir))
    with open_store(db).connect(write=True) as con:
        ledger.ensure(con)
        spent = ledger.spent(con, user, fid)
    return Budget(policy.budget_for(user), spent)


def stop_service(data_dir: str | Path, *, db: str | Path) -> bool:
    """Stop the federation's analytics service if one runs for this store; whether one did."""
    return FlowerExecutor(state_dir_for(db)).stop(load_federation(data_dir))


def open_store(db: str | Path | MetricsStore) -> MetricsStore:
    """The store for ``db``: one object per file in this process, so its schema is made once."""
    return db if isinstance(db, MetricsStore) else _store(str(Path(db).resolve()))


@functools.lru_cache(maxsize=16)
def _store(path: str) -> MetricsStore:
    return MetricsStore(path)


def _check_user(home: Path, name: str) -> str:
    found = auth.UserStore(home).get(name)
    if found is None:
        raise HealthSyncError(f"unknown user {name!r}; an admin adds users with `healthsync users`")
    if not found.can(PERMISSION):
        raise HealthSyncError(
            f"user {name!r} is a {found.role}, who may not explore cohorts "
            "(analysts and admins may)"
        )
    return found.role


def _result(
    federation: Federation,
    user: str,
    plan: QueryPlan,
    release: Release,
    cached: bool,
    epsilon: float,
    budget: Budget,
) -> CohortResult:
    return CohortResult(
        federation.name, user, plan.query.to_dict(), release, cached, epsilon, budget
    )


def _refusal(
    spent: float, total: float, policy: CohortPolicy, entry: dict, federation: Federation
) -> str | None:
    """Why a new query would overdraw the budget, or ``None`` if it fits."""
    if spent + policy.epsilon_per_query <= total + 1e-9:
        return None
    return (
        f"privacy budget exhausted: {entry['user']} has spent {spent:g} of {total:g} (epsilon) "
        f"on {federation.name} and this query needs {policy.epsilon_per_query:g}; ask an admin "
        "for more, or repeat an earlier query (answered from the cache for free)"
    )


def _cache_key(plan: QueryPlan, policy: CohortPolicy) -> str:
    """The canonical query under the current threshold and epsilon (a new policy, a new answer)."""
    settings = policy.release_settings()
    return f"{plan.key}:{settings['threshold']}:{settings['epsilon_per_query']:g}"


def _describe(where: Sequence[str], group_by: Sequence[str], stats: Sequence[str]) -> str:
    parts = [", ".join(stats) or "count"]
    if where:
        parts.append("where " + " and ".join(where))
    if group_by:
        parts.append("by " + ", ".join(group_by))
    return " ".join(parts)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


@contextlib.contextmanager
def _exclusive(store: MetricsStore) -> Iterator[None]:
    """One cohort query at a time per store, across threads and processes."""
    if store.path == ":memory:":
        with _memory_lock:
            yield
        return
    with file_lock(Path(f"{store.path}.cohort.lock")):
        yield
