"""The release of training numbers: score bins and per-hospital test metrics.

A run records how its global model does on every hospital's test patients.
Those numbers rest on patients, so they leave through this policy before they
are stored where the app, the CSV exports or ``runs show`` can read them, and
once more when they are read (stores written before the policy hold raw
numbers). The threshold is :data:`healthsync.privacy.release.MIN_CELL`.

Score bins (ROC curve, calibration plot)
    Each hospital sends a 20-bin histogram of its test patients' predicted
    scores (positives, negatives, score sum per bin); the server sums them.
    Adjacent bins are merged, from the lowest score up, until each holds at
    least ``MIN_CELL`` patients with the outcome and ``MIN_CELL`` without; a
    remainder at the top joins the bin below it. A merged bin's score sum is
    the sum of its parts. With fewer than ``MIN_CELL`` patients of either class
    in the whole federation no bin is released. Why: a bin of one positive and
    no negative tells anyone who can score that patient's features (the risk
    calculator scores any) that the patient has the outcome.

Per-hospital metrics (loss, AUC, accuracy, Brier)
    A hospital's figures are withheld when its test split holds fewer than
    ``MIN_CELL`` patients with or without the outcome: an AUC over one positive
    is that patient's rank, and an accuracy over a handful of patients all but
    lists their outcomes. The federation's figure is the test-size weighted
    mean of the hospitals', so if exactly one hospital's figure were withheld,
    the mean minus the shown ones would give it back; the shown hospital with
    the fewest test patients is then withheld with it (complementary
    suppression, as statistical offices do for tables with margins). When no
    hospital can be withheld with it, the federation's figure of that metric
    is withheld for the round instead. Shown figures are rounded to
    :data:`DECIMALS` places, the precision every page shows. The test split's
    size ``n`` stays (it is in the federation's manifest anyway).

Stores written before this policy
    Their bins are merged when read, like new ones. Their per-hospital rows
    carry no mark of release and the class counts behind them never left the
    hospitals, so nobody can tell which were safe: every reader shows their
    metrics as withheld. A run's own global figures are unaffected.

The class counts used here come from the per-hospital score histograms, which
the server holds before it sums them; they are never stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from healthsync.privacy.release import MIN_CELL

#: Decimal places of every released per-hospital figure.
DECIMALS = 3
#: The per-hospital figures this policy releases or withholds (``brier`` where recorded).
HOSPITAL_METRICS = ("loss", "auc", "accuracy", "brier")
BIN_SCHEMA = {
    "bin": pl.Int64,
    "lower": pl.Float64,
    "upper": pl.Float64,
    "positives": pl.Int64,
    "negatives": pl.Int64,
    "score_sum": pl.Float64,
}


# ---------------------------------------------------------------- score bins
def histogram_bins(histogram: np.ndarray) -> pl.DataFrame:
    """The federation's summed score histogram as it may be stored: released bins.

    Parameters
    ----------
    histogram : shape ``(bins, 3)``, columns positives, negatives, score sum,
        over equal-width bins of [0, 1] (``metrics.score_histogram``).
    """
    count = histogram.shape[0]
    edges = np.arange(count + 1) / count
    bins = pl.DataFrame(
        {
            "bin": np.arange(count),
            "lower": edges[:-1],
            "upper": edges[1:],
            "positives": np.rint(histogram[:, 0]).astype(np.int64),
            "negatives": np.rint(histogram[:, 1]).astype(np.int64),
            "score_sum": histogram[:, 2].astype(np.float64),
        },
        schema=BIN_SCHEMA,
    )
    return merge_bins(bins)


def merge_bins(bins: pl.DataFrame) -> pl.DataFrame:
    """Bins merged until each holds ``MIN_CELL`` patients of each class; empty if impossible.

    Takes and returns ``bin, lower, upper, positives, negatives, score_sum``
    (``bin`` renumbered from 0 by score). Released bins pass unchanged, so
    applying it again when reading costs nothing and changes nothing.
    """
    ordered = bins.select(list(BIN_SCHEMA)).cast(BIN_SCHEMA).sort("lower")
    groups, group, positives, negatives = [], 0, 0, 0
    for row_positives, row_negatives in ordered.select("positives", "negatives").iter_rows():
        groups.append(group)
        positives += row_positives or 0
        negatives += row_negatives or 0
        if positives >= MIN_CELL and negatives >= MIN_CELL:
            group, positives, negatives = group + 1, 0, 0
    if group == 0:  # not even one bin holds enough of both classes: release nothing
        return ordered.clear()
    # bins past the last full group join it
    groups = [min(g, group - 1) for g in groups]
    return (
        ordered.with_columns(pl.Series("bin", groups, dtype=pl.Int64))
        .group_by("bin", maintain_order=True)
        .agg(
            pl.col("lower").min(),
            pl.col("upper").max(),
            pl.col("positives").sum(),
            pl.col("negatives").sum(),
            pl.col("score_sum").sum(),
        )
    )


# ---------------------------------------------------------------- per-hospital metrics
def shown_test_size(federation: Any, hospital_id: str, target: str, evaluated: int) -> int:
    """The test size a stored hospital row shows: the manifest's split, for an incident outcome.

    A run on an incident outcome (``diabetes_5y``) scores only the patients
    free of the condition at baseline. Their exact count, next to the
    manifest's test size, would give the exact number of the hospital's test
    patients *with* the condition, unnoised. So rows show the whole test split
    (already public in the manifest); the server weights its own figures by
    the patients actually scored, and those counts never reach the store.
    """
    if target in getattr(federation, "incident", {}):
        return federation.hospital(hospital_id).n_test
    return evaluated


def release_round(
    federation: Mapping[str, Any], hospitals: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One round's federation figures and per-hospital rows, as they may be stored.

    Parameters
    ----------
    federation : the round's (or a method's overall) figures: ``loss``, ``auc``...
    hospitals : one row per hospital that answered: ``n``, the figures, and
        ``positives`` and ``negatives`` in its test split (a row without them
        counts as too small: its size cannot be checked).

    Returns
    -------
    The federation row (a figure that would equal one withheld hospital's is
    ``None``) and the hospital rows without their class counts, with withheld
    figures ``None``, shown ones rounded, and ``released`` set.
    """
    rows = [dict(r) for r in hospitals]
    withheld = {i for i, r in enumerate(rows) if not _large_enough(r)}
    released = dict(federation)
    changed = True
    while changed:  # each pass withholds at most one more hospital per metric
        changed = False
        for metric in HOSPITAL_METRICS:
            entering = [i for i, r in enumerate(rows) if _enters_mean(r, metric)]
            hidden = [i for i in entering if i in withheld]
            if len(hidden) != 1:
                continue
            shown = [i for i in entering if i not in withheld]
            if shown:
                withheld.add(min(shown, key=lambda i: (rows[i]["n"], str(rows[i]["hospital"]))))
                changed = True
            else:
                released[metric] = None
    return released, [_hospital_row(r, withheld=i in withheld) for i, r in enumerate(rows)]


def released_hospital_metrics(frame: pl.DataFrame) -> pl.DataFrame:
    """Per-hospital rows as any reader may show them (the reading side of :func:`release_round`).

    ``frame`` carries a ``released`` column (null for rows stored before the
    policy): figures of rows not released are withheld, the rest rounded to
    :data:`DECIMALS`; NaN becomes missing. ``released`` is dropped.
    """
    shown = pl.col("released").fill_null(False)
    return frame.with_columns(
        pl.when(shown).then(pl.col(m).fill_nan(None).round(DECIMALS)).otherwise(None).alias(m)
        for m in HOSPITAL_METRICS
        if m in frame.columns
    ).drop("released")


def _large_enough(row: Mapping[str, Any]) -> bool:
    counts = (row.get("positives"), row.get("negatives"))
    return all(c is not None and c >= MIN_CELL for c in counts)


def _enters_mean(row: Mapping[str, Any], metric: str) -> bool:
    """Whether ``row``'s figure enters the federation's weighted mean (``metrics.weighted_mean``)."""
    value = row.get(metric)
    return (row.get("n") or 0) > 0 and _is_number(value)


def _is_number(value: Any) -> bool:
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):  # None, or not a number at all
        return False


def _hospital_row(row: Mapping[str, Any], *, withheld: bool) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("positives", "negatives")}
    for metric in HOSPITAL_METRICS:
        if metric in out:
            value = out[metric]
            out[metric] = (
                None if withheld or not _is_number(value) else round(float(value), DECIMALS)
            )
    out["released"] = True
    return out
