"""The guards: combine hospitals' exact aggregates into an answer that may be shown.

:func:`release` is the only function that turns per-hospital aggregates
into something that leaves the analytics service. In order, it

1. combines the hospitals' vectors into the query's cells (per hospital when
   grouping by hospital, pooled otherwise);
2. adds calibrated noise to every count, case count, sum, sum of squares
   and histogram bin (:mod:`healthsync.cohort.noise`);
3. hides small cells and their complements, case counts whose cases or
   non-cases are few, and merges histogram bins (:mod:`healthsync.cohort.suppression`);
4. derives prevalences, means and deviations from the noisy values of
   shown cells only; min and max are never released;
5. sums the shown cells into a total (never the hidden ones).

Unit tests feed it aggregates directly; the CLI and the page reach it only
through the Flower analytics service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from healthsync.cohort.bands import NumericScale
from healthsync.cohort.local import Aggregates, aggregate_names
from healthsync.cohort.noise import noisy_counts, noisy_sums
from healthsync.cohort.plan import QueryPlan
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.result import COMPLEMENTARY, Release, stat_keys
from healthsync.cohort.suppression import complementary, merge_bins, primary
from healthsync.errors import HealthSyncError


def combine(per_hospital: Mapping[str, Aggregates], plan: QueryPlan) -> Aggregates:
    """The query's exact cell arrays (shape ``plan.shape``, plus bins) from all hospitals.

    Raises ``HealthSyncError`` when a hospital the query covers did not answer,
    or answered with vectors of the wrong size.
    """
    missing = [h for h in plan.hospitals if h not in per_hospital]
    if missing:
        raise HealthSyncError(
            f"{len(missing)} hospital(s) did not answer ({', '.join(missing[:5])}); "
            "no partial answer is given"
        )
    local = plan.shape[1:] if plan.by_hospital else plan.shape
    out: Aggregates = {}
    for name in aggregate_names(plan):
        bins = (plan.scales[name[5:]].n_bins,) if name.startswith("bins:") else ()
        parts = []
        for hospital in plan.hospitals:
            values = np.asarray(per_hospital[hospital][name])
            if values.size != int(np.prod(local + bins)):
                raise HealthSyncError(f"hospital {hospital} sent {name} of the wrong size")
            parts.append(values.reshape(local + bins))
        out[name] = np.stack(parts) if plan.by_hospital else np.sum(parts, axis=0)
    return out


def release(
    per_hospital: Mapping[str, Aggregates],
    plan: QueryPlan,
    policy: CohortPolicy,
    rng: np.random.Generator,
) -> Release:
    """The guarded answer to ``plan`` from every hospital's exact aggregates.

    Parameters
    ----------
    per_hospital : ``hospital id -> aggregates`` from
        :func:`~healthsync.cohort.local.hospital_aggregates`.
    plan : the checked query.
    policy : threshold and epsilon per query.
    rng : the noise source (:func:`~healthsync.cohort.noise.fresh_generator` outside tests).
    """
    exact = combine(per_hospital, plan)
    guard = _Guard(plan, policy, rng)
    counts = guard.counts(exact["patients"])
    for outcome in plan.outcomes:
        guard.prevalence(outcome, exact[f"cases:{outcome}"], counts)
    for feature in plan.sums:
        squares = exact.get(f"squares:{feature}")
        guard.moments(feature, exact[f"sum:{feature}"], squares, counts)
    for feature in plan.histograms:
        guard.histogram(feature, exact[f"bins:{feature}"], counts)
    return Release.build(
        plan,
        guard.values,
        guard.totals,
        guard.summary,
        threshold=policy.threshold,
        epsilon=policy.epsilon_per_query,
    )


class _Counts:
    """A cell count vector as counted, as noised, and which cells are small or hidden."""

    def __init__(self, true: np.ndarray, noisy: np.ndarray, small: np.ndarray, hidden: np.ndarray):
        self.true, self.noisy, self.small, self.hidden = true, noisy, small, hidden
        self.shown = ~hidden
        self.divisor = np.maximum(noisy, 1)  # shown cells are all >= threshold anyway


class _Guard:
    """Noise, suppression and derived statistics for one release (one call of :func:`release`)."""

    def __init__(self, plan: QueryPlan, policy: CohortPolicy, rng: np.random.Generator) -> None:
        self.plan, self.policy, self.rng = plan, policy, rng
        self.k = policy.threshold
        self.epsilon = policy.epsilon_per_query / plan.measurements
        self.values: dict[str, np.ndarray] = {}
        self.totals: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    def counts(self, true: np.ndarray) -> _Counts:
        noisy = noisy_counts(true, self.epsilon, self.rng)
        small = primary(true, noisy, self.k)
        hidden = complementary(true, small, self.k)
        counts = _Counts(true, noisy, small, hidden)
        self.values["patient_count"] = self._shown_counts(counts)
        self.totals["patient_count"] = _total(noisy, counts.shown)
        self.summary["small_cells"] = int(small.sum())
        self.summary["complementary_cells"] = int((hidden & ~small).sum())
        return counts

    def prevalence(self, outcome: str, true: np.ndarray, cells: _Counts) -> None:
        """Case counts and shares, hidden when cases *or* non-cases are few (or the cell is)."""
        count_key, share_key = stat_keys("prevalence", outcome)
        noisy = noisy_counts(true, self.epsilon, self.rng)
        small = cells.small | primary(true, noisy, self.k)
        others_small = primary(cells.true - true, cells.noisy - noisy, self.k)
        hidden = complementary(
            np.minimum(true, cells.true - true), small | others_small | cells.hidden, self.k
        )
        cases = _Counts(true, noisy, small, hidden)
        self.values[count_key] = self._shown_counts(cases)
        self.values[share_key] = _rounded(cases.shown, np.clip(noisy / cells.divisor, 0, 1), 4)
        self.totals[count_key] = _total(noisy, cases.shown)
        self.totals[share_key] = _share(noisy, cells.noisy, cases.shown)
        hidden_shares = self.summary.setdefault("hidden_prevalence_cells", {})
        hidden_shares[outcome] = int((hidden & cells.shown).sum())

    def moments(
        self, feature: str, sums: np.ndarray, squares: np.ndarray | None, cells: _Counts
    ) -> None:
        """Mean and/or standard deviation from noisy sums, for shown cells only."""
        scale = self.plan.scales[feature]
        sums = noisy_sums(sums, self.epsilon, scale.radius, self.rng)
        shown, n = cells.shown, cells.divisor
        pooled_n = max(int(cells.noisy[shown].sum()), 1)
        if feature in self.plan.means:
            key = stat_keys("mean", feature)[0]
            self.values[key] = _rounded(shown, _mean(sums / n, scale), 2)
            self.totals[key] = _pooled(shown, _mean(sums[shown].sum() / pooled_n, scale))
        if squares is not None:
            squares = noisy_sums(squares, self.epsilon, scale.radius**2, self.rng)
            key = stat_keys("std", feature)[0]
            self.values[key] = _rounded(shown, _std(squares / n, sums / n, scale), 2)
            pooled = _std(squares[shown].sum() / pooled_n, sums[shown].sum() / pooled_n, scale)
            self.totals[key] = _pooled(shown, pooled)

    def histogram(self, feature: str, true: np.ndarray, cells: _Counts) -> None:
        """Per shown cell, bins merged until each holds ``threshold`` patients."""
        scale = self.plan.scales[feature]
        noisy = noisy_counts(true, self.epsilon, self.rng)
        out = np.empty(self.plan.shape, dtype=object)
        merged = hidden = 0
        for index in np.ndindex(self.plan.shape):
            if not cells.shown[index]:
                continue
            first, last = self.plan.bin_range(feature, index)
            runs = merge_bins(true[index][first:last], noisy[index][first:last], self.k)
            merged += (last - first) - len(runs)
            hidden += not runs
            out[index] = [
                {
                    "bin": scale.bin_label(first + start, first + stop),
                    "lower": scale.bin_bounds(first + start)[0],
                    "upper": scale.bin_bounds(first + stop - 1)[1],
                    "bin_count": int(noisy[index][first + start : first + stop].sum()),
                }
                for start, stop in runs
            ] or None
        self.values[stat_keys("histogram", feature)[0]] = out
        self.summary.setdefault("merged_bins", {})[feature] = merged
        self.summary.setdefault("hidden_histograms", {})[feature] = hidden

    def _shown_counts(self, counts: _Counts) -> np.ndarray:
        """Shown counts as ints; hidden ones as ``"<11"`` (small) or ``"suppressed"``."""
        out = np.empty(counts.noisy.shape, dtype=object)
        out[...] = COMPLEMENTARY
        out[counts.small] = self.policy.small
        out[counts.shown] = [int(v) for v in counts.noisy[counts.shown]]
        return out


def _rounded(shown: np.ndarray, values: np.ndarray, digits: int) -> np.ndarray:
    out = np.empty(values.shape, dtype=object)
    out[shown] = [round(float(v), digits) for v in values[shown]]
    return out


def _total(noisy: np.ndarray, shown: np.ndarray) -> int | None:
    """Sum of the shown cells only (a hidden cell never enters a total)."""
    return int(noisy[shown].sum()) if shown.any() else None


def _share(cases: np.ndarray, patients: np.ndarray, shown: np.ndarray) -> float | None:
    denominator = patients[shown].sum()
    if not shown.any() or denominator <= 0:
        return None
    return round(float(np.clip(cases[shown].sum() / denominator, 0.0, 1.0)), 4)


def _pooled(shown: np.ndarray, value: np.ndarray) -> float | None:
    return round(float(value), 2) if shown.any() else None


def _mean(centred_mean: np.ndarray, scale: NumericScale) -> np.ndarray:
    return np.clip(centred_mean + scale.centre, scale.lower, scale.upper)


def _std(mean_square: np.ndarray, centred_mean: np.ndarray, scale: NumericScale) -> np.ndarray:
    return np.sqrt(np.clip(mean_square - np.square(centred_mean), 0.0, scale.radius**2))
