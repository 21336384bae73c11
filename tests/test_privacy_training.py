"""The release of training numbers: score bins and per-hospital metrics, in the store and on pages.

The attack these tests reproduce (issue 13): a score bin holding one patient
(1 positive, 0 negatives) reached the store and the Model page's ROC curve, and
the risk calculator scores any feature vector, so whoever knew that patient's
features learnt the outcome. A hospital's AUC over one positive reveals that
patient's rank the same way.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthsync.config import TrainConfig
from healthsync.privacy.release import MIN_CELL
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from healthsync.views import dashboard
from tests.app_helpers import AppEnv, charts, fake_run, texts

#: 20 bins of the federation's summed histogram: one holds a single diabetic patient.
ATTACK_HISTOGRAM = np.array(
    [[0, 30, 1.5], [2, 40, 6.3], [3, 30, 7.5], [5, 20, 7.9], [6, 14, 8.1]]
    + [[4, 8, 5.0 + i * 0.6] for i in range(14)]
    + [[1, 0, 0.7946]],
    dtype=np.float64,
)


@pytest.fixture
def store() -> MetricsStore:
    return MetricsStore(":memory:")


def stored_bins(store: MetricsStore, run_id: str) -> pl.DataFrame:
    """What the store itself holds, read past every reading function."""
    return store.frame("SELECT * FROM score_bins WHERE run_id = ? ORDER BY bin", [run_id])


def assert_no_small_bin(bins: pl.DataFrame) -> None:
    assert bins.filter(
        (pl.col("positives") < MIN_CELL) | (pl.col("negatives") < MIN_CELL)
    ).is_empty(), bins


def insert_old_bins(store: MetricsStore, run_id: str, histogram: np.ndarray) -> None:
    """Bins as the code before the release policy stored them: 20 equal bins, any count."""
    store.executemany(
        "INSERT INTO score_bins VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            [run_id, i, i / 20, (i + 1) / 20, int(h[0]), int(h[1]), float(h[2])]
            for i, h in enumerate(histogram)
        ],
    )


# ---------------------------------------------------------------- score bins in the store
def test_a_single_patient_bin_never_reaches_the_store(store):
    runlog.create_run(store, "run-a", TrainConfig())
    runlog.save_score_bins(store, "run-a", ATTACK_HISTOGRAM)
    bins = stored_bins(store, "run-a")
    assert not bins.is_empty()
    assert_no_small_bin(bins)
    # merging keeps every patient and every score: the totals are unchanged
    assert bins["positives"].sum() == ATTACK_HISTOGRAM[:, 0].sum()
    assert bins["negatives"].sum() == ATTACK_HISTOGRAM[:, 1].sum()
    assert bins["score_sum"].sum() == pytest.approx(ATTACK_HISTOGRAM[:, 2].sum())
    assert bins["lower"][0] == 0.0 and bins["upper"][-1] == 1.0
    assert (bins["upper"].head(-1) == bins["lower"].tail(-1)).all()  # contiguous bands


def test_bins_are_withheld_when_a_class_has_fewer_than_11_patients(store):
    runlog.create_run(store, "run-a", TrainConfig())
    few_positives = ATTACK_HISTOGRAM.copy()
    few_positives[:, 0] = 0
    few_positives[19, 0] = MIN_CELL - 1
    runlog.save_score_bins(store, "run-a", few_positives)
    assert stored_bins(store, "run-a").is_empty()
    assert runlog.score_bins_frame(store, "run-a").is_empty()


def test_small_bins_of_an_old_store_are_merged_when_read(store):
    runlog.create_run(store, "run-old", TrainConfig())
    insert_old_bins(store, "run-old", ATTACK_HISTOGRAM)
    bins = runlog.score_bins_frame(store, "run-old")
    assert not bins.is_empty()
    assert_no_small_bin(bins)
    assert bins["positives"].sum() == ATTACK_HISTOGRAM[:, 0].sum()


# ---------------------------------------------------------------- the Model page
def roc_data(at) -> pl.DataFrame:
    """The ROC curve's points as the browser receives them (the chart's Arrow dataset)."""
    roc = next(c for c in charts(at) if "ROC curve" in json.loads(c.proto.spec)["title"])
    for dataset in roc.proto.datasets:
        frame = pl.from_arrow(pa.ipc.open_stream(io.BytesIO(dataset.data.data)).read_all())
        if "tpr" in frame.columns:
            return frame.sort("fpr", "tpr")
    raise AssertionError("the ROC chart has no curve data")


@pytest.mark.parametrize("written", ["by a run", "before the policy"])
def test_the_model_page_draws_no_roc_point_from_a_small_bin(tmp_path, monkeypatch, written):
    env = AppEnv(tmp_path, monkeypatch)
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    env.store.execute("DELETE FROM score_bins")
    if written == "by a run":
        runlog.save_score_bins(env.store, "run-a", ATTACK_HISTOGRAM)
    else:
        insert_old_bins(env.store, "run-a", ATTACK_HISTOGRAM)
    at = env.app("viewer", "pages/model.py")
    assert not at.exception
    points = roc_data(at)
    positives, negatives = ATTACK_HISTOGRAM[:, 0].sum(), ATTACK_HISTOGRAM[:, 1].sum()
    steps = points.select(
        (pl.col("tpr").diff() * positives).round(6).alias("positives"),
        (pl.col("fpr").diff() * negatives).round(6).alias("negatives"),
    ).drop_nulls()
    # Each step between two drawn points is one band of patients: none may be small.
    assert steps.height >= 1
    assert_no_small_bin(steps)
    spec = " ".join(json.dumps(json.loads(c.proto.spec)) for c in charts(at))
    assert "0.7946" not in spec and "0.795" not in spec


def test_the_model_page_headline_auc_is_the_runs_recorded_auc(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    recorded = runlog.get_run(env.store, "run-a")["final_auc"]
    at = env.app("viewer", "pages/model.py")
    title = next(
        json.loads(c.proto.spec)["title"]
        for c in charts(at)
        if "ROC curve" in json.loads(c.proto.spec)["title"]
    )
    assert f"AUC {recorded:.3f}" in title and "binned" not in title
    assert "approximat" in texts(at)  # the caption says the binned curve is an approximation


# ---------------------------------------------------------------- per-hospital metrics
def hospital_row(hospital: str, positives: int, negatives: int, auc: float) -> dict:
    return {
        "hospital": hospital,
        "round": 1,
        "n": positives + negatives,
        "positives": positives,
        "negatives": negatives,
        "loss": 0.412345678,
        "auc": auc,
        "accuracy": 0.876543219,
    }


#: h0 holds one diabetic test patient; h2 is the smallest of the hospitals that could be shown.
ROWS = [
    hospital_row("h0", 1, 30, 0.9354838709677419),
    hospital_row("h1", 20, 40, 0.81234567),
    hospital_row("h2", 15, 25, 0.7654321),
    hospital_row("h3", 30, 60, 0.70123456),
]


def weighted(rows: list[dict], key: str) -> float:
    return sum(r["n"] * r[key] for r in rows) / sum(r["n"] for r in rows)


def record(store: MetricsStore, run_id: str = "run-h") -> None:
    runlog.create_run(store, run_id, TrainConfig())
    round_row = {"round": 1, **{k: weighted(ROWS, k) for k in ("loss", "auc", "accuracy")}}
    runlog.record_round(store, run_id, round_row, ROWS)


def surfaces(store: MetricsStore, run_id: str = "run-h") -> dict[str, dict[str, float | None]]:
    """Each hospital's AUC as every surface reading per-hospital metrics shows it."""
    csv = pl.read_csv(io.StringIO(dashboard.metrics_csv(store, [run_id], "hospital_rounds")))
    return {
        "store": dict(
            store.frame("SELECT hospital, auc FROM hospital_rounds WHERE run_id = ?", [run_id])
            .with_columns(pl.col("auc").fill_nan(None))
            .iter_rows()
        ),
        "live heatmap": dict(
            dashboard.heatmap_frame(runlog.hospital_rounds_frame(store, run_id))
            .select("hospital", "value")
            .iter_rows()
        ),
        "model page": dict(
            dashboard.last_round_hospitals(store, run_id).select("hospital", "auc").iter_rows()
        ),
        "csv": dict(csv.select("hospital", "auc").iter_rows()),
        "runs show --json": {
            h["hospital"]: h["auc"] for h in runlog.run_detail(store, run_id)["hospitals"]
        },
    }


def test_a_hospital_with_fewer_than_11_of_a_class_has_its_metrics_withheld(store):
    record(store)
    for surface, auc in surfaces(store).items():
        assert auc["h0"] is None, surface  # one positive: its AUC is that patient's rank
        assert auc["h1"] == 0.812 and auc["h3"] == 0.701, surface  # fixed 3 decimals
    raw = store.frame("SELECT * FROM hospital_rounds WHERE hospital = 'h0'").row(0, named=True)
    assert raw["loss"] is None and raw["accuracy"] is None and raw["n"] == 31


def test_the_federation_mean_cannot_be_differenced_back_to_one_withheld_hospital(store):
    """Global AUC = test-size weighted mean of hospital AUCs: with all but one hospital
    shown, subtracting them would give the withheld one back. A second hospital (the
    smallest shown) is withheld with it, so only the pair's combined figure is derivable."""
    record(store)
    shown = dashboard.last_round_hospitals(store, "run-h")
    withheld = shown.filter(pl.col("auc").is_null())["hospital"].to_list()
    assert withheld == ["h0", "h2"]
    total = runlog.rounds_frame(store, "run-h")["auc"][0] * sum(r["n"] for r in ROWS)
    rest = sum(r["n"] * r["auc"] for r in shown.iter_rows(named=True) if r["auc"] is not None)
    h0_if_alone = (total - rest) / 31
    assert not math.isclose(h0_if_alone, ROWS[0]["auc"], abs_tol=0.05)


def test_per_hospital_rows_of_an_old_store_are_withheld_when_read(store):
    """Rows stored before the policy carry no class counts: nobody can tell whether a
    hospital's split was large enough, so every reader withholds their metrics."""
    runlog.create_run(store, "run-old", TrainConfig())
    store.executemany(
        "INSERT INTO hospital_rounds (run_id, round, hospital, n, loss, auc, accuracy)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [["run-old", 1, r["hospital"], r["n"], r["loss"], r["auc"], r["accuracy"]] for r in ROWS],
    )
    for surface, auc in surfaces(store, "run-old").items():
        if surface != "store":
            assert set(auc.values()) == {None}, surface


def test_a_run_stores_no_small_bin_and_no_metric_of_a_small_hospital(tmp_path):
    """End to end through the server's round loop (in process, no Ray)."""
    from healthsync.data import open_hospital
    from healthsync.data.synthetic import generate_federation
    from tests.inprocess_grid import run_in_process

    fed = tmp_path / "fed"
    federation = generate_federation(fed, hospitals=4, patients=300, seed=0, heterogeneity=1.0)
    db = tmp_path / "m.duckdb"
    detail, _ = run_in_process(
        TrainConfig(data_dir=str(fed), db=str(db), rounds=1, target="diabetes")
    )
    assert detail["status"] == "completed"
    store = MetricsStore(db)
    bins = stored_bins(store, detail["run_id"])
    assert not bins.is_empty()
    assert_no_small_bin(bins)
    per_hospital = store.frame(
        "SELECT hospital, auc, loss, accuracy FROM hospital_rounds WHERE run_id = ?",
        [detail["run_id"]],
    )
    shown = 0
    for h in federation.hospitals:
        test = open_hospital(fed, h.id).test()
        positives = int(test["diabetes"].sum())
        small = min(positives, test.height - positives) < MIN_CELL
        row = per_hospital.filter(pl.col("hospital") == h.id).row(0, named=True)
        if small:
            assert row["auc"] is None and row["loss"] is None and row["accuracy"] is None, h.id
        else:
            assert row["auc"] == round(row["auc"], 3), h.id
            shown += 1
    assert 0 < shown < len(federation.hospitals)  # the federation has both kinds


def test_a_sole_withheld_contributor_takes_the_federation_figure_with_it():
    """Nothing to withhold alongside: the federation's AUC would be that hospital's AUC."""
    from healthsync.privacy import training

    one_class = hospital_row("h1", 0, 80, float("nan"))
    federation, rows = training.release_round(
        {"round": 1, "auc": 0.93, "loss": 0.4}, [hospital_row("h0", 1, 30, 0.93), one_class]
    )
    assert federation["auc"] is None  # only h0 entered the mean AUC
    assert federation["loss"] == 0.4  # two hospitals (both withheld) entered the mean loss
    assert [r["auc"] for r in rows] == [None, None]
    assert all(r["released"] and "positives" not in r for r in rows)


def test_a_row_without_class_counts_is_withheld():
    from healthsync.privacy import training

    _, rows = training.release_round({}, [{"hospital": "h0", "n": 500, "auc": 0.8}])
    assert rows[0]["auc"] is None


def test_released_bins_pass_unchanged_when_merged_again():
    from healthsync.privacy import training

    released = training.histogram_bins(ATTACK_HISTOGRAM)
    assert training.merge_bins(released).equals(released)
    assert released["bin"].to_list() == list(range(released.height))


def test_the_comparison_table_is_stored_and_read_as_released(tmp_path, monkeypatch):
    from healthsync.runs.baselines import compare_table

    env = AppEnv(tmp_path, monkeypatch)  # 3 hospitals, each with under 11 diabetic test patients
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    table = compare_table(TrainConfig(db=str(env.db)), "run-a")
    hospitals = table.filter(pl.col("hospital") != "overall")
    assert hospitals.height == 12 and hospitals["auc"].is_null().all()  # 4 methods x 3
    stored = env.store.frame("SELECT * FROM comparisons WHERE hospital <> 'overall'")
    assert stored["auc"].is_null().all() and stored["loss"].is_null().all()
    federated = dashboard.latest_comparison(env.store, "run-a").filter(
        pl.col("method").str.starts_with("federated") & (pl.col("hospital") == "overall")
    )
    run = runlog.get_run(env.store, "run-a")
    assert federated["auc"].item() == round(run["final_auc"], 3)  # as every page shows it

    env.store.execute("UPDATE comparisons SET released = NULL")  # as stored before the policy
    env.store.execute("UPDATE comparisons SET auc = 0.7")
    old = dashboard.latest_comparison(env.store, "run-a")
    assert old.filter(pl.col("hospital") != "overall")["auc"].is_null().all()
    assert old.filter(pl.col("hospital") == "overall")["auc"].to_list() == [0.7] * 4


def test_incident_outcome_rows_show_the_manifest_test_size_not_the_at_risk_count(tmp_path):
    """The at-risk count next to the manifest's split size is an exact count of prevalent cases."""
    from healthsync.data import load_federation
    from healthsync.data.synthetic import generate_federation
    from healthsync.privacy import training
    from healthsync.runs.baselines import _shown_sizes

    generate_federation(tmp_path / "fed", hospitals=2, patients=80, seed=1)
    federation = load_federation(tmp_path / "fed")
    assert "diabetes_5y" in federation.incident
    h0, h1 = federation.hospitals
    assert training.shown_test_size(federation, h0.id, "diabetes_5y", 3) == h0.n_test
    assert training.shown_test_size(federation, h0.id, "diabetes", 3) == 3  # prevalent: as scored
    config = TrainConfig(data_dir=str(tmp_path / "fed"), target="diabetes_5y")
    rows = [
        {"method": "local only", "hospital": h0.id, "n": 5},
        {"method": "local only", "hospital": h1.id, "n": 6},
        {"method": "local only", "hospital": "overall", "n": 11},
    ]
    shown = {r["hospital"]: r["n"] for r in _shown_sizes(rows, config)}
    assert shown == {h0.id: h0.n_test, h1.id: h1.n_test, "overall": h0.n_test + h1.n_test}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["h0", "h1", "h2", "h3", "h10", "h11"]),
            st.one_of(st.none(), st.integers(0, 40)),  # n
            st.one_of(st.none(), st.integers(0, 25)),  # positives
            st.one_of(st.none(), st.integers(0, 25)),  # negatives
            st.one_of(st.none(), st.just(float("nan")), st.floats(0, 1)),  # auc
            st.one_of(st.none(), st.floats(0, 3)),  # loss
        ),
        max_size=12,
    )
)
def test_rows_released_as_one_frame_match_rows_released_one_by_one(rows):
    """A run releases its rounds as one frame per round (no dict per hospital at 100,000
    hospitals); baselines and older callers release dicts. One policy: the same outcome."""
    import polars as pl

    from healthsync.privacy import training

    dicts = [
        {"hospital": h, "round": 1, "n": n, "positives": p, "negatives": q, "auc": a, "loss": b}
        for h, n, p, q, a, b in rows
    ]
    federation = {"round": 1, "auc": 0.7, "loss": 0.5}
    by_dicts = training.release_round(federation, dicts)
    frame = pl.DataFrame(
        dicts,
        schema={
            "hospital": pl.String,
            "round": pl.Int32,
            "n": pl.Int64,
            "positives": pl.Int64,
            "negatives": pl.Int64,
            "auc": pl.Float64,
            "loss": pl.Float64,
        },
    )
    by_frame = training.release_round(federation, frame)
    assert by_frame[0] == by_dicts[0]
    assert by_frame[1].to_dicts() == by_dicts[1]


def test_released_figures_are_rounded_as_python_rounds_them():
    """Rounded to DECIMALS places as ``round`` does (the exact binary value, correctly
    rounded): k/n test accuracies at half-way decimals must not move by 0.001."""
    import polars as pl

    from healthsync.privacy import training

    values = [k / n for n in (80, 160, 400, 2000) for k in range(n + 1)]
    rows = [
        {"hospital": f"h{i}", "n": 80, "positives": 20, "negatives": 20, "accuracy": v}
        for i, v in enumerate(values)
    ]
    _, by_dicts = training.release_round({}, rows)
    assert [r["accuracy"] for r in by_dicts] == [round(v, 3) for v in values]
    _, by_frame = training.release_round({}, pl.DataFrame(rows))
    assert by_frame["accuracy"].to_list() == [round(v, 3) for v in values]
