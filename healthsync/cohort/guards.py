"""The guards: combine hospitals' noisy aggregates into an answer that may be shown.

Each hospital has already added its own differential-privacy noise, under its
own policy and ledger (:func:`healthsync.cohort.local.hospital_release`), so
nothing here sees an exact count. :func:`release` is the only function that
turns per-hospital aggregates into something that leaves the analytics
service. In order, it

1. combines the hospitals' noisy vectors into the query's cells (per
   hospital when grouping by hospital, pooled otherwise);
2. hides small cells and their complements, case counts whose cases or
   non-cases are few, and merges histogram bins, all decided on the *noisy*
   values (:mod:`healthsync.cohort.suppression`), so whether a cell is shown
   is itself differentially private;
3. derives prevalences, means and deviations from the noisy values of
   shown cells only; min and max are never released;
4. sums the shown cells into a total (never the hidden ones).

Unit tests feed it aggregates directly; the CLI and the page reach it only
through the Flower analytics service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from healthsync.cohort.bands import NumericScale
from healthsync.cohort.local import Aggregates, HospitalReply, aggregate_names
from healthsync.cohort.plan import QueryPlan
from healthsync.cohort.policy import CohortPolicy
from healthsync.cohort.result import COMPLEMENTARY, Budget, Release, stat_keys
from healthsync.cohort.suppression import complementary, merge_bins, primary
from healthsync.errors import HealthSyncError
from healthsync.privacy.site import SiteRefusal


def combine(per_hospital: Mapping[str, Aggregates], plan: QueryPlan) -> Aggregates:
    """The query's cell arrays (shape ``plan.shape``, plus bins) from all hospitals' vectors.

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


def answer(
    replies: Mapping[str, HospitalReply], plan: QueryPlan, policy: CohortPolicy
) -> tuple[Release, Budget]:
    """The guarded answer from every hospital's reply, and the asker's budget as the sites see it.

    The threshold is the strictest of the consortium's and every answering
    hospital's; the budget shown is the tightest (least left) among them.

    Raises
    ------
    SiteRefusal
        When any hospital refused under its own policy: no partial answer is given.
    """
    refused = sorted((h, r.refusal) for h, r in replies.items() if r.refusal)
    if refused:
        hospital, why = refused[0]
        more = f" ({len(refused) - 1} other hospital(s) refused too)" if len(refused) > 1 else ""
        raise SiteRefusal(f"hospital {hospital} refused this query: {why}{more}")
    threshold = max([policy.threshold, *(r.threshold for r in replies.values())])
    charged = max((r.charged for r in replies.values()), default=0.0)
    spent = max((r.spent for r in replies.values()), default=0.0)
    total = min((r.budget for r in replies.values()), default=0.0)
    aggregates = {h: r.aggregates for h, r in replies.items() if r.aggregates is not None}
    guarded = release(aggregates, plan, replace(policy, threshold=threshold), epsilon=charged)
    return guarded, Budget(total, spent)


def release(
    per_hospital: Mapping[str, Aggregates],
    plan: QueryPlan,
    policy: CohortPolicy,
    *,
    epsilon: float = 0.0,
) -> Release:
    """The guarded answer to ``plan`` from every hospital's noisy aggregates.

    Parameters
    ----------
    per_hospital : ``hospital id -> aggregates`` from
        :func:`~healthsync.cohort.local.hospital_release`.
    plan : the checked query.
    policy : the threshold (the strictest of the consortium's and the hospitals').
    epsilon : what the hospitals charged for it (reported with the answer).
    """
    noisy = combine(per_hospital, plan)
    guard = _Guard(plan, policy)
    counts = guard.counts(noisy["patients"])
    for outcome in plan.outcomes:
        guard.prevalence(outcome, noisy[f"cases:{outcome}"], counts)
    for feature in plan.sums:
        squares = noisy.get(f"squares:{feature}")
        guard.moments(feature, noisy[f"sum:{feature}"], squares, counts)
    for feature in plan.histograms:
        guard.histogram(feature, noisy[f"bins:{feature}"], counts)
    return Release.build(
        plan,
        guard.values,
        guard.totals,
        guard.summary,
        threshold=policy.threshold,
        epsilon=epsilon,
    )


class _Counts:
    """A noisy cell count vector, and which cells are small or hidden."""

    def __init__(self, noisy: np.ndarray, small: np.ndarray, hidden: np.ndarray):
        self.noisy, self.small, self.hidden = noisy, small, hidden
        self.shown = ~hidden
        self.divisor = np.maximum(noisy, 1)  # shown cells are all >= threshold anyway


class _Guard:
    """Suppression and derived statistics for one release (one call of :func:`release`)."""

    def __init__(self, plan: QueryPlan, policy: CohortPolicy) -> None:
        self.plan, self.policy = plan, policy
        self.k = policy.threshold
        self.values: dict[str, np.ndarray] = {}
        self.totals: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    def counts(self, noisy: np.ndarray) -> _Counts:
        small = primary(noisy, self.k)
        hidden = complementary(noisy, small, self.k)
        counts = _Counts(noisy, small, hidden)
        self.values["patient_count"] = self._shown_counts(counts)
        self.totals["patient_count"] = _total(noisy, counts.shown)
        self.summary["small_cells"] = int(small.sum())
        self.summary["complementary_cells"] = int((hidden & ~small).sum())
        return counts

    def prevalence(self, outcome: str, noisy: np.ndarray, cells: _Counts) -> None:
        """Case counts and shares, hidden when cases *or* non-cases are few (or the cell is)."""
        count_key, share_key = stat_keys("prevalence", outcome)
        small = cells.small | primary(noisy, self.k)
        others = cells.noisy - noisy
        others_small = primary(others, self.k)
        hidden = complementary(
            np.minimum(noisy, others), small | others_small | cells.hidden, self.k
        )
        cases = _Counts(noisy, small, hidden)
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
        shown, n = cells.shown, cells.divisor
        pooled_n = max(int(cells.noisy[shown].sum()), 1)
        if feature in self.plan.means:
            key = stat_keys("mean", feature)[0]
            self.values[key] = _rounded(shown, _mean(sums / n, scale), 2)
            self.totals[key] = _pooled(shown, _mean(sums[shown].sum() / pooled_n, scale))
        if squares is not None:
            key = stat_keys("std", feature)[0]
            self.values[key] = _rounded(shown, _std(squares / n, sums / n, scale), 2)
            pooled = _std(squares[shown].sum() / pooled_n, sums[shown].sum() / pooled_n, scale)
            self.totals[key] = _pooled(shown, pooled)

    def histogram(self, feature: str, noisy: np.ndarray, cells: _Counts) -> None:
        """Per shown cell, bins merged until each holds ``threshold`` patients (noisy)."""
        scale = self.plan.scales[feature]
        out = np.empty(self.plan.shape, dtype=object)
        merged = hidden = 0
        for index in np.ndindex(self.plan.shape):
            if not cells.shown[index]:
                continue
            first, last = self.plan.bin_range(feature, index)
            runs = merge_bins(noisy[index][first:last], self.k)
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
