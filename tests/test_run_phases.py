"""What a run is doing before its first round: reported by the run, shown on Live training.

Issue 14: a 2,000-hospital run on the warm engine showed "Waiting for the first
round: Ray is starting…" for 11 s while Ray was up and the hospitals' data was
being read for the first time.
"""

from healthsync.config import TrainConfig
from healthsync.runs import lifecycle
from tests.app_helpers import AppEnv, fake_run, texts
from tests.engine_helpers import make_federation
from tests.inprocess_grid import run_in_process


def test_a_run_reports_each_phase_before_its_first_round(tmp_path, monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(lifecycle, "report_phase", lambda db, run_id, text: seen.append(text))
    fed = make_federation(tmp_path, "fed", hospitals=4, patients=60)
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=1, block_size=2)
    detail, _ = run_in_process(config)
    assert detail["status"] == "completed"
    reading = [s for s in seen if s.startswith("reading the hospitals' data")]
    assert reading == [
        "reading the hospitals' data: 0 of 4 hospitals",
        "reading the hospitals' data: 2 of 4 hospitals",
        "reading the hospitals' data: 4 of 4 hospitals",
    ]
    assert seen.index(reading[-1]) < seen.index("training round 1")
    assert not lifecycle.run_phase(config.db, detail["run_id"])  # nothing left once it ended


def test_live_shows_the_phase_while_it_waits_for_the_first_round(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    fake_run(env.store, "run-live", data_dir=env.fed_dir, rounds=0, planned=5, status="running")
    lifecycle.report_phase(env.store.path, "run-live", "reading the hospitals' data: 812 of 2,000")
    at = env.app("viewer", "pages/live.py", run="run-live")
    assert "Waiting for the first round: reading the hospitals' data: 812 of 2,000." in texts(at)
    assert "Ray is starting" not in texts(at)


def test_a_run_whose_hospitals_all_fail_to_read_says_so(tmp_path, monkeypatch):
    """No hospital answers the scaling query (every partition unreadable): the run fails
    with that reason, not with a missing column of an empty answer."""
    import simulation.client_app as client_app

    def unreadable(data_dir, index, target):
        raise OSError("partition unreadable")

    monkeypatch.setattr(client_app, "_hospital", unreadable)
    fed = make_federation(tmp_path, "fed", hospitals=3, patients=60)
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=1)
    detail, _ = run_in_process(config)
    assert detail["status"] == "failed"
    assert "too few hospitals answered the scaling query" in detail["reason"], detail["reason"]
