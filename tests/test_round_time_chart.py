"""Where a round's time goes (issue 20): phase seconds shaped, charted, and shown on Live and Stress."""

from __future__ import annotations

import json

import polars as pl
from streamlit.testing.v1 import AppTest

from healthsync.runs import runlog
from healthsync.views import charts, dashboard
from tests.app_helpers import ROOT, AppEnv, fake_run, texts

SECONDS = {"configure": 0.01, "train": 1.5, "aggregate": 0.05, "evaluate": 0.4, "record": 0.02}


def _phases(store, run_id: str, rounds: int = 3) -> None:
    for rnd in range(1, rounds + 1):
        runlog.record_phases(store, run_id, rnd, {k: v * rnd for k, v in SECONDS.items()})


def test_phases_are_shaped_in_round_order_with_readable_names():
    raw = pl.DataFrame(
        {
            "round": [2, 1, 1, 1, 1],
            "phase": ["train", "record", "train", "configure", "secagg setup"],
            "seconds": [2.0, 0.1, 1.0, 0.01, 0.3],
        }
    )
    shaped = dashboard.round_phases(raw)
    assert shaped.rows() == [
        (1, "configure", 0, 0.01),
        (1, "train (hospitals)", 1, 1.0),
        (1, "record (metrics store)", 4, 0.1),
        (1, "secagg setup", 5, 0.3),  # a phase without a label keeps its name, stacked last
        (2, "train (hospitals)", 1, 2.0),
    ]
    assert dashboard.round_phases(raw.clear()).is_empty()


def test_the_chart_stacks_seconds_by_phase_per_round_with_title_and_units():
    frame = dashboard.round_phases(
        pl.DataFrame({"round": [1, 1, 2], "phase": ["train", "evaluate", "train"], "seconds": 1.0})
    )
    spec = charts.round_phase_bars(frame).to_dict()
    assert spec["title"] == "Where a round's time goes"
    assert spec["mark"]["type"] == "bar"
    enc = spec["encoding"]
    assert enc["x"]["title"] == "Round (number)" and enc["x"]["field"] == "round"
    assert enc["y"]["title"] == "Time (seconds)" and enc["y"]["stack"] is True
    assert enc["color"]["field"] == "phase"
    assert enc["color"]["scale"]["domain"] == ["train (hospitals)", "evaluate (hospitals)"]
    assert enc["order"]["field"] == "order"


def _chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]


def test_live_shows_where_each_rounds_time_goes(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    fake_run(env.store, "run-phases", data_dir=env.fed_dir, rounds=3)
    _phases(env.store, "run-phases")
    at = env.app("viewer", "pages/live.py", run="run-phases")
    assert not at.exception
    assert _chart_titles(at).count("Where a round's time goes") == 1
    assert "Seconds of each round by phase" in texts(at)

    fake_run(env.store, "run-old", data_dir=env.fed_dir, rounds=2)  # recorded before phases
    at = env.app("viewer", "pages/live.py", run="run-old")
    assert "Where a round's time goes" not in _chart_titles(at)
    assert "This run recorded no phase timings" in texts(at)


def test_the_stress_page_shows_a_stress_test_runs_phases(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    fake_run(env.store, "run-bench", data_dir=env.fed_dir, rounds=3, name="stress test · x")
    env.store.execute("UPDATE runs SET kind = ? WHERE run_id = 'run-bench'", [runlog.BENCHMARK])
    _phases(env.store, "run-bench")
    at = AppTest.from_file(str(ROOT / "pages" / "stress.py"), default_timeout=60)
    env.log_in(at, "viewer")
    at.run()
    assert not at.exception
    assert "Where a round's time goes" in _chart_titles(at)
    assert "Seconds of each round of this measurement by phase" in texts(at)
