"""The engine end to end: Flower on Ray, runs recorded live, faults, cancel, kill, predict.

Each test starts real simulation processes (about 10-20 s each on 2 cores).
"""

import os
import signal
import time

import polars as pl
import pytest

from healthsync.cli import main
from healthsync.config import TrainConfig
from healthsync.data import load_federation, open_hospital
from healthsync.runs import lifecycle, runlog
from healthsync.runs.store import MetricsStore
from simulation.compat import ray as ray_compat
from tests.engine_helpers import (
    assert_ray_session_removed,
    cli_json,
    make_federation,
    polling_like_the_live_page,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    return make_federation(tmp_path_factory.mktemp("engine"), "fed", hospitals=4, patients=150)


def _wait_for_rounds(db, run_id, n, timeout=120):
    store = MetricsStore(db)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (store.scalar("SELECT count(*) FROM rounds WHERE run_id = ?", [run_id]) or 0) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{run_id} did not reach {n} rounds: {runlog.get_run(store, run_id)}")


def test_live_reading_runs_show_and_predict(fed, tmp_path, capsys):
    db = tmp_path / "m.duckdb"
    run_id = lifecycle.start_run(TrainConfig(data_dir=str(fed), db=str(db), rounds=4))
    store = MetricsStore(db)
    latency: dict[int, float] = {}
    while True:  # read the store repeatedly while the run's process writes it
        finished = (
            runlog.get_run(store, run_id)["status"] in lifecycle.FINISHED
        )  # before the rounds
        rounds = store.frame(
            "SELECT round, epoch(recorded_at) AS at FROM rounds WHERE run_id = ?", [run_id]
        )
        now = time.time()
        for r, at in rounds.iter_rows():
            latency.setdefault(r, now - at)
        if finished:
            break
        time.sleep(0.05)
    assert runlog.get_run(store, run_id)["status"] == "completed"
    assert sorted(latency) == [1, 2, 3, 4]
    assert max(latency.values()) < 1.0

    code, detail = cli_json(capsys, "runs", "show", run_id, "--db", str(db), "--json")
    assert code == 0 and detail["run_id"] == run_id and detail["status"] == "completed"
    assert detail["config"]["rounds"] == 4
    assert [r["round"] for r in detail["rounds"]] == [1, 2, 3, 4]
    assert all(r["hospitals_ok"] == 4 and r["hospitals_failed"] == 0 for r in detail["rounds"])
    assert {h["hospital"] for h in detail["hospitals"]} == {"h0000", "h0001", "h0002", "h0003"}
    assert len(detail["hospitals"]) == 16
    assert 0.5 < detail["rounds"][-1]["auc"] <= 1.0

    code, listing = cli_json(capsys, "runs", "list", "--db", str(db), "--json")
    assert code == 0 and listing[0]["run_id"] == run_id and listing[0]["rounds_done"] == 4

    outcomes = load_federation(fed).outcomes
    patients = open_hospital(fed, "h0002").test().drop(*outcomes, "split")
    csv = tmp_path / "patients.csv"
    patients.write_csv(csv)
    assert main(["predict", "--run", run_id, "--db", str(db), "--input", str(csv)]) == 0
    risks = pl.read_csv(capsys.readouterr().out.encode())
    # The run predicts the data's default target, new diabetes within 5 years.
    assert risks.columns == ["row", "risk_diabetes_5y"] and risks.height == patients.height
    assert risks["risk_diabetes_5y"].is_between(0, 1).all()
    assert_ray_session_removed(runlog.get_run(store, run_id)["pid"])  # a cold run's own Ray

    patients.drop("age").write_csv(csv)
    assert main(["predict", "--run", run_id, "--db", str(db), "--input", str(csv)]) == 2
    assert "missing column(s): age" in capsys.readouterr().err
    patients.with_columns(pl.lit("high").alias("bmi")).write_csv(csv)
    assert main(["predict", "--run", run_id, "--db", str(db), "--input", str(csv)]) == 2
    assert "non-numeric values in column(s): bmi" in capsys.readouterr().err


def _failing_hospital_runs(fed, tmp_path, capsys, runs: int):
    """``runs`` cold CLI runs of the same seed, h0001 failing on purpose: (db, summaries)."""
    db = str(tmp_path / "m.duckdb")
    args = [
        "train",
        "--data",
        str(fed),
        "--db",
        db,
        "--rounds",
        "2",
        "--fail-hospital",
        "h0001",
        "--json",
    ]
    return db, [cli_json(capsys, *args) for _ in range(runs)]


def test_a_failing_hospital_is_counted_and_named_in_a_warning(fed, tmp_path, capsys):
    db, results = _failing_hospital_runs(fed, tmp_path, capsys, runs=1)
    _check_failing_hospital(db, results)


@pytest.mark.extended  # two cold runs; the warm engine's own test compares a warm and a cold run
def test_failing_hospital_is_counted_and_runs_are_reproducible(fed, tmp_path, capsys):
    db, results = _failing_hospital_runs(fed, tmp_path, capsys, runs=2)
    _same_numbers(_check_failing_hospital(db, results))


def _check_failing_hospital(db: str, results: list) -> list[dict]:
    """Each run completed, h0001 failed both rounds, and its warning and events say so."""
    for code, summary in results:
        assert code == 0 and summary["status"] == "completed", summary
        assert set(summary["final"]) == {"loss", "auc", "accuracy", "brier"}
        # Completed, but honestly: the hospital that failed every round is a warning.
        assert len(summary["warnings"]) == 1 and "(h0001) failed 2 of 2" in summary["warnings"][0]
    details = [runlog.run_detail(MetricsStore(db), s["run_id"]) for _, s in results]
    for detail in details:
        assert [(r["hospitals_ok"], r["hospitals_failed"]) for r in detail["rounds"]] == [
            (3, 1),
            (3, 1),
        ]
        failures = [
            e
            for e in detail["events"]
            if e["kind"] == "hospital_failed" and e["hospital"] == "h0001"
        ]
        assert failures and "fault drill" in failures[0]["message"]
    return details


def _same_numbers(details: list[dict]) -> None:
    # Same seed, same settings: the same metrics. Compared to 1e-6 relative, not bit for bit:
    # numpy and torch may round the last float bit differently with memory alignment.
    for ours, theirs in zip(details[0]["rounds"], details[1]["rounds"], strict=True):
        for key in ("loss", "auc", "accuracy", "brier", "hospitals_ok", "hospitals_failed"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key
    # Per-hospital figures are stored rounded to 3 decimals, or withheld (None) for a test
    # split too small to show (privacy.training): the same run gives the same values.
    for ours, theirs in zip(details[0]["hospitals"], details[1]["hospitals"], strict=True):
        assert ours["hospital"] == theirs["hospital"] and ours["n"] == theirs["n"]
        assert ours["loss"] == theirs["loss"]


@pytest.mark.extended  # the browser's Cancel test stops the same kind of cold run from Live
def test_cancel_stops_before_the_next_round_and_keeps_finished_ones(fed, tmp_path):
    """A cold run, read as the Live page reads it: at most one round after the request."""
    db = str(tmp_path / "m.duckdb")
    config = TrainConfig(data_dir=str(fed), db=db, rounds=200, straggler_delay=0.2)
    run_id = lifecycle.start_run(config)
    store = MetricsStore(db)
    count = "SELECT count(*) FROM rounds WHERE run_id = ?"
    with polling_like_the_live_page(store, run_id):
        _wait_for_rounds(db, run_id, 2)
        seen = store.scalar(count, [run_id])
        assert lifecycle.cancel_run(db, run_id) is True
        run = lifecycle.wait_for_run(db, run_id, timeout=120)
    assert run["status"] == "cancelled" and seen <= store.scalar(count, [run_id]) <= seen + 1
    assert not lifecycle.cancel_signalled(db, run_id)  # the flag goes with the run


@pytest.mark.extended
def test_killed_simulation_is_marked_failed(fed, tmp_path):
    db = str(tmp_path / "m.duckdb")
    run_id = lifecycle.start_run(TrainConfig(data_dir=str(fed), db=db, rounds=200))
    _wait_for_rounds(db, run_id, 1)
    pid = runlog.get_run(MetricsStore(db), run_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    run = lifecycle.wait_for_run(db, run_id, timeout=60)
    assert run["status"] == "failed" and "killed" in run["reason"]
    assert MetricsStore(db).scalar("SELECT count(*) FROM rounds WHERE run_id = ?", [run_id]) >= 1
    for session in ray_compat.sessions_of(pid):  # a killed process cannot clean up: we do
        ray_compat.remove_session(session)
