"""Binary-classification metrics and their aggregation across hospitals.

Hospitals compute metrics on their own test rows; only the numbers (and a
coarse histogram of predicted scores, for ROC and calibration curves) leave.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from numpy.typing import ArrayLike

SCORE_BINS = 20


@dataclass(frozen=True)
class BinaryMetrics:
    """Loss (log loss), AUC, accuracy at 0.5 and Brier score on ``n`` examples."""

    n: int
    loss: float
    auc: float
    accuracy: float
    brier: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def auc_score(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC of scores ``p`` for labels ``y``; NaN if only one class is present."""
    y = np.asarray(y)
    return float(auc_by_group(np.zeros(y.size, dtype=np.int64), y, p, groups=1)[0])


def auc_by_group(group: np.ndarray, y: np.ndarray, p: np.ndarray, *, groups: int) -> np.ndarray:
    """ROC AUC of each group's rows (group ``g`` = rows with ``group == g``), all at once.

    The one AUC of HealthSync: the rank-sum (Mann-Whitney) formula, tied
    scores sharing the mean of their ranks, so a hospital's AUC is the same
    whether it is scored alone or inside a block. NaN for a group without
    both classes.
    """
    group = np.asarray(group, dtype=np.int64)
    positive = np.asarray(y).astype(bool)
    sizes = np.bincount(group, minlength=groups)
    ranks = _ranks_by_group(group, np.asarray(p, dtype=np.float64), sizes)
    positives = np.bincount(group, weights=positive.astype(np.float64), minlength=groups)
    negatives = sizes - positives
    rank_sums = np.bincount(group, weights=ranks * positive, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sums - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def _ranks_by_group(group: np.ndarray, scores: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each row's rank (1 = lowest, ties averaged) among its own group's scores.

    The scores are laid out one group per line (padded with +inf, which sorts
    last) and sorted line by line: many short sorts, several times faster than
    one sort of all rows by group and score, and about twice as fast as
    ``scipy.stats.rankdata`` along the lines (measured, 1,000 x 100 scores).
    """
    order = np.argsort(group, kind="stable")  # rows need not come grouped
    position = np.empty(group.size, dtype=np.int64)
    position[order] = np.arange(group.size) - (np.cumsum(sizes) - sizes)[group[order]]
    grid = np.full((len(sizes), max(int(sizes.max(initial=0)), 1)), np.inf)
    grid[group, position] = scores
    order = np.argsort(grid, axis=1)
    ordered = np.take_along_axis(grid, order, axis=1)
    place = np.broadcast_to(np.arange(1.0, grid.shape[1] + 1), grid.shape)  # 1-based
    tied = ordered[:, 1:] == ordered[:, :-1]
    tied &= np.isfinite(ordered[:, 1:])  # padding ties with padding; that does not matter
    if tied.any():  # a run of equal scores on a line shares the mean of its places
        starts_run = np.ones(grid.shape, dtype=bool)
        starts_run[:, 1:] = ~tied
        starts = np.flatnonzero(starts_run)
        lengths = np.diff(np.r_[starts, grid.size])
        mean_place = starts % grid.shape[1] + (lengths + 1) / 2
        place = np.repeat(mean_place, lengths).reshape(grid.shape)
    ranks = np.empty(grid.shape)
    np.put_along_axis(ranks, order, place, axis=1)
    return ranks[group, position]


def binary_metrics(y: np.ndarray, p: np.ndarray) -> BinaryMetrics:
    """All metrics for labels ``y`` (0/1) and predicted probabilities ``p``."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    if y.size == 0:
        nan = float("nan")
        return BinaryMetrics(0, nan, nan, nan, nan)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return BinaryMetrics(
        n=int(y.size),
        loss=loss,
        auc=auc_score(y, p),
        accuracy=float(np.mean((p >= 0.5) == (y == 1))),
        brier=float(np.mean((p - y) ** 2)),
    )


def weighted_mean(values: ArrayLike, weights: ArrayLike) -> float:
    """Example-weighted mean that skips NaNs (e.g. AUC of a one-class hospital)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = ~np.isnan(v) & (w > 0)
    if not keep.any():
        return float("nan")
    return float(np.sum(v[keep] * w[keep]) / np.sum(w[keep]))


def aggregate(per_hospital: list[BinaryMetrics]) -> BinaryMetrics:
    """The federation's metrics: each hospital's metrics weighted by its test examples."""
    return aggregate_columns(
        *(np.array([getattr(m, f.name) for m in per_hospital]) for f in fields(BinaryMetrics))
    )


def aggregate_columns(
    n: np.ndarray, loss: np.ndarray, auc: np.ndarray, accuracy: np.ndarray, brier: np.ndarray
) -> BinaryMetrics:
    """:func:`aggregate` of hospitals given as columns (row ``i`` is one hospital's)."""
    return BinaryMetrics(
        n=int(np.sum(n)),
        loss=weighted_mean(loss, n),
        auc=weighted_mean(auc, n),
        accuracy=weighted_mean(accuracy, n),
        brier=weighted_mean(brier, n),
    )


def score_histogram(y: np.ndarray, p: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """Counts of positives and negatives per score bin, plus the sum of scores per bin.

    Shape ``(bins, 3)``: columns positives, negatives, score sum. Summed across
    hospitals this gives the federation's ROC curve and calibration plot
    without any hospital revealing a single patient's score.
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = np.zeros((bins, 3), dtype=np.float64)
    np.add.at(out[:, 0], idx[y], 1)
    np.add.at(out[:, 1], idx[~y], 1)
    np.add.at(out[:, 2], idx, p)
    return out
