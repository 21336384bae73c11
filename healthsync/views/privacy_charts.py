"""Chart builders for privacy and robustness: epsilon spent, and what privacy costs in AUC.

Same conventions as ``healthsync.views.charts`` (title, axis titles with units,
tooltips); frames come from ``healthsync.views.privacy_dashboard``.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from healthsync.views.privacy_dashboard import NO_DP

EPSILON_COLOR = "#7c3aed"
BUDGET_COLOR = "#dc2626"
NO_DP_COLOR = "#6b7280"


def epsilon_by_round(
    frame: pl.DataFrame, *, delta: float, budget: float | None = None
) -> alt.Chart | alt.LayerChart:
    """Cumulative epsilon spent after each round (``round, epsilon``), with the budget as a rule."""
    y_title = f"Epsilon spent (ε, cumulative, at δ = {delta:g})"
    line = (
        alt.Chart(frame, title="Privacy spent by round")
        .mark_line(color=EPSILON_COLOR, point=alt.OverlayMarkDef(color=EPSILON_COLOR))
        .encode(
            x=alt.X("round:Q", axis=alt.Axis(title="Round (number)", format="d", tickMinStep=1)),
            y=alt.Y("epsilon:Q", title=y_title),
            tooltip=[
                alt.Tooltip("round:Q", title="Round"),
                alt.Tooltip("epsilon:Q", title="Epsilon spent", format=".3g"),
            ],
        )
        .properties(height=260)
    )
    if not budget:
        return line
    rule = (
        alt.Chart(pl.DataFrame({"budget": [float(budget)], "what": ["epsilon budget"]}))
        .mark_rule(color=BUDGET_COLOR, strokeDash=[6, 4], size=2)
        .encode(
            y="budget:Q",
            tooltip=[
                alt.Tooltip("what:N", title="Reference"),
                alt.Tooltip("budget:Q", title="Epsilon", format="g"),
            ],
        )
    )
    return alt.layer(line, rule).properties(title="Privacy spent by round (dashed: budget)")


def utility_vs_epsilon(frame: pl.DataFrame) -> alt.LayerChart:
    """Final AUC against epsilon spent, one point per DP run; runs without DP as dashed rules.

    ``frame`` is ``privacy_dashboard.utility_points``: run_id, strategy,
    dp_noise, rounds_done, epsilon (null without DP), auc, series.
    """
    dp = frame.filter(pl.col("epsilon").is_not_null())
    plain = frame.filter(pl.col("epsilon").is_null())
    series = sorted(set(dp["series"].to_list())) + ([NO_DP] if plain.height else [])
    colours = alt.Scale(domain=series, range=_palette(len(series), bool(plain.height)))
    color = alt.Color("series:N", title="Strategy", scale=colours)
    tooltip = [
        alt.Tooltip("run_id:N", title="Run"),
        alt.Tooltip("strategy:N", title="Strategy"),
        alt.Tooltip("dp_noise:Q", title="Noise multiplier", format="g"),
        alt.Tooltip("rounds_done:Q", title="Rounds"),
        alt.Tooltip("epsilon:Q", title="Epsilon spent", format=".3g"),
        alt.Tooltip("auc:Q", title="Final AUC", format=".3f"),
    ]
    points = (
        alt.Chart(dp)
        .mark_point(filled=True, size=90)
        .encode(
            x=alt.X(
                "epsilon:Q",
                title="Epsilon spent (ε, log scale; lower is more private)",
                scale=alt.Scale(type="log"),
            ),
            y=alt.Y("auc:Q", title="Final AUC (0–1)", scale=alt.Scale(zero=False)),
            color=color,
            tooltip=tooltip,
        )
    )
    rules = (
        alt.Chart(plain)
        .mark_rule(strokeDash=[5, 5])
        .encode(y="auc:Q", color=color, tooltip=[tooltip[0], tooltip[1], tooltip[-1]])
    )
    return alt.layer(
        points, rules, title="Utility versus privacy: final AUC by epsilon spent"
    ).properties(height=320)


def _palette(count: int, with_reference: bool) -> list[str]:
    """Tableau colours for the strategies, grey for the no-DP reference (always last)."""
    tableau = ["#4c78a8", "#f58518", "#54a24b", "#b79a20", "#e45756", "#72b7b2", "#ff9da6"]
    strategies = count - int(with_reference)
    colours = [tableau[i % len(tableau)] for i in range(strategies)]
    return colours + ([NO_DP_COLOR] if with_reference else [])
