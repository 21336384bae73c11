"""What each number of a cohort answer measures, in words that do not depend on spelling.

A hospital's release store (:mod:`healthsync.privacy.site`) keys every
released value by the quantity it measures, so that the same quantity is
released once, whoever asks and however they phrase it. The quantity is a
*predicate* over columns (which patients) plus, for sums, the column and its
clipping bounds:

- numeric columns with documented bounds compare their value clipped to
  those bounds (as bands and sums already do), so ``age > -1``, ``age >= 0``
  and no condition at all select the same patients and share one key;
- conditions on one column combine into one interval with open or closed
  ends, plus excluded points (``!=``) that fall inside it; a column whose
  interval is its whole documented range drops out;
- categorical columns and outcomes become the set of levels allowed; all
  levels means no condition;
- a prevalence's case count in a cell is the count of the cell *and*
  ``outcome == yes``, and a histogram bin is the count of the cell *and* the
  bin's range, so they share keys with the plain counts they equal.

Keys are built from the query's words and the schema only, never from the
rows (see :mod:`healthsync.privacy.site` for why), prefixed with the
hospital's data version so that new data never reuses old noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping

import numpy as np

from healthsync.cohort.bands import NumericScale
from healthsync.cohort.plan import OUTCOME_LEVELS, Dimension, Filter, QueryPlan
from healthsync.privacy.site import Measure

#: A predicate no patient can meet (its count is 0 by the query's own words).
EMPTY = "empty"

Bound = tuple[float, bool]  # (value, strict)


class _Numeric:
    """An interval with open or closed ends and excluded points, for one numeric column."""

    def __init__(self, scale: NumericScale | None) -> None:
        self.full: tuple[Bound, Bound] = (
            ((scale.lower, False), (scale.upper, False))
            if scale
            else ((-math.inf, False), (math.inf, False))
        )
        self.low, self.high = self.full
        self.excluded: set[float] = set()

    def above(self, value: float, strict: bool) -> None:
        self.low = max(self.low, (value, strict))

    def below(self, value: float, strict: bool) -> None:
        # A strict upper bound is tighter than a closed one at the same value.
        self.high = min(self.high, (value, strict), key=lambda b: (b[0], not b[1]))

    def apply(self, op: str, value: float) -> None:
        if op in (">", ">="):
            self.above(value, op == ">")
        elif op in ("<", "<="):
            self.below(value, op == "<")
        elif op == "==":
            self.above(value, False)
            self.below(value, False)
        else:
            self.excluded.add(value)

    def contains(self, value: float) -> bool:
        (low, low_strict), (high, high_strict) = self.low, self.high
        above = value > low or (value == low and not low_strict)
        below = value < high or (value == high and not high_strict)
        return above and below

    def canonical(self) -> list | str | None:
        """``None`` for no condition, :data:`EMPTY` for none possible, else a JSON-able form."""
        self.low = max(self.low, self.full[0])
        self.high = min(self.high, self.full[1], key=lambda b: (b[0], not b[1]))
        (low, low_strict), (high, high_strict) = self.low, self.high
        if low > high or (low == high and (low_strict or high_strict or low in self.excluded)):
            return EMPTY
        excluded = sorted(v for v in self.excluded if self.contains(v))
        if (self.low, self.high) == self.full and not excluded:
            return None
        return [
            "range",
            _num(low),
            low_strict,
            _num(high),
            high_strict,
            [_num(v) for v in excluded],
        ]


def _num(value: float) -> str | float:
    return repr(float(value)) if math.isfinite(value) else ("inf" if value > 0 else "-inf")


class _Predicate:
    """Which patients a cell holds: one condition per column, canonicalised."""

    def __init__(self, plan: QueryPlan, levels: Mapping[str, tuple[str, ...]]) -> None:
        self.plan = plan
        self.levels = levels
        self.numeric: dict[str, _Numeric] = {}
        self.sets: dict[str, set[str]] = {}

    def copy(self) -> _Predicate:
        other = _Predicate(self.plan, self.levels)
        for column, interval in self.numeric.items():
            twin = _Numeric(None)
            twin.full, twin.low, twin.high = interval.full, interval.low, interval.high
            twin.excluded = set(interval.excluded)
            other.numeric[column] = twin
        other.sets = {c: set(s) for c, s in self.sets.items()}
        return other

    def interval(self, column: str) -> _Numeric:
        if column not in self.numeric:
            self.numeric[column] = _Numeric(self.plan.scales.get(column))
        return self.numeric[column]

    def only(self, column: str, allowed: set[str]) -> None:
        current = self.sets.get(column, set(self.levels[column]))
        self.sets[column] = current & allowed

    def add_filter(self, f: Filter) -> None:
        if f.kind == "hospital":
            return  # a hospital holds only its own patients; the plan chose who answers
        if f.kind == "numeric":
            self.interval(f.column).apply(f.op, float(f.value))
        elif f.op == "==":
            self.only(f.column, {str(f.value)})
        else:
            self.only(f.column, set(self.levels[f.column]) - {str(f.value)})

    def add_level(self, dimension: Dimension, position: int) -> None:
        if dimension.kind == "numeric":
            low, high = dimension.scale.band_bounds(dimension.codes[position])
            interval = self.interval(dimension.column)
            interval.above(low, False)
            interval.below(high, True)
        else:
            self.only(dimension.column, {dimension.labels[position]})

    def add_range(self, column: str, low: float, high: float) -> None:
        interval = self.interval(column)
        interval.above(low, False)
        interval.below(high, True)

    def key(self) -> str:
        parts = []
        for column in sorted({*self.numeric, *self.sets}):
            if column in self.numeric:
                form = self.numeric[column].canonical()
            else:
                allowed = self.sets[column]
                form = None if allowed >= set(self.levels[column]) else ["in", sorted(allowed)]
                form = EMPTY if not allowed else form
            if form == EMPTY:
                return EMPTY
            if form is not None:
                parts.append([column, form])
        return json.dumps(parts, separators=(",", ":"))


def measures(plan: QueryPlan, exact: Mapping[str, np.ndarray], version: str) -> list[Measure]:
    """The site-release vectors for one hospital's exact aggregates (``aggregate_names`` order).

    Parameters
    ----------
    plan : the checked query.
    exact : the hospital's aggregates (:func:`~healthsync.cohort.local.hospital_aggregates`).
    version : the hospital's data version; part of every key.
    """
    levels = _levels(plan)
    cells = list(_cells(plan, levels))
    out: list[Measure] = []

    def counted(predicates: list[_Predicate], name: str) -> None:
        keys = [f"{version}|n|{p.key()}" for p in predicates]
        out.append(Measure(keys, np.asarray(exact[name]), "count"))

    counted(cells, "patients")
    for outcome in plan.outcomes:
        with_cases = []
        for cell in cells:
            case = cell.copy()
            case.only(outcome, {OUTCOME_LEVELS[1]})
            with_cases.append(case)
        counted(with_cases, f"cases:{outcome}")
    for feature in plan.sums:
        scale = plan.scales[feature]
        tag = f"{feature}|{_num(scale.lower)}|{_num(scale.upper)}"
        keys = [f"{version}|s|{tag}|{c.key()}" for c in cells]
        out.append(Measure(keys, np.asarray(exact[f"sum:{feature}"]), "sum", scale.radius))
    for feature in plan.stds:
        scale = plan.scales[feature]
        tag = f"{feature}|{_num(scale.lower)}|{_num(scale.upper)}"
        keys = [f"{version}|q|{tag}|{c.key()}" for c in cells]
        squares = np.asarray(exact[f"squares:{feature}"])
        out.append(Measure(keys, squares, "sum", scale.radius**2))
    for feature in plan.histograms:
        scale = plan.scales[feature]
        binned = []
        for cell in cells:
            for b in range(scale.n_bins):
                part = cell.copy()
                part.add_range(feature, *scale.bin_bounds_open(b))
                binned.append(part)
        counted(binned, f"bins:{feature}")
    return out


def _levels(plan: QueryPlan) -> dict[str, tuple[str, ...]]:
    """Every level of each categorical column or outcome the query mentions (not only kept ones)."""
    levels: dict[str, tuple[str, ...]] = {o: OUTCOME_LEVELS for o in plan.outcomes}
    for f in plan.filters:
        if f.kind == "outcome":
            levels[f.column] = OUTCOME_LEVELS
        elif f.kind == "categorical":
            levels[f.column] = plan.categories[f.column]
    for d in plan.local_dimensions:
        if d.kind == "outcome":
            levels[d.column] = OUTCOME_LEVELS
        elif d.kind == "categorical":
            levels[d.column] = plan.categories[d.column]
    return levels


def _cells(plan: QueryPlan, levels: Mapping[str, tuple[str, ...]]) -> Iterator[_Predicate]:
    """One predicate per local cell, in the C order of ``hospital_aggregates``."""
    base = _Predicate(plan, levels)
    for f in plan.filters:
        base.add_filter(f)
    shape = tuple(len(d.labels) for d in plan.local_dimensions)
    for index in np.ndindex(shape):
        cell = base.copy()
        for dimension, position in zip(plan.local_dimensions, index, strict=True):
            cell.add_level(dimension, position)
        yield cell
