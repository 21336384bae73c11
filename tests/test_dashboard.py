"""Data shaping for the app's pages (healthsync.views.dashboard), with an in-memory store."""

import ast
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from healthsync.config import TrainConfig
from healthsync.data import FeatureSpec, Federation, HospitalInfo
from healthsync.data.pseudonyms import SiteLabels
from healthsync.ml.metrics import auc_score
from healthsync.privacy import training
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from healthsync.views import dashboard, privacy_dashboard, settings, tenancy
from tests.app_helpers import fake_run, make_federation

PACKAGE = Path(dashboard.__file__).parent


@pytest.fixture
def store():
    return MetricsStore(":memory:")


def federation(extras=None, created_with=None, source="synthetic") -> Federation:
    extras = extras or [{}, {}]
    return Federation(
        data_dir=Path("x"),
        name="two",
        source=source,
        outcomes=("diabetes", "hypertension"),
        default_target="diabetes",
        features=(
            FeatureSpec("age", "numeric", None, "years"),
            FeatureSpec("sex", "categorical", ("F", "M")),
        ),
        hospitals=(
            HospitalInfo("h0", "North", 80, 20, extras[0]),
            HospitalInfo("h1", "South", 40, 10, extras[1]),
        ),
        created_with=created_with if created_with is not None else {"heterogeneity": 0.5},
    )


def test_the_library_never_imports_streamlit():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "streamlit" for n in names), path


def test_settings_from_environment_relative_to_the_checkout(tmp_path):
    default = settings.AppSettings.from_env(tmp_path, {})
    assert default.db == tmp_path / "data/healthsync.duckdb"
    assert default.data_root == tmp_path / "data"
    assert default.home == tmp_path / ".healthsync"
    custom = settings.AppSettings.from_env(
        tmp_path,
        {"HEALTHSYNC_DB": "/abs/m.duckdb", "HEALTHSYNC_DATA_ROOT": "feds", "HEALTHSYNC_HOME": "h"},
    )
    assert (custom.db, custom.data_root, custom.home) == (
        Path("/abs/m.duckdb"),
        tmp_path / "feds",
        tmp_path / "h",
    )


def test_find_federations_lists_folders_with_a_manifest(tmp_path):
    assert settings.find_federations(tmp_path / "missing") == []
    make_federation(tmp_path / "b")
    (tmp_path / "a").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert settings.find_federations(tmp_path) == [tmp_path / "b"]


@pytest.mark.parametrize(
    ("created_with", "source", "label"),
    [
        ({"heterogeneity": 0}, "synthetic", "0 (identical hospitals)"),
        ({"heterogeneity": 0.2}, "synthetic", "0.2 (low)"),
        ({"heterogeneity": 1.0}, "synthetic", "1 (strong)"),
        ({}, "import", "not recorded (imported data)"),
    ],
)
def test_heterogeneity_label(created_with, source, label):
    assert (
        dashboard.heterogeneity_label(federation(created_with=created_with, source=source)) == label
    )


def test_default_run_prefers_the_newest_active_one(store):
    assert dashboard.default_run(runlog.list_runs(store)) is None
    fake_run(store, "run-a", status="running", planned=5)
    fake_run(store, "run-b")
    runs = runlog.list_runs(store)
    assert dashboard.default_run(runs) == "run-a"
    assert dashboard.finished_runs(runs)["run_id"].to_list() == ["run-b"]
    runlog.finish_run(store, "run-a", "cancelled")
    assert dashboard.default_run(runlog.list_runs(store)) == "run-b"
    assert "run-b · completed · fedavg/logreg" in dashboard.run_labels(runs)["run-b"]


def test_runs_table_shows_settings_and_final_numbers(store):
    fake_run(store, "run-a", rounds=2, planned=4, status="running")
    fake_run(store, "run-b", rounds=3)
    table = dashboard.runs_table(runlog.list_runs(store))
    assert table.columns[:3] == ["run", "status", "data set"]
    row = table.row(by_predicate=pl.col("run") == "run-a", named=True)
    assert (row["rounds"], row["AUC"], row["note"]) == ("2/4", None, "")
    assert table.row(by_predicate=pl.col("run") == "run-b", named=True)["AUC"] == 0.66


def test_progress_and_time_left(store):
    fake_run(store, "run-a", rounds=2, planned=5, status="running")
    rounds = runlog.rounds_frame(store, "run-a")
    progress = dashboard.progress(rounds, 5)
    assert (progress.done, progress.fraction, progress.seconds_left) == (2, 0.4, 6.0)
    assert progress.text("running") == "Round 2 of 5 · about 6 s left"
    assert progress.text("cancelled") == "Round 2 of 5 · cancelled"
    empty = dashboard.progress(rounds.clear(), 5)
    assert empty.seconds_left is None and "estimating" in empty.text("running")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0 s"), (44.2, "45 s"), (185, "3 min 05 s"), (7800, "2 h 10 min")]
)
def test_format_duration(seconds, text):
    assert dashboard.format_duration(seconds) == text


def test_format_metric():
    assert dashboard.format_metric(None) == "–"
    assert dashboard.format_metric(float("nan")) == "–"
    assert dashboard.format_metric(0.71234) == "0.712"


def test_frames_for_the_live_charts(store):
    fake_run(store, "run-a", rounds=3, failed_round=2)
    rounds = runlog.rounds_frame(store, "run-a")
    long = dashboard.metrics_long(rounds, ("auc", "loss"))
    assert long.height == 6 and set(long["metric"]) == {"AUC", "log loss"}
    status = dashboard.hospital_status_long(rounds)
    assert (
        status.filter((pl.col("round") == 2) & (pl.col("status") == "failed"))["hospitals"].item()
        == 1
    )
    heat = dashboard.heatmap_frame(runlog.hospital_rounds_frame(store, "run-a"))
    assert heat.columns == ["hospital", "round", "value"] and heat.height == 9
    named = tenancy.with_site_labels(heat, SiteLabels({"h0000": "North"}))
    assert named["name"].unique().sort().to_list() == ["North", "h0001", "h0002"]
    assert dashboard.metrics_long(rounds.clear()).is_empty()
    assert dashboard.hospital_status_long(rounds.clear()).is_empty()


def test_nan_metrics_become_missing(store):
    runlog.create_run(store, "run-n", dashboard_config())
    runlog.record_round(
        store, "run-n", {"round": 1, "auc": float("nan"), "loss": 0.5, "accuracy": 0.5}, []
    )
    long = dashboard.metrics_long(runlog.rounds_frame(store, "run-n"))
    assert long.filter(pl.col("metric") == "AUC")["value"].to_list() == [None]


def dashboard_config():
    from healthsync.config import TrainConfig

    return TrainConfig()


def test_sql_helpers_for_comparing_and_exporting(store):
    fake_run(store, "run-a", rounds=3)
    fake_run(store, "run-b", rounds=2)
    curves = dashboard.compare_curves(store, ["run-a", "run-b"], "auc")
    assert curves.height == 5 and curves.columns == ["run_id", "round", "value"]
    assert dashboard.compare_curves(store, [], "auc").is_empty()
    with pytest.raises(ValueError, match="unknown metric"):
        dashboard.compare_curves(store, ["run-a"], "auc; DROP TABLE runs")
    last = dashboard.last_round_hospitals(store, "run-b")
    assert last["hospital"].to_list() == ["h0000", "h0001", "h0002"]
    assert last["auc"].to_list() == pytest.approx([0.61, 0.62, 0.63])
    rounds_csv = dashboard.metrics_csv(store, ["run-a"])
    assert rounds_csv.splitlines()[0].startswith("run_id,round,loss,auc")
    assert len(rounds_csv.splitlines()) == 4
    hospital_csv = dashboard.metrics_csv(store, ["run-a", "run-b"], "hospital_rounds")
    assert hospital_csv.splitlines()[0] == "run_id,round,hospital,hospital_name,n,loss,auc,accuracy"
    assert len(hospital_csv.splitlines()) == 1 + 15


def test_latest_comparison_is_the_newest_for_the_run(store):
    assert dashboard.latest_comparison(store, "run-a").is_empty()
    rows = [
        ["cmp-old", "2026-01-01", "run-a", "local only", "overall", 0.5],
        ["cmp-new", "2026-02-01", "run-a", "local only", "h0", 0.6],
        ["cmp-new", "2026-02-01", "run-a", "local only", "overall", 0.7],
        ["cmp-other", "2026-03-01", "run-b", "local only", "overall", 0.9],
    ]
    store.executemany(
        "INSERT INTO comparisons (comparison_id, created_at, run_id, method, hospital, auc,"
        " released) VALUES (?, ?, ?, ?, ?, ?, true)",
        rows,
    )
    table = dashboard.latest_comparison(store, "run-a")
    assert table["hospital"].to_list() == ["overall", "h0"]
    assert table["auc"].to_list() == [0.7, 0.6]


def bins_from_scores(y: np.ndarray, p: np.ndarray, n_bins: int = 20) -> pl.DataFrame:
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    return pl.DataFrame(
        {
            "bin": range(n_bins),
            "lower": [i / n_bins for i in range(n_bins)],
            "upper": [(i + 1) / n_bins for i in range(n_bins)],
            "positives": [int(((idx == i) & (y == 1)).sum()) for i in range(n_bins)],
            "negatives": [int(((idx == i) & (y == 0)).sum()) for i in range(n_bins)],
            "score_sum": [float(p[idx == i].sum()) for i in range(n_bins)],
        }
    )


def test_roc_from_bins_matches_the_exact_auc_when_scores_sit_on_bin_edges():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.clip(np.round(rng.normal(0.35 + 0.3 * y, 0.2) * 20) / 20, 0, 0.95)
    points = dashboard.roc_points(bins_from_scores(y, p))
    assert points.row(0) == (1.0, 0.0, 0.0) and points.row(-1)[1:] == (1.0, 1.0)
    assert points["fpr"].is_sorted() and points["tpr"].is_sorted()
    assert dashboard.auc_from_roc(points) == pytest.approx(auc_score(y, p), abs=1e-9)


def test_roc_of_perfect_and_useless_scores():
    perfect = dashboard.roc_points(
        bins_from_scores(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    )
    assert dashboard.auc_from_roc(perfect) == 1.0
    same = dashboard.roc_points(bins_from_scores(np.array([0, 1]), np.array([0.5, 0.5])))
    assert dashboard.auc_from_roc(same) == 0.5


def test_calibration_points_of_released_bins():
    y = np.array([0, 1] * 11 + [1, 0])
    scores = np.array([0.12] * 22 + [0.81, 0.81])  # 22 patients in one band, 2 in another
    released = training.merge_bins(bins_from_scores(y, scores))
    points = dashboard.calibration_points(released)
    assert points.height == 1  # the band of 2 patients joined the one below it
    assert points["predicted"].to_list() == pytest.approx([(0.12 * 22 + 0.81 * 2) / 24])
    assert points["observed"].to_list() == [0.5]
    assert points["patients"].to_list() == [24]


def test_feature_inputs_and_patient_frame():
    model = SimpleNamespace(
        encoder=SimpleNamespace(numeric=("age", "bmi"), categorical=(("sex", ("F", "M")),)),
        scaler=SimpleNamespace(mean=np.array([54.26, 27.0, 0.5, 0.5])),
    )
    inputs = dashboard.feature_inputs(model, federation())
    assert [(i.name, i.kind, i.default) for i in inputs] == [
        ("age", "numeric", 54.3),
        ("bmi", "numeric", 27.0),
        ("sex", "categorical", "F"),
    ]
    assert inputs[0].label == "Age (years)" and inputs[1].label == "BMI"
    frame = dashboard.patient_frame({"age": 60, "bmi": 31.5, "sex": "M"}, inputs)
    assert frame.schema == pl.Schema({"age": pl.Float64, "bmi": pl.Float64, "sex": pl.String})


def test_hospital_names_from_the_manifest(tmp_path):
    make_federation(tmp_path / "fed")
    names = dashboard.hospital_names(tmp_path / "fed")
    assert set(names) == {"h0000", "h0001", "h0002"} and all(names.values())
    assert dashboard.hospital_names(tmp_path / "gone") == {}
    assert dashboard.hospital_names(None) == {}


def test_duration_rounding_is_up():
    assert dashboard.format_duration(59.01) == "1 min 00 s"
    assert math.isclose(
        dashboard.progress(pl.DataFrame({"seconds": [1.0, 3.0]}), 4).seconds_left, 4.0
    )


# ---------------------------------------------------------------- privacy and robustness
def test_safeguards_label_names_attack_dp_and_faults():
    assert privacy_dashboard.safeguards_label(TrainConfig().to_dict()) == ""
    config = TrainConfig(
        dp_noise=1.0,
        dp_clip=0.5,
        dp_epsilon_budget=20,
        adversarial=3,
        attack="scale",
        dropout=0.2,
        straggler_delay=0.5,
        round_timeout=0.3,
    )
    assert privacy_dashboard.safeguards_label(config.to_dict()) == (
        "scale×3 · DP z=1 ε≤20 · dropout 0.2 · stragglers <0.5 s, timeout 0.3 s"
    )
    assert privacy_dashboard.safeguards_label(TrainConfig(secagg=True).to_dict()) == "SecAgg+"
    assert privacy_dashboard.privacy_summary(TrainConfig().to_dict()) is None
    assert privacy_dashboard.privacy_summary(config.to_dict()) == (
        "Differential privacy: noise multiplier 1, clipping norm 0.5 (server side), "
        "δ = 1e-05, budget ε ≤ 20."
    )


def test_run_labels_and_curve_labels_carry_the_attack(store):
    fake_run(store, "run-a")
    runlog.create_run(
        store, "run-b", TrainConfig(strategy="krum", adversarial=2, attack="scale", rounds=1)
    )
    runlog.record_round(store, "run-b", {"round": 1, "auc": 0.7}, [])
    runs = runlog.list_runs(store)
    labels = privacy_dashboard.run_labels(store, runs)
    assert labels["run-a"] == dashboard.run_labels(runs)["run-a"]
    assert labels["run-b"].endswith("krum/logreg · None · data set demo · scale×2")
    curves = privacy_dashboard.labelled_curves(store, ["run-a", "run-b"], "auc")
    assert set(curves["label"]) == {"fedavg (run-a)", "krum · scale×2 (run-b)"}
    assert privacy_dashboard.run_configs(store, []) == {}


def test_epsilon_dropouts_and_adversaries_from_rounds_and_events():
    rounds = pl.DataFrame({"round": [1, 2, 3], "epsilon": [4.7, None, 9.0]})
    assert privacy_dashboard.epsilon_frame(rounds)["round"].to_list() == [1, 3]
    assert privacy_dashboard.epsilon_spent(rounds) == 9.0
    assert privacy_dashboard.epsilon_spent(rounds.with_columns(epsilon=None)) is None
    ids = [f"h{i:04d}" for i in range(12)]
    events = pl.DataFrame(
        {
            "round": [None, None, 3, 3, 5, *[7] * 12],
            "hospital": ["h0005", "h0001", "h0007", "h0004", "h0002", *ids],
            "kind": ["adversary", "adversary", *["hospital_dropped"] * 15],
        }
    )
    dropped = privacy_dashboard.dropped_frame(events)
    assert dropped.rows() == [
        (3, 2, "h0004, h0007"),
        (5, 1, "h0002"),
        (7, 12, ", ".join(ids[:8]) + " and 4 more"),
    ]
    assert (
        privacy_dashboard.adversaries_line(events, "scale") == "Adversarial: h0001, h0005 (scale)"
    )
    quiet = events.clear()
    assert privacy_dashboard.dropped_frame(quiet).is_empty()
    assert privacy_dashboard.adversaries_line(quiet, None) is None


def test_utility_points_mark_runs_without_dp_as_the_reference():
    utility = pl.DataFrame(
        {"strategy": ["fedavg", "fedprox"], "epsilon": [None, 4.0], "auc": [0.8, float("nan")]}
    )
    points = privacy_dashboard.utility_points(utility)
    assert points["series"].to_list() == [privacy_dashboard.NO_DP, "fedprox"]
    assert points["auc"].to_list() == [0.8, None]


def test_the_per_hospital_csv_names_hospitals_from_the_manifest(store, tmp_path):
    make_federation(tmp_path / "fed")
    fake_run(store, "run-a", data_dir=tmp_path / "fed", rounds=1)
    fake_run(store, "run-gone", data_dir=tmp_path / "deleted", rounds=1)
    rows = pl.read_csv(
        dashboard.metrics_csv(store, ["run-a", "run-gone"], "hospital_rounds").encode()
    )
    assert rows.columns[:4] == ["run_id", "round", "hospital", "hospital_name"]
    names = dict(
        rows.filter(pl.col("run_id") == "run-a").select("hospital", "hospital_name").rows()
    )
    assert names == dashboard.hospital_names(tmp_path / "fed") and len(names) == 3
    gone = rows.filter(pl.col("run_id") == "run-gone")
    assert gone["hospital_name"].to_list() == gone["hospital"].to_list()  # manifest gone: the id


def test_risk_calculator_inputs_use_the_schemas_names_and_units():
    """Not "bmi (kg/m2)": the same "BMI (kg/m²)" as every axis (issue 14)."""
    assert dashboard.FeatureInput("bmi", "numeric", 27.0, unit="kg/m2").label == "BMI (kg/m²)"
    assert dashboard.FeatureInput("age", "numeric", 50.0, unit="years").label == "Age (years)"
    assert dashboard.FeatureInput("smoking", "categorical", "never").label == "Smoking"
