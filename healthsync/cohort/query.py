"""What an analyst asks: filter conditions, grouping columns and statistics, as text.

A query is parsed here without looking at any data or even the schema, so
the CLI and the page produce the same object from the same words
(``age >= 70``, ``sex == F``, ``prevalence:diabetes``). Checking the words
against a federation's schema, and putting them into the canonical form
that the cache and the budget ledger key on, is :mod:`healthsync.cohort.plan`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from healthsync.errors import HealthSyncError

OPERATORS = ("==", "!=", "<=", ">=", "<", ">")
STAT_KINDS = ("count", "prevalence", "mean", "std", "histogram")
#: Statistics that need a column after the colon, and what kind of column.
STAT_COLUMN = {
    "prevalence": "outcome",
    "mean": "numeric feature",
    "std": "numeric feature",
    "histogram": "numeric feature",
}
HOSPITAL = "hospital"

_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(==|!=|<=|>=|<|>|=)\s*(.*?)\s*$")


@dataclass(frozen=True, order=True)
class Condition:
    """One comparison ``column op value``; the value stays text until the schema types it."""

    column: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse ``"age >= 70"`` or ``"sex == F"`` (quotes around the value are optional)."""
        match = _CONDITION.match(text or "")
        if match is None:
            raise HealthSyncError(
                f"cannot read condition {text!r}: write COLUMN OPERATOR VALUE, e.g. 'age >= 70' "
                f"(operators {' '.join(OPERATORS)})"
            )
        column, op, value = match.groups()
        if op == "=":
            raise HealthSyncError(f"cannot read condition {text!r}: use '==' to compare")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1].strip()
        if not value or any(o in value for o in ("==", "!=", "<", ">")):
            raise HealthSyncError(f"cannot read condition {text!r}: expected one value after {op}")
        return cls(column, op, value)

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value}"


@dataclass(frozen=True, order=True)
class Stat:
    """One statistic: ``count``, or a kind and its column such as ``mean:age``."""

    kind: str
    column: str = ""

    @classmethod
    def parse(cls, text: str) -> Stat:
        """Parse ``count``, ``prevalence:OUTCOME``, ``mean:F``, ``std:F`` or ``histogram:F``."""
        kind, _, column = (text or "").strip().partition(":")
        kind, column = kind.strip().lower(), column.strip()
        if kind not in STAT_KINDS:
            raise HealthSyncError(
                f"unknown statistic {text!r}: use count, prevalence:OUTCOME, mean:FEATURE, "
                "std:FEATURE or histogram:FEATURE"
            )
        if kind == "count":
            if column:
                raise HealthSyncError(f"statistic {text!r}: count takes no column")
            return cls("count")
        if not column:
            raise HealthSyncError(f"statistic {text!r} needs a column: {kind}:COLUMN")
        return cls(kind, column)

    def __str__(self) -> str:
        return self.kind if not self.column else f"{self.kind}:{self.column}"


@dataclass(frozen=True)
class CohortQuery:
    """A cohort question as words: conditions joined by *and*, groups, statistics.

    Parameters
    ----------
    where : conditions every patient of the cohort meets.
    group_by : columns whose values (or bands) split the cohort into cells.
    stats : what to report per cell; ``count`` is always reported.
    """

    where: tuple[Condition, ...] = ()
    group_by: tuple[str, ...] = ()
    stats: tuple[Stat, ...] = (Stat("count"),)

    @classmethod
    def parse(
        cls,
        where: Sequence[str] = (),
        group_by: Sequence[str] = (),
        stats: Sequence[str] = (),
    ) -> CohortQuery:
        """Build a query from the CLI's or the page's text; ``count`` when no statistic is given."""
        parsed_stats = tuple(Stat.parse(s) for s in stats) or (Stat("count"),)
        columns = tuple(c.strip() for c in group_by)
        if any(not c for c in columns):
            raise HealthSyncError("--group-by needs a column name")
        return cls(tuple(Condition.parse(w) for w in where), columns, parsed_stats)

    def to_dict(self) -> dict[str, list[str]]:
        """The query as lists of text, as the CLI would take it."""
        return {
            "where": [str(c) for c in self.where],
            "group_by": list(self.group_by),
            "stats": [str(s) for s in self.stats],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CohortQuery:
        """Inverse of :meth:`to_dict` (also validates, since the dict may come off a socket)."""
        if not isinstance(data, Mapping):
            raise HealthSyncError("a cohort query must be an object")
        lists = {k: data.get(k, []) for k in ("where", "group_by", "stats")}
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise HealthSyncError(f"cohort query {key!r} must be a list of strings")
        return cls.parse(lists["where"], lists["group_by"], lists["stats"])

    def describe(self) -> str:
        """One line for logs and the audit trail."""
        parts = [", ".join(str(s) for s in self.stats)]
        if self.where:
            parts.append("where " + " and ".join(str(c) for c in self.where))
        if self.group_by:
            parts.append("by " + ", ".join(self.group_by))
        return " ".join(parts)
