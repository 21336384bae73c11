"""Issue 15, consent: a hospital withdraws from training and cohort queries, and rejoins."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from healthsync import auth
from healthsync.cli import main
from healthsync.cohort import explore
from healthsync.cohort.plan import plan_query
from healthsync.cohort.query import CohortQuery
from healthsync.config import TrainConfig
from healthsync.data import load_federation
from healthsync.errors import HealthSyncError
from healthsync.privacy import consent
from healthsync.privacy.consent import site_dir_of
from simulation import client_app
from simulation import consent as consent_watch
from simulation.consent import ConsentWatch
from tests.cohort_helpers import InProcess
from tests.engine_helpers import make_federation
from tests.inprocess_grid import allow_messages, run_in_process

PASSWORD = "correct-horse-1"


@pytest.fixture
def fed(tmp_path):
    return make_federation(tmp_path, "fed", hospitals=3, patients=60)


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HEALTHSYNC_HOME", str(home))
    store = auth.UserStore(home, rounds=4)
    store.ensure()
    store.set_password("admin", PASSWORD)
    store.add("ana", "analyst", PASSWORD)
    return home


def _cli(capsys, monkeypatch, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", PASSWORD)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_history_is_appended_and_the_last_change_decides(tmp_path):
    site = tmp_path / "site"
    assert consent.withdrawal(site) is None
    consent.record(site, "withdraw", "stew (steward)", "ethics review")
    with pytest.raises(HealthSyncError, match="already withdrawn"):
        consent.record(site, "withdraw", "admin (admin)")
    assert consent.withdrawal(site).reason == "ethics review"
    consent.record(site, "rejoin", "stew (steward)", "review passed")
    with pytest.raises(HealthSyncError, match="not withdrawn"):
        consent.record(site, "rejoin", "stew (steward)")
    assert consent.withdrawal(site) is None
    actions = [c.action for c in consent.history(site)]
    assert actions == ["withdraw", "rejoin"]
    assert all(
        json.loads(line)["by"] for line in consent.consent_path(site).read_text().splitlines()
    )


def test_cli_withdraw_needs_an_admin_or_the_hospitals_steward(fed, home, capsys, monkeypatch):
    code, _, err = _cli(
        capsys, monkeypatch, "hospitals", "withdraw", "h0001", "--data", str(fed), "--user", "ana"
    )
    assert code == 2 and "may not govern hospital h0001" in err
    code, _, err = _cli(
        capsys, monkeypatch, "hospitals", "withdraw", "H999", "--data", str(fed), "--user", "admin"
    )
    assert code == 2 and "no hospital 'H999'" in err
    assert consent.withdrawal(site_dir_of(fed, "h0001")) is None
    code, out, _ = _cli(
        capsys,
        monkeypatch,
        "hospitals",
        "withdraw",
        "h0001",
        "--data",
        str(fed),
        "--user",
        "admin",
        "--reason",
        "audit",
    )
    assert code == 0 and "withdrew" in out and "audit" in out
    change = consent.withdrawal(site_dir_of(fed, "h0001"))
    assert change.by == "admin (admin)" and change.reason == "audit"
    # Only that hospital's own folder was written.
    written = sorted(p.relative_to(fed).as_posix() for p in fed.rglob("consent.jsonl"))
    assert written == ["hospitals/h0001/site/consent.jsonl"]


def test_a_withdrawn_hospitals_node_refuses_work_even_when_asked(fed):
    consent.record(site_dir_of(fed, "h0000"), "withdraw", "admin (admin)", "test")
    allow_messages()
    config = ConfigRecord(
        {"data-dir": str(fed), "target": "diabetes", "hospitals": [0, 1], "block-size": 2}
    )
    msg = Message(RecordDict({"config": config}), message_type="query", dst_node_id=1)
    context = Context(1, 1, {"partition-id": 0}, RecordDict(), {})
    reply = client_app.query(msg, context)
    errors = dict(reply.content["errors"])
    assert list(errors) == ["0"] and "withdrawn:" in errors["0"] and "h0000" in errors["0"]
    assert list(reply.content["metrics"]["hospital"]) == [1]  # the other hospital answered


def test_runs_after_withdrawal_leave_the_hospital_out_and_rejoin_restores_it(fed, tmp_path):
    site = site_dir_of(fed, "h0001")
    consent.record(site, "withdraw", "admin (admin)", "paused")
    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=1, block_size=2)
    detail, grid = run_in_process(config)
    assert detail["status"] == "completed"
    assert {row["hospital"] for row in detail["hospitals"]} == {"h0000", "h0002"}
    kinds = {(e["kind"], e["hospital"]) for e in detail["events"]}
    assert ("hospital_withdrawn", "h0001") in kinds
    assert not any(e["kind"] == "hospital_failed" for e in detail["events"])
    assert all(r["hospitals_failed"] == 0 and r["hospitals_sampled"] == 2 for r in detail["rounds"])
    # It was never even asked: no message named it.
    asked = {
        i
        for m in grid.sent
        if "config" in m.content
        for i in m.content["config"].get("hospitals", [])
    }
    assert 1 not in asked

    consent.record(site, "rejoin", "admin (admin)")
    detail, _ = run_in_process(config)
    assert {row["hospital"] for row in detail["hospitals"]} == {"h0000", "h0001", "h0002"}


def test_a_run_in_progress_drops_a_hospital_from_its_next_round(fed, tmp_path):
    from simulation import server_app

    config = TrainConfig(data_dir=str(fed), db=str(tmp_path / "m.duckdb"), rounds=2, block_size=1)
    original = server_app.FederatedRun.evaluate

    def withdraw_after_round_one(self, rnd, arrays, settings):
        result = original(self, rnd, arrays, settings)
        if rnd == 1:
            consent.record(site_dir_of(fed, "h0002"), "withdraw", "admin (admin)", "mid-run")
            self.grid.withdrawn.__self__._read_at = None  # as if 0.5 s had passed
        return result

    server_app.FederatedRun.evaluate = withdraw_after_round_one
    try:
        detail, _ = run_in_process(config)
    finally:
        server_app.FederatedRun.evaluate = original
    by_round = {}
    for row in detail["hospitals"]:
        by_round.setdefault(row["round"], set()).add(row["hospital"])
    assert by_round == {1: {"h0000", "h0001", "h0002"}, 2: {"h0000", "h0001"}}
    assert detail["rounds"][1]["hospitals_sampled"] == 2
    assert detail["rounds"][1]["hospitals_failed"] == 0
    assert [e["hospital"] for e in detail["events"] if e["kind"] == "hospital_withdrawn"] == [
        "h0002"
    ]


def test_the_watch_reports_withdrawals_and_rejoins_once(fed, monkeypatch):
    seen = []
    now = [0.0]
    watch = ConsentWatch(load_federation(fed), lambda *a: seen.append(a), clock=lambda: now[0])
    assert watch.withdrawn() == {}
    reads = []
    real = consent_watch.withdrawn_hospitals
    monkeypatch.setattr(
        consent_watch, "withdrawn_hospitals", lambda *a: reads.append(a) or real(*a)
    )
    now[0] = 1.0
    assert watch.withdrawn() == {} and reads == []  # nothing changed: no hospital is read
    consent.record(site_dir_of(fed, "h0000"), "withdraw", "admin (admin)", "x")
    assert list(watch.withdrawn()) == [0] and len(reads) == 1  # a recorded change: at once
    now[0] = 2.0
    watch.withdrawn()
    consent.record(site_dir_of(fed, "h0000"), "rejoin", "admin (admin)")
    assert watch.withdrawn() == {}
    assert [(kind, index) for kind, _, index in seen] == [
        ("hospital_withdrawn", 0),
        ("hospital_rejoined", 0),
    ]
    # A history written by hand (no marker moved) is read at the next periodic rescan;
    # the hospital's own node refuses work from the first message either way.
    path = consent.consent_path(site_dir_of(fed, "h0001"))
    line = '{"action": "withdraw", "by": "x", "at": "2026-01-01T00:00:00+00:00", "reason": ""}'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(line + "\n", encoding="utf-8")
    assert watch.withdrawn() == {}
    now[0] = 2.0 + consent_watch.RESCAN_SECONDS + 1
    assert list(watch.withdrawn()) == [1]


def test_cohort_answers_exclude_a_withdrawn_hospital_and_say_so(fed, home, tmp_path):
    federation = load_federation(fed)
    consent.record(site_dir_of(fed, "h0001"), "withdraw", "admin (admin)", "paused")
    executor = InProcess(federation, seed=1)
    result = explore(
        fed,
        db=tmp_path / "m.duckdb",
        user="ana",
        group_by=["hospital"],
        home=home,
        executor=executor,
    )
    shown = {cell["hospital"] for cell in result.release.cells}
    assert shown == {"h0000", "h0002"}
    assert result.to_dict()["withdrawn_hospitals"] == ["h0001"]
    assert "excludes 1 withdrawn hospital(s): h0001" in result.text()
    with pytest.raises(HealthSyncError, match="withdrawn"):
        plan_query(
            federation,
            CohortQuery.parse(["hospital == h0001"], [], []),
            max_cells=100,
            withdrawn={"h0001"},
        )
