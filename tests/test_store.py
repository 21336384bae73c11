"""The metrics store: schema, run records, and concurrent access across processes."""

import json
import subprocess
import sys
import textwrap
import time

import polars as pl
import pytest

from healthsync.config import TrainConfig
from healthsync.errors import HealthSyncError
from healthsync.ml.metrics import BinaryMetrics
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore


@pytest.fixture
def store():
    return MetricsStore(":memory:")


def _round(r: int) -> dict:
    return {
        "round": r,
        "loss": 0.5 / r,
        "auc": 0.7 + r / 100,
        "accuracy": 0.8,
        "brier": 0.2,
        "seconds": 0.1,
        "hospitals_sampled": 3,
        "hospitals_ok": 3,
        "hospitals_failed": 0,
    }


def test_run_round_trip_and_detail_json(store):
    runlog.create_run(store, "run-1", TrainConfig(rounds=2))
    for r in (1, 2):
        runlog.record_round(
            store,
            "run-1",
            _round(r),
            [
                {
                    "hospital": "h0000",
                    "round": r,
                    "n": 40,
                    "positives": 15,  # enough of each class to be shown (privacy.training)
                    "negatives": 25,
                    "loss": 0.4,
                    "auc": float("nan"),
                    "accuracy": 0.9,
                }
            ],
        )
    runlog.finish_run(store, "run-1", "completed", final=BinaryMetrics(20, 0.25, 0.72, 0.8, 0.2))
    detail = runlog.run_detail(store, "run-1")
    json.dumps(detail, allow_nan=False)  # NaN became null
    assert detail["status"] == "completed"
    assert [r["round"] for r in detail["rounds"]] == [1, 2]
    assert set(detail["rounds"][0]) >= {
        "round",
        "loss",
        "auc",
        "accuracy",
        "brier",
        "seconds",
        "hospitals_ok",
        "hospitals_failed",
    }
    assert detail["hospitals"][0] == {
        "hospital": "h0000",
        "round": 1,
        "n": 40,
        "loss": 0.4,
        "auc": None,
        "accuracy": 0.9,
        "brier": None,  # not recorded by this round
    }
    assert detail["config"]["rounds"] == 2
    assert detail["final"]["auc"] == pytest.approx(0.72)


def test_first_end_state_wins(store):
    runlog.create_run(store, "run-1", TrainConfig())
    runlog.finish_run(store, "run-1", "cancelled")
    runlog.finish_run(store, "run-1", "completed")
    assert runlog.get_run(store, "run-1")["status"] == "cancelled"


def test_cancel_only_active_runs(store):
    runlog.create_run(store, "run-1", TrainConfig(), status="running")
    assert runlog.request_cancel(store, "run-1") is True
    assert runlog.cancel_requested(store, "run-1")
    runlog.create_run(store, "run-2", TrainConfig(), status="completed")
    assert runlog.request_cancel(store, "run-2") is False
    with pytest.raises(HealthSyncError, match="no run 'nope'"):
        runlog.request_cancel(store, "nope")


def test_dead_process_marks_run_failed(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    runlog.create_run(store, "run-1", TrainConfig(), status="running", pid=proc.pid)
    assert runlog.reconcile_dead_runs(store) == ["run-1"]
    run = runlog.get_run(store, "run-1")
    assert run["status"] == "failed" and "exited without finishing" in run["reason"]


WRITER = textwrap.dedent(
    """
    import sys, time
    from healthsync.runs import runlog
    from healthsync.config import TrainConfig
    from healthsync.runs.store import MetricsStore
    store = MetricsStore(sys.argv[1])
    runlog.create_run(store, "run-w", TrainConfig(rounds=40), status="running")
    for r in range(1, 21):
        time.sleep(0.05)
        runlog.record_round(store, "run-w", {"round": r, "loss": 1.0 / r}, [
            {"hospital": f"h{i:04d}", "round": r, "n": 5, "loss": 0.1, "auc": 0.5, "accuracy": 0.5}
            for i in range(50)])
    runlog.finish_run(store, "run-w", "completed")
    """
)


def test_readers_see_every_round_soon_while_another_process_writes(tmp_path):
    db = tmp_path / "m.duckdb"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)])
    store = MetricsStore(db)
    first_seen: dict[int, float] = {}
    deadline = time.time() + 60
    status = None
    while time.time() < deadline:
        try:  # status first: once it says completed, the rounds read after it are all there
            status = store.scalar("SELECT status FROM runs WHERE run_id = 'run-w'")
            rounds = store.frame(
                "SELECT round, epoch(recorded_at) AS at FROM rounds WHERE run_id = 'run-w'"
            )
        except HealthSyncError as err:  # only a lock timeout would land here
            pytest.fail(f"reader failed while the writer wrote: {err}")
        now = time.time()
        for r, at in rounds.iter_rows():
            first_seen.setdefault(r, now - at)
        if status == "completed":
            break
        time.sleep(0.02)
    assert writer.wait(timeout=30) == 0
    assert status == "completed"
    assert sorted(first_seen) == list(range(1, 21))
    # recorded_at is written in UTC by the writer at the end of each round. Typically well
    # under a second; the bound only catches a reader stuck behind the writer (a lock held
    # across rounds), not a busy machine's scheduling, which a timed test must not judge.
    worst = max(first_seen.values())
    assert worst < 5.0, f"a round became visible {worst:.2f} s after it ended"


def test_reads_return_polars(store):
    runlog.create_run(store, "run-1", TrainConfig())
    assert isinstance(runlog.list_runs(store), pl.DataFrame)
    assert runlog.list_runs(store)["rounds_done"].to_list() == [0]


def test_a_batch_opens_the_file_once_and_commits_all_or_nothing(tmp_path, monkeypatch):
    store = MetricsStore(tmp_path / "m.duckdb")
    runlog.create_run(store, "run-b", TrainConfig(data_dir=str(tmp_path), db=store.path))
    opens = []
    real_open = store._open
    monkeypatch.setattr(store, "_open", lambda **kw: opens.append(kw) or real_open(**kw))
    row = {"round": 1, "loss": 0.5, "auc": 0.7, "accuracy": 0.6, "brier": 0.2, "seconds": 1.0}
    with store.batch():
        runlog.record_round(store, "run-b", row, [])
        runlog.save_model(store, "run-b", b"model")
        assert store.scalar("SELECT count(*) FROM rounds") == 1  # its own writes are visible
    assert opens == [{"read_only": False}]
    assert runlog.load_model_blob(store, "run-b") == b"model"

    with pytest.raises(RuntimeError), store.batch():
        runlog.record_round(store, "run-b", {**row, "round": 2}, [])
        raise RuntimeError("the model could not be saved")
    assert store.scalar("SELECT max(round) FROM rounds") == 1  # round 2 was rolled back


def test_a_new_store_object_checks_the_schema_on_its_own_connection(tmp_path, monkeypatch):
    """Every page render and command makes a new store object, and each ran the whole
    schema's DDL on a connection of its own first (two opens, ~70 ms); a complete store
    is now only checked, and an incomplete one still gets what it lacks."""
    import duckdb

    from healthsync.runs import store as store_module

    db = tmp_path / "m.duckdb"
    runlog.create_run(MetricsStore(db), "run-a", TrainConfig(data_dir="x", db=str(db)))
    opens, created = [], []
    real_open, real_create = MetricsStore._open, MetricsStore._create
    monkeypatch.setattr(
        MetricsStore, "_open", lambda self, **kw: opens.append(kw) or real_open(self, **kw)
    )
    monkeypatch.setattr(
        MetricsStore, "_create", lambda self: created.append(1) or real_create(self)
    )
    assert MetricsStore(db).scalar("SELECT count(*) FROM runs") == 1
    assert (opens, created) == ([{"read_only": True}], [])

    # A store from before a migration (no ``runs.name``), or missing an index, is completed.
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE runs DROP COLUMN name")
    con.execute("DROP INDEX rounds_run")
    con.close()
    assert MetricsStore(db).scalar("SELECT count(*) FROM runs") == 1
    assert created == [1]
    con = duckdb.connect(str(db), read_only=True)
    assert store_module._has_schema(con)
    con.close()
