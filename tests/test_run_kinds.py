"""A run's kind and name: benchmark runs stay on the Stress-test page, runs can be named.

Stress-test measurements are real runs in the store; they are told apart by
their kind, so Live, Run history, Model, the comparison and Overview show
training runs only, and every run picker says which data set a run used.
"""

import json

import duckdb
import pytest

from healthsync.bench import sweep
from healthsync.cli import main
from healthsync.config import TrainConfig
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from tests.app_helpers import AliveProcess, AppEnv, fake_run, make_federation, texts


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def _benchmark(env: AppEnv, run_id: str, **kwargs) -> None:
    """A stress-test run as the store holds it (newer than any training run made before)."""
    fake_run(env.store, run_id, data_dir=env.data_root / "bench" / "h3x100s0", **kwargs)
    env.store.execute("UPDATE runs SET kind = ? WHERE run_id = ?", [runlog.BENCHMARK, run_id])


# ---------------------------------------------------------------- the store
def test_stress_test_runs_are_recorded_as_benchmarks_with_a_name(env, monkeypatch):
    monkeypatch.setattr("healthsync.runs.lifecycle.spawn_detached", lambda cmd, log: AliveProcess())
    monkeypatch.setattr(
        "healthsync.bench.sweep._measure_run",
        lambda way, config, run_id, started, timeout: sweep.Measurement(way, config.model, 3),
    )
    sweep.measure_flower(env.fed_dir, str(env.db), "logreg", 2, 0, 0, 60.0)
    (run,) = runlog.list_runs(env.store).iter_rows(named=True)
    assert run["kind"] == runlog.BENCHMARK
    assert run["name"] == "stress test · healthsync · 3 hospitals · logreg"
    assert runlog.list_runs(env.store, kind=runlog.TRAINING).is_empty()


OLD_RUNS = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, status VARCHAR NOT NULL,
    config JSON NOT NULL, data_dir VARCHAR, target VARCHAR, model VARCHAR, strategy VARCHAR,
    rounds_planned INTEGER, created_at TIMESTAMP NOT NULL, started_at TIMESTAMP,
    finished_at TIMESTAMP, pid INTEGER, reason VARCHAR,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    final_loss DOUBLE, final_auc DOUBLE, final_accuracy DOUBLE, final_brier DOUBLE
);
"""


def test_a_store_written_before_kinds_and_names_keeps_working(tmp_path):
    """Its stress-test runs (on the sweep's own federations) become benchmarks, once."""
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(OLD_RUNS)
        for run_id, data_dir in (
            ("run-1", "/srv/data/demo"),
            ("run-2", "/srv/data/bench/h100x500s0"),
        ):
            con.execute(
                "INSERT INTO runs (run_id, kind, status, config, data_dir, created_at)"
                " VALUES (?, 'federated', 'completed', '{}', ?, now())",
                [run_id, data_dir],
            )
    store = MetricsStore(path)
    runs = runlog.list_runs(store).sort("run_id")
    assert runs["kind"].to_list() == [runlog.TRAINING, runlog.BENCHMARK]
    assert runs["name"].to_list() == [None, None]
    assert runlog.run_detail(store, "run-1")["kind"] == "federated"  # the value JSON had


# ---------------------------------------------------------------- the pages
def test_training_views_leave_benchmark_runs_out(env):
    fake_run(env.store, "run-train", data_dir=env.fed_dir, model=True)
    _benchmark(env, "run-bench-done", model=False)
    _benchmark(env, "run-bench-live", rounds=1, planned=4, status="running")

    live = env.app("viewer", "pages/live.py")
    assert live.selectbox[0].value == "run-train"
    assert len(live.selectbox[0].options) == 1
    live = env.app("viewer", "pages/live.py", run="run-bench-live")  # an old link
    assert live.selectbox[0].value == "run-train"

    history = env.app("viewer", "pages/runs.py")
    assert list(history.dataframe[0].value["run"]) == ["run-train"]
    assert all(len(s.options) == 1 for s in [*history.selectbox, *history.multiselect])

    model = env.app("viewer", "pages/model.py")
    assert len(model.selectbox[0].options) == 1 and model.selectbox[0].value == "run-train"

    overview = env.app("viewer")
    assert "run-train" in texts(overview) and "run-bench" not in texts(overview)

    stress = env.app("analyst", "pages/stress.py")
    assert not stress.exception
    runs_table = next(d.value for d in stress.dataframe if "run" in d.value.columns)
    assert set(runs_table["run"]) == {"run-bench-done", "run-bench-live"}


def test_overview_shows_the_latest_run_of_the_data_set_shown(env):
    make_federation(env.data_root / "other")
    fake_run(env.store, "run-demo", data_dir=env.fed_dir)
    fake_run(env.store, "run-other", data_dir=env.data_root / "other")  # newer
    at = env.app("viewer")
    assert at.selectbox[0].value.name == "demo"
    assert "run-demo" in texts(at) and "run-other" not in texts(at)
    at.selectbox[0].select(env.data_root / "other").run()
    assert "run-other" in texts(at) and "run-demo" not in texts(at)


def test_overview_without_a_run_on_this_data_set_says_so(env):
    make_federation(env.data_root / "other")
    fake_run(env.store, "run-other", data_dir=env.data_root / "other")
    at = env.app("viewer")
    assert "No training run yet on demo" in texts(at)


def test_run_pickers_say_the_data_set_and_the_name(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True, name="baseline")
    for page in ("live", "runs", "model"):
        at = env.app("viewer", f"pages/{page}.py")
        (label,) = at.selectbox[0].options if page != "runs" else at.multiselect[0].options
        assert label.startswith("baseline · run-a · completed"), page
        assert "data set demo" in label, page


# ---------------------------------------------------------------- naming a run
def test_launch_names_the_run(env, monkeypatch):
    monkeypatch.setattr("healthsync.runs.lifecycle.spawn_detached", lambda cmd, log: AliveProcess())
    at = env.app("analyst", "pages/launch.py")
    next(w for w in at.text_input if w.label.startswith("Run name")).input("  first try  ")
    next(w for w in at.number_input if w.label == "Rounds").set_value(2)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception and not at.error
    (run,) = runlog.list_runs(env.store).iter_rows(named=True)
    assert (run["name"], run["kind"]) == ("first try", runlog.TRAINING)
    assert at.selectbox[0].value == run["run_id"]  # on Live, picked by its name
    assert "first try" in at.selectbox[0].options[0]


def test_train_name_is_stored_and_shown_by_runs_list_and_show(env, monkeypatch, capsys):
    monkeypatch.setattr("healthsync.runs.lifecycle.spawn_detached", lambda cmd, log: AliveProcess())
    monkeypatch.setattr("healthsync.runs.lifecycle.wait_for_run", lambda *args, **kwargs: {})
    db = str(env.db)
    main(["train", "--data", str(env.fed_dir), "--db", db, "--rounds", "1", "--name", "night"])
    main(["train", "--data", str(env.fed_dir), "--db", db, "--rounds", "1"])
    capsys.readouterr()
    unnamed, named = runlog.list_runs(env.store)["run_id"]  # newest first

    assert main(["runs", "show", named, "--db", db, "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["name"] == "night" and detail["run_id"] == named
    assert main(["runs", "show", unnamed, "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] is None

    assert main(["runs", "list", "--db", db, "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == [None, "night"]
    assert main(["runs", "list", "--db", db]) == 0
    listing = capsys.readouterr().out
    header = listing.splitlines()[1]
    assert "name" in header and "night" in listing
    assert "strategy" in header and "final_auc" in header  # no column hidden behind "…"


def test_a_name_too_long_is_refused(env, monkeypatch, capsys):
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.spawn_detached", pytest.fail
    )  # nothing may start
    code = main(["train", "--data", str(env.fed_dir), "--db", str(env.db), "--name", "x" * 81])
    assert code == 2
    assert "run name" in capsys.readouterr().err
    assert runlog.list_runs(env.store).is_empty()


def test_a_named_run_config_is_unchanged(env):
    """The name is the run's, not a training setting: the recorded config keeps its keys."""
    config = TrainConfig(data_dir=str(env.fed_dir), db=str(env.db))
    runlog.create_run(env.store, "run-a", config, name="x")
    assert runlog.get_run(env.store, "run-a")["config"] == json.loads(config.to_json())


def test_the_comparison_legend_names_named_runs(env):
    from healthsync.views import privacy_dashboard

    fake_run(env.store, "run-a", data_dir=env.fed_dir, name="baseline")
    fake_run(env.store, "run-b", data_dir=env.fed_dir)
    curves = privacy_dashboard.labelled_curves(env.store, ["run-a", "run-b"], "auc")
    assert set(curves["label"]) == {"baseline: fedavg (run-a)", "fedavg (run-b)"}
