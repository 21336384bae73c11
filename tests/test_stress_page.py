"""The Stress-test page: empty state, viewer vs analyst, and stored sweeps drawn as charts."""

import pytest
from streamlit.testing.v1 import AppTest

from healthsync import bench, runlog
from healthsync.store import MetricsStore
from tests.app_helpers import ROOT, AppEnv, charts

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
    bench.ensure_schema(store)
    rows = [
        ["sweep-a", runlog.now(), way, "logreg", h, 500, 3, s, h / s, 900.0, 12.0, "ok", None]
        for way, factor in (("healthsync", 2.0), ("vectorised", 1.0))
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


def test_logged_out_sees_nothing(env):
    _store_sweep(env.db)
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert not charts(at) and not at.dataframe
    assert any("log in" in t.value.lower() for t in at.title)
