"""The app's side of tuning: Runs shows the trials; Launch fills its form with the tuned settings."""

from __future__ import annotations

import json

import pytest

from healthsync.config import TrainConfig
from healthsync.runs import tuning
from tests.app_helpers import AppEnv, button, charts, fake_run, texts

TUNED = {"strategy": "fedprox", "lr": 0.123, "local_epochs": "auto", "local_steps": 40}


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def record_tuning(env: AppEnv) -> None:
    """A finished tuning of three trials (runs recorded as the simulation would), trial 2 best."""
    settings = [
        {"strategy": "fedavg", "lr": 0.01, "local_epochs": "auto", "local_steps": 10},
        TUNED | {"proximal_mu": 0.05},
        {"strategy": "fedadam", "lr": 0.3, "local_epochs": "auto", "local_steps": 5,
         "server_lr": 0.02},
    ]  # fmt: skip
    store = env.store
    for k in range(1, 4):
        fake_run(store, f"run-t{k}", data_dir=env.fed_dir, name=f"tune:tune-x trial {k}")
    best = TrainConfig(data_dir=str(env.fed_dir), db=str(env.db)).replace(**settings[1])
    store.execute(
        "INSERT INTO tunings VALUES ('tune-x', now(), ?, 'diabetes_5y', 'logreg', 3, 0,"
        " 'completed', ?, 'run-t2')",
        [str(env.fed_dir), best.to_json()],
    )
    store.executemany(
        "INSERT INTO tuning_trials VALUES ('tune-x', ?, 0, ?, 3, ?, ?, 'completed')",
        [[k, f"run-t{k}", json.dumps(s), loss] for k, s, loss in zip(
            (1, 2, 3), settings, (0.61, 0.48, 0.66), strict=True)],
    )  # fmt: skip


def test_runs_shows_the_trials_with_a_chart_and_the_choice(env):
    record_tuning(env)
    at = env.app("viewer", "pages/runs.py")
    assert not at.exception
    table = next(d.value for d in at.dataframe if "rung" in d.value.columns)
    assert list(table["run"]) == ["run-t1", "run-t2", "run-t3"]
    assert list(table["chosen"]) == ["", "best", ""]
    assert list(table["FedProx μ"]) == ["–", "0.05", "–"]
    assert list(table["validation loss"]) == [0.61, 0.48, 0.66]
    (chart,) = [c for c in charts(at) if "by tuning trial" in c.proto.spec]
    assert "Trial (number)" in chart.proto.spec and "Validation loss (log loss)" in chart.proto.spec
    assert "the ringed trial was chosen" in texts(at)


def test_runs_without_a_tuning_says_how_to_start_one(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    at = env.app("viewer", "pages/runs.py")
    assert "No tuning yet. `healthsync tune" in texts(at)


def test_launch_fills_the_form_with_the_tuned_settings(env, monkeypatch):
    record_tuning(env)
    started = []
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.start_run", lambda config, **_: started.append(config) or "x"
    )
    monkeypatch.setattr("streamlit.switch_page", lambda *a, **k: None)
    at = env.app("admin", "pages/launch.py")
    default = next(w for w in at.number_input if w.label == "Learning rate").value
    assert default == TrainConfig().lr != 0.123  # the form starts on the defaults
    button(at, "Use the tuned settings").click().run()
    assert not at.exception
    assert next(w for w in at.selectbox if w.label == "Aggregation strategy").value == "fedprox"
    assert next(w for w in at.number_input if w.label == "Learning rate").value == 0.123
    button(at, "Start training").click().run()
    (config,) = started
    assert (config.strategy, config.lr, config.local_epochs, config.local_steps) == (
        "fedprox",
        0.123,
        "auto",
        40,
    )
    assert config.proximal_mu == 0.05


def test_launch_offers_no_tuned_settings_for_a_data_set_never_tuned(env):
    at = env.app("admin", "pages/launch.py")
    assert button(at, "Use the tuned settings") is None
    assert tuning.tuned_settings(env.store, env.fed_dir) is None


def test_the_trials_chart_leaves_out_failed_trials_and_rings_the_choice():
    import polars as pl

    from healthsync.views import charts, dashboard

    trials = pl.DataFrame(
        {
            "trial": [1, 2],
            "rung": [0, 0],
            "rounds": [3, 3],
            "run_id": ["run-a", "run-b"],
            "settings": [json.dumps({"strategy": "fedavg", "lr": 0.1}), json.dumps(TUNED)],
            "val_loss": [None, 0.5],
            "status": ["failed", "completed"],
        }
    )
    view = dashboard.trials_view(trials, "run-b")
    assert view["chosen"].to_list() == ["", "best"]
    assert view["server learning rate"].to_list() == ["–", "–"]
    spec = charts.tuning_trials(view).to_dict()
    points, ring = (layer["data"]["name"] for layer in spec["layer"])
    assert [row["trial"] for row in spec["datasets"][points]] == [2]
    assert [row["trial"] for row in spec["datasets"][ring]] == [2]
