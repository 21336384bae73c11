"""The hospital side of a cohort query: one hospital's per-cell aggregates, noised at home.

This runs inside a hospital (a Flower ClientApp, ``simulation/analytics_client.py``)
on the rows its own accessor returns. :func:`hospital_aggregates` computes
exact vectors over the query's cells: patient counts, case counts per
outcome, sums and sums of squares of clipped, centred values, and histogram
bin counts. :func:`hospital_release` passes them through the hospital's own
privacy gate (:mod:`healthsync.privacy.site`), which adds the noise and
charges the asking user against the hospital's own ledger and policy; only
those noisy vectors leave. The guards then combine hospitals and suppress
small cells on the noisy values (:mod:`healthsync.cohort.guards`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from healthsync.cohort.measures import measures
from healthsync.cohort.plan import OUTCOME_LEVELS, Dimension, QueryPlan
from healthsync.privacy.release import MIN_CELL
from healthsync.privacy.site import SiteAnswer, SiteRefusal

if TYPE_CHECKING:
    from healthsync.data import HospitalAccessor

Aggregates = dict[str, np.ndarray]

_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def aggregate_names(plan: QueryPlan) -> list[str]:
    """The vectors a hospital returns for ``plan``, in a fixed order."""
    names = ["patients"]
    names += [f"cases:{o}" for o in plan.outcomes]
    names += [f"sum:{f}" for f in plan.sums]
    names += [f"squares:{f}" for f in plan.stds]
    names += [f"bins:{f}" for f in plan.histograms]
    return names


def hospital_aggregates(rows: pl.DataFrame, plan: QueryPlan, hospital_id: str) -> Aggregates:
    """Per-cell counts, sums, sums of squares and bin counts of one hospital's patients.

    Parameters
    ----------
    rows : the hospital's patients, from its own accessor (``open_hospital(...).rows()``).
    plan : the checked query.
    hospital_id : which hospital this is, for conditions on ``hospital``.

    Returns
    -------
    dict of 1-D arrays over the hospital's cells (the cross product of the
    non-hospital grouping levels, C order); ``bins:F`` arrays hold
    ``cells x bins`` values, cell-major. Values are clipped to the column's
    documented bounds and centred before summing, which bounds what any one
    patient can add.
    """
    shape = tuple(len(d.labels) for d in plan.local_dimensions)
    cells = math.prod(shape)
    if hospital_id not in plan.hospitals:
        return _empty(plan, cells)
    selected = rows.filter(_mask(plan)) if plan.filters else rows
    codes = [_codes(selected, d) for d in plan.local_dimensions]
    if codes:
        valid = np.logical_and.reduce([c >= 0 for c in codes])
        cell = np.ravel_multi_index([c[valid] for c in codes], shape)
        selected = selected.filter(pl.Series(valid))
    else:
        cell = np.zeros(selected.height, dtype=np.int64)

    out: Aggregates = {"patients": np.bincount(cell, minlength=cells).astype(np.int64)}
    for outcome in plan.outcomes:
        # An incident outcome is empty for patients who had it at baseline: no new case.
        cases = selected[outcome].fill_null(0).to_numpy().astype(np.float64)
        out[f"cases:{outcome}"] = np.bincount(cell, cases, minlength=cells).round().astype(np.int64)
    centred = {f: _centred(selected, plan, f) for f in plan.sums}
    for feature in plan.sums:
        out[f"sum:{feature}"] = np.bincount(cell, centred[feature], minlength=cells)
    for feature in plan.stds:
        out[f"squares:{feature}"] = np.bincount(cell, centred[feature] ** 2, minlength=cells)
    for feature in plan.histograms:
        scale = plan.scales[feature]
        values = selected[feature].to_numpy()
        bins = np.searchsorted(np.asarray(scale.bin_cuts), values, side="right")
        flat = cell * scale.n_bins + bins
        out[f"bins:{feature}"] = np.bincount(flat, minlength=cells * scale.n_bins).astype(np.int64)
    return out


def hospital_release(
    accessor: HospitalAccessor,
    plan: QueryPlan,
    user: str,
    *,
    epsilon: float | None = None,
    budget_cap: float | None = None,
    rng: np.random.Generator | None = None,
) -> HospitalReply:
    """This hospital's noisy aggregates for ``plan``, released by its own gate for ``user``.

    A refusal by the hospital's policy comes back as a reply with ``refusal``
    set (nothing was released or charged); a broken partition raises.
    """
    exact = hospital_aggregates(accessor.rows(), plan, accessor.hospital.id)
    try:
        answer: SiteAnswer = accessor.site().release(
            user,
            measures(plan, exact, accessor.version()),
            query=plan.query.describe(),
            epsilon=epsilon,
            budget_cap=budget_cap,
            rng=rng,
        )
    except SiteRefusal as refusal:
        return HospitalReply(None, refusal=str(refusal))
    return HospitalReply(
        dict(zip(aggregate_names(plan), answer.values, strict=True)),
        charged=answer.charged,
        spent=answer.spent,
        budget=answer.budget,
        threshold=answer.threshold,
    )


@dataclass(frozen=True)
class HospitalReply:
    """What one hospital sends back: its noisy aggregates and its own accounting, or a refusal."""

    aggregates: Aggregates | None
    charged: float = 0.0
    spent: float = 0.0
    budget: float = 0.0
    threshold: int = MIN_CELL
    refusal: str | None = None

    def accounting(self) -> dict[str, float]:
        """The numbers for a ``MetricRecord`` next to the aggregates."""
        return {
            "charged": self.charged,
            "spent": self.spent,
            "budget": self.budget,
            "threshold": float(self.threshold),
        }

    @classmethod
    def from_records(
        cls, aggregates: Aggregates, accounting: Mapping[str, object]
    ) -> HospitalReply:
        return cls(
            aggregates,
            charged=float(accounting["charged"]),
            spent=float(accounting["spent"]),
            budget=float(accounting["budget"]),
            threshold=int(accounting["threshold"]),
        )


def to_record(aggregates: Mapping[str, np.ndarray]) -> dict[str, list[int] | list[float]]:
    """Plain lists for a Flower ``MetricRecord`` (counts as ints, sums as floats)."""
    return {
        name: [int(v) for v in values] if values.dtype.kind in "iu" else [float(v) for v in values]
        for name, values in aggregates.items()
    }


def from_record(record: Mapping[str, object], plan: QueryPlan) -> Aggregates:
    """Arrays back from a ``MetricRecord``; exactly the vectors ``plan`` asks for."""
    out: Aggregates = {}
    for name in aggregate_names(plan):
        out[name] = np.asarray(record[name], dtype=_dtype(name))
    return out


def _empty(plan: QueryPlan, cells: int) -> Aggregates:
    out: Aggregates = {}
    for name in aggregate_names(plan):
        width = plan.scales[name[5:]].n_bins if name.startswith("bins:") else 1
        out[name] = np.zeros(cells * width, dtype=_dtype(name))
    return out


def _dtype(name: str) -> type:
    """Sums are real numbers; everything else a hospital returns is a count."""
    return np.float64 if name.startswith(("sum:", "squares:")) else np.int64


def _centred(frame: pl.DataFrame, plan: QueryPlan, feature: str) -> np.ndarray:
    """Values clipped to the documented bounds, minus the bounds' centre: each is within ±radius."""
    scale = plan.scales[feature]
    values = np.clip(frame[feature].to_numpy(), scale.lower, scale.upper)
    return values - scale.centre


def _mask(plan: QueryPlan) -> pl.Expr:
    """The conditions as one expression; numeric values are compared clipped to their bounds."""
    parts = []
    for f in plan.filters:
        if f.kind == "hospital":
            continue  # decided by the plan's hospital list
        value = OUTCOME_LEVELS.index(str(f.value)) if f.kind == "outcome" else f.value
        column = pl.col(f.column)
        if f.column in plan.scales:
            column = column.clip(plan.scales[f.column].lower, plan.scales[f.column].upper)
        parts.append(_OPS[f.op](column, value))
    return pl.all_horizontal(parts) if parts else pl.lit(True)


def _codes(frame: pl.DataFrame, dimension: Dimension) -> np.ndarray:
    """Each row's position among the dimension's kept levels (-1 if the plan ruled it out)."""
    values = frame[dimension.column]
    if dimension.kind == "categorical":
        mapping = {label: i for i, label in enumerate(dimension.labels)}
        return values.replace_strict(mapping, default=-1, return_dtype=pl.Int64).to_numpy()
    if dimension.kind == "numeric":
        cuts = np.asarray(dimension.scale.band_cuts)
        full = np.searchsorted(cuts, values.to_numpy(), side="right")
    else:  # outcome: 0 is "no", 1 is "yes"; empty (not at risk of an incident outcome) is -1
        full = values.fill_null(-1).to_numpy().astype(np.int64)
    positions = np.full(max(dimension.codes) + 2, -1, dtype=np.int64)
    positions[list(dimension.codes)] = np.arange(len(dimension.codes))
    return positions[np.minimum(full, len(positions) - 1)]
