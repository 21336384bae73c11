"""What the Cohort explorer page offers, and its widget values turned into query text.

The page builds the same text the CLI takes (``age >= 70``, ``sex != M``),
so both reach :func:`~healthsync.cohort.explore` the same way, and the page
can show the equivalent command. Choices come from the manifest only.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from healthsync.cohort.bands import scale_for
from healthsync.cohort.plan import OUTCOME_LEVELS
from healthsync.cohort.query import HOSPITAL
from healthsync.data import Federation, open_hospital
from healthsync.data.labels import column_label
from healthsync.errors import HealthSyncError

ANY = "(any)"


@dataclass(frozen=True)
class ColumnChoice:
    """One column as the page shows it.

    ``bounds`` are the documented clipping bounds of a numeric column (the
    slider's range), ``None`` when HealthSync knows none (free number inputs).
    """

    name: str
    kind: str
    levels: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None
    unit: str | None = None

    @property
    def groupable(self) -> bool:
        return self.kind != "numeric" or self.bounds is not None

    @property
    def label(self) -> str:
        """The widget's label: the schema's name and unit, "BMI (kg/m²)"."""
        return column_label(self.name, self.unit)

    @property
    def step(self) -> float:
        """A slider step a person would choose: whole years of age, 0.5 kg/m² of BMI.

        Steps follow the range, not the data: 1 over a range of 50 units or
        more, 0.5 over 20 or more, 0.1 below (HbA1c's 4-14 %).
        """
        low, high = self.bounds or (0.0, 100.0)
        span = high - low
        return 1 if span >= 50 else 0.5 if span >= 20 else 0.1

    @property
    def slider_range(self) -> tuple[float, float]:
        """``bounds`` as whole numbers when the step is whole, so the slider shows no decimals."""
        low, high = self.bounds or (0.0, 100.0)
        return (int(low), int(high)) if self.step == 1 else (low, high)

    @property
    def number_format(self) -> str:
        """printf-style format of the slider's values: no decimals for a whole step."""
        return "%d" if self.step == 1 else "%.1f"


@dataclass(frozen=True)
class Choices:
    """Every column and statistic a federation's schema allows."""

    columns: tuple[ColumnChoice, ...]
    stats: tuple[str, ...]

    def column(self, name: str) -> ColumnChoice:
        return next(c for c in self.columns if c.name == name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def groupable(self) -> list[str]:
        return [c.name for c in self.columns if c.groupable]


def choices(federation: Federation) -> Choices:
    """The page's options for ``federation``."""
    columns = [ColumnChoice(HOSPITAL, "hospital", federation.hospital_ids)]
    stats = ["count"] + [f"prevalence:{o}" for o in federation.outcomes]
    for spec in federation.features:
        scale = scale_for(spec)
        if spec.kind == "categorical":
            columns.append(ColumnChoice(spec.name, "categorical", spec.categories or ()))
            continue
        bounds = (scale.lower, scale.upper) if scale else None
        columns.append(ColumnChoice(spec.name, "numeric", (), bounds, spec.unit))
        if scale is not None:
            stats += [f"{kind}:{spec.name}" for kind in ("mean", "std", "histogram")]
    columns += [ColumnChoice(o, "outcome", OUTCOME_LEVELS) for o in federation.outcomes]
    return Choices(tuple(columns), tuple(stats))


def cost_preview(federation: Federation) -> str:
    """What a query will cost before it runs, honestly: an upper bound per hospital.

    A wholly new query costs each hospital asked its ``epsilon_per_query``
    (its own policy); values released before, to anyone, cost nothing, and
    only the hospitals know which those are, so the preview gives the bound
    and the free case rather than a guess (docs/cohort.md, "Epsilon accounting").
    """
    costs = sorted(
        {
            open_hospital(federation, h).site().policy.epsilon_per_query
            for h in federation.hospital_ids
        }
    )
    if not costs:
        return "This federation has no hospital to ask."
    each = (
        f"ε {costs[0]:g}"
        if len(costs) == 1
        else f"ε {costs[0]:g}–{costs[-1]:g} (each hospital sets its own)"
    )
    return (
        f"Cost: up to {each} at each hospital asked (all {len(federation.hospital_ids)} unless "
        "you filter on one), from your budget there; nothing if every number was released "
        "before."
    )


def conditions(column: ColumnChoice, value: object) -> list[str]:
    """Query text for one filter widget's value.

    ``value`` is ``(low, high)`` for a numeric column (either may be ``None``),
    the chosen levels for a categorical one, or one level (or ``ANY``) for a
    hospital or an outcome.
    """
    name = column.name
    if column.kind == "numeric":
        low, high = value  # type: ignore[misc]
        lower, upper = column.bounds or (None, None)
        out = []
        if low is not None and (lower is None or low > lower):
            out.append(f"{name} >= {low:g}")
        if high is not None and (upper is None or high < upper):
            out.append(f"{name} <= {high:g}")
        return out
    if column.kind == "categorical":
        chosen = list(value)  # type: ignore[call-overload]
        if not chosen:
            raise HealthSyncError(f"choose at least one value of {name}")
        return [f"{name} != {level}" for level in column.levels if level not in chosen]
    return [] if value in (None, ANY) else [f"{name} == {value}"]


def command(
    data_dir: Path, db: Path, user: str, where: list[str], group_by: list[str], stats: list[str]
) -> str:
    """The ``healthsync cohort`` command that asks the same query."""
    parts = ["healthsync", "cohort", "--data", str(data_dir), "--db", str(db), "--user", user]
    parts += [a for w in where for a in ("--where", w)]
    parts += [a for g in group_by for a in ("--group-by", g)]
    parts += [a for s in stats for a in ("--stat", s)]
    return " ".join(shlex.quote(p) for p in parts)
