"""A guarded cohort answer, and how it is shown: JSON, a text table, frames for charts.

:class:`Release` is what the guards produce and what the analytics service
sends back, so it holds only shown values and markers: every count is an
int of at least the threshold, ``"<11"`` (small) or ``"suppressed"``
(hidden so that a small cell cannot be recovered), under a key containing
``count``. :class:`CohortResult` adds who asked, whether the answer came
from the cache, and the privacy budget left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from healthsync.cohort.plan import QueryPlan
from healthsync.cohort.query import HOSPITAL

COMPLEMENTARY = "suppressed"


def stat_keys(kind: str, column: str) -> tuple[str, ...]:
    """The keys a statistic fills in each cell (``prevalence:diabetes`` fills two)."""
    if kind == "count":
        return ("patient_count",)
    if kind == "prevalence":
        return (f"{column}_case_count", f"{column}_prevalence")
    return (f"{column}_{kind}",)


@dataclass(frozen=True)
class Release:
    """The guarded cells of one query, as sent from the analytics service.

    Parameters
    ----------
    dimensions : grouping columns, in the cells' order (empty: one cell, the whole cohort).
    cells : one mapping per cell: its levels, then the statistics' keys.
    total : the statistics over the *shown* cells (``"suppressed"`` if none is shown).
    suppressed : what the guards hid or merged, for the audit log.
    threshold, epsilon : the policy that produced it.
    """

    dimensions: tuple[str, ...]
    cells: tuple[dict[str, Any], ...]
    total: dict[str, Any]
    suppressed: dict[str, Any]
    threshold: int
    epsilon: float

    @classmethod
    def build(
        cls,
        plan: QueryPlan,
        values: Mapping[str, np.ndarray],
        totals: Mapping[str, Any],
        summary: Mapping[str, Any],
        *,
        threshold: int,
        epsilon: float,
    ) -> Release:
        """Lay the guards' per-cell arrays out as one mapping per cell."""
        cells = []
        for index in np.ndindex(plan.shape):
            cell: dict[str, Any] = {
                d.column: d.labels[i] for d, i in zip(plan.dimensions, index, strict=True)
            }
            cell.update({key: array[index] for key, array in values.items()})
            cells.append(cell)
        total = {k: COMPLEMENTARY if v is None and "count" in k else v for k, v in totals.items()}
        return cls(
            tuple(d.column for d in plan.dimensions),
            tuple(cells),
            total,
            dict(summary),
            threshold,
            epsilon,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_by": list(self.dimensions),
            "cells": list(self.cells),
            "total": self.total,
            "suppressed": self.suppressed,
            "threshold": self.threshold,
            "epsilon": self.epsilon,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Release:
        return cls(
            tuple(data["group_by"]),
            tuple(data["cells"]),
            dict(data["total"]),
            dict(data["suppressed"]),
            int(data["threshold"]),
            float(data["epsilon"]),
        )

    def describe_suppression(self) -> str:
        """One line for the audit log: what was hidden or merged."""
        parts = []
        for key, value in self.suppressed.items():
            if isinstance(value, dict):
                parts += [f"{key} {column}: {n}" for column, n in value.items() if n]
            elif value:
                parts.append(f"{key}: {value}")
        return "; ".join(parts) or "nothing"


@dataclass(frozen=True)
class Budget:
    """A user's epsilon on one federation."""

    total: float
    spent: float

    @property
    def left(self) -> float:
        return max(self.total - self.spent, 0.0)

    def to_dict(self) -> dict[str, float]:
        return {"total": self.total, "spent": round(self.spent, 6), "left": round(self.left, 6)}

    def describe(self) -> str:
        return f"privacy budget left: {self.left:g} of {self.total:g} (epsilon)"


@dataclass(frozen=True)
class CohortResult:
    """The answer the CLI prints and the page shows."""

    federation: str
    user: str
    query: dict[str, list[str]]
    release: Release
    cached: bool
    epsilon_spent: float
    budget: Budget
    #: Hospitals left out because they withdrew consent (``healthsync.privacy.consent``).
    withdrawn: tuple[str, ...] = ()

    def to_dict(self, names: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The ``--json`` output; ``names`` (id -> label) replaces hospital ids where given."""
        release = self.release.to_dict()
        if names:
            release["cells"] = [
                {**cell, **self._levels(cell, names)} for cell in release.get("cells", [])
            ]
        return {
            "withdrawn_hospitals": [names.get(h, h) if names else h for h in self.withdrawn],
            "federation": self.federation,
            "user": self.user,
            "query": self.query,
            "cached": self.cached,
            "epsilon_spent": self.epsilon_spent,
            "privacy_budget": self.budget.to_dict(),
            **release,
        }

    def to_json(self, names: Mapping[str, str] | None = None) -> str:
        return json.dumps(self.to_dict(names), ensure_ascii=False)

    @property
    def columns(self) -> list[str]:
        """Statistic keys in the query's order (histograms excluded; they are per bin)."""
        keys = []
        for text in self.query["stats"]:
            kind, _, column = text.partition(":")
            if kind != "histogram":
                keys += [k for k in stat_keys(kind, column) if k not in keys]
        return keys

    def values(self, names: Mapping[str, str] | None = None) -> pl.DataFrame:
        """One row per cell: levels, then numbers (``null`` where hidden), for charts.

        ``names`` (hospital id -> name, from the manifest) shows hospitals by
        name, as every other page does; without it they keep their ids.
        """
        rows = [
            {
                **self._levels(cell, names),
                **{k: cell[k] if isinstance(cell[k], int | float) else None for k in self.columns},
            }
            for cell in self.release.cells
        ]
        schema = {d: pl.String for d in self.release.dimensions}
        schema |= {k: pl.Int64 if "count" in k else pl.Float64 for k in self.columns}
        return pl.DataFrame(rows, schema=schema, orient="row")

    def table(self, names: Mapping[str, str] | None = None) -> pl.DataFrame:
        """One row per cell, every value as display text (``<11``, ``suppressed``, ``–``)."""
        rows = [
            {
                **self._levels(cell, names),
                **{k: _display(k, cell[k]) for k in self.columns},
            }
            for cell in self.release.cells
        ]
        columns = [*self.release.dimensions, *self.columns]
        return pl.DataFrame(rows, schema=dict.fromkeys(columns, pl.String), orient="row")

    def histograms(self, feature: str, names: Mapping[str, str] | None = None) -> pl.DataFrame:
        """Shown bins of ``feature`` per cell: levels, ``cell``, ``bin, lower, upper, bin_count``."""
        key = stat_keys("histogram", feature)[0]
        rows = []
        for cell in self.release.cells:
            label = " · ".join(str(v) for v in self._levels(cell, names).values()) or "all patients"
            for b in cell.get(key) or []:
                rows.append({"cell": label, **b})
        schema = {
            "cell": pl.String,
            "bin": pl.String,
            "lower": pl.Float64,
            "upper": pl.Float64,
            "bin_count": pl.Int64,
        }
        return pl.DataFrame(rows, schema=schema)

    def _levels(self, cell: Mapping[str, Any], names: Mapping[str, str] | None) -> dict[str, Any]:
        """The cell's grouping levels, a hospital's by its name when ``names`` has it."""
        named = names or {}
        return {
            d: named.get(cell[d], cell[d]) if d == HOSPITAL else cell[d]
            for d in self.release.dimensions
        }

    def describe_total(self) -> str:
        """The statistics over the shown cells, as display text."""
        return ", ".join(f"{k} {_display(k, v)}" for k, v in self.release.total.items())

    def describe_withdrawn(self, names: Mapping[str, str] | None = None) -> str:
        """Which hospitals this answer leaves out because they withdrew (empty if none)."""
        if not self.withdrawn:
            return ""
        shown = ", ".join((names or {}).get(h, h) for h in self.withdrawn)
        return f"excludes {len(self.withdrawn)} withdrawn hospital(s): {shown}"

    def histogram_features(self) -> list[str]:
        return [s.partition(":")[2] for s in self.query["stats"] if s.startswith("histogram:")]

    def text(self, names: Mapping[str, str] | None = None) -> str:
        """A readable table for the terminal, then any histograms and the budget.

        ``names`` (hospital id -> label) shows hospitals as the reader may see them.
        """
        table = self.table(names)
        lines = [_format_table(table.columns, table.rows())]
        lines.append(f"total of shown cells: {self.describe_total()}")
        for feature in self.histogram_features():
            bins = self.histograms(feature, names)
            lines.append(f"\nhistogram of {feature} (bins merged to >= {self.release.threshold}):")
            for row in bins.iter_rows(named=True):
                lines.append(f"  {row['cell']:<24} {row['bin']:>10}  {row['bin_count']:>8,}")
            if bins.is_empty():
                lines.append("  every histogram was suppressed (too few patients)")
        source = (
            "cached answer, no budget spent" if self.cached else f"spent {self.epsilon_spent:g}"
        )
        if self.withdrawn:
            lines.append(self.describe_withdrawn(names))
        lines.append(f"\n{self.budget.describe()} ({source})")
        return "\n".join(lines)


def _display(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if key.endswith("_prevalence"):
        return f"{value:.1%}"
    if "count" in key:
        return f"{int(value):,}"
    return f"{value:.2f}"


def _format_table(columns: list[str], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])
