"""Privacy and robustness in the app (AppTest): launch settings, live epsilon, utility chart."""

from pathlib import Path

import pytest

from healthsync.config import TrainConfig
from healthsync.ml.metrics import BinaryMetrics
from healthsync.privacy import epsilon_for
from healthsync.runs import runlog
from healthsync.runs.store import MetricsStore
from healthsync.views import dashboard
from tests.app_helpers import AppEnv, button, charts, fake_run, texts


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def private_run(
    store: MetricsStore,
    run_id: str,
    data_dir: Path,
    *,
    rounds: int = 3,
    status: str = "completed",
    **settings,
) -> None:
    """A DP run (noise 1, clip 1 unless given) with an attack drill and a dropped hospital."""
    config = TrainConfig(
        data_dir=str(data_dir),
        db=store.path,
        target="diabetes",
        rounds=5,
        **{"dp_noise": 1.0, "dp_clip": 1.0, "adversarial": 1, "attack": "scale", **settings},
    )
    runlog.create_run(store, run_id, config, status="running")
    runlog.record_event(store, run_id, "privacy", "differential privacy: noise multiplier 1")
    runlog.record_event(store, run_id, "adversary", "attacker: scale", hospital="h0001")
    runlog.record_event(store, run_id, "hospital_dropped", "dropped", round=2, hospital="h0002")
    for r in range(1, rounds + 1):
        row = {"round": r, "loss": 0.7, "auc": 0.6 + 0.01 * r, "accuracy": 0.7, "seconds": 1.0}
        row |= {"hospitals_ok": 3, "hospitals_failed": 0}
        runlog.record_round(
            store, run_id, row | {"epsilon": epsilon_for(config.dp_noise, r, config.dp_delta)}, []
        )
    if status == "completed":
        runlog.finish_run(store, run_id, status, final=BinaryMetrics(60, 0.6, 0.63, 0.7, 0.2))


# ---------------------------------------------------------------- launch
def test_launch_builds_a_private_config_with_an_attack_drill(env, monkeypatch):
    started = []
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.start_run", lambda c, **_: started.append(c) or "run-x"
    )
    monkeypatch.setattr("streamlit.switch_page", lambda *a, **k: None)
    at = env.app("analyst", "pages/launch.py")
    assert "Privacy and robustness" in [e.label for e in at.expander]
    widget = {w.label: w for w in [*at.number_input, *at.selectbox]}
    widget["DP noise multiplier (0: off)"].set_value(1.0)
    widget["DP clipping norm (0: off)"].set_value(0.5)
    widget["Epsilon budget (0: none)"].set_value(10.0)
    widget["Clipping side"].set_value("client")
    widget["Adversarial hospitals (drill)"].set_value(1)
    widget["Attack"].set_value("label-flip")
    widget["Dropout probability per round"].set_value(0.2)
    widget["Straggler delay, up to (seconds)"].set_value(0.3)
    widget["Round timeout (seconds, 0: none)"].set_value(0.2)
    button(at, "Start training").click().run()
    assert not at.error and not at.exception
    (config,) = started
    assert config.dp and (config.dp_noise, config.dp_clip, config.dp_side) == (1.0, 0.5, "client")
    assert (config.dp_epsilon_budget, config.dp_delta) == (10.0, 1e-5)
    assert (config.adversarial, config.attack) == (1, "label-flip")
    assert (config.dropout, config.straggler_delay, config.round_timeout) == (0.2, 0.3, 0.2)
    assert not config.secagg


def test_launch_turns_on_secure_aggregation(env, monkeypatch):
    started = []
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.start_run", lambda c, **_: started.append(c) or "run-x"
    )
    monkeypatch.setattr("streamlit.switch_page", lambda *a, **k: None)
    at = env.app("analyst", "pages/launch.py")
    next(c for c in at.checkbox if c.label == "Secure aggregation (SecAgg+)").check()
    button(at, "Start training").click().run()
    assert not at.error and not at.exception
    (config,) = started
    assert config.secagg and config.strategy == "fedavg" and not config.dp


def test_launch_defaults_leave_safeguards_off(env, monkeypatch):
    started = []
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.start_run", lambda c, **_: started.append(c) or "run-x"
    )
    monkeypatch.setattr("streamlit.switch_page", lambda *a, **k: None)
    at = env.app("analyst", "pages/launch.py")
    button(at, "Start training").click().run()
    (config,) = started
    plain = TrainConfig()
    fields = ("dp_noise", "dp_clip", "dp_epsilon_budget", "adversarial", "attack", "dropout")
    assert [getattr(config, f) for f in fields] == [getattr(plain, f) for f in fields]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DP noise multiplier (0: off)": 1.0}, "dp noise 1 needs a clipping norm (dp clip > 0)"),
        ({"Adversarial hospitals (drill)": 1}, "1 adversarial hospital(s) need an attack"),
        (
            {"DP noise multiplier (0: off)": 1.0, "DP clipping norm (0: off)": 1.0, "krum": 0},
            "differential privacy works with strategy fedavg or fedprox only",
        ),
        (
            {"secagg": True, "krum": 0},
            "secure aggregation shows the server only the sum of updates",
        ),
    ],
)
def test_launch_reports_invalid_privacy_settings(env, monkeypatch, changes, message):
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.spawn_detached", pytest.fail
    )  # nothing may start
    at = env.app("analyst", "pages/launch.py")
    if changes.pop("krum", None) is not None:
        next(w for w in at.selectbox if w.label == "Aggregation strategy").set_value("krum")
    if changes.pop("secagg", None):
        next(c for c in at.checkbox if c.label == "Secure aggregation (SecAgg+)").check()
    for label, value in changes.items():
        next(w for w in at.number_input if w.label == label).set_value(value)
    button(at, "Start training").click().run()
    assert len(at.error) == 1 and at.error[0].value.startswith(f"Cannot start this run: {message}")
    assert runlog.list_runs(env.store).is_empty()


# ---------------------------------------------------------------- live
def test_live_shows_epsilon_attackers_and_dropouts_for_a_private_run(env):
    private_run(env.store, "run-dp", env.fed_dir, status="running", dp_epsilon_budget=20.0)
    at = env.app("viewer", "pages/live.py", run="run-dp")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Privacy spent (ε)"] == f"{epsilon_for(1.0, 3, 1e-5):.3g}"
    assert metrics["Budget (ε)"] == "20"
    # Global metrics, loss, hospital status and epsilon by round; this run's hospital rows
    # carry no class counts, so every hospital AUC is withheld and Live says so instead.
    assert len(charts(at)) == 4
    assert any("No hospital's own AUC can be shown" in i.value for i in at.info)
    assert "Privacy spent by round" in str(charts(at)[-1].proto.spec)
    page = texts(at)
    names = dashboard.hospital_names(env.fed_dir)  # hospitals by name, as every page names them
    assert f"Adversarial: {names['h0001']} (scale)" in page
    assert (
        "run-dp · running · fedavg/logreg · diabetes · data set demo · scale×1 · DP z=1 ε≤20"
        in (at.selectbox[0].options)
    )
    dropped = at.dataframe[0].value
    assert dropped.to_dict("records") == [{"round": 2, "dropped": 1, "hospitals": names["h0002"]}]


def test_live_says_a_run_used_secure_aggregation(env):
    config = TrainConfig(
        data_dir=str(env.fed_dir), db=env.store.path, target="diabetes", secagg=True
    )
    runlog.create_run(env.store, "run-sa", config, status="running")
    message = "secure aggregation (SecAgg+): 3 hospitals a round, each sharing its keys with 3"
    runlog.record_event(env.store, "run-sa", "privacy", message)
    row = {"round": 1, "loss": 0.7, "auc": 0.6, "accuracy": 0.7, "seconds": 1.0}
    runlog.record_round(env.store, "run-sa", row | {"hospitals_ok": 3, "hospitals_failed": 0}, [])
    at = env.app("viewer", "pages/live.py", run="run-sa")
    assert not at.exception
    assert "Secure aggregation" in [h.value for h in at.subheader]
    assert "Secure aggregation (SecAgg+): 3 hospitals a round" in texts(at)
    assert "The server received only masked models" in texts(at)
    assert any(o.endswith("· SecAgg+") for o in at.selectbox[0].options)
    assert "Privacy spent (ε)" not in [m.label for m in at.metric]


def test_live_shows_no_privacy_section_for_a_plain_run(env):
    fake_run(env.store, "run-plain", data_dir=env.fed_dir)
    at = env.app("viewer", "pages/live.py", run="run-plain")
    assert not at.exception
    assert "Privacy spent (ε)" not in [m.label for m in at.metric]
    assert len(charts(at)) == 5 and not at.dataframe  # the run's four, one for a hospital
    assert "Adversarial" not in texts(at) and "Secure aggregation" not in texts(at)


# ---------------------------------------------------------------- runs
def test_runs_page_plots_utility_against_epsilon_and_labels_attacks(env):
    fake_run(env.store, "run-plain", data_dir=env.fed_dir)
    private_run(env.store, "run-dp", env.fed_dir)
    at = env.app("viewer", "pages/runs.py")
    assert not at.exception
    specs = [str(c.proto.spec) for c in charts(at)]
    assert len(specs) == 2
    assert "Utility versus privacy" in specs[1] and "no DP (reference)" in specs[1]
    assert '"field": "label"' in specs[0]  # the comparison legend names settings and attack
    assert any(o.endswith("· scale×1 · DP z=1") for o in at.multiselect[0].options)
    assert "Dashed lines are runs without DP" in texts(at)


def test_runs_page_without_private_runs_says_how_to_get_one(env):
    fake_run(env.store, "run-plain", data_dir=env.fed_dir)
    at = env.app("viewer", "pages/runs.py")
    assert "No completed run with differential privacy yet" in texts(at)
    assert not any("Utility versus privacy" in str(c.proto.spec) for c in charts(at))
