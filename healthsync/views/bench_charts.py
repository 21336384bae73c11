"""Altair charts of stress-test sweeps: each measure against the number of hospitals."""

from __future__ import annotations

import altair as alt
import polars as pl

MEASURES = {
    "seconds_per_round": ("Time per round", "Seconds per round (s, log scale)"),
    "updates_per_second": ("Hospital updates per second", "Updates per second (log scale)"),
    "peak_memory_mib": ("Peak memory", "Peak resident memory (MiB)"),
    "first_round_seconds": ("Time to the first round", "Seconds from start (s, log scale)"),
}
WAY_LABELS = {
    "flower": "Stock Flower, one client per hospital",
    "healthsync": "HealthSync blocks, cold start",
    "warm": "HealthSync blocks, warm engine",
    "vectorised": "Vectorised loop, one process",
    "roofline": "Roofline: same multiply-adds, no hospitals",
}
#: What a chart's caption adds to "<measure> against the number of hospitals".
CAPTION_NOTES = {
    "seconds_per_round": " The roofline line is the same multiply-adds as a round done as large "
    "matrix products over all rows with one shared model: the floor, per core, under every other "
    "line; the gap to it is what keeping hospitals apart, Flower and Ray cost."
}


def sweep_chart(results: pl.DataFrame, measure: str) -> alt.Chart:
    """One measure against hospital count (log x), a line per way and model."""
    title, y_title = MEASURES[measure]
    frame = results.filter(pl.col("status") == "ok").with_columns(
        pl.col("way").replace_strict(WAY_LABELS, default=pl.col("way")).alias("Way"),
        (pl.col("sweep_id") + " · " + pl.col("model")).alias("Series"),
    )
    log_y = measure != "peak_memory_mib"
    return (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "hospitals:Q", scale=alt.Scale(type="log"), title="Hospitals (count, log scale)"
            ),
            y=alt.Y(
                f"{measure}:Q", scale=alt.Scale(type="log" if log_y else "linear"), title=y_title
            ),
            color=alt.Color("Way:N", title="Execution", legend=alt.Legend(labelLimit=320)),
            strokeDash=alt.StrokeDash("model:N", title="Model"),
            detail="Series:N",
            tooltip=[
                "sweep_id",
                "Way",
                "model",
                "hospitals",
                alt.Tooltip(f"{measure}:Q", format=".3f"),
            ],
        )
        .properties(height=300)
    )
