"""Chart builders for the app: Polars frames in, ``alt.Chart`` out, no Streamlit.

Every chart has a title, axis titles with units and a tooltip, and uses the
same colours for the same things (AUC, accuracy, loss; ok and failed
hospitals), so a chart reads the same on every page. Frames come from
``healthsync.views.dashboard``.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from healthsync.views import spread

METRIC_COLORS = {
    "AUC": "#0f766e",
    "accuracy": "#4f46e5",
    "log loss": "#ea580c",
    "validation loss": "#7c3aed",
}
CHOSEN_COLOR = "#374151"
STATUS_COLORS = {"ok": "#0f766e", "failed": "#dc2626"}
OUTCOME_COLORS = ["#0f766e", "#4f46e5", "#ea580c", "#0891b2"]
PERCENT = ".0%"
#: Above this many hospitals, per-hospital labels would overlap; charts summarise instead,
#: from aggregates computed here (``views.spread``), so the browser gets bins, not hospitals.
MANY_HOSPITALS = spread.MANY_HOSPITALS


def _band_height(rows: int, *, step: int = 22, axes: int = 110, most: int = 640) -> int:
    """Total chart height for ``rows`` bands: Streamlit's height includes title and axes."""
    return min(max(step * rows, 60) + axes, most)


def _round_axis(title: str = "Round (number)") -> alt.Axis:
    return alt.Axis(title=title, format="d", tickMinStep=1)


def _value_axis() -> alt.Axis:
    """Two decimals on a metric axis: Vega's default prints ticks like 0.520458."""
    return alt.Axis(format=".2f")


def _label(frame: pl.DataFrame) -> str:
    """The column naming hospitals on an axis: their names when the frame has them."""
    return "name" if "name" in frame.columns else "hospital"


def _diagonal(title: str) -> alt.Chart:
    """The dashed y = x reference line of ROC and calibration plots."""
    line = pl.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0], "reference": [title, title]})
    return (
        alt.Chart(line)
        .mark_line(strokeDash=[5, 5], color="#9ca3af")
        .encode(x="x:Q", y="y:Q", tooltip=alt.Tooltip("reference:N", title="Reference"))
    )


def metric_lines(frame: pl.DataFrame, *, title: str, y_title: str) -> alt.Chart:
    """Global metrics by round, one coloured line per metric (``round, metric, value``)."""
    metrics = [m for m in METRIC_COLORS if m in set(frame["metric"].to_list())]
    return (
        alt.Chart(frame, title=title)
        .mark_line(point=True)
        .encode(
            x=alt.X("round:Q", axis=_round_axis()),
            y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False), axis=_value_axis()),
            color=alt.Color(
                "metric:N",
                title="Metric",
                scale=alt.Scale(domain=metrics, range=[METRIC_COLORS[m] for m in metrics]),
            ),
            tooltip=[
                alt.Tooltip("round:Q", title="Round"),
                alt.Tooltip("metric:N", title="Metric"),
                alt.Tooltip("value:Q", title="Value", format=".3f"),
            ],
        )
        .properties(height=260)
    )


def loss_with_choice(
    frame: pl.DataFrame, *, best_round: int | None, title: str, y_title: str
) -> alt.Chart | alt.LayerChart:
    """Test and validation loss by round, with a rule at the round whose model was kept.

    ``frame`` as for :func:`metric_lines`; ``best_round`` ``None`` draws no rule
    (nothing kept yet).
    """
    lines = metric_lines(frame, title=title, y_title=y_title)
    if best_round is None:
        return lines
    chosen = pl.DataFrame({"round": [best_round], "label": [f"kept: round {best_round}"]})
    rule = (
        alt.Chart(chosen)
        .mark_rule(color=CHOSEN_COLOR, strokeDash=[4, 3])
        .encode(
            x="round:Q",
            tooltip=[alt.Tooltip("label:N", title="Chosen model")],
        )
    )
    text = (  # at the top of the plot, beside the rule (a pixel offset drew it over the title)
        alt.Chart(chosen)
        .mark_text(align="left", baseline="top", dx=4, color=CHOSEN_COLOR)
        .encode(x="round:Q", y=alt.value(2), text="label:N")
    )
    return alt.layer(lines, rule, text, title=title)  # a layer shows its own title only


def hospital_heatmap(frame: pl.DataFrame, *, metric_title: str = "AUC") -> alt.Chart:
    """Each hospital's metric in each round (``hospital, round, value``): who lags, and when."""
    hospitals = frame["hospital"].n_unique() if not frame.is_empty() else 0
    many = hospitals > MANY_HOSPITALS
    return (
        alt.Chart(frame, title=f"{metric_title} per hospital and round")
        .mark_rect()
        .encode(
            x=alt.X(
                "round:O", title="Round (number)", axis=alt.Axis(labelAngle=0, labelOverlap=True)
            ),
            y=alt.Y(
                f"{_label(frame)}:N",
                title=f"Hospital ({hospitals})",
                axis=alt.Axis(labels=not many, ticks=not many, labelLimit=220),
            ),
            color=alt.Color(
                "value:Q",
                title=metric_title,
                scale=alt.Scale(scheme="viridis", domain=[0.5, 1.0], clamp=True),
            ),
            tooltip=[
                alt.Tooltip(f"{_label(frame)}:N", title="Hospital"),
                alt.Tooltip("round:O", title="Round"),
                alt.Tooltip("value:Q", title=metric_title, format=".3f"),
            ],
        )
        .properties(height=_band_height(hospitals, step=28))
    )


def hospital_status_bars(frame: pl.DataFrame) -> alt.Chart:
    """Hospitals that answered (ok) or failed in each round (``round, status, hospitals``)."""
    return (
        alt.Chart(frame, title="Hospitals ok and failed per round")
        .mark_bar()
        .encode(
            x=alt.X(
                "round:O", title="Round (number)", axis=alt.Axis(labelAngle=0, labelOverlap=True)
            ),
            y=alt.Y("hospitals:Q", title="Hospitals (count)", stack=True),
            color=alt.Color(
                "status:N",
                title="Status",
                scale=alt.Scale(domain=list(STATUS_COLORS), range=list(STATUS_COLORS.values())),
            ),
            tooltip=[
                alt.Tooltip("round:O", title="Round"),
                alt.Tooltip("status:N", title="Status"),
                alt.Tooltip("hospitals:Q", title="Hospitals"),
            ],
        )
        .properties(height=260)
    )


PHASE_COLORS = ["#94a3b8", "#0f766e", "#4f46e5", "#ca8a04", "#ea580c"]  # in PHASES order


def round_phase_bars(frame: pl.DataFrame) -> alt.Chart:
    """Where each round's time went: one bar per round, stacked by phase (``round_phases``)."""
    phases = frame.sort("order").unique("phase", maintain_order=True)["phase"].to_list()
    return (
        alt.Chart(frame, title="Where a round's time goes")
        .mark_bar()
        .encode(
            x=alt.X(
                "round:O", title="Round (number)", axis=alt.Axis(labelAngle=0, labelOverlap=True)
            ),
            y=alt.Y("seconds:Q", title="Time (seconds)", stack=True),
            color=alt.Color(
                "phase:N",
                title="Phase",
                sort=phases,
                scale=alt.Scale(domain=phases, range=PHASE_COLORS),
            ),
            order=alt.Order("order:Q"),
            tooltip=[
                alt.Tooltip("round:O", title="Round"),
                alt.Tooltip("phase:N", title="Phase"),
                alt.Tooltip("seconds:Q", title="Seconds", format=".3f"),
            ],
        )
        .properties(height=260)
    )


def run_curves(frame: pl.DataFrame, *, metric_title: str) -> alt.Chart:
    """One metric by round for several runs (``run_id, round, value``), one line per run.

    With a ``label`` column (e.g. ``"fedavg · scale×3 (run-…)"``) the legend shows it.
    """
    series = "label" if "label" in frame.columns else "run_id"
    return (
        alt.Chart(frame, title=f"{metric_title} by round, per run")
        .mark_line(point=True)
        .encode(
            x=alt.X("round:Q", axis=_round_axis()),
            y=alt.Y("value:Q", title=metric_title, scale=alt.Scale(zero=False), axis=_value_axis()),
            color=alt.Color(
                f"{series}:N",
                title="Run",
                scale=alt.Scale(scheme="tableau10"),
                legend=alt.Legend(orient="bottom", columns=1, labelLimit=0),
            ),
            tooltip=[
                alt.Tooltip(f"{series}:N", title="Run"),
                alt.Tooltip("round:Q", title="Round"),
                alt.Tooltip("value:Q", title=metric_title, format=".3f"),
            ],
        )
        .properties(height=320)
    )


def roc_curve(points: pl.DataFrame, *, auc: float | None) -> alt.LayerChart:
    """ROC curve from the released score bins (``threshold, fpr, tpr``) against chance.

    ``auc`` is the run's recorded AUC (the figure every other page shows), not
    the area under these few points, which only approximates it.
    """
    curve = (
        alt.Chart(points)
        .mark_line(color=METRIC_COLORS["AUC"], point=alt.OverlayMarkDef(color=METRIC_COLORS["AUC"]))
        .encode(
            x=alt.X(
                "fpr:Q",
                title="False positive rate (%)",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format=PERCENT),
            ),
            y=alt.Y(
                "tpr:Q",
                title="True positive rate (%)",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format=PERCENT),
            ),
            order="fpr:Q",
            tooltip=[
                alt.Tooltip("threshold:Q", title="Risk threshold", format=".2f"),
                alt.Tooltip("fpr:Q", title="False positive rate", format=PERCENT),
                alt.Tooltip("tpr:Q", title="True positive rate", format=PERCENT),
            ],
        )
    )
    known = auc is not None and auc == auc  # neither missing nor NaN
    return alt.layer(_diagonal("chance (AUC 0.5)"), curve).properties(
        title=f"ROC curve (AUC {auc:.3f})" if known else "ROC curve", height=340
    )


def calibration_plot(points: pl.DataFrame) -> alt.LayerChart:
    """Observed event rate against mean predicted risk per score bin (``predicted, observed, patients``)."""
    dots = (
        alt.Chart(points)
        .mark_circle(color=METRIC_COLORS["accuracy"], opacity=0.8)
        .encode(
            x=alt.X(
                "predicted:Q",
                title="Mean predicted risk (%)",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format=PERCENT),
            ),
            y=alt.Y(
                "observed:Q",
                title="Observed event rate (%)",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format=PERCENT),
            ),
            size=alt.Size("patients:Q", title="Patients (count)"),
            tooltip=[
                alt.Tooltip("predicted:Q", title="Mean predicted risk", format=".1%"),
                alt.Tooltip("observed:Q", title="Observed rate", format=".1%"),
                alt.Tooltip("patients:Q", title="Patients"),
            ],
        )
    )
    return alt.layer(_diagonal("perfect calibration"), dots).properties(
        title="Calibration: predicted risk against what happened", height=340
    )


def hospital_metric_bars(
    frame: pl.DataFrame,
    *,
    metric: str = "auc",
    metric_title: str = "AUC",
    title: str | None = None,
) -> alt.Chart:
    """One bar per hospital for its last-round metric, or their spread when there are many."""
    if frame.height > MANY_HOSPITALS:
        return metric_histogram(frame, metric=metric, metric_title=metric_title)
    return (
        alt.Chart(frame, title=title or f"{metric_title} per hospital in the last round")
        .mark_bar(color=METRIC_COLORS["AUC"])
        .encode(
            x=alt.X(
                f"{metric}:Q",
                title=f"{metric_title} (0–1)",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(tickCount=10),
            ),
            y=alt.Y(
                f"{_label(frame)}:N", title="Hospital", sort="-x", axis=alt.Axis(labelLimit=220)
            ),
            tooltip=[
                alt.Tooltip(f"{_label(frame)}:N", title="Hospital"),
                alt.Tooltip(f"{metric}:Q", title=metric_title, format=".3f"),
                alt.Tooltip("n:Q", title="Test patients"),
            ],
        )
        .properties(height=_band_height(frame.height, step=30))
    )


def hospital_sizes(frame: pl.DataFrame) -> alt.Chart:
    """Released patients per hospital (``hospital, name, n_patients``; null when withheld)."""
    frame = frame.drop_nulls("n_patients")
    if frame.height > MANY_HOSPITALS:
        return binned_counts(
            spread.histogram(frame, "n_patients", bins=30),
            title=f"Hospital sizes ({frame.height:,} hospitals)",
            x_title="Patients per hospital (count, noisy)",
            value_format=",.0f",
        )
    return (
        alt.Chart(frame, title="Patients per hospital (released, noisy)")
        .mark_bar(color="#0f766e")
        .encode(
            x=alt.X("n_patients:Q", title="Patients (count)"),
            y=alt.Y(
                "name:N",
                title="Hospital",
                sort=alt.SortField("n_patients", "descending"),
                axis=alt.Axis(labelLimit=220),
            ),
            tooltip=[
                alt.Tooltip("name:N", title="Hospital"),
                alt.Tooltip("n_patients:Q", title="Patients (noisy)"),
            ],
        )
        .properties(height=_band_height(frame.height, step=26))
    )


def prevalence_bars(frame: pl.DataFrame) -> alt.Chart:
    """Outcome prevalence per hospital (``hospital, name, outcome, prevalence``)."""
    if frame["hospital"].n_unique() > MANY_HOSPITALS:
        return prevalence_boxes(spread.quantiles_by(frame, "prevalence", "outcome"))
    return (
        alt.Chart(frame, title="Outcome prevalence per hospital")
        .mark_bar()
        .encode(
            x=alt.X(
                "prevalence:Q", title="Prevalence (% of patients)", axis=alt.Axis(format=PERCENT)
            ),
            y=alt.Y("name:N", title="Hospital", axis=alt.Axis(labelLimit=220)),
            yOffset="outcome:N",
            color=alt.Color("outcome:N", title="Outcome", scale=alt.Scale(range=OUTCOME_COLORS)),
            tooltip=[
                alt.Tooltip("name:N", title="Hospital"),
                alt.Tooltip("outcome:N", title="Outcome"),
                alt.Tooltip("prevalence:Q", title="Prevalence", format=".1%"),
            ],
        )
        .properties(height=_band_height(frame["hospital"].n_unique(), step=34))
    )


def metric_histogram(
    frame: pl.DataFrame, *, metric: str = "auc", metric_title: str = "AUC"
) -> alt.Chart:
    """Hospitals counted by their metric in 20 bins, binned here: no hospital reaches the chart."""
    shown = frame.get_column(metric).drop_nulls().len()
    return binned_counts(
        spread.histogram(frame, metric),
        title=f"Spread of {metric_title} across {shown:,} hospitals",
        x_title=f"{metric_title} (0–1)",
        value_format=".3f",
    )


def binned_counts(frame: pl.DataFrame, *, title: str, x_title: str, value_format: str) -> alt.Chart:
    """Hospitals per bin (``lower, upper, hospitals`` from ``spread.histogram``): a histogram."""
    return (
        alt.Chart(frame, title=title)
        .mark_bar(color=METRIC_COLORS["AUC"])
        .encode(
            x=alt.X("lower:Q", bin="binned", title=x_title),
            x2="upper:Q",
            y=alt.Y("hospitals:Q", title="Hospitals (count)"),
            tooltip=[
                alt.Tooltip("lower:Q", title="From", format=value_format),
                alt.Tooltip("upper:Q", title="To", format=value_format),
                alt.Tooltip("hospitals:Q", title="Hospitals", format=","),
            ],
        )
        .properties(height=260)
    )


def prevalence_boxes(frame: pl.DataFrame) -> alt.LayerChart:
    """Each outcome's prevalence across hospitals as a box plot drawn from its quantiles.

    ``outcome, hospitals, min, q25, median, q75, max`` (``spread.quantiles_by``):
    one row per outcome reaches the browser, however many hospitals there are.
    """
    base = alt.Chart(frame, title="Spread of outcome prevalence across hospitals").encode(
        y=alt.Y("outcome:N", title="Outcome"),
        tooltip=[
            alt.Tooltip("outcome:N", title="Outcome"),
            alt.Tooltip("hospitals:Q", title="Hospitals", format=","),
            *(
                alt.Tooltip(f"{c}:Q", title=t, format=".1%")
                for c, t in (
                    ("min", "Lowest"),
                    ("q25", "25th percentile"),
                    ("median", "Median"),
                    ("q75", "75th percentile"),
                    ("max", "Highest"),
                )
            ),
        ],
    )
    x = alt.X("min:Q", title="Prevalence (% of patients)", axis=alt.Axis(format=PERCENT))
    whiskers = base.mark_rule(color="#6b7280").encode(x=x, x2="max:Q")
    boxes = base.mark_bar(color=METRIC_COLORS["AUC"], size=18).encode(x="q25:Q", x2="q75:Q")
    medians = base.mark_tick(color="white", thickness=2, size=18).encode(x="median:Q")
    return alt.layer(whiskers, boxes, medians).properties(
        height=_band_height(frame.height, step=40)
    )


#: The bands' colours: the outer (10–90%) band lighter than the inner (25–75%).
BAND_COLORS = {"10–90% of hospitals": "#99d5cf", "25–75% of hospitals": "#2a9d8f"}


def hospital_bands(
    bands: pl.DataFrame, *, own: pl.DataFrame | None = None, metric_title: str = "AUC"
) -> alt.LayerChart:
    """Quantile bands of the hospitals' metric by round (``spread.round_bands``), median as a line.

    ``own`` (``round, value, name``) adds one hospital's line on top: a
    steward's own hospital, against the consortium's spread.
    """
    long = pl.concat(
        [
            bands.select(
                "round",
                "released",
                pl.col(low).alias("low"),
                pl.col(high).alias("high"),
                pl.lit(band).alias("band"),
            )
            for band, (low, high) in zip(BAND_COLORS, (("q10", "q90"), ("q25", "q75")), strict=True)
        ]
    ).drop_nulls("low")
    y_title = f"{metric_title} (0–1)"
    areas = (
        alt.Chart(long)
        .mark_area(opacity=0.85)
        .encode(
            x=alt.X("round:Q", axis=_round_axis()),
            y=alt.Y("low:Q", title=y_title, axis=_value_axis(), scale=alt.Scale(zero=False)),
            y2="high:Q",
            color=alt.Color(
                "band:N",
                title="Hospitals",
                scale=alt.Scale(domain=list(BAND_COLORS), range=list(BAND_COLORS.values())),
            ),
            tooltip=[
                alt.Tooltip("round:Q", title="Round"),
                alt.Tooltip("band:N", title="Band"),
                alt.Tooltip("low:Q", title="From", format=".3f"),
                alt.Tooltip("high:Q", title="To", format=".3f"),
                alt.Tooltip("released:Q", title="Hospitals released", format=","),
            ],
        )
    )
    median = (
        alt.Chart(bands.drop_nulls("median"))
        .mark_line(color=CHOSEN_COLOR, point=True)
        .encode(
            x="round:Q",
            y="median:Q",
            tooltip=[
                alt.Tooltip("round:Q", title="Round"),
                alt.Tooltip("median:Q", title=f"Median {metric_title}", format=".3f"),
            ],
        )
    )
    layers = [areas, median]
    if own is not None and not own.drop_nulls("value").is_empty():
        layers.append(
            alt.Chart(own.drop_nulls("value"))
            .mark_line(color=METRIC_COLORS["log loss"], point=True, strokeDash=[6, 3])
            .encode(
                x="round:Q",
                y="value:Q",
                tooltip=[
                    alt.Tooltip("name:N", title="Hospital"),
                    alt.Tooltip("round:Q", title="Round"),
                    alt.Tooltip("value:Q", title=metric_title, format=".3f"),
                ],
            )
        )
    return alt.layer(*layers, title=f"{metric_title} across hospitals, by round").properties(
        height=320
    )


def tuning_trials(frame: pl.DataFrame) -> alt.LayerChart:
    """Each trial's federated validation loss, coloured by rung, the chosen one ringed.

    ``frame`` from ``dashboard.trials_view`` (``trial, rung, val_loss, chosen``,
    and the settings columns for the tooltip). Failed trials (no loss) are left out.
    """
    shown = frame.filter(pl.col("val_loss").is_not_null())
    tooltip = [
        alt.Tooltip("trial:Q", title="Trial"),
        alt.Tooltip("rung:N", title="Rung"),
        alt.Tooltip("strategy:N", title="Strategy"),
        alt.Tooltip("learning rate:N", title="Learning rate"),
        alt.Tooltip("local steps:N", title="Local steps"),
        alt.Tooltip("val_loss:Q", title="Validation loss", format=".4f"),
    ]
    points = (
        alt.Chart(shown, title="Federated validation loss by tuning trial")
        .mark_circle(size=90)
        .encode(
            x=alt.X("trial:Q", axis=alt.Axis(title="Trial (number)", format="d", tickMinStep=1)),
            y=alt.Y(
                "val_loss:Q",
                title="Validation loss (log loss)",
                scale=alt.Scale(zero=False),
                axis=_value_axis(),
            ),
            color=alt.Color(
                "rung:N", title="Rung", scale=alt.Scale(range=OUTCOME_COLORS), legend=alt.Legend()
            ),
            tooltip=tooltip,
        )
    )
    ring = (
        alt.Chart(shown.filter(pl.col("chosen") == "best"))
        .mark_point(size=320, color=CHOSEN_COLOR, strokeWidth=2)
        .encode(x="trial:Q", y="val_loss:Q", tooltip=tooltip)
    )
    return alt.layer(points, ring).properties(height=300)
