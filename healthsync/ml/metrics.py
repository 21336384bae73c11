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

    One sort of all scores, then a stable sort by group (a radix sort when
    groups fit 16 bits) puts each group's rows together in score order; a run
    of equal scores within a group shares the mean of its places. No padding:
    laying groups out one per line padded to the largest group (as this did
    before) cost several times more when one hospital is much larger than the
    rest.
    """
    by_score = np.argsort(scores)  # the order among equal scores does not matter: they tie
    key = group[by_score]
    if len(sizes) <= 1 << 16:
        key = key.astype(np.uint16)
    order = by_score[np.argsort(key, kind="stable")]
    grouped, ordered = group[order], scores[order]
    starts_run = np.ones(group.size, dtype=bool)
    starts_run[1:] = (ordered[1:] != ordered[:-1]) | (grouped[1:] != grouped[:-1])
    starts = np.flatnonzero(starts_run)
    lengths = np.diff(np.append(starts, group.size))
    group_start = (np.cumsum(sizes) - sizes)[grouped[starts]]
    mean_place = starts - group_start + (lengths + 1) / 2  # 1-based place within the group
    ranks = np.empty(group.size)
    ranks[order] = np.repeat(mean_place, lengths)
    return ranks


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
