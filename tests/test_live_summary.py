"""Live training after a run: the end-of-run summary and the per-hospital drill-down."""

import json

import pytest

from healthsync.data import load_federation
from healthsync.views import drilldown
from tests.app_helpers import AppEnv, fake_run, texts


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def store_comparison(env: AppEnv, run_id: str, local_auc: float) -> None:
    env.store.executemany(
        "INSERT INTO comparisons (comparison_id, created_at, data_dir, target, model, method,"
        " hospital, n, loss, auc, accuracy, brier, run_id, released)"
        " VALUES ('c1', now(), ?, 'diabetes', 'logreg', ?, 'overall', 120, 0.6, ?, 0.7, 0.2, ?,"
        " true)",
        [
            [str(env.fed_dir), "local only", local_auc, run_id],
            [str(env.fed_dir), "pooled (reference)", 0.7, run_id],
        ],
    )


def page_links(at) -> list[str]:
    return [e.proto.page for e in at.get("page_link")]


def test_the_summary_says_what_the_run_reached_and_against_training_alone(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, rounds=3)
    summary = drilldown.run_summary(env.store, "run-a")
    assert (summary.rounds_done, summary.rounds_planned) == (3, 3)
    assert summary.auc == pytest.approx(0.66) and not summary.compared
    assert "reached an AUC of 0.660" in summary.headline()
    store_comparison(env, "run-a", 0.61)
    summary = drilldown.run_summary(env.store, "run-a")
    assert summary.local_auc == pytest.approx(0.61) and summary.pooled_auc == pytest.approx(0.7)
    assert "training alone reached 0.610" in summary.headline()
    assert "gained +0.050" in summary.headline()


def test_live_shows_the_summary_and_next_steps_once_a_run_has_finished(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, rounds=3)
    at = env.app("viewer", "pages/live.py")
    assert not at.exception
    assert "Run finished" in [s.value for s in at.subheader]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Federated AUC"] == "0.660" and metrics["Local-only AUC"] == "–"
    assert "healthsync compare --data" in texts(at) and "--run run-a" in texts(at)
    assert {"runs", "model", "how_it_works"} <= set(page_links(at))
    store_comparison(env, "run-a", 0.61)
    at.run()
    assert {m.label: m.value for m in at.metric}["Local-only AUC"] == "0.610"
    assert "healthsync compare --data" not in texts(at)


def test_no_summary_while_a_run_trains(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, rounds=2, planned=5, status="running")
    at = env.app("viewer", "pages/live.py")
    assert not at.exception and "Run finished" not in [s.value for s in at.subheader]


def test_the_drill_down_shows_a_hospital_picked_by_name(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, rounds=3)
    federation = load_federation(env.fed_dir)
    second = federation.hospitals[1]
    at = env.app("viewer", "pages/live.py")
    picker = next(s for s in at.selectbox if s.label == "Hospital")
    assert sorted(picker.options) == sorted(h.name for h in federation.hospitals)
    picker.set_value(second.id).run()
    metrics = {m.label: m.value for m in at.metric}
    total = sum(h.n_train for h in federation.hospitals)
    assert metrics["Training rows"] == f"{second.n_train:,}"
    assert metrics["Weight in the average"] == f"{second.n_train / total:.1%}"
    assert metrics["Rounds answered"] == "3 of 3"
    titles = [json.loads(c.proto.spec)["title"] for c in at.get("vega_lite_chart")]
    assert f"{second.name}: AUC and accuracy by round" in [
        t if isinstance(t, str) else t["text"] for t in titles
    ]


def test_the_drill_down_never_shows_a_withheld_figure(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, rounds=2)
    env.store.execute(
        "UPDATE hospital_rounds SET released = false, auc = 0.987654 WHERE hospital = 'h0001'"
    )
    env.store.execute(
        "INSERT INTO events VALUES ('run-a', now(), 2, 'h0001', 'hospital_dropped', 'timeout')"
    )
    detail = drilldown.hospital_detail(env.store, "run-a", "h0001", load_federation(env.fed_dir))
    assert detail.withheld and detail.rounds["auc"].null_count() == 2
    at = env.app("viewer", "pages/live.py")
    next(s for s in at.selectbox if s.label == "Hospital").set_value("h0001").run()
    assert not at.exception
    assert "figures are withheld" in texts(at)
    everything = b"".join(c.proto.SerializeToString() for c in at.get("vega_lite_chart"))
    assert b"0.987" not in everything and "0.987" not in texts(at)
    events = next(d.value for d in at.dataframe if "kind" in d.value.columns)
    assert events["kind"].to_list() == ["hospital_dropped"]
