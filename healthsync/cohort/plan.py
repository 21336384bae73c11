"""A query checked against a federation's schema: typed filters, cell layout, statistics.

Planning needs only the manifest, so bad input is refused before any
hospital is asked and before any budget is spent. The plan is also the
query's canonical form: conditions sorted, numbers and categories spelled
one way, grouping columns in schema order, so that ``sex == f`` and
``sex == 'F'`` are one query to the cache and the ledger, and asking it
again cannot draw fresh noise.

Cells are the cross product of the grouping columns' levels (hospital ids,
categories, outcome no/yes, clinical bands). Levels that the conditions
rule out (``sex == F`` grouped by sex, ``age >= 70`` grouped by age band)
are dropped from the layout: they are empty by the query's own words, not
by the data, and would otherwise force needless suppression.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from healthsync.cohort.bands import NumericScale, scale_for
from healthsync.cohort.query import HOSPITAL, STAT_COLUMN, CohortQuery, Condition, Stat
from healthsync.data import FeatureSpec, Federation
from healthsync.errors import HealthSyncError

OUTCOME_LEVELS = ("no", "yes")
_TRUE = {"1", "yes", "true", "y", "t"}
_FALSE = {"0", "no", "false", "n", "f"}
_EQUALITY = ("==", "!=")

Kind = Literal["hospital", "categorical", "outcome", "numeric"]


@dataclass(frozen=True)
class Filter:
    """A typed condition: ``value`` is a float for numeric columns, else a level label."""

    column: str
    kind: Kind
    op: str
    value: float | str

    def text(self) -> str:
        value = _number(self.value) if isinstance(self.value, float) else self.value
        return f"{self.column} {self.op} {value}"


@dataclass(frozen=True)
class Dimension:
    """One grouping column: its kept levels, and for banded columns the scale.

    ``codes`` are the positions of the kept levels among all the column's
    levels (all categories, both outcome values, every band), which is how a
    hospital maps a row to a cell.
    """

    column: str
    kind: Kind
    labels: tuple[str, ...]
    codes: tuple[int, ...]
    scale: NumericScale | None = None


@dataclass(frozen=True)
class QueryPlan:
    """Everything a hospital and the guards need to answer one canonical query."""

    query: CohortQuery
    filters: tuple[Filter, ...]
    dimensions: tuple[Dimension, ...]
    outcomes: tuple[str, ...]  # prevalence
    means: tuple[str, ...]
    stds: tuple[str, ...]
    histograms: tuple[str, ...]
    scales: dict[str, NumericScale]
    hospitals: tuple[str, ...]  # hospitals the conditions keep, manifest order
    #: every level of each categorical column the query filters or groups on
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(d.labels) for d in self.dimensions)

    @property
    def n_cells(self) -> int:
        return math.prod(self.shape)

    @property
    def by_hospital(self) -> bool:
        return bool(self.dimensions) and self.dimensions[0].kind == "hospital"

    @property
    def local_dimensions(self) -> tuple[Dimension, ...]:
        """The dimensions a hospital computes itself (all but ``hospital``)."""
        return self.dimensions[1:] if self.by_hospital else self.dimensions

    @property
    def sums(self) -> tuple[str, ...]:
        """Features whose sum is needed (for a mean or a standard deviation)."""
        return tuple(sorted({*self.means, *self.stds}))

    @property
    def measurements(self) -> int:
        """Noisy vectors released: counts, then one per case count, sum, square sum, histogram.

        The query's epsilon is split evenly across them (sequential composition).
        """
        return 1 + len(self.outcomes) + len(self.sums) + len(self.stds) + len(self.histograms)

    @property
    def key(self) -> str:
        """Hash of the canonical query: the cache's and the ledger's key."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:32]

    def bin_range(self, feature: str, index: tuple[int, ...]) -> tuple[int, int]:
        """Histogram bins ``[start, stop)`` of ``feature`` that cell ``index`` can hold at all.

        Bins outside the conditions' range, or outside the cell's own band
        when grouping by the same column, are empty by the query's words;
        leaving them out keeps their noise out of the merged bins.
        """
        scale = self.scales[feature]
        low, high = _interval([f for f in self.filters if f.column == feature])
        for dimension, i in zip(self.dimensions, index, strict=True):
            if dimension.column == feature:
                band_low, band_high = scale.band_bounds(dimension.codes[i])
                low, high = max(low, band_low), min(high, np.nextafter(band_high, -np.inf))
        possible = [
            b for b in range(scale.n_bins) if _overlaps(scale.bin_bounds_open(b), low, high)
        ]
        return (possible[0], possible[-1] + 1) if possible else (0, 0)

    def canonical(self) -> str:
        return json.dumps(self.query.to_dict(), sort_keys=True)


def plan_query(
    federation: Federation,
    query: CohortQuery,
    *,
    max_cells: int,
    withdrawn: Collection[str] = (),
) -> QueryPlan:
    """Check ``query`` against the schema and lay out its cells.

    Hospitals in ``withdrawn`` (``healthsync.privacy.consent``) are left out: not
    asked, not a level of a grouping by hospital. Their nodes refuse anyway.

    Raises
    ------
    HealthSyncError
        For an unknown column, a value of the wrong type or outside the
        column's categories, an operator the column does not support, a
        grouping the schema cannot band, conditions that contradict each
        other, or more than ``max_cells`` cells.
    """
    schema = _Schema(federation, frozenset(withdrawn))
    filters = tuple(sorted({schema.filter(c) for c in query.where}, key=_filter_key))
    schema.check_consistent(filters)
    columns = schema.order_groups(query.group_by)
    dimensions = tuple(schema.dimension(c, filters) for c in columns)
    # Counts are always released (every other statistic needs them), so they are always asked.
    stats = tuple(sorted({Stat("count"), *map(schema.stat, query.stats)}, key=_stat_key))
    cells = math.prod(len(d.labels) for d in dimensions)
    if cells > max_cells:
        raise HealthSyncError(
            f"grouping by {', '.join(columns)} gives {cells:,} cells; at most {max_cells:,} are "
            "allowed (group by fewer columns or filter first)"
        )
    numeric = {s.column for s in stats if s.kind in ("mean", "std", "histogram")}
    canonical = CohortQuery(
        where=tuple(Condition(f.column, f.op, _value_text(f)) for f in filters),
        group_by=columns,
        stats=stats,
    )
    hospitals = next((d.labels for d in dimensions if d.kind == "hospital"), None)
    if not (hospitals or schema.hospitals_kept(filters)):
        raise HealthSyncError(
            "every hospital this query covers has withdrawn from the consortium's queries"
        )
    return QueryPlan(
        query=canonical,
        filters=filters,
        dimensions=dimensions,
        outcomes=tuple(s.column for s in stats if s.kind == "prevalence"),
        means=tuple(s.column for s in stats if s.kind == "mean"),
        stds=tuple(s.column for s in stats if s.kind == "std"),
        histograms=tuple(s.column for s in stats if s.kind == "histogram"),
        scales={
            **schema.filter_scales(filters),
            **{c: schema.scale(c) for c in sorted(numeric | schema.banded(dimensions))},
        },
        hospitals=hospitals or schema.hospitals_kept(filters),
        categories={
            c: schema.levels(c)
            for c in sorted({f.column for f in filters} | set(columns))
            if schema.kind(c) == "categorical"
        },
    )


class _Schema:
    """The manifest's columns, and the rules for using each in a query."""

    def __init__(self, federation: Federation, withdrawn: frozenset[str] = frozenset()) -> None:
        self.federation = federation
        self.withdrawn = withdrawn
        self.features: dict[str, FeatureSpec] = {f.name: f for f in federation.features}
        self.outcomes = federation.outcomes
        self.order = (HOSPITAL, *federation.feature_names, *federation.outcomes)
        self._lower: dict[str, dict[str, list[str]]] = {}

    def kind(self, column: str) -> Kind:
        if column == HOSPITAL:
            return "hospital"
        if column in self.outcomes:
            return "outcome"
        spec = self.features.get(column)
        if spec is None:
            raise HealthSyncError(
                f"unknown column {column!r}; choose hospital, a feature "
                f"({', '.join(self.federation.feature_names)}) or an outcome "
                f"({', '.join(self.outcomes)})"
            )
        return "numeric" if spec.kind == "numeric" else "categorical"

    def levels(self, column: str) -> tuple[str, ...]:
        kind = self.kind(column)
        if kind == "hospital":
            return self.federation.hospital_ids
        if kind == "outcome":
            return OUTCOME_LEVELS
        if kind == "categorical":
            return self.features[column].categories or ()
        return self.scale(column).band_labels

    def scale(self, column: str) -> NumericScale:
        scale = scale_for(self.features[column])
        if scale is None:
            raise HealthSyncError(
                f"numeric column {column!r} has no documented bands or bounds, so it can be "
                "filtered on but not grouped, averaged or drawn (see docs/cohort.md)"
            )
        return scale

    # ------------------------------------------------------------ parts
    def filter(self, condition: Condition) -> Filter:
        kind = self.kind(condition.column)
        if kind == "numeric":
            try:
                value = float(condition.value)
            except ValueError:
                raise HealthSyncError(
                    f"condition '{condition}': {condition.column} is numeric, "
                    f"{condition.value!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise HealthSyncError(f"condition '{condition}': the value must be finite")
            return Filter(condition.column, kind, condition.op, value)
        if condition.op not in _EQUALITY:
            raise HealthSyncError(
                f"condition '{condition}': {condition.column} is not numeric; use == or !="
            )
        return Filter(condition.column, kind, condition.op, self._level(condition))

    def _by_lower(self, column: str) -> dict[str, list[str]]:
        """``column``'s levels by their lower case, built once per query (a condition per
        hospital over 100,000 hospitals must not scan them all each time)."""
        if column not in self._lower:
            index: dict[str, list[str]] = {}
            for level in self.levels(column):
                index.setdefault(level.lower(), []).append(level)
            self._lower[column] = index
        return self._lower[column]

    def _level(self, condition: Condition) -> str:
        text = condition.value.strip()
        if self.kind(condition.column) == "outcome":
            if text.lower() in _TRUE:
                return "yes"
            if text.lower() in _FALSE:
                return "no"
            raise HealthSyncError(
                f"condition '{condition}': outcome {condition.column} is 1/yes or 0/no"
            )
        levels = self.levels(condition.column)
        matches = self._by_lower(condition.column).get(text.lower(), [])
        if len(matches) != 1:
            shown = ", ".join(levels[:8]) + (", …" if len(levels) > 8 else "")
            raise HealthSyncError(
                f"condition '{condition}': {text!r} is not a value of {condition.column} ({shown})"
            )
        return matches[0]

    def check_consistent(self, filters: tuple[Filter, ...]) -> None:
        """Refuse conditions on one column that no value can meet (``age > 70 and age < 30``)."""
        for column in sorted({f.column for f in filters}):
            mine = [f for f in filters if f.column == column]
            if mine[0].kind == "numeric":
                low, high = _interval(mine)
                empty = low > high
            else:
                allowed = _allowed(mine)
                empty = not any(allowed(level) for level in self.levels(column))
            if empty:
                raise HealthSyncError(f"the conditions on {column} contradict each other")

    def order_groups(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        for column in columns:
            self.kind(column)  # unknown columns fail here with the helpful message
        unique = set(columns)
        return tuple(c for c in self.order if c in unique)

    def dimension(self, column: str, filters: tuple[Filter, ...]) -> Dimension:
        """The column's levels that ``filters`` (already checked consistent) leave possible."""
        kind = self.kind(column)
        levels = self.levels(column)
        mine = [f for f in filters if f.column == column]
        if kind == "numeric":
            scale = self.scale(column)
            low, high = _interval(mine)
            keep = [i for i in range(len(levels)) if _overlaps(scale.band_bounds(i), low, high)]
        else:
            scale = None
            allowed = _allowed(mine)
            keep = [
                i
                for i, level in enumerate(levels)
                if allowed(level) and not (kind == "hospital" and level in self.withdrawn)
            ]
        return Dimension(column, kind, tuple(levels[i] for i in keep), tuple(keep), scale)

    def stat(self, stat: Stat) -> Stat:
        if stat.kind == "count":
            return stat
        kind = self.kind(stat.column)
        wanted = STAT_COLUMN[stat.kind]
        if (wanted == "outcome") != (kind == "outcome") or (
            wanted != "outcome" and kind != "numeric"
        ):
            raise HealthSyncError(f"statistic '{stat}': {stat.column} is not a {wanted}")
        if kind == "numeric":
            self.scale(stat.column)
        return stat

    def filter_scales(self, filters: tuple[Filter, ...]) -> dict[str, NumericScale]:
        """Documented bounds of the numeric columns filtered on: conditions compare clipped values."""
        found = {
            f.column: scale_for(self.features[f.column]) for f in filters if f.kind == "numeric"
        }
        return {column: scale for column, scale in found.items() if scale is not None}

    def banded(self, dimensions: tuple[Dimension, ...]) -> set[str]:
        return {d.column for d in dimensions if d.kind == "numeric"}

    def hospitals_kept(self, filters: tuple[Filter, ...]) -> tuple[str, ...]:
        allowed = _allowed([f for f in filters if f.kind == "hospital"])
        return tuple(
            h for h in self.federation.hospital_ids if allowed(h) and h not in self.withdrawn
        )


def _allowed(filters: list[Filter]) -> Callable[[str], bool]:
    """Whether a level passes every ``==`` and ``!=`` of ``filters``.

    Looked up in sets: Overview leaves out every hospital that has not
    published with one ``hospital != ID`` each, and checking 100,000 hospitals
    against 100,000 conditions one by one took hours.
    """
    equal = {f.value for f in filters if f.op == "=="}
    unequal = {f.value for f in filters if f.op != "=="}
    if len(equal) > 1:  # two different values: nothing passes
        return lambda level: False
    return lambda level: (not equal or level in equal) and level not in unequal


def _interval(filters: list[Filter]) -> tuple[float, float]:
    """The closed hull ``[low, high]`` of values that pass every range condition."""
    low, high = -math.inf, math.inf
    for f in filters:
        value = float(f.value)
        if f.op in (">", ">=", "=="):
            low = max(low, value)
        if f.op in ("<", "<=", "=="):
            high = min(high, value)
    return low, high


def _overlaps(band: tuple[float, float], low: float, high: float) -> bool:
    return band[0] <= high and low < band[1]


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _value_text(f: Filter) -> str:
    return _number(f.value) if isinstance(f.value, float) else str(f.value)


def _filter_key(f: Filter) -> tuple[str, str, str]:
    return (f.column, f.op, _value_text(f))


def _stat_key(stat: Stat) -> tuple[int, str]:
    order = ("count", "prevalence", "mean", "std", "histogram")
    return order.index(stat.kind), stat.column
