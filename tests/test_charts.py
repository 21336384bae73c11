"""Chart builders (healthsync.views.charts): valid Vega-Lite with titles, units and tooltips."""

import altair as alt
import polars as pl
import pytest

from healthsync.data.pseudonyms import SiteLabels
from healthsync.views import charts, dashboard, privacy_charts, privacy_dashboard, tenancy


def spec(chart) -> dict:
    return chart.to_dict()


def axis_titles(d: dict) -> list[str]:
    """Every x/y title in a (possibly layered) spec."""
    channels = [
        layer.get("encoding", {}).get(axis, {}) for layer in d.get("layer", [d]) for axis in "xy"
    ]
    found = [c.get("title") or (c.get("axis") or {}).get("title") for c in channels]
    return [t for t in found if t]


def title(d: dict) -> str:
    return d["title"] if isinstance(d["title"], str) else d["title"]["text"]


@pytest.fixture
def rounds() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "round": [1, 2, 3],
            "loss": [0.7, 0.6, 0.5],
            "auc": [0.6, 0.7, 0.8],
            "accuracy": [0.6, 0.65, 0.7],
            "hospitals_ok": [3, 2, 3],
            "hospitals_failed": [0, 1, 0],
        }
    )


def hospitals(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "hospital": [f"h{i}" for i in range(n)],
            "name": [f"Hospital {i}" for i in range(n)],
            "n": [20] * n,
            "auc": [0.5 + i / (2 * n) for i in range(n)],
            "n_train": [80] * n,
            "n_test": [20] * n,
            "n_patients": [100] * n,
        }
    )


def test_metric_lines_have_units_and_fixed_colours(rounds):
    d = spec(
        charts.metric_lines(dashboard.metrics_long(rounds), title="Global", y_title="Score (0–1)")
    )
    assert title(d) == "Global"
    assert axis_titles(d) == ["Round (number)", "Score (0–1)"]
    assert d["encoding"]["color"]["scale"]["domain"] == ["AUC", "accuracy", "log loss"]
    assert d["encoding"]["tooltip"]


def test_heatmap_uses_names_and_hides_labels_when_crowded():
    cells = pl.DataFrame({"hospital": ["h0", "h1"], "round": [1, 1], "value": [0.7, None]})
    d = spec(charts.hospital_heatmap(tenancy.with_site_labels(cells, SiteLabels({"h0": "North"}))))
    assert d["mark"]["type"] == "rect" and d["encoding"]["y"]["field"] == "name"
    assert d["encoding"]["color"]["scale"]["domain"] == [0.5, 1.0]
    many = pl.DataFrame(
        {"hospital": [f"h{i}" for i in range(100)], "round": [1] * 100, "value": [0.7] * 100}
    )
    crowded = spec(charts.hospital_heatmap(many))
    assert crowded["encoding"]["y"]["axis"]["labels"] is False
    assert crowded["height"] <= 640


def test_status_bars_stack_ok_and_failed(rounds):
    d = spec(charts.hospital_status_bars(dashboard.hospital_status_long(rounds)))
    assert d["encoding"]["color"]["scale"]["domain"] == ["ok", "failed"]
    assert "Hospitals (count)" in axis_titles(d)


def test_run_curves_colour_by_run():
    frame = pl.DataFrame({"run_id": ["a", "a", "b"], "round": [1, 2, 1], "value": [0.6, 0.7, 0.65]})
    d = spec(charts.run_curves(frame, metric_title="AUC"))
    assert d["encoding"]["color"]["field"] == "run_id" and title(d) == "AUC by round, per run"


def test_roc_and_calibration_are_layered_over_a_diagonal():
    bins = pl.DataFrame(
        {
            "bin": [0, 1],
            "lower": [0.0, 0.5],
            "upper": [0.5, 1.0],
            "positives": [1, 3],
            "negatives": [3, 1],
            "score_sum": [1.0, 3.0],
        }
    )
    roc = spec(charts.roc_curve(dashboard.roc_points(bins), auc=0.75))
    assert len(roc["layer"]) == 2 and "AUC 0.750" in title(roc)
    assert "False positive rate (%)" in axis_titles(roc)
    cal = spec(charts.calibration_plot(dashboard.calibration_points(bins)))
    assert len(cal["layer"]) == 2 and "Mean predicted risk (%)" in axis_titles(cal)


def test_per_hospital_charts_switch_to_a_histogram_for_many_hospitals():
    few = spec(charts.hospital_metric_bars(hospitals(3)))
    assert few["encoding"]["y"]["field"] == "name"
    many = spec(charts.hospital_metric_bars(hospitals(100)))
    assert many["encoding"]["x"]["bin"] and "100 hospitals" in title(many)
    sizes_few = spec(charts.hospital_sizes(hospitals(3)))
    assert sizes_few["encoding"]["x"]["field"] == "n_patients"  # released counts, no split
    assert "bin" in spec(charts.hospital_sizes(hospitals(100)))["encoding"]["x"]


def rows_sent(d: dict) -> int:
    """How many data rows a chart's spec carries (what reaches the browser)."""
    return sum(len(v) for v in d.get("datasets", {}).values())


def test_many_hospitals_send_bins_and_quantiles_not_one_row_per_hospital():
    many = hospitals(5_000)
    assert rows_sent(spec(charts.hospital_metric_bars(many))) <= 20
    assert rows_sent(spec(charts.hospital_sizes(many))) <= 30
    prevalence = pl.concat(
        [
            many.select("hospital", "name", outcome=pl.lit(o), prevalence=pl.col("auc") / 2)
            for o in "ab"
        ]
    )
    boxes = spec(charts.prevalence_bars(prevalence))
    assert rows_sent(boxes) == 2 and "Prevalence (% of patients)" in axis_titles(boxes)
    bands = pl.DataFrame(
        {"round": [1, 2], "hospitals": [5_000] * 2, "released": [4_990] * 2}
        | {q: [0.6, 0.7] for q in ("q10", "q25", "median", "q75", "q90")}
    )
    own = pl.DataFrame({"round": [1, 2], "value": [0.5, 0.55], "name": ["North"] * 2})
    drawn = spec(charts.hospital_bands(bands, own=own))
    assert title(drawn) == "AUC across hospitals, by round" and len(drawn["layer"]) == 3
    assert {"AUC (0–1)", "Round (number)"} <= set(axis_titles(drawn))
    assert rows_sent(drawn) == 4 + 2 + 2  # two bands x two rounds, the median, the own line


def test_prevalence_bars():
    frame = pl.DataFrame(
        {
            "hospital": ["h0", "h0"],
            "name": ["North", "North"],
            "outcome": ["a", "b"],
            "prevalence": [0.1, 0.3],
        }
    )
    d = spec(charts.prevalence_bars(frame))
    assert d["encoding"]["x"]["axis"]["format"] == ".0%"
    assert "Prevalence (% of patients)" in axis_titles(d)


@pytest.mark.parametrize(
    "build",
    [
        lambda: charts.metric_lines(
            pl.DataFrame({"round": [1], "metric": ["AUC"], "value": [0.7]}), title="t", y_title="y"
        ),
        lambda: charts.hospital_heatmap(
            pl.DataFrame({"hospital": ["h"], "round": [1], "value": [0.7]})
        ),
        lambda: charts.hospital_sizes(hospitals(2)),
    ],
)
def test_builders_return_altair_charts(build):
    assert isinstance(build(), alt.TopLevelMixin)


def test_run_curves_legend_uses_labels_when_given():
    frame = pl.DataFrame(
        {
            "run_id": ["a", "b"],
            "round": [1, 1],
            "value": [0.6, 0.7],
            "label": ["fedavg · scale×3 (a)", "krum · scale×3 (b)"],
        }
    )
    d = spec(charts.run_curves(frame, metric_title="AUC"))
    assert d["encoding"]["color"]["field"] == "label"
    assert d["encoding"]["color"]["legend"]["labelLimit"] == 0


def test_epsilon_chart_draws_the_budget_only_when_set():
    frame = pl.DataFrame({"round": [1, 2], "epsilon": [4.7, 6.9]})
    plain = spec(privacy_charts.epsilon_by_round(frame, delta=1e-5))
    assert title(plain) == "Privacy spent by round" and "layer" not in plain
    assert axis_titles(plain) == ["Round (number)", "Epsilon spent (ε, cumulative, at δ = 1e-05)"]
    budgeted = spec(privacy_charts.epsilon_by_round(frame, delta=1e-5, budget=10.0))
    assert [layer["mark"]["type"] for layer in budgeted["layer"]] == ["line", "rule"]
    assert "budget" in title(budgeted)


def test_utility_chart_shows_dp_points_and_no_dp_rules_in_one_legend():
    utility = pl.DataFrame(
        {
            "run_id": ["p", "d1", "d2"],
            "strategy": ["fedavg", "fedavg", "fedprox"],
            "dp_noise": [0.0, 1.0, 2.0],
            "rounds_done": [3, 3, 3],
            "epsilon": [None, 9.0, 4.0],
            "auc": [0.85, 0.7, 0.6],
        }
    )
    d = spec(privacy_charts.utility_vs_epsilon(privacy_dashboard.utility_points(utility)))
    assert title(d).startswith("Utility versus privacy")
    points, rules = d["layer"]
    assert (points["mark"]["type"], rules["mark"]["type"]) == ("point", "rule")
    assert points["encoding"]["x"]["scale"]["type"] == "log"
    scale = points["encoding"]["color"]["scale"]
    assert scale["domain"] == ["fedavg", "fedprox", privacy_dashboard.NO_DP]
    assert scale["range"][-1] == privacy_charts.NO_DP_COLOR
    assert "Final AUC (0–1)" in axis_titles(d)


def test_metric_axes_have_a_number_format(rounds):
    """A loss tick reads 0.52, never 0.520458 (issue 14)."""
    long = dashboard.metrics_long(rounds, ("loss",))
    y = spec(charts.metric_lines(long, title="Global loss", y_title="Log loss (nats)"))
    assert y["encoding"]["y"]["axis"]["format"] == ".2f"
    curves = long.with_columns(pl.lit("run-a").alias("run_id"))
    y = spec(charts.run_curves(curves, metric_title="Log loss (nats)"))
    assert y["encoding"]["y"]["axis"]["format"] == ".2f"


def test_the_loss_chart_draws_validation_loss_and_marks_the_kept_round(rounds):
    frame = dashboard.metrics_long(rounds.with_columns(val_loss=pl.lit(0.4)), ("loss", "val_loss"))
    assert set(frame["metric"]) == {"log loss", "validation loss"}
    plain = spec(charts.loss_with_choice(frame, best_round=None, title="Loss", y_title="nats"))
    assert "layer" not in plain and axis_titles(plain) == ["Round (number)", "nats"]
    marked = spec(charts.loss_with_choice(frame, best_round=2, title="Loss", y_title="nats"))
    marks = [layer["mark"]["type"] for layer in marked["layer"]]
    assert marks == ["line", "rule", "text"]
    rule_data = marked["datasets"][marked["layer"][1]["data"]["name"]]
    assert rule_data == [{"round": 2, "label": "kept: round 2"}]
