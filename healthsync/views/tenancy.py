"""What pages say about hospitals as tenants: who withdrew, and what a steward may see.

Consent is read from each hospital's own site folder
(``healthsync.privacy.consent``); pages only show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from healthsync.auth import AccessLists, User
from healthsync.data import Federation
from healthsync.privacy.consent import withdrawn_hospitals


def withdrawn_notice(federation: Federation, names: Mapping[str, str] | None = None) -> str | None:
    """One paragraph naming the withdrawn hospitals, who withdrew them, when and why; or None."""
    found = withdrawn_hospitals(federation.data_dir, federation.hospital_ids)
    if not found:
        return None
    named = names or {}
    lines = [
        change.describe(named.get(hospital, hospital)).removeprefix("hospital ")
        for hospital, change in found.items()
    ]
    return (
        f"{len(found)} hospital(s) withdrew their consent: new runs and cohort answers leave "
        "them out (their own nodes refuse any work) until they rejoin. " + "; ".join(lines) + "."
    )


def run_consent_line(events: pl.DataFrame, names: Mapping[str, str] | None = None) -> str | None:
    """For Live: the hospitals a run left out because they withdrew (and any that rejoined)."""
    if events.is_empty():
        return None
    named = names or {}
    gone = events.filter(pl.col("kind") == "hospital_withdrawn")["hospital"].drop_nulls()
    back = events.filter(pl.col("kind") == "hospital_rejoined")["hospital"].drop_nulls()
    if gone.is_empty():
        return None
    text = "Left out because they withdrew consent: " + ", ".join(
        named.get(h, h) for h in gone.unique(maintain_order=True).to_list()
    )
    if not back.is_empty():
        text += "; rejoined during the run: " + ", ".join(
            named.get(h, h) for h in back.unique(maintain_order=True).to_list()
        )
    return text + ". Their rounds from then on have no row for them; they are not failures."


def visible_runs(runs: pl.DataFrame, user: User, access: AccessLists) -> pl.DataFrame:
    """The runs (a ``runlog.list_runs`` frame) on federations ``user`` may see."""
    if user.role == "admin" or runs.is_empty():
        return runs
    allowed = {d: access.allowed(user, d) for d in runs["data_dir"].unique().to_list()}
    return runs.filter(pl.col("data_dir").replace_strict(allowed, return_dtype=pl.Boolean))


#: Per-hospital rows everyone may see whatever their hospital: the consortium's own figures.
CONSORTIUM_ROWS = ("overall",)


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
    if data_dir is not None and user.federation == str(Path(data_dir).resolve()):
        keep.append(str(user.hospital))
    return frame.filter(pl.col(column).is_in(keep))


def own_hospital_names(
    names: Mapping[str, str], user: User, data_dir: str | Path | None
) -> dict[str, str]:
    """``names`` (hospital id -> name) narrowed as ``own_hospital_only`` narrows frames."""
    frame = pl.DataFrame({"hospital": list(names), "name": list(names.values())})
    kept = own_hospital_only(frame, user, data_dir)
    return dict(zip(kept["hospital"], kept["name"], strict=True))


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
