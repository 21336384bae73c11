"""The warm training engine: runs go to it while it is free, and give the same numbers.

One engine (a real Flower simulation on Ray, 4 nodes) serves the whole module;
its start-up (15-25 s) is paid once.
"""

import contextlib
import json
import os
import signal
import time

import psutil
import pytest

from healthsync.cli import main
from healthsync.config import TrainConfig
from healthsync.runs import engine, lifecycle, runlog
from healthsync.runs.store import MetricsStore
from simulation.compat import ray as ray_compat
from tests.engine_helpers import (
    assert_ray_session_removed,
    make_federation,
    polling_like_the_live_page,
)
from tests.inprocess_grid import run_in_process

pytestmark = pytest.mark.slow
NODES = 4


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    fed = make_federation(root, "fed", hospitals=3, patients=80)
    big = make_federation(root, "big", hospitals=NODES + 1, patients=40)
    db = root / "m.duckdb"
    pid = engine.start(db, idle_timeout=300, nodes=NODES)
    assert pid is not None
    try:
        ready = engine.wait_ready(db)
        yield {"db": db, "fed": fed, "big": big, "pid": ready["pid"]}
    finally:
        stopped = engine.stop(db, timeout=5) == "stopped"
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout=30)  # its Ray stops, its session folder goes
        _kill(pid)
    if stopped:  # after a clean stop, nothing of its Ray is left on disk
        assert_ray_session_removed(pid)
    for session in ray_compat.sessions_of(pid):  # killed (the module's last test): we clean up
        ray_compat.remove_session(session)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_run_on_the_engine_matches_the_same_run_anywhere(warm, tmp_path):
    config = TrainConfig(data_dir=str(warm["fed"]), db=str(warm["db"]), rounds=3, seed=4)
    run_id = lifecycle.start_run(config)
    run = lifecycle.wait_for_run(warm["db"], run_id, timeout=120)
    assert run["status"] == "completed" and run["pid"] == warm["pid"]
    engine_rounds = runlog.run_detail(MetricsStore(warm["db"]), run_id)["rounds"]
    reference, _ = run_in_process(config.replace(db=str(tmp_path / "ref.duckdb")))
    for mine, theirs in zip(engine_rounds, reference["rounds"], strict=True):
        for key in ("loss", "auc", "accuracy", "brier"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-6)
    assert engine.status(warm["db"])["runs_served"] >= 1


def test_a_secure_aggregation_run_uses_only_its_own_hospitals_nodes(warm):
    """The engine has more nodes (4) than this federation has hospitals (3)."""
    config = TrainConfig(data_dir=str(warm["fed"]), db=str(warm["db"]), rounds=2, secagg=True)
    run_id = lifecycle.start_run(config)
    run = lifecycle.wait_for_run(warm["db"], run_id, timeout=120)
    assert run["status"] == "completed", run["reason"]
    rounds = runlog.run_detail(MetricsStore(warm["db"]), run_id)["rounds"]
    assert [(r["hospitals_sampled"], r["hospitals_ok"]) for r in rounds] == [(3, 3), (3, 3)]


def test_a_busy_engine_or_a_run_too_big_for_it_is_refused(warm):
    db = str(warm["db"])
    big = TrainConfig(data_dir=str(warm["big"]), db=db, rounds=1)  # 5 hospitals, 5 nodes
    assert engine.request(db, {"op": "run", "run_id": "x", "config": big.to_json()}) == {
        "ok": True,
        "accepted": False,
        "why": f"needs {NODES + 1} Flower nodes, the engine has {NODES}",
        "pid": warm["pid"],
        "nodes": NODES,
        "busy": False,
    }
    long_run = lifecycle.start_run(TrainConfig(data_dir=str(warm["fed"]), db=db, rounds=500))
    store = MetricsStore(db)
    _wait_for(lambda: runlog.get_run(store, long_run)["status"] == "running")
    assert engine.status(db)["busy"] is True
    other = TrainConfig(data_dir=str(warm["fed"]), db=db, rounds=1)
    assert engine.submit(other, "never-started") is None  # the caller starts it cold
    lifecycle.cancel_run(db, long_run)
    assert lifecycle.wait_for_run(db, long_run, timeout=120)["status"] == "cancelled"
    _wait_for(lambda: engine.status(db)["busy"] is False)
    assert store.scalar("SELECT count(*) FROM runs WHERE run_id = 'never-started'") == 0


def test_cancel_stops_a_warm_run_before_its_next_round(warm):
    """Cancel while a reader polls the store as the Live page does: at most one more round.

    Issue 14: pressed at round 5, a run stopped at round 12; the flag waited for
    the store's write lock and the run looked at it only after writing a round.
    """
    db = str(warm["db"])
    config = TrainConfig(data_dir=str(warm["fed"]), db=db, rounds=500, straggler_delay=0.2)
    run_id = lifecycle.start_run(config)
    store = MetricsStore(db)
    count = "SELECT count(*) FROM rounds WHERE run_id = ?"
    with polling_like_the_live_page(store, run_id):
        _wait_for(lambda: store.scalar(count, [run_id]) >= 3)
        seen = store.scalar(count, [run_id])
        lifecycle.cancel_run(db, run_id)
        run = lifecycle.wait_for_run(db, run_id, timeout=120)
    assert run["status"] == "cancelled" and run["cancel_requested"] is True
    assert seen <= store.scalar(count, [run_id]) <= seen + 1
    _wait_for(lambda: engine.status(db)["busy"] is False)


def test_the_first_cohort_query_goes_to_the_warm_engine(warm, tmp_path):
    """Issue 14: the first query started an analytics service of its own (37-48 s).

    With the engine warm, its nodes answer: no service starts, each hospital
    still noises and charges through its own gate, and a refusal stays a refusal.
    """
    from healthsync import auth
    from healthsync.cohort import budget_status, explore, stop_service
    from healthsync.cohort.policy import POLICY_NAME
    from healthsync.cohort.service import state_dir_for
    from healthsync.privacy.site import SiteRefusal

    home = tmp_path / "home"
    users = auth.UserStore(home, rounds=4)
    users.ensure()
    users.add("alice", "analyst", "a-long-password")
    (home / POLICY_NAME).write_text("epsilon_per_query: 0.5\nbudget: 1.0\n")
    ask = dict(data_dir=warm["fed"], db=warm["db"], user="alice", home=home)
    try:
        started = time.perf_counter()
        first = explore(**ask, group_by=["sex"], stats=["prevalence:diabetes"])
        seconds = time.perf_counter() - started
        print(f"first cohort query with the engine warm: {seconds:.2f} s")
        assert not list(state_dir_for(warm["db"]).glob("*.log"))  # no service was started
        assert seconds < 30 and first.epsilon_spent == 0.5 and first.budget.spent == 0.5
        assert budget_status(warm["fed"], db=warm["db"], user="alice", home=home).spent == 0.5
        explore(**ask, stats=["mean:bmi"])
        with pytest.raises(SiteRefusal):
            explore(**ask, stats=["prevalence:hypertension"])  # the hospitals refuse a third
    finally:
        stop_service(warm["fed"], db=warm["db"])


def test_stress_test_times_a_run_handed_to_the_engine(warm):
    from healthsync.bench import sweep

    measured = sweep.measure_warm(warm["fed"], str(warm["db"]), "logreg", 3, 0, timeout=120)
    assert measured.status == "ok", measured.note
    assert measured.way == "warm" and measured.hospitals == 3
    assert 0 < measured.first_round_seconds < 60 and measured.seconds_per_round > 0
    served = MetricsStore(warm["db"]).scalar(
        "SELECT pid FROM runs ORDER BY created_at DESC LIMIT 1"
    )
    assert served == warm["pid"]  # the engine ran it, not a cold process


def test_only_warm_runs_fail_rather_than_start_cold(warm, tmp_path):
    from healthsync.errors import HealthSyncError

    elsewhere = TrainConfig(data_dir=str(warm["fed"]), db=str(tmp_path / "other.duckdb"))
    with pytest.raises(HealthSyncError, match="did not take the run"):
        lifecycle.start_run(elsewhere, only_warm=True)  # no engine serves that store
    failed = MetricsStore(elsewhere.db).frame("SELECT status, pid FROM runs")
    assert failed.rows() == [("failed", None)]


def test_engine_cli_reports_status(warm, capsys):
    assert main(["engine", "status", "--db", str(warm["db"]), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["running"] is True and state["pid"] == warm["pid"] and state["nodes"] == NODES
    assert main(["engine", "start", "--db", str(warm["db"])]) == 0
    assert f"engine already running (pid {warm['pid']}" in capsys.readouterr().out
    assert main(["engine", "stop", "--db", str(warm["db"].parent / "other" / "m.duckdb")]) == 0
    assert capsys.readouterr().out.strip() == "no engine was running"


def test_a_run_whose_engine_dies_is_marked_failed(warm):
    """Last in the module: it kills the engine."""
    db = str(warm["db"])
    run_id = lifecycle.start_run(TrainConfig(data_dir=str(warm["fed"]), db=db, rounds=500))
    store = MetricsStore(db)
    _wait_for(lambda: store.scalar("SELECT count(*) FROM rounds WHERE run_id = ?", [run_id]) > 0)
    os.kill(warm["pid"], signal.SIGKILL)
    _wait_for(lambda: lifecycle.run_status(db, run_id)["status"] == "failed", timeout=30)
    assert "exited without finishing" in lifecycle.run_status(db, run_id)["reason"]
    _wait_for(lambda: engine.status(db) is None, timeout=10)
    assert not engine.state_path(db).exists()  # the dead engine's announcement is cleared
