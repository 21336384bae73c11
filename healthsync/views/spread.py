"""Per-hospital figures of a large federation as distributions, aggregated in the store.

Above :data:`MANY_HOSPITALS` hospitals in a run, a chart with one mark per
hospital says nothing a person can read (100,000 heatmap rows, sent to the
browser every second, are a grey blur), so pages show instead: quantile bands
of the hospitals' released figure by round (:func:`round_bands`), the worst
hospitals of the last round by name (:func:`lowest`), and a search
over the last round's figures (:func:`find_hospitals`). Small federations
keep their per-hospital views.

Only released figures enter (``healthsync.privacy.training``): a withheld
hospital is in no quantile, no worst-k and no search result's figures, and
quantiles of released numbers release nothing new. Bands and histograms are
consortium-level figures: no hospital is named in them (docs/tenancy.md says
what a steward sees). Per-hospital frames that name hospitals still go through
``tenancy.own_hospital_only`` and ``tenancy.with_site_labels`` on the page.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

import polars as pl

from healthsync.privacy import training
from healthsync.runs.store import MetricsStore

#: Above this many hospitals in a run (or a federation), per-hospital views become distributions.
MANY_HOSPITALS = 50
#: The quantiles the bands are drawn from: column -> probability.
QUANTILES = {"q10": 0.1, "q25": 0.25, "median": 0.5, "q75": 0.75, "q90": 0.9}
#: How many of the last round's lowest hospitals are named.
WORST_K = 10
#: How many rows a search shows at most (the rest are counted).
SEARCH_ROWS = 200
BAND_SCHEMA = {
    "round": pl.Int64,
    "hospitals": pl.Int64,
    "released": pl.Int64,
    **dict.fromkeys(QUANTILES, pl.Float64),
}


def _metric(metric: str) -> str:
    if metric not in training.HOSPITAL_METRICS:
        raise ValueError(f"unknown per-hospital metric {metric!r}")
    return metric


def _shown(metric: str) -> str:
    """SQL: the row's figure was released (not withheld, not a pre-policy row, not NaN)."""
    return f"released AND {metric} IS NOT NULL AND NOT isnan({metric})"


def round_bands(
    store: MetricsStore, run_id: str, metric: str = "auc", *, after: int = 0
) -> pl.DataFrame:
    """Per round after round ``after``: hospitals recorded, how many released ``metric``, its quantiles.

    ``round, hospitals, released, q10, q25, median, q75, q90``, quantiles
    interpolated (``quantile_cont``) over released figures only and rounded as
    released figures are; null in a round that released none. One ``GROUP BY``
    in DuckDB, so 2 million hospital rows come back as one row per round. A
    round's rows are written with it in one transaction, so a round's bands
    never change once read: a page polling a run reads only the rounds after
    those it has (``after``).
    """
    metric = _metric(metric)
    probabilities = ", ".join(str(p) for p in QUANTILES.values())
    frame = store.frame(
        f"SELECT round::BIGINT AS round, count(*) AS hospitals,"
        f" count(*) FILTER (WHERE {_shown(metric)}) AS released,"
        f" quantile_cont({metric}, [{probabilities}]) FILTER (WHERE {_shown(metric)}) AS q"
        " FROM hospital_rounds WHERE run_id = ? AND round > ? GROUP BY round ORDER BY round",
        [run_id, int(after)],
    )
    if frame.is_empty():
        return pl.DataFrame(schema=BAND_SCHEMA)
    return frame.select(
        "round",
        "hospitals",
        "released",
        *(
            pl.col("q").list.get(i, null_on_oob=True).round(training.DECIMALS).alias(name)
            for i, name in enumerate(QUANTILES)
        ),
    ).cast(BAND_SCHEMA)


def hospitals_in_run(bands: pl.DataFrame) -> int:
    """The most hospitals any round recorded (from :func:`round_bands`): what sets the view."""
    return 0 if bands.is_empty() else int(bands["hospitals"].max())  # type: ignore[arg-type]


def is_large(hospitals: int) -> bool:
    """Whether ``hospitals`` are too many for one mark each (:data:`MANY_HOSPITALS`)."""
    return hospitals > MANY_HOSPITALS


def lowest(frame: pl.DataFrame, metric: str = "auc", k: int = WORST_K) -> pl.DataFrame:
    """The ``k`` rows of a per-hospital frame with the lowest released ``metric``, lowest first.

    ``frame`` is a released per-hospital frame (``dashboard.last_round_hospitals``:
    withheld figures are missing), so withheld hospitals are never ranked; ties
    go by hospital id. Name them on the page through ``tenancy.own_hospital_only``
    and ``tenancy.with_site_labels``. In Polars, on the frame the page has read
    anyway: one store connection fewer per poll.
    """
    metric = _metric(metric)
    return (
        frame.filter(pl.col(metric).is_not_null() & pl.col(metric).is_not_nan())
        .sort(metric, "hospital")
        .head(k)
    )


def hospital_rounds(
    store: MetricsStore, run_id: str, hospitals: Sequence[str], metric: str = "auc"
) -> pl.DataFrame:
    """``hospital, round, value``: the released ``metric`` of a few ``hospitals`` by round.

    For one hospital's line over the bands (a steward's own), read by id, not
    by scanning the run's rows into Python.
    """
    metric = _metric(metric)
    schema = {"hospital": pl.String, "round": pl.Int64, "value": pl.Float64}
    if not hospitals:
        return pl.DataFrame(schema=schema)
    marks = ", ".join("?" for _ in hospitals)
    return (
        training.released_hospital_metrics(
            store.frame(
                f"SELECT hospital, round::BIGINT AS round, {metric}, released FROM hospital_rounds"
                f" WHERE run_id = ? AND hospital IN ({marks}) ORDER BY hospital, round",
                [run_id, *hospitals],
            )
        )
        .rename({metric: "value"})
        .cast(schema)
    )


def find_hospitals(
    names: Mapping[str, str], figures: pl.DataFrame, text: str, *, limit: int = SEARCH_ROWS
) -> tuple[pl.DataFrame, int]:
    """The hospitals whose shown name contains ``text`` (any case), first ``limit`` by name; and how many.

    ``names`` is ``hospital id -> label`` as the reader sees them
    (``tenancy.site_labels``, or ``drilldown.run_hospitals``); the search reads
    labels only, so a pseudonymous viewer finds "Site C" and never a real name
    or id. Only the ``limit`` shown are sorted, not all 100,000. ``figures`` is
    a per-hospital frame with ``hospital`` ids (the last round's, released).
    Returns ``hospital, name`` and the figures' columns, a hospital without a
    row with empty figures; the ids are for a picker, never to be shown where
    the reader may not see ids.
    """
    needle = text.strip().lower()
    matches = [(label, h) for h, label in names.items() if needle in label.lower()]
    kept = heapq.nsmallest(limit, matches)
    found = pl.DataFrame(
        {"hospital": [h for _, h in kept], "name": [label for label, _ in kept]},
        schema={"hospital": pl.String, "name": pl.String},
    )
    return found.join(
        figures.drop("name", strict=False), on="hospital", how="left", maintain_order="left"
    ), len(matches)


def histogram(frame: pl.DataFrame, column: str, *, bins: int = 20) -> pl.DataFrame:
    """``lower, upper, hospitals``: ``column``'s non-missing values counted in equal-width bins.

    Drawn by the charts in place of one mark per hospital, so the browser
    receives ``bins`` rows, not one per hospital.
    """
    values = frame.get_column(column).drop_nulls().fill_nan(None).drop_nulls().cast(pl.Float64)
    schema = {"lower": pl.Float64, "upper": pl.Float64, "hospitals": pl.Int64}
    if values.is_empty():
        return pl.DataFrame(schema=schema)
    low, high = float(values.min()), float(values.max())  # type: ignore[arg-type]
    width = (high - low) / bins if high > low else 1.0
    index = ((values - low) / width).floor().clip(0, bins - 1).cast(pl.Int64)
    counts = index.value_counts().rename({index.name: "bin", "count": "hospitals"})
    return (
        pl.DataFrame({"bin": range(bins if high > low else 1)}, schema={"bin": pl.Int64})
        .join(counts, on="bin", how="left")
        .select(
            (low + pl.col("bin") * width).alias("lower"),
            (low + (pl.col("bin") + 1) * width).alias("upper"),
            pl.col("hospitals").fill_null(0).cast(pl.Int64),
        )
    )


def quantiles_by(frame: pl.DataFrame, value: str, by: str) -> pl.DataFrame:
    """``by, hospitals, min, q25, median, q75, max`` of ``value`` per ``by`` group (a box plot's parts).

    Only non-missing values count; ``hospitals`` says how many did.
    """
    shown = frame.drop_nulls(value).filter(pl.col(value).is_not_nan())
    return (
        shown.group_by(by)
        .agg(
            pl.len().alias("hospitals"),
            pl.col(value).min().alias("min"),
            pl.col(value).quantile(0.25, "linear").alias("q25"),
            pl.col(value).median().alias("median"),
            pl.col(value).quantile(0.75, "linear").alias("q75"),
            pl.col(value).max().alias("max"),
        )
        .sort(by)
    )
