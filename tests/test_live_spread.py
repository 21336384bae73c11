"""Issue 18, pages at many hospitals: Live shows the spread, the worst by name and a search.

A 60-hospital run (above ``spread.MANY_HOSPITALS``) of two rounds, three of
whose hospitals are too small for their figures to be released, is opened on
Live with AppTest as an analyst, a steward and, with pseudonyms on, an analyst
again: what each sees, and that withheld hospitals stay out of every figure.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from healthsync.data import load_federation, pseudonyms
from healthsync.ml.metrics import BinaryMetrics
from healthsync.runs import runlog
from healthsync.views import spread
from tests.app_helpers import AppEnv, charts, fake_run, log_in, page_bytes, widen_federation

HOSPITALS = 60
OWN = "h0001"
SMALL = ("h0010", "h0011", "h0012")  # lowest AUCs, but withheld: never ranked
ROUNDS = 2


@pytest.fixture
def env(tmp_path, monkeypatch) -> AppEnv:
    env = AppEnv(tmp_path, monkeypatch)
    widen_federation(env.fed_dir, HOSPITALS)
    env.users.add("stew", "steward", "a-long-password", federation=env.fed_dir, hospital=OWN)
    fake_run(env.store, "run-old", data_dir=env.fed_dir)  # its config, for run-big's
    config = runlog.get_run(env.store, "run-old")["config"]
    runlog.create_run(env.store, "run-big", _config(config), status="running")
    for rnd in range(1, ROUNDS + 1):
        runlog.record_round(
            env.store,
            "run-big",
            {"round": rnd, "loss": 0.6, "auc": 0.7, "accuracy": 0.7, "seconds": 1.0},
            [
                {
                    "hospital": f"h{i:04d}",
                    "round": rnd,
                    "n": 40,
                    "positives": 3 if f"h{i:04d}" in SMALL else 12,
                    "negatives": 28,
                    "loss": 0.6,
                    "auc": (0.2 if f"h{i:04d}" in SMALL else 0.5) + 0.005 * i,
                    "accuracy": 0.7,
                }
                for i in range(HOSPITALS)
            ],
        )
    runlog.finish_run(
        env.store, "run-big", "completed", final=BinaryMetrics(60, 0.6, 0.7, 0.7, 0.2)
    )
    return env


def _config(stored: dict):
    from healthsync.config import TrainConfig

    return TrainConfig(data_dir=stored["data_dir"], db=stored["db"], rounds=ROUNDS + 3)


def live(env: AppEnv, user: str):
    from streamlit.testing.v1 import AppTest

    from tests.app_helpers import APP

    at = AppTest.from_file(str(APP), default_timeout=60)
    log_in(at, env.user(user) if user != "stew" else "stew")
    at.query_params["run"] = "run-big"
    at.run()
    return at.switch_page("pages/live.py").run()


def titled(at, text: str) -> list:
    """The charts whose title contains ``text``, as ``(title, frames)``."""
    found = []
    for chart in charts(at):
        spec = json.loads(chart.proto.spec)
        title = spec.get("title", "")
        title = title.get("text", "") if isinstance(title, dict) else title
        if text in title:
            found.append([pl.read_ipc_stream(d.data.data) for d in chart.proto.datasets])
    return found


def names_of(env: AppEnv, ids) -> list[str]:
    federation = load_federation(env.fed_dir)
    return [federation.hospital(h).name for h in ids]


def test_live_shows_bands_the_worst_by_name_and_a_search_not_a_heatmap_and_model_bins(env):
    at = live(env, "analyst")
    assert not at.exception
    assert not titled(at, "per hospital and round"), "no heatmap above the threshold"
    (bands,) = titled(at, "across hospitals, by round")
    released = {v for f in bands if "released" in f.columns for v in f["released"].to_list()}
    assert released == {HOSPITALS - len(SMALL)}  # withheld hospitals are in no quantile
    assert max(f.height for f in bands) <= 2 * ROUNDS  # per round, not per hospital
    (worst,) = titled(at, "lowest AUCs in round 2")
    shown = worst[0]["name"].to_list()
    expected = [h for h in (f"h{i:04d}" for i in range(HOSPITALS)) if h not in SMALL][:10]
    assert shown == names_of(env, expected)
    assert not set(names_of(env, SMALL)) & set(shown)

    assert at.text_input(key="hospital_search").label == "Hospital name contains"
    table = at.dataframe[-1].value
    assert len(table) == HOSPITALS and table["AUC"].isna().sum() == len(SMALL)
    fragment = names_of(env, ["h0002"])[0]
    at.text_input(key="hospital_search").input(fragment.lower()).run()
    table = at.dataframe[-1].value
    assert len(table) == HOSPITALS // 3 and all(fragment in n for n in table["Hospital"])
    picker = at.selectbox(key="drill_hospital")
    assert len(picker.options) == HOSPITALS // 3 and picker.value is None  # nothing read yet
    by_name = {h.name: h.id for h in load_federation(env.fed_dir).hospitals}
    name = next(n for n in picker.options if by_name[n] not in SMALL)
    picker.select(by_name[name]).run()  # AppTest takes the id, as the page does
    assert titled(at, f"{name}: AUC and accuracy by round")

    at.switch_page("pages/model.py").run()  # Model, on the same run: bins and the lowest
    (spread_chart,) = titled(at, f"Spread of AUC across {HOSPITALS - len(SMALL)} hospitals")
    assert max(f.height for f in spread_chart) <= 20  # bins, not hospitals
    (worst,) = titled(at, "The 10 lowest AUCs")
    assert not set(names_of(env, SMALL)) & set(worst[0]["name"].to_list())


def test_a_steward_sees_the_consortium_bands_and_their_own_line_and_no_other_hospital(env):
    at = live(env, "stew")
    assert not at.exception
    (bands,) = titled(at, "across hospitals, by round")
    lines = [f for f in bands if "name" in f.columns]
    assert [set(f["name"]) for f in lines] == [set(names_of(env, [OWN]))]
    assert not titled(at, "lowest AUCs")
    assert at.dataframe[-1].value["Hospital"].tolist() == names_of(env, [OWN])
    sent = page_bytes(at)
    others = [h for h in (f"h{i:04d}" for i in range(HOSPITALS)) if h != OWN]
    assert not [n for n in names_of(env, others) if n.encode() in sent]


def test_pseudonyms_name_the_worst_by_site_and_never_by_name_or_id(env):
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="admin")
    at = live(env, "analyst")
    (worst,) = titled(at, "lowest AUCs")
    assert all(n.startswith("Site ") for n in worst[0]["name"].to_list())
    assert set(worst[0]["hospital"].to_list()) == set(worst[0]["name"].to_list())
    sent = page_bytes(at)
    ids = [f"h{i:04d}" for i in range(HOSPITALS)]
    assert not [h for h in ids if h.encode() in sent]
    assert not [n for n in names_of(env, ids) if n.encode() in sent]
    assert spread.is_large(HOSPITALS)
