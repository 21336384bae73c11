"""The Stress-test page: empty state, viewer vs analyst, and stored sweeps drawn as charts."""

import re

import pytest
from streamlit.testing.v1 import AppTest

from healthsync.bench import sweep
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from tests.app_helpers import ROOT, AliveProcess, AppEnv, button, charts, texts

PAGE = ROOT / "pages" / "stress.py"


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def open_page(env: AppEnv, role: str) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    env.log_in(at, role)
    return at.run()


def _store_sweep(db) -> None:
    store = MetricsStore(db)
    sweep.ensure_schema(store)
    rows = [
        ["sweep-a", runlog.now(), way, "logreg", h, 500, 3, s, h / s, 900.0, 12.0, "ok", None]
        for way, factor in (("healthsync", 2.0), ("vectorised", 1.0), ("roofline", 0.5))
        for h, s in ((10, 0.1 * factor), (100, 0.3 * factor))
    ]
    store.executemany(
        "INSERT INTO bench_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
    )


def test_empty_state_says_what_to_do(env):
    at = open_page(env, "analyst")
    assert not at.exception
    assert any("No sweep yet" in i.value for i in at.info)
    assert at.button  # analysts get the sweep form


def test_viewers_see_results_but_cannot_start_sweeps(env):
    _store_sweep(env.db)
    at = open_page(env, "viewer")
    assert not at.exception
    assert not [b for b in at.button if "Run sweep" in b.label]
    assert len(charts(at)) == 4
    assert any("against the number of simulated hospitals" in c.value for c in at.caption)
    ratios = at.dataframe[0].value
    assert list(ratios["healthsync/vectorised"]) == pytest.approx([2.0, 2.0])
    assert list(ratios["healthsync/roofline"]) == pytest.approx([4.0, 4.0])
    assert list(ratios["vectorised/roofline"]) == pytest.approx([2.0, 2.0])
    assert "each way/roofline" in texts(at)
    assert "the roofline: the same multiply-adds" in texts(at)
    assert "The roofline line is the same multiply-adds" in at.caption[1].value  # under time
    drawn = charts(at)[0].proto.spec + "".join(  # the roofline is a line like the other ways
        str(d.data) for d in charts(at)[0].proto.datasets
    )
    assert "Roofline: same multiply-adds, no hospitals" in drawn


def test_logged_out_sees_nothing(env):
    _store_sweep(env.db)
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert not charts(at) and not at.dataframe
    assert any("log in" in t.value.lower() for t in at.title)


def test_run_sweep_shows_progress_and_each_result_as_it_lands(env, monkeypatch):
    spawned = []
    monkeypatch.setattr(
        "healthsync.bench.sweep.spawn_detached",
        lambda cmd, log: spawned.append(cmd) or AliveProcess(),
    )
    at = open_page(env, "analyst")
    ways = next(w for w in at.multiselect if w.label == "Ways to run")
    ways.set_value(["healthsync", "vectorised"])
    button(at, "Run sweep").click().run()
    assert not at.exception
    assert len(spawned) == 1
    (sweep_id,) = MetricsStore(env.db).frame("SELECT sweep_id FROM bench_sweeps")["sweep_id"]
    assert re.fullmatch(  # a measurement takes minutes: the time so far shows it is moving
        rf"Sweep {sweep_id}: 0 of 4 measurements · now measuring healthsync, 10 hospitals, "
        r"logreg \(\d+ s so far\)",
        at.progress[0].proto.text,
    )
    assert "No sweep yet" not in texts(at)

    store = MetricsStore(env.db)
    store.execute(
        "INSERT INTO bench_results VALUES (?, ?, 'healthsync', 'logreg', 10, 500, 4, 0.2, 50.0,"
        " 900.0, 12.0, 'ok', NULL)",
        [sweep_id, runlog.now()],
    )
    at.run()
    assert not at.exception
    assert at.progress[0].proto.text.startswith(f"Sweep {sweep_id}: 1 of 4 measurements")
    assert len(charts(at)) == 4  # the first measurement is drawn while the sweep runs


def test_a_running_sweep_shows_its_progress_to_viewers_too(env, monkeypatch):
    monkeypatch.setattr("healthsync.bench.sweep.spawn_detached", lambda cmd, log: AliveProcess())
    sweep.start_sweep(sweep.SweepConfig(hospitals=(10,), models=("logreg",), db=str(env.db)))
    at = open_page(env, "viewer")
    assert not at.exception
    assert "0 of 5 measurements" in at.progress[0].proto.text  # every way, the roofline too


def test_the_viewers_empty_page_says_who_can_start_a_sweep(env):
    at = open_page(env, "viewer")
    assert not at.exception
    (hint,) = [i.value for i in at.info]
    assert "No sweep yet" in hint and "above" not in hint
    assert "analyst" in hint.lower()
