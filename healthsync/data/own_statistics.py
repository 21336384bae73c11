"""A hospital's own statistics in full detail, for its own data steward only.

Computed hospital-side, from the hospital's rows read through its own
accessor, by whoever holds those rows (the data commands, right after writing
or publishing a hospital; ``healthsync data publish``). The result is written
into the hospital's own site folder as ``own-statistics.json`` (mode 0600). The
app's My hospital page shows it to that hospital's steward and to no one else:
the app reads this file, never a row, and no other role's page reads it.

These numbers are exact (no noise, no suppression): they describe the
steward's own patients, which the steward may already see in full. They never
leave the hospital's folder for the consortium: every number other users see
still passes the release policy (docs/privacy.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from healthsync.data.accessor import HospitalAccessor, hospital_folder, open_hospital
from healthsync.data.manifest import SPLIT_COLUMN, Federation

OWN_STATISTICS = "own-statistics.json"


def compute(accessor: HospitalAccessor) -> dict[str, Any]:
    """The hospital's rows per split, each feature's summary and each outcome's cases."""
    rows = accessor.rows()
    federation = accessor.federation
    splits = rows[SPLIT_COLUMN].value_counts().sort(SPLIT_COLUMN).iter_rows()
    numeric, categorical = [], []
    for feature in federation.features:
        column = rows[feature.name]
        if feature.kind == "numeric":
            numeric.append(
                {
                    "feature": feature.name,
                    "unit": feature.unit or "",
                    "known": int(column.drop_nulls().len()),
                    "mean": _number(column.mean()),
                    "std": _number(column.std()),
                    "min": _number(column.min()),
                    "max": _number(column.max()),
                }
            )
        else:
            counts = dict(column.fill_null("(missing)").value_counts().iter_rows())
            for level in [
                *(feature.categories or ()),
                *sorted(set(counts) - set(feature.categories or ())),
            ]:
                categorical.append(
                    {"feature": feature.name, "level": level, "patients": int(counts.get(level, 0))}
                )
    outcomes = [
        {
            "outcome": outcome,
            "cases": int(rows[outcome].sum()),
            "prevalence": _number(rows[outcome].mean()),
        }
        for outcome in federation.outcomes
    ]
    return {
        "hospital": accessor.hospital.id,
        "stamp": accessor.stamp(),
        "patients": rows.height,
        "splits": {str(split): int(n) for split, n in splits},
        "numeric": numeric,
        "categorical": categorical,
        "outcomes": outcomes,
    }


def publish(federation: Federation, hospital: str) -> Path:
    """Hospital-side: compute the statistics and write them into the hospital's site folder."""
    return write(open_hospital(federation, hospital))


def write(accessor: HospitalAccessor) -> Path:
    """``publish`` with the hospital's accessor already open (its rows read once)."""
    from healthsync.privacy.site import SITE_DIR

    folder = accessor.path.parent / SITE_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / OWN_STATISTICS
    temporary = folder / f".{OWN_STATISTICS}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(compute(accessor), handle)
    os.replace(temporary, target)
    return target


def read(data_dir: str | Path, hospital: str) -> dict[str, Any] | None:
    """What ``publish`` wrote for ``hospital``, or ``None`` (never computed, or unreadable)."""
    from healthsync.privacy.site import SITE_DIR

    path = hospital_folder(data_dir, hospital) / SITE_DIR / OWN_STATISTICS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def frames(statistics: dict[str, Any]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``numeric``, ``categorical`` and ``outcomes`` tables of published statistics."""
    numeric = pl.DataFrame(
        statistics.get("numeric", []),
        schema={
            "feature": pl.String,
            "unit": pl.String,
            "known": pl.Int64,
            "mean": pl.Float64,
            "std": pl.Float64,
            "min": pl.Float64,
            "max": pl.Float64,
        },
    )
    categorical = pl.DataFrame(
        statistics.get("categorical", []),
        schema={"feature": pl.String, "level": pl.String, "patients": pl.Int64},
    )
    outcomes = pl.DataFrame(
        statistics.get("outcomes", []),
        schema={"outcome": pl.String, "cases": pl.Int64, "prevalence": pl.Float64},
    )
    return numeric, categorical, outcomes


def _number(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if number != number else round(number, 4)
