"""What pages say about hospitals as tenants: who withdrew, what a steward may see, and
how every viewer names hospitals.

Consent is read from each hospital's own site folder
(``healthsync.privacy.consent``); pages only show it. Hospital names go
through one place, :func:`site_labels`: real names, pseudonyms ("Site C") when
the federation hides its sites, and nothing of another hospital for a steward.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from healthsync.auth import AccessLists, User
from healthsync.data import Federation, load_federation
from healthsync.data.pseudonyms import (
    CONSORTIUM_ROWS,
    OTHER_SITE,
    SiteLabels,
    is_pseudonymous,
    pseudonyms,
)
from healthsync.errors import HealthSyncError
from healthsync.privacy.consent import withdrawn_hospitals
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore

__all__ = ["CONSORTIUM_ROWS", "OTHER_SITE", "SiteLabels"]


# ---------------------------------------------------------------- names
def site_labels(data_dir: str | Path | None, user: User | None) -> SiteLabels:
    """How ``user`` sees the hospitals of the federation at ``data_dir``: id -> label.

    The one place that decides it (docs/tenancy.md, "Pseudonymous sites"):

    - ``None`` (the operator's CLI and files) and, on a federation without
      pseudonyms, admins, analysts and viewers: real names, ids shown;
    - pseudonymous federation, analysts and viewers: "Site A", "Site B"…, and
      no id or real name anywhere (``hide_ids``);
    - pseudonymous federation, admins: "St Mary's (Site C)", ids shown, so
      they can relate what others see;
    - a steward: their own hospital by its real name, no other hospital at all.

    A federation whose manifest is gone names no hospital: ids are shown
    unless its pseudonym setting (or the viewer's role) says otherwise.
    """
    federation = _federation(data_dir)
    hidden = data_dir is not None and is_pseudonymous(data_dir)
    names = {h.id: h.name for h in federation.hospitals} if federation else {}
    if user is not None and user.role == "steward":
        own = str(user.hospital) if _same(user.federation, data_dir) else None
        return SiteLabels({own: names[own]} if own in names else {}, open=False, names=names)
    if user is None or not hidden:
        return SiteLabels(names, names=names)
    aliases = pseudonyms(names)
    if user.role == "admin":
        return SiteLabels({h: f"{n} ({aliases[h]})" for h, n in names.items()}, names=names)
    return SiteLabels(aliases, hide_ids=True, open=False, names=names)


def with_site_labels(
    frame: pl.DataFrame, labels: SiteLabels, *, column: str = "hospital", into: str = "name"
) -> pl.DataFrame:
    """``frame`` with each hospital's label in ``into`` (for chart axes and tables).

    Where ids must not be shown (``labels.hide_ids``), ``column`` holds the
    label too, so no id reaches a chart's data or a table. A hospital the
    viewer may not see named reads ``OTHER_SITE`` (narrow frames first with
    :func:`own_hospital_only`).
    """
    if column not in frame.columns:
        return frame
    ids = frame[column].unique().drop_nulls().to_list()
    shown = {h: labels.label(h) or OTHER_SITE for h in ids}
    label = pl.col(column).replace_strict(shown, default=None, return_dtype=pl.String)
    out = frame.with_columns(label.alias(into))
    return out.with_columns(pl.col(into).alias(column)) if labels.hide_ids else out


def _federation(data_dir: str | Path | None) -> Federation | None:
    try:
        return load_federation(data_dir) if data_dir else None
    except HealthSyncError:
        return None


def _same(federation: str | None, data_dir: str | Path | None) -> bool:
    return data_dir is not None and federation == str(Path(data_dir).resolve())


# ---------------------------------------------------------------- consent
def withdrawn_notice(federation: Federation, labels: SiteLabels | None = None) -> str | None:
    """One paragraph naming the withdrawn hospitals, who withdrew them, when and why; or None.

    Hospitals the viewer may not see named (``labels``) are counted, not described.
    """
    found = withdrawn_hospitals(federation.data_dir, federation.hospital_ids)
    if not found:
        return None
    labels = labels if labels is not None else SiteLabels.real(federation)
    lines = [
        labels.scrub(change.describe(label).removeprefix("hospital "))
        for hospital, change in found.items()
        if (label := labels.label(hospital)) is not None
    ]
    if len(lines) < len(found):
        lines.append(f"{len(found) - len(lines)} other hospital(s)")
    return (
        f"{len(found)} hospital(s) withdrew their consent: new runs and cohort answers leave "
        "them out (their own nodes refuse any work) until they rejoin. " + "; ".join(lines) + "."
    )


def run_consent_line(events: pl.DataFrame, labels: SiteLabels | None = None) -> str | None:
    """For Live: the hospitals a run left out because they withdrew (and any that rejoined)."""
    if events.is_empty():
        return None
    labels = labels if labels is not None else SiteLabels({})
    gone = events.filter(pl.col("kind") == "hospital_withdrawn")["hospital"].drop_nulls()
    back = events.filter(pl.col("kind") == "hospital_rejoined")["hospital"].drop_nulls()
    if gone.is_empty():
        return None
    text = "Left out because they withdrew consent: " + _listed(
        gone.unique(maintain_order=True).to_list(), labels
    )
    if not back.is_empty():
        text += "; rejoined during the run: " + _listed(
            back.unique(maintain_order=True).to_list(), labels
        )
    return text + ". Their rounds from then on have no row for them; they are not failures."


def _listed(hospitals: list[str], labels: SiteLabels) -> str:
    """The labels of ``hospitals`` the viewer may see, then how many others there are."""
    shown = [labels.label(h) for h in hospitals]
    named = [s for s in shown if s is not None]
    others = len(shown) - len(named)
    if others:
        named.append(f"{others} other hospital{'s' if others > 1 else ''}")
    return ", ".join(named)


def visible_runs(runs: pl.DataFrame, user: User, access: AccessLists) -> pl.DataFrame:
    """The runs (a ``runlog.list_runs`` frame) on federations ``user`` may see."""
    if user.role == "admin" or runs.is_empty():
        return runs
    allowed = {d: access.allowed(user, d) for d in runs["data_dir"].unique().to_list()}
    return runs.filter(pl.col("data_dir").replace_strict(allowed, return_dtype=pl.Boolean))


def own_hospital_only(
    frame: pl.DataFrame,
    user: User,
    data_dir: str | Path | None,
    *,
    column: str = "hospital",
) -> pl.DataFrame:
    """``frame``'s rows that ``user`` may see: the one place per-hospital frames are narrowed.

    A steward sees their own hospital's rows (when ``data_dir`` is their
    federation) and the consortium's ``overall`` rows, never another
    hospital's; every other role sees the frame unchanged. Pages, downloads
    and pickers pass each per-hospital frame through here before showing it.
    """
    if user.role != "steward" or column not in frame.columns:
        return frame
    keep = [*CONSORTIUM_ROWS]
    if _same(user.federation, data_dir):
        keep.append(str(user.hospital))
    return frame.filter(pl.col(column).is_in(keep))


def runs_own_hospital_only(
    frame: pl.DataFrame, user: User, data_dirs: Mapping[str, str | None]
) -> pl.DataFrame:
    """``own_hospital_only`` over rows of several runs (``run_id -> data_dir``), e.g. a CSV."""
    if user.role != "steward" or frame.is_empty():
        return frame
    parts = [
        own_hospital_only(frame.filter(pl.col("run_id") == run_id), user, data_dir)
        for run_id, data_dir in data_dirs.items()
    ]
    return pl.concat(parts) if parts else frame.clear()


def run_detail_for(store: MetricsStore, run_id: str, user: User) -> dict:
    """The ``runs show --json`` document (``runlog.run_detail``) as ``user`` may see it.

    The same rules as the pages: a steward keeps their own hospital's rows and
    the consortium's, and reads other hospitals only as counts; on a
    pseudonymous federation analysts and viewers read "Site C" wherever an id
    or a name was (rows, events, warnings, the run's reason and its
    ``fail_hospitals``). Callers check access to the run's federation first.
    """
    detail = runlog.run_detail(store, run_id)
    labels = site_labels(detail["config"].get("data_dir"), user)
    if labels.open and not labels.hide_ids:
        return detail

    def shown(hospital: str | None) -> str | None:
        if hospital is None:
            return None
        label = labels.label(hospital)
        return label if labels.hide_ids or label is None else hospital

    hospitals = [
        {**row, "hospital": label}
        for row in detail["hospitals"]
        if (label := shown(row["hospital"])) is not None
    ]
    events = [
        {**event, "hospital": shown(event["hospital"]), "message": labels.scrub(event["message"])}
        for event in detail["events"]
        if event.get("hospital") is None or shown(event["hospital"]) is not None
    ]
    config = dict(detail["config"])
    if config.get("fail_hospitals"):
        config["fail_hospitals"] = [
            label for h in config["fail_hospitals"] if (label := shown(h)) is not None
        ]
    reason = detail["reason"] and labels.scrub(detail["reason"])
    warnings = runlog.run_warnings(store, run_id, labels)
    return {
        **detail,
        "config": config,
        "reason": reason,
        "hospitals": hospitals,
        "events": events,
        "warnings": warnings,
    }
