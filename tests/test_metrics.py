"""Metrics match their textbook definitions; aggregation weights by examples."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthsync.ml.metrics import (
    BinaryMetrics,
    aggregate,
    auc_by_group,
    auc_score,
    binary_metrics,
    score_histogram,
)


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 2)  # ties on purpose
    pos, neg = p[y == 1], p[y == 0]
    pairwise = (
        (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    ) / (len(pos) * len(neg))
    assert auc_score(y, p) == pytest.approx(pairwise)


def test_auc_by_group_is_each_groups_own_auc_whatever_the_row_order():
    rng = np.random.default_rng(1)
    group = rng.integers(0, 5, 300)  # interleaved; group 4 left with one class below
    y = rng.integers(0, 2, 300)
    y[group == 4] = 1
    p = np.round(rng.random(300), 1)  # many ties
    together = auc_by_group(group, y, p, groups=6)  # group 5 has no rows
    for g in range(4):
        assert together[g] == pytest.approx(auc_score(y[group == g], p[group == g]))
    assert np.isnan(together[4]) and np.isnan(together[5])


def _pairwise_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    levels=st.sampled_from([2, 5, 1000]),  # few score levels: many ties
    seed=st.integers(0, 2**16),
)
def test_auc_by_group_is_the_pairwise_auc_of_each_group(sizes, levels, seed):
    """Groups of any sizes (empty, one very large), interleaved, with ties across groups."""
    rng = np.random.default_rng(seed)
    sizes[0] *= 10  # one group far larger than the others
    group = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    y = rng.integers(0, 2, group.size)
    p = rng.integers(0, levels, group.size) / levels
    got = auc_by_group(group, y, p, groups=len(sizes))
    want = [_pairwise_auc(y[group == g], p[group == g]) for g in range(len(sizes))]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_auc_by_group_beyond_16_bit_group_numbers():
    """More groups than a 16-bit sort key holds (the sort then takes the groups as they are)."""
    rng = np.random.default_rng(4)
    groups = 70_000
    group = rng.permutation(np.repeat(np.arange(groups), 3))
    y = rng.integers(0, 2, group.size)
    p = rng.integers(0, 4, group.size) / 4  # ties
    got = auc_by_group(group, y, p, groups=groups)
    for g in [*range(0, groups, 997), 65_535, 65_536, 69_999]:
        assert got[g] == pytest.approx(_pairwise_auc(y[group == g], p[group == g]), nan_ok=True)


def test_single_class_auc_is_nan_and_skipped_when_aggregating():
    assert np.isnan(auc_score(np.ones(5), np.linspace(0, 1, 5)))
    combined = aggregate(
        [BinaryMetrics(10, 0.5, float("nan"), 0.8, 0.1), BinaryMetrics(30, 0.3, 0.9, 0.6, 0.2)]
    )
    assert combined.auc == pytest.approx(0.9)
    assert combined.accuracy == pytest.approx((10 * 0.8 + 30 * 0.6) / 40)
    assert combined.n == 40


def test_binary_metrics_values():
    m = binary_metrics(np.array([0, 1, 1, 0]), np.array([0.1, 0.9, 0.4, 0.6]))
    assert m.accuracy == pytest.approx(0.5)
    assert m.brier == pytest.approx(np.mean([0.01, 0.01, 0.36, 0.36]))
    assert m.auc == pytest.approx(0.75)


def test_score_histogram_counts_every_patient_once():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.0, 0.99, 1.0, 0.51, 0.05])
    h = score_histogram(y, p, bins=10)
    assert h[:, 0].sum() == 3 and h[:, 1].sum() == 2
    assert h[9, 0] == 2 and h[0, 1] == 1 and h[0, 0] == 1
    assert h[:, 2].sum() == pytest.approx(p.sum())
