"""Federated tuning (``healthsync.runs.tuning``): successive halving chosen by validation loss.

Trials go through a fake ``start_run`` that records a finished run whose
validation loss is a known function of its settings, so the choice is checked
in milliseconds; ``test_a_real_tuning_end_to_end`` runs three real trials.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from healthsync.cli import main
from healthsync.config import TrainConfig
from healthsync.ml.metrics import BinaryMetrics
from healthsync.runs import lifecycle, runlog, tuning
from healthsync.runs.store import MetricsStore
from tests.app_helpers import make_federation

#: No learning happens at this rate: its validation loss stays at chance, 0.69.
ABSURD_LR = 1e-6


@pytest.fixture
def fed(tmp_path):
    make_federation(tmp_path / "fed", hospitals=3, patients=60)
    return TrainConfig(data_dir=str(tmp_path / "fed"), db=str(tmp_path / "m.duckdb"))


def fake_loss(config: TrainConfig) -> float:
    """Lower for learning rates nearer 0.1 and for more rounds; chance level at ABSURD_LR."""
    distance = abs(math.log10(config.lr) - math.log10(0.1))
    return min(0.69, 0.3 + 0.06 * distance + 0.1 / config.max_rounds)


@pytest.fixture
def fake_runs(monkeypatch):
    """``start_run`` that records a finished run with ``fake_loss`` and the opposite test AUC."""
    started: list[TrainConfig] = []

    def start_run(config, *, name=None, **_):
        config, _ = lifecycle.check_config(config)
        store = MetricsStore(config.db)
        run_id = f"run-fake-{len(started):03d}"
        started.append(config)
        runlog.create_run(store, run_id, config, name=name, status="running")
        loss = fake_loss(config)
        runlog.record_round(store, run_id, {"round": config.max_rounds, "val_loss": loss}, [])
        # A test AUC that rewards the worst validation loss: tuning must not look at it.
        runlog.finish_run(store, run_id, "completed", final=BinaryMetrics(60, 0.5, loss, 0.5, 0.2))
        return run_id

    monkeypatch.setattr(lifecycle, "start_run", start_run)
    return started


def test_rungs_keep_the_best_third_with_three_times_the_rounds():
    assert tuning.rungs(9, 3, 50) == [(9, 3), (3, 9)]
    assert tuning.rungs(27, 2, 50) == [(27, 2), (9, 6), (3, 18)]
    assert tuning.rungs(10, 3, 20) == [(10, 3), (4, 9), (2, 20)]
    assert tuning.rungs(1, 3, 50) == [(1, 3)]


def test_candidates_are_seeded_and_use_each_strategy_knob():
    space = tuning.SearchSpace()
    first = space.sample(20, seed=4)
    assert first == space.sample(20, seed=4)
    assert first != space.sample(20, seed=5)
    assert {c["strategy"] for c in first} == set(space.strategies)
    for c in first:
        assert space.lr[0] <= c["lr"] <= space.lr[1]
        assert ("proximal_mu" in c) == (c["strategy"] == "fedprox")
        assert ("server_lr" in c) == (c["strategy"] in ("fedadam", "fedyogi"))
        TrainConfig(**c)  # every candidate is a valid config


def test_tuning_chooses_by_validation_loss_and_never_the_absurd_learning_rate(fed, fake_runs):
    space = tuning.SearchSpace(lr=(ABSURD_LR, 0.3))
    result = tuning.tune(fed, budget=9, min_rounds=2, space=space)
    trials = result["trials"]
    assert [(t["rung"], t["rounds"]) for t in trials] == [(0, 2)] * 9 + [(1, 6)] * 3
    first = sorted(trials[:9], key=lambda t: t["val_loss"])
    assert {json.dumps(t["settings"]) for t in first[:3]} == {
        json.dumps(t["settings"]) for t in trials[9:]
    }  # the best third went on
    winner = min(trials[9:], key=lambda t: t["val_loss"])
    assert result["best_run_id"] == winner["run_id"]
    assert winner["val_loss"] == min(t["val_loss"] for t in trials)
    lrs = [t["settings"]["lr"] for t in trials[:9]]
    assert min(lrs) < 1e-4  # the search space did offer a hopeless rate...
    assert result["best"]["lr"] > 1e-3  # ...and it did not win
    # The best test AUC belonged to the worst validation loss: test figures played no part.
    store = MetricsStore(fed.db)
    aucs = store.frame("SELECT run_id, final_auc FROM runs ORDER BY final_auc DESC")
    assert aucs["run_id"][0] != result["best_run_id"]
    # best is a config train accepts: the winner's settings on the base, automatic rounds
    best = TrainConfig.from_dict(result["best"])
    assert best.auto_rounds and best.db == str(MetricsStore(fed.db).path)
    assert {k: result["best"][k] for k in winner["settings"]} == winner["settings"]
    names = store.frame("SELECT name FROM runs ORDER BY run_id")["name"].to_list()
    assert names == [f"tune:{result['tuning_id']} trial {k}" for k in range(1, 13)]


def test_the_tuning_and_its_trials_are_recorded_for_the_app(fed, fake_runs):
    result = tuning.tune(fed, budget=3, min_rounds=2)
    store = MetricsStore(fed.db)
    (row,) = tuning.tunings_frame(store, fed.data_dir).iter_rows(named=True)
    assert (row["status"], row["best_run_id"], row["budget"]) == (
        "completed",
        result["best_run_id"],
        3,
    )
    trials = tuning.trials_frame(store, result["tuning_id"])
    assert trials["run_id"].to_list() == [t["run_id"] for t in result["trials"]]
    assert trials["val_loss"].to_list() == [t["val_loss"] for t in result["trials"]]
    tuned = tuning.tuned_settings(store, fed.data_dir)
    assert tuned == {k: result["best"][k] for k in tuning.TUNED_FIELDS}
    assert tuning.tuned_settings(store, "/some/other/federation") is None


def test_a_tuning_whose_trials_all_fail_says_so_and_is_marked_failed(fed, monkeypatch):
    def start_run(config, *, name=None, **_):
        config, _ = lifecycle.check_config(config)
        runlog.create_run(MetricsStore(config.db), "run-broken", config, status="running")
        runlog.finish_run(MetricsStore(config.db), "run-broken", "failed", reason="boom")
        return "run-broken"

    monkeypatch.setattr(lifecycle, "start_run", start_run)
    with pytest.raises(Exception, match="no trial recorded a federated validation loss"):
        tuning.tune(fed, budget=1)
    assert tuning.tunings_frame(MetricsStore(fed.db))["status"].to_list() == ["failed"]


def test_ctrl_c_cancels_the_running_trial_and_fails_the_tuning(fed, monkeypatch):
    def start_run(config, *, name=None, **_):
        config, _ = lifecycle.check_config(config)
        runlog.create_run(MetricsStore(config.db), "run-busy", config, status="running")
        return "run-busy"

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "start_run", start_run)
    monkeypatch.setattr(lifecycle, "wait_for_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(fed, budget=3)
    store = MetricsStore(fed.db)
    assert runlog.cancel_requested(store, "run-busy")
    assert tuning.tunings_frame(store)["status"].to_list() == ["failed"]


def test_tune_json_last_line_has_best_best_run_id_and_trials(fed, fake_runs, capsys):
    args = f"--data {fed.data_dir} --db {fed.db} --budget 2 --min-rounds 1 --json"
    code = main(["tune", *args.split()])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) >= {"best", "best_run_id", "trials"}
    assert TrainConfig.from_dict(last["best"]).lr == last["best"]["lr"]
    assert {"run_id", "settings", "rounds", "val_loss", "rung"} <= set(last["trials"][0])


@pytest.mark.slow
@pytest.mark.extended
def test_a_real_tuning_end_to_end(fed, capsys):
    """Three real trials of one round on 3 hospitals x 60 patients: each a cold start of its own."""
    started = time.monotonic()
    args = f"--data {fed.data_dir} --db {fed.db} --budget 3 --min-rounds 1 --json"
    code = main(["tune", *args.split()])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert len(result["trials"]) == 3
    assert all(t["status"] == "completed" and t["val_loss"] > 0 for t in result["trials"])
    assert result["best_run_id"] == min(result["trials"], key=lambda t: t["val_loss"])["run_id"]
    detail = runlog.run_detail(MetricsStore(fed.db), result["best_run_id"])
    assert detail["config"]["lr"] == result["best"]["lr"]
    print(f"real tuning of 3 trials: {time.monotonic() - started:.0f} s")
