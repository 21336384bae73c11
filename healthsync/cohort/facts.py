"""The federation facts every viewer sees (Overview), released like any cohort answer.

Hospital sizes and outcome prevalences are a cohort query, ``count`` and
``prevalence`` of every outcome grouped by hospital, asked on behalf of the
whole consortium (:data:`~healthsync.privacy.site.PUBLIC`). Each hospital
answers it through its own privacy gate, as it answers analysts, and then
publishes its noisy answer in its own folder for the app to read. Because the
gate releases each quantity once, the cohort explorer asked the same question
(or any question containing the same quantity, such as a hospital's patient
count) shows exactly the same numbers: Overview and the explorer cannot be
played against each other to average noise away.

Publishing runs hospital-side code: the data commands call :func:`publish`
right after writing a hospital's rows, and the analytics service's hospitals
publish at warm-up. The app only reads what was published
(:func:`published_facts`), never a row.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from healthsync.background.processes import read_json, write_private
from healthsync.cohort.guards import answer
from healthsync.cohort.local import HospitalReply, from_record, hospital_release
from healthsync.cohort.plan import QueryPlan, plan_query
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.query import CohortQuery
from healthsync.cohort.result import Release
from healthsync.data import Federation, HospitalAccessor, open_hospital, own_statistics
from healthsync.data.accessor import partition_file
from healthsync.data.manifest import MANIFEST_NAME
from healthsync.ml.arrays import hospital_arrays
from healthsync.privacy.site import PUBLIC, published_path

FACTS = "facts"
PUBLISH_THREADS = 4


def facts_query(federation: Federation) -> CohortQuery:
    """Count and every outcome's prevalence, per hospital."""
    stats = [f"prevalence:{outcome}" for outcome in federation.outcomes] or ["count"]
    return CohortQuery.parse(group_by=["hospital"], stats=stats)


@functools.lru_cache(maxsize=8)
def facts_plan(federation: Federation) -> QueryPlan:
    """The facts query planned for ``federation`` (kept: planning 10,000 hospitals takes a while)."""
    return plan_query(
        federation, facts_query(federation), max_cells=max(len(federation.hospitals), 1)
    )


def publish(
    federation: Federation,
    hospitals: Iterable[str] | None = None,
    *,
    progress: Callable[[int], object] | None = None,
) -> int:
    """Hospital-side: each hospital releases and publishes its facts; how many published.

    Run by whoever holds the hospital's rows (the data commands, the
    hospital's client); releasing again is free once a hospital has.
    ``progress(1)`` is called as each hospital is done (a progress bar's update).
    """
    plan = facts_plan(federation)

    def one(hospital: str) -> bool:
        accessor = open_hospital(federation, hospital)
        own_statistics.write(accessor)  # for its own steward only
        # The encoded matrix a run reads first, kept in the hospital's own folder now, so
        # the first run on a new data set reads it instead of parsing every partition.
        hospital_arrays(federation, hospital, federation.default_target, accessor=accessor)
        published = publish_reply(accessor, plan, hospital_release(accessor, plan, PUBLIC))
        if progress is not None:
            progress(1)
        return published

    # Each hospital's work is its own (own rows, own ledger file); threads overlap the I/O.
    with ThreadPoolExecutor(max_workers=PUBLISH_THREADS) as pool:
        return sum(pool.map(one, hospitals or federation.hospital_ids))


def publish_reply(accessor: HospitalAccessor, plan: QueryPlan, reply: HospitalReply) -> bool:
    """Publish ``reply`` if it is this hospital's answer to the facts query; whether it was."""
    if reply.aggregates is None or plan.query != facts_plan(accessor.federation).query:
        return False
    accessor.site().publish(
        FACTS,
        {
            "stamp": accessor.stamp(),
            "aggregates": {k: v.tolist() for k, v in reply.aggregates.items()},
            "accounting": reply.accounting(),
        },
    )
    return True


def published_facts(
    federation: Federation, policy: CohortPolicy | None = None
) -> tuple[Release | None, list[str]]:
    """The guarded facts from every hospital's publication, and which hospitals have none.

    A publication whose partition has changed since is stale and counts as
    missing. With any hospital missing, pooled figures would be incomplete,
    so the release covers only the hospitals that published.

    The outcome is remembered in the federation folder (:data:`MEMO_NAME`),
    keyed by every file it rests on: while no hospital's publication or
    partition has changed (``stat``: inode, size, modification time), nor the
    manifest or the policy, it is read back instead of opening every
    publication and guarding them again. At 100,000 hospitals that is about
    0.5 s instead of 10 s or more. The memo holds only the release, which any
    viewer may see; deleting it costs one slow read.
    """
    policy = policy or CohortPolicy()
    key = _memo_key(federation, policy)
    remembered = _remembered(federation, key)
    if remembered is not None:
        return remembered
    plan = facts_plan(federation)
    replies: dict[str, HospitalReply] = {}
    missing: list[str] = []
    stamps: list[list[int] | None] = []
    for hospital in federation.hospital_ids:
        accessor = open_hospital(federation, hospital)
        # Stamped before reading: a file replaced meanwhile fails the memo's next check.
        stamps += _stamps(federation, hospital)
        data = accessor.site().published(FACTS)
        try:
            fresh = data is not None and data.get("stamp") == accessor.stamp()
            if fresh:
                replies[hospital] = HospitalReply.from_records(
                    from_record(data["aggregates"], plan), data["accounting"]
                )
        except (OSError, KeyError, TypeError, ValueError):
            fresh = False
        if not fresh:
            missing.append(hospital)
    release = None
    if replies:
        kept = plan_query(
            federation,
            CohortQuery.parse(
                where=[f"hospital != {h}" for h in missing],
                group_by=["hospital"],
                stats=[str(s) for s in plan.query.stats],
            ),
            max_cells=max(len(federation.hospitals), 1),
        )
        release, _ = answer(replies, kept, policy)
    _remember(federation, key, stamps, release, missing)
    return release, missing


#: The federation folder's memo of :func:`published_facts` (a cache: safe to delete).
MEMO_NAME = ".facts-release.json"


def _memo_key(federation: Federation, policy: CohortPolicy) -> str:
    """What else the release depends on: the manifest (hospitals, outcomes), the query, the policy."""
    manifest = os.stat(federation.data_dir / MANIFEST_NAME)
    parts = (
        manifest.st_ino,
        manifest.st_size,
        manifest.st_mtime_ns,
        facts_query(federation),
        policy,
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _stamps(federation: Federation, hospital: str) -> list[list[int] | None]:
    """The ``stat`` of ``hospital``'s publication and partition (``None``: no such file)."""
    return [_stamp(path) for path in _files(federation, hospital)]


def _files(federation: Federation, hospital: str) -> tuple[str, str]:
    """``hospital``'s publication and partition, as plain strings (100,000 at a time)."""
    partition = partition_file(federation.data_dir, hospital)
    return published_path(os.path.dirname(partition), FACTS), partition


def _stamp(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _remembered(federation: Federation, key: str) -> tuple[Release | None, list[str]] | None:
    """The memo's release if every file it rests on is as it was, else ``None``."""
    memo = read_json(federation.data_dir / MEMO_NAME)
    try:
        if (
            memo is None
            or memo["key"] != key
            or len(memo["stamps"]) != 2 * len(federation.hospital_ids)
        ):
            return None
        stamps = iter(memo["stamps"])
        for hospital in federation.hospital_ids:
            for path in _files(federation, hospital):
                if _stamp(path) != next(stamps):
                    return None
        release = memo["release"]
        return (Release.from_dict(release) if release else None), list(memo["missing"])
    except (KeyError, TypeError, ValueError):
        return None  # a memo of another version, or damaged: read afresh


def _remember(
    federation: Federation,
    key: str,
    stamps: list[list[int] | None],
    release: Release | None,
    missing: list[str],
) -> None:
    memo = {
        "key": key,
        "stamps": stamps,
        "release": release.to_dict() if release is not None else None,
        "missing": missing,
    }
    with contextlib.suppress(OSError):  # a read-only folder still gets its facts, slowly
        write_private(federation.data_dir / MEMO_NAME, json.dumps(memo, default=_plain))


def _plain(value: object) -> object:
    """A NumPy number in a release, as JSON writes a Python one."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def published_patients(federation: Federation) -> str:
    """The federation's patient count as released ("≈ 4,812 patients"), for captions."""
    release, _ = published_facts(federation)
    total = release.total.get("patient_count") if release is not None else None
    return f"≈ {total:,} patients (noisy)" if isinstance(total, int) else "patients not published"


def facts_noise_sd(federation: Federation) -> float:
    """Typical noise (standard deviation, patients) on a published hospital count.

    Read from the first hospital's own policy (epsilon per query, split over the
    facts query's counts); a hospital with another policy has other noise.
    """
    from healthsync.privacy.noise import count_noise_sd

    plan = facts_plan(federation)
    site = open_hospital(federation, federation.hospital_ids[0]).site()
    return count_noise_sd(site.policy.epsilon_per_query / plan.measurements)


def facts_frames(federation: Federation, release: Release) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Overview's two tables from the released facts: sizes, and prevalences (long format).

    A withheld figure (``"<11"``, ``"suppressed"``) is a missing value: the
    charts leave its bar out and the captions say how many.
    """
    names = {h.id: h.name for h in federation.hospitals}
    sizes = pl.DataFrame(
        {
            "hospital": [c["hospital"] for c in release.cells],
            "name": [names.get(c["hospital"], c["hospital"]) for c in release.cells],
            "n_patients": [_shown(c["patient_count"]) for c in release.cells],
        },
        schema={"hospital": pl.String, "name": pl.String, "n_patients": pl.Int64},
    )
    prevalence = pl.DataFrame(
        [
            {
                "hospital": c["hospital"],
                "name": names.get(c["hospital"], c["hospital"]),
                "outcome": outcome,
                "prevalence": c.get(f"{outcome}_prevalence"),
            }
            for c in release.cells
            for outcome in federation.outcomes
        ],
        schema={
            "hospital": pl.String,
            "name": pl.String,
            "outcome": pl.String,
            "prevalence": pl.Float64,
        },
    )
    return sizes, prevalence


def _shown(value: object) -> int | None:
    return value if isinstance(value, int) else None
