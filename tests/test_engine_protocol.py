"""The warm engine's channel without Flower: who gets a run, and what the caller hears."""

import os

import pytest

from healthsync.config import TrainConfig
from healthsync.errors import HealthSyncError
from healthsync.runs import engine


@pytest.fixture
def server(tmp_path):
    db = tmp_path / "m.duckdb"
    too_big = {"too-big"}

    def prepare(config: TrainConfig) -> TrainConfig:
        if config.data_dir in too_big:
            raise HealthSyncError("needs 40 Flower nodes, the engine has 32")
        return config

    srv = engine.EngineServer(engine.state_path(db), nodes=32, prepare=prepare)
    yield db, srv
    srv.close()


def _run(db, run_id: str, data_dir: str = "fed") -> dict:
    config = TrainConfig(data_dir=data_dir, db=str(db))
    return engine.request(db, {"op": "run", "run_id": run_id, "config": config.to_json()})


def test_an_idle_engine_takes_one_run_and_refuses_others_until_it_ends(server):
    db, srv = server
    assert engine.status(db)["busy"] is False
    assert _run(db, "run-1")["accepted"] is True
    assert _run(db, "run-2") == {
        "ok": True,
        "accepted": False,
        "why": "busy",
        "pid": os.getpid(),  # the engine side runs in this process here
        "nodes": 32,
        "busy": True,
    }
    run_id, config = srv.next_run(idle_timeout=1)
    assert run_id == "run-1" and config.data_dir == "fed"
    srv.run_finished()
    assert engine.status(db) == {
        "ok": True,
        "pid": os.getpid(),
        "nodes": 32,
        "busy": False,
        "runs_served": 1,
    }


def test_a_run_that_does_not_fit_or_is_not_valid_is_refused_with_why(server):
    db, _ = server
    assert _run(db, "run-1", "too-big")["why"] == "needs 40 Flower nodes, the engine has 32"
    reply = engine.request(db, {"op": "run", "run_id": "x", "config": '{"rounds": 0}'})
    assert reply["accepted"] is False and reply["why"].startswith("not a valid run: rounds must be")
    assert engine.request(db, {"op": "dance"}) == {"ok": False, "error": "unknown op 'dance'"}
    assert engine.status(db)["busy"] is False


def test_stop_ends_the_loop_and_refuses_new_runs(server):
    db, srv = server
    assert engine.request(db, {"op": "stop"}) == {"ok": True}
    assert srv.next_run(idle_timeout=1) is None
    assert _run(db, "run-late")["why"] == "busy"


def test_idle_timeout_ends_the_loop_but_serves_a_run_accepted_at_the_last_moment(server):
    db, srv = server
    assert srv.next_run(idle_timeout=0.05) is None  # nothing came: stop
    srv.stopping = False  # as if the timeout and an accepted run crossed
    assert _run(db, "run-1")["accepted"] is True
    assert srv.next_run(idle_timeout=0)[0] == "run-1"


def test_no_engine_means_no_reply(tmp_path):
    db = tmp_path / "m.duckdb"
    assert engine.status(db) is None
    assert engine.submit(TrainConfig(db=str(db)), "run-1") is None
    assert engine.stop(db) is None
