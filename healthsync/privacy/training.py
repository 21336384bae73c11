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

import contextlib
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
    return int(shown_test_sizes(federation, [hospital_id], target, np.array([evaluated]))[0])


def shown_test_sizes(
    federation: Any, hospital_ids: Sequence[str], target: str, evaluated: np.ndarray
) -> np.ndarray:
    """:func:`shown_test_size` of many hospitals at once (``evaluated`` row by row)."""
    if target in getattr(federation, "incident", {}):
        return np.array([federation.hospital(h).n_test for h in hospital_ids], dtype=np.int64)
    return np.asarray(evaluated, dtype=np.int64)


def release_round(
    federation: Mapping[str, Any], hospitals: Sequence[Mapping[str, Any]] | pl.DataFrame
) -> tuple[dict[str, Any], list[dict[str, Any]] | pl.DataFrame]:
    """One round's federation figures and per-hospital rows, as they may be stored.

    Parameters
    ----------
    federation : the round's (or a method's overall) figures: ``loss``, ``auc``...
    hospitals : one row per hospital that answered: ``n``, the figures, and
        ``positives`` and ``negatives`` in its test split (a row without them
        counts as too small: its size cannot be checked). Rows as dicts, or as
        one frame (a run's round at 100,000 hospitals: no dict per hospital).

    Returns
    -------
    The federation row (a figure that would equal one withheld hospital's is
    ``None``) and the hospital rows without their class counts, with withheld
    figures ``None``, shown ones rounded, and ``released`` set; as dicts or as
    a frame, as they came.
    """
    if isinstance(hospitals, pl.DataFrame):
        return _release_frame(federation, hospitals)
    rows = [dict(r) for r in hospitals]
    withheld, hidden = _withheld(
        n=_numbers([r.get("n") for r in rows]),
        positives=_numbers([r.get("positives") for r in rows]),
        negatives=_numbers([r.get("negatives") for r in rows]),
        figures={m: _numbers([r.get(m) for r in rows]) for m in HOSPITAL_METRICS},
        names=[str(r.get("hospital")) for r in rows],
    )
    released = dict(federation) | dict.fromkeys(hidden)
    return released, [_hospital_row(r, withheld=w) for r, w in zip(rows, withheld, strict=True)]


def _release_frame(
    federation: Mapping[str, Any], frame: pl.DataFrame
) -> tuple[dict[str, Any], pl.DataFrame]:
    """:func:`release_round` for rows as one frame, column by column."""

    def column(name: str) -> np.ndarray:
        if name not in frame.columns:
            return np.full(frame.height, np.nan)
        return frame[name].cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy()

    figures = {m: column(m) for m in HOSPITAL_METRICS if m in frame.columns}
    withheld, hidden = _withheld(
        n=column("n"),
        positives=column("positives"),
        negatives=column("negatives"),
        figures=figures,
        names=frame["hospital"].cast(pl.String).to_list(),
    )
    shown = [
        pl.Series(m, np.where(withheld, np.nan, _rounded(values))).fill_nan(None)
        for m, values in figures.items()
    ]
    out = frame.drop("positives", "negatives", strict=False).with_columns(
        *shown, released=pl.lit(True)
    )
    return dict(federation) | dict.fromkeys(hidden), out


def _withheld(
    *,
    n: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    figures: Mapping[str, np.ndarray],
    names: Sequence[str],
) -> tuple[np.ndarray, list[str]]:
    """Which hospital rows are withheld, and which federation figures (the policy above).

    Arrays are per hospital row, ``NaN`` for a missing value. A row is withheld
    when its class counts are too small; then, pass after pass, a metric whose
    federation mean rests on exactly one withheld figure withholds the shown
    row with the fewest test patients too (ties: the lowest hospital id), or,
    when none is shown, its federation figure.
    """
    withheld = ~((positives >= MIN_CELL) & (negatives >= MIN_CELL))
    ids = np.array(names, dtype=str)
    counted = np.nan_to_num(n, nan=0.0) > 0
    entering = {m: counted & ~np.isnan(v) for m, v in figures.items()}
    hidden: list[str] = []
    changed = True
    while changed:  # each pass withholds at most one more hospital per metric
        changed = False
        for metric in HOSPITAL_METRICS:
            if metric not in entering or (entering[metric] & withheld).sum() != 1:
                continue
            shown = np.flatnonzero(entering[metric] & ~withheld)
            if shown.size:
                # the fewest test patients, then the lowest id (a stable sort keeps the first)
                withheld[shown[np.lexsort((ids[shown], n[shown]))[0]]] = True
                changed = True
            elif metric not in hidden:
                hidden.append(metric)
    return withheld, hidden


def _rounded(values: np.ndarray) -> np.ndarray:
    """``round(v, DECIMALS)`` of each value, as Python rounds it (what the dict path stores).

    ``np.round`` scales, rounds and scales back, which moves some half-way
    decimals (1/80 = 0.0125 to 0.012, where ``round`` gives 0.013); it agrees
    with ``round`` everywhere else, so only values within a hair of a half-way
    point are rounded one by one.
    """
    scaled = values * 10**DECIMALS
    out = np.round(values, DECIMALS)
    near_half = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) < 1e-6
    for i in np.flatnonzero(near_half):
        out[i] = round(float(values[i]), DECIMALS)
    return out


def _numbers(values: Sequence[Any]) -> np.ndarray:
    """``values`` as floats, ``NaN`` for what is not a number (``None``, text)."""
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        with contextlib.suppress(TypeError, ValueError):
            out[i] = float(value)
    return out


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
