"""Honest outcomes: a run a hospital failed in most rounds completes, but says so everywhere."""

import pytest

from healthsync.cli.train import cmd_train
from healthsync.data import load_federation
from healthsync.runs import runlog
from tests.app_helpers import AppEnv, fake_run


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def _fail(store, run_id: str, hospital: str, rounds) -> None:
    for rnd in rounds:
        runlog.record_event(
            store,
            run_id,
            "hospital_failed",
            "train: partition unreadable",
            round=rnd,
            hospital=hospital,
        )


def test_a_hospital_failing_most_rounds_is_a_warning_and_one_failure_is_not(env):
    fake_run(env.store, "run-bad", data_dir=env.fed_dir, rounds=4)
    fake_run(env.store, "run-ok", data_dir=env.fed_dir, rounds=4)
    _fail(env.store, "run-bad", "h0001", [1, 2, 3])
    _fail(env.store, "run-ok", "h0002", [2])  # one round of four: not more than half
    runlog.record_event(
        env.store, "run-bad", "hospital_dropped", "dropout drill", round=4, hospital="h0000"
    )  # simulated absences are not failures
    name = load_federation(env.fed_dir).hospital("h0001").name
    assert runlog.run_warnings(env.store, "run-bad") == [
        f"hospital {name!r} (h0001) failed 3 of 4 round(s): train: partition unreadable"
    ]
    assert runlog.run_warnings(env.store, "run-ok") == []
    assert runlog.run_detail(env.store, "run-bad")["warnings"] == runlog.run_warnings(
        env.store, "run-bad"
    )
    assert set(runlog.warnings_by_run(env.store, ["run-bad", "run-ok"])) == {"run-bad"}


def test_live_and_runs_pages_show_the_warning(env):
    fake_run(env.store, "run-bad", data_dir=env.fed_dir, rounds=2)
    _fail(env.store, "run-bad", "h0001", [1, 2])
    for page in ("pages/live.py", "pages/runs.py"):
        at = env.app("viewer", page)
        shown = [w.value for w in at.warning]
        assert any("(h0001) failed 2 of 2 round(s)" in w for w in shown), (page, shown)


def test_train_strict_turns_warnings_into_exit_1(env, monkeypatch, capsys):
    from types import SimpleNamespace

    fake_run(env.store, "run-bad", data_dir=env.fed_dir, rounds=2)
    _fail(env.store, "run-bad", "h0001", [1, 2])
    detail = runlog.run_detail(env.store, "run-bad")
    monkeypatch.setattr("healthsync.cli.train.config_from_args", lambda args: None)
    monkeypatch.setattr("healthsync.cli.train.run_and_watch", lambda *a, **k: detail)
    args = SimpleNamespace(ray_address=None, json=True, name=None, strict=False)
    assert cmd_train(args) == 0
    out = capsys.readouterr()
    assert "warning: hospital" in out.err and '"warnings": ["hospital' in out.out
    assert cmd_train(SimpleNamespace(**{**vars(args), "strict": True})) == 1
