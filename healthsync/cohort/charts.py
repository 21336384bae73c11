"""Charts of guarded cohort answers: Polars frames in, ``alt.Chart`` out, no Streamlit.

Frames come from :class:`~healthsync.cohort.result.CohortResult` (``values()``
and ``histograms(feature)``), so hidden cells are ``null`` and simply have no
bar; the page's caption says so. The first grouping column runs along the x
axis, any others are combined into the colour.
"""

from __future__ import annotations

from collections.abc import Mapping

import altair as alt
import polars as pl

from healthsync.data.labels import column_label, column_name, unit_label

PERCENT = ".0%"
NO_UNITS: Mapping[str, str | None] = {}
BAR_COLOR = "#0f766e"
ALL = "all patients"


def _grouped(values: pl.DataFrame, dimensions: list[str]) -> pl.DataFrame:
    """Add ``x`` (first grouping column) and ``group`` (the others joined) to ``values``."""
    x = pl.col(dimensions[0]) if dimensions else pl.lit(ALL)
    group = pl.concat_str([pl.col(d) for d in dimensions[1:]], separator=" · ")
    return values.with_columns(x=x, group=group if len(dimensions) > 1 else pl.lit(""))


def _x_title(dimensions: list[str], units: Mapping[str, str | None]) -> str:
    """The first grouping column; numeric ones group by bands, so they name their unit."""
    if not dimensions:
        return "Cohort"
    name, unit = column_name(dimensions[0], capital=True), unit_label(units.get(dimensions[0]))
    return f"{name} band ({unit})" if unit else name


def _bars(
    frame: pl.DataFrame, x_title: str, dimensions: list[str], y: alt.Y, tooltip: list, *, title: str
) -> alt.Chart:
    order = list(dict.fromkeys(frame["x"].to_list()))
    encoding = {
        # hospital names are long: room for them rather than "Goldford District…"
        "x": alt.X("x:N", title=x_title, sort=order, axis=alt.Axis(labelAngle=-40, labelLimit=220)),
        "y": y,
        "tooltip": tooltip,
    }
    if len(dimensions) > 1:
        label = " · ".join(column_name(d) for d in dimensions[1:])
        encoding["color"] = alt.Color("group:N", title=label[0].upper() + label[1:])
        encoding["xOffset"] = alt.XOffset("group:N")
    mark = alt.Chart(frame, title=title).mark_bar(
        **({} if len(dimensions) > 1 else {"color": BAR_COLOR})
    )
    return mark.encode(**encoding).properties(height=300)


def count_bars(
    values: pl.DataFrame, dimensions: list[str], units: Mapping[str, str | None] = NO_UNITS
) -> alt.Chart:
    """Patients per cell (``patient_count``); hidden cells have no bar.

    ``units`` (column -> unit) names the unit of a banded numeric grouping column.
    """
    x_title = _x_title(dimensions, units)
    frame = _grouped(values, dimensions).filter(pl.col("patient_count").is_not_null())
    by = f" by {', '.join(column_name(d) for d in dimensions)}" if dimensions else ""
    return _bars(
        frame,
        x_title,
        dimensions,
        alt.Y("patient_count:Q", title="Patients (count)"),
        [
            alt.Tooltip("x:N", title=x_title),
            alt.Tooltip("group:N", title="Group"),
            alt.Tooltip("patient_count:Q", title="Patients", format=","),
        ],
        title=f"Patients{by}",
    )


def prevalence_bars(
    values: pl.DataFrame,
    dimensions: list[str],
    outcome: str,
    units: Mapping[str, str | None] = NO_UNITS,
) -> alt.Chart:
    """Share of each cell's patients with ``outcome`` (``{outcome}_prevalence``)."""
    x_title = _x_title(dimensions, units)
    key = f"{outcome}_prevalence"
    frame = _grouped(values, dimensions).filter(pl.col(key).is_not_null())
    return _bars(
        frame,
        x_title,
        dimensions,
        alt.Y(f"{key}:Q", title=f"Patients with {outcome} (%)", axis=alt.Axis(format=PERCENT)),
        [
            alt.Tooltip("x:N", title=x_title),
            alt.Tooltip("group:N", title="Group"),
            alt.Tooltip(f"{key}:Q", title="Prevalence", format=".1%"),
            alt.Tooltip(f"{outcome}_case_count:Q", title="Cases", format=","),
        ],
        title=f"Prevalence of {outcome}",
    )


def mean_bars(
    values: pl.DataFrame,
    dimensions: list[str],
    feature: str,
    units: Mapping[str, str | None] = NO_UNITS,
) -> alt.Chart:
    """Mean of ``feature`` per cell (``{feature}_mean``; ``{feature}_std`` in the tooltip)."""
    x_title = _x_title(dimensions, units)
    unit = units.get(feature)
    key = f"{feature}_mean"
    frame = _grouped(values, dimensions).filter(pl.col(key).is_not_null())
    tooltip = [
        alt.Tooltip("x:N", title=x_title),
        alt.Tooltip("group:N", title="Group"),
        alt.Tooltip(f"{key}:Q", title="Mean", format=".2f"),
    ]
    if f"{feature}_std" in frame.columns:
        tooltip.append(alt.Tooltip(f"{feature}_std:Q", title="Standard deviation", format=".2f"))
    return _bars(
        frame,
        x_title,
        dimensions,
        alt.Y(f"{key}:Q", title=f"Mean {column_label(feature, unit or 'value', capital=False)}"),
        tooltip,
        title=f"Mean {column_name(feature)}",
    )


def histogram(bins: pl.DataFrame, feature: str, unit: str | None, *, cell: str) -> alt.Chart:
    """One cell's histogram (``bin, lower, upper, bin_count``); merged bins are wider."""
    frame = bins.filter(pl.col("cell") == cell)
    name = column_name(feature)
    return (
        alt.Chart(frame, title=f"Distribution of {name} ({cell})")
        .mark_bar(color=BAR_COLOR, stroke="white")
        .encode(
            x=alt.X("lower:Q", title=column_label(feature, unit or "value"), bin="binned"),
            x2="upper:Q",
            y=alt.Y("bin_count:Q", title="Patients (count)"),
            tooltip=[
                alt.Tooltip("bin:N", title=f"{column_name(feature, capital=True)} bin"),
                alt.Tooltip("bin_count:Q", title="Patients", format=","),
            ],
        )
        .properties(height=260)
    )
