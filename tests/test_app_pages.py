"""The Streamlit app with AppTest: login, roles, each page's content and empty states."""

import json
import time

import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from healthsync import auth
from healthsync.data import load_federation
from healthsync.runs import runlog
from tests.app_helpers import LOGIN_KEY, ROOT, STATUS_KEY, AppEnv, button, charts, fake_run, texts

PAGES = ["overview", "launch", "live", "runs", "model", "admin"]
ADMIN_PASSWORD = "admin-password-1"


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    env.users.set_password("admin", ADMIN_PASSWORD)
    return env


@pytest.fixture
def empty_env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch, federation=False)


def log_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    button(at, "Log in").click().run()
    if at.session_state[STATUS_KEY]:
        # In a browser, streamlit-authenticator's cookie component reruns the app once the
        # cookie is set; AppTest runs no JavaScript.
        at.run()
    return at


# ---------------------------------------------------------------- login and roles
def test_logged_out_there_is_only_the_login_page(env):
    at = env.app()
    assert [t.value for t in at.title] == ["HealthSync"]
    assert [w.label for w in at.text_input] == ["User name", "Password"]
    assert button(at, "Log out") is None and not charts(at)
    for page in ("pages/overview.py", "pages/runs.py"):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(page)


def test_login_then_logout_ends_the_session(env):
    at = log_in(env.app(), "admin", ADMIN_PASSWORD)
    assert not at.exception
    assert [t.value for t in at.title] == ["Federation overview"]
    login = at.session_state[LOGIN_KEY]
    assert env.sessions.user_for(login) == auth.User("admin", "admin")
    button(at, "Log out").click().run()
    # AppTest reruns the page file itself (as Streamlit does before any st.navigation call),
    # so the page's own guard answers; in a browser the login page shows (test_browser).
    assert [t.value for t in at.title] in (["HealthSync"], ["Please log in"])
    assert button(at, "Log out") is None
    assert env.sessions.user_for(login) is None  # so is the cookie of that login


def test_logging_in_ignores_the_case_of_the_name(env):
    env.users.add("Nina", "viewer", "nina-password")
    at = log_in(env.app(), " NINA", "nina-password")
    assert "Logged in as **Nina** (viewer)" in texts(at)


def test_a_new_password_or_removal_ends_open_sessions(env):
    at = log_in(env.app(), "admin", ADMIN_PASSWORD)
    env.users.set_password("admin", "another-password")
    at.run()
    assert [t.value for t in at.title] in (["HealthSync"], ["Please log in"])
    assert button(at, "Log out") is None
    at = env.app("analyst")
    env.users.remove("analyst-user")
    at.run()
    assert [t.value for t in at.title] in (["HealthSync"], ["Please log in"])


def test_wrong_passwords_make_the_address_wait_for_a_while(env):
    at = env.app()
    for _ in range(4):
        log_in(at, "admin", "wrong")
        assert at.error[0].value.startswith("Wrong user name or password (after 5 failed logins")
    log_in(at, "admin", "wrong")
    assert "Too many failed logins from this address" in at.error[0].value
    log_in(at, "admin", ADMIN_PASSWORD)
    assert "Too many failed logins" in at.error[0].value
    assert [t.value for t in at.title] == ["HealthSync"]
    # streamlit-authenticator's own counter never reaches the credentials file.
    assert "failed_login_attempts" not in env.users.path.read_text()
    # The wait ends (here: its time is moved to the past), and the password works again.
    logins = env.home / "logins.json"
    state = json.loads(logins.read_text())
    for entry in state["throttle"]["admin"].values():
        entry["locked_until"] = time.time() - 1
    logins.write_text(json.dumps(state))
    log_in(at, "admin", ADMIN_PASSWORD)
    assert [t.value for t in at.title] == ["Federation overview"]


def test_an_unknown_name_gets_the_same_message_as_a_wrong_password(env):
    at = env.app()
    log_in(at, "admin", "wrong")
    wrong_password = at.error[0].value
    for _ in range(6):  # stauth does not say which unknown name was typed: nothing to lock
        log_in(at, "ghost", "wrong")
        assert at.error[0].value == wrong_password


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("admin", PAGES),
        ("analyst", ["overview", "launch", "live", "runs", "model"]),
        ("viewer", ["overview", "live", "runs", "model"]),
    ],
)
def test_navigation_is_built_from_the_role(env, role, allowed):
    denied = [p for p in PAGES if p not in allowed]
    at = env.app(role)
    for page in allowed:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page
        assert "Please log in" not in texts(at) and "Not available" not in texts(at)
    # Every page is registered (hidden from the menu when the role may not open it), so
    # opening one by URL shows the page's own guard refusing, not "Page not found".
    for page in denied:
        at.switch_page(f"pages/{page}.py").run()
        assert [t.value for t in at.title] == ["Not available for your role"]


@pytest.mark.parametrize("page", PAGES)
def test_a_page_opened_directly_without_login_shows_nothing(env, page):
    """Before app.py ever ran, Streamlit serves pages/*.py by URL: the guard must hold."""
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=60).run()
    assert [t.value for t in at.title] == ["Please log in"]
    assert not charts(at) and not at.dataframe and not at.text_input and not at.metric


@pytest.mark.parametrize("page", ["launch", "admin"])
def test_a_viewer_opening_launch_or_admin_directly_is_refused(env, page):
    at = env.log_in(
        AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=60), "viewer"
    )
    at.run()
    assert [t.value for t in at.title] == ["Not available for your role"]
    assert not at.text_input and not at.number_input and not at.dataframe


def test_role_changes_apply_on_the_next_rerun(env):
    at = env.app("analyst", "pages/launch.py")
    env.users.set_role("analyst-user", "viewer")
    at.run()
    assert [t.value for t in at.title] != ["Launch a training run"]


# ---------------------------------------------------------------- empty states
@pytest.mark.parametrize(
    ("page", "hint"),
    [
        ("overview", "No federation found"),
        ("launch", "No federation found"),
        ("live", "No run to watch yet"),
        ("runs", "No runs recorded yet"),
        ("model", "No finished run yet"),
    ],
)
def test_empty_states_say_what_to_do_next(empty_env, page, hint):
    at = empty_env.app("admin", f"pages/{page}.py")
    assert not at.exception
    assert hint in texts(at)


def test_overview_without_runs_points_to_launch(env):
    at = env.app("viewer")
    assert "No training run yet" in texts(at)
    assert at.metric[0].label == "Hospitals" and at.metric[0].value == "3"
    assert "No hospital has published its facts yet" in texts(at)  # nothing published here


def test_overview_shows_only_what_hospitals_released(env):
    """Sizes and prevalences are the hospitals' noisy releases, never the manifest's counts."""
    from healthsync.cohort.facts import facts_frames, publish, published_facts
    from healthsync.data import load_federation

    federation = load_federation(env.fed_dir)
    publish(federation)
    released, _ = published_facts(federation)
    sizes, _ = facts_frames(federation, released)
    at = env.app("viewer")
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels[:3] == ["Hospitals", "Patients (noisy)", "Hospital size (noisy)"]
    assert at.metric[1].value == f"≈ {released.total['patient_count']:,}"
    shown = sizes["n_patients"].drop_nulls()
    assert at.metric[2].value == f"{shown.min():,}–{shown.max():,}"
    drawn = charts(at)
    assert len(drawn) == 2  # sizes, and prevalence
    data = pl.read_ipc_stream(drawn[0].proto.datasets[0].data.data)  # the bars as drawn
    bars = dict(zip(data["name"], data["n_patients"], strict=True))
    exact = {h.name: h.n_train + h.n_test for h in federation.hospitals}
    assert bars == dict(zip(sizes["name"], sizes["n_patients"], strict=True))
    assert bars != exact  # noise was added (at this size, equal for all 3 is ~1 in 10^3)


# ---------------------------------------------------------------- launch
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Rounds", 0, "max rounds must be >= 1, got 0"),  # automatic rounds: the most
        ("Share of hospitals per round", 0.0, "fraction must be in (0, 1], got 0.0"),
        ("Learning rate", 0.0, "learning rate must be > 0, got 0.0"),
        ("Minimum hospitals per round", 10, "10 hospitals required but the data has only 3"),
    ],
)
def test_launch_form_reports_invalid_settings(env, monkeypatch, field, value, message):
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.spawn_detached", pytest.fail
    )  # nothing may start
    at = env.app("analyst", "pages/launch.py")
    next(w for w in at.number_input if w.label == field).set_value(value)
    button(at, "Start training").click().run()
    assert len(at.error) == 1
    assert at.error[0].value == f"Cannot start this run: {message}"
    assert runlog.list_runs(env.store).is_empty()


@pytest.mark.parametrize(
    ("engine_state", "enabled", "note"),
    [
        (None, False, "Runs start cold: 10-15 s to the first round"),
        (None, True, "Starting the training engine (Flower on Ray, about 20 s)"),
        ({"busy": True}, True, "The training engine is busy with another run"),
        ({"busy": False}, True, "The training engine is warm"),
    ],
)
def test_launch_says_how_fast_a_run_will_start(env, monkeypatch, engine_state, enabled, note):
    started = []
    monkeypatch.setattr("healthsync.runs.engine.status", lambda db: engine_state)
    monkeypatch.setattr("healthsync.runs.engine.enabled", lambda: enabled)
    monkeypatch.setattr("healthsync.runs.engine.start", lambda db: started.append(db))
    at = env.app("analyst", "pages/launch.py")
    assert not at.exception
    assert note in texts(at)
    assert [str(db) for db in started] == (
        [env.store.path] if engine_state is None and enabled else []
    )


def test_launch_starts_a_run_and_opens_it_on_the_live_page(env, monkeypatch):
    started = []

    def start_run(config, **_):
        started.append(config)
        fake_run(
            env.store,
            "run-new",
            data_dir=env.fed_dir,
            rounds=0,
            planned=config.rounds,
            status="running",
        )
        return "run-new"

    monkeypatch.setattr("healthsync.runs.lifecycle.start_run", start_run)
    at = env.app("admin", "pages/launch.py")
    next(w for w in at.toggle if w.label == "Choose rounds automatically").set_value(False)
    next(w for w in at.number_input if w.label == "Rounds").set_value(3)
    next(w for w in at.selectbox if w.label == "Aggregation strategy").set_value("fedprox")
    button(at, "Start training").click().run()
    (config,) = started
    # The outcome starts at the data's default target (new diabetes within 5 years).
    assert (config.rounds, config.strategy, config.target) == (3, "fedprox", "diabetes_5y")
    assert config.db == str(env.db) and config.data_dir == str(env.fed_dir)
    assert [t.value for t in at.title] == ["Live training"]
    assert at.query_params["run"] in ("run-new", ["run-new"])
    assert at.progress[0].proto.text.startswith("Round 0 of 3")
    assert "Waiting for the first round" in texts(at)


def test_launch_offers_automatic_rounds_by_default_with_rounds_as_the_most(env, monkeypatch):
    started = []
    monkeypatch.setattr(
        "healthsync.runs.lifecycle.start_run", lambda config, **_: started.append(config) or "x"
    )
    monkeypatch.setattr("streamlit.switch_page", lambda *a, **k: None)
    at = env.app("admin", "pages/launch.py")
    assert next(w for w in at.toggle if w.label == "Choose rounds automatically").value
    next(w for w in at.number_input if w.label == "Rounds").set_value(7)
    button(at, "Start training").click().run()
    (config,) = started
    assert (config.rounds, config.max_rounds, config.round_limit) == ("auto", 7, 7)
    assert config.local_epochs == "auto"  # 0 on the form: chosen from each hospital's size


# ---------------------------------------------------------------- live
def test_live_shows_progress_charts_and_cancel_for_analysts(env):
    fake_run(env.store, "run-old", data_dir=env.fed_dir)
    fake_run(
        env.store,
        "run-live",
        data_dir=env.fed_dir,
        rounds=2,
        planned=5,
        status="running",
        failed_round=2,
    )
    at = env.app("analyst", "pages/live.py")
    assert at.selectbox[0].value == "run-live"  # the newest running run by default
    assert at.progress[0].proto.text == "Round 2 of 5 · about 6 s left"
    assert len(charts(at)) == 5  # four for the run, one for the hospital picked below them
    button(at, "Cancel run").click().run()
    assert runlog.cancel_requested(env.store, "run-live")


def test_live_for_viewers_has_no_cancel_and_follows_the_run_query_param(env):
    fake_run(env.store, "run-old", data_dir=env.fed_dir)
    fake_run(env.store, "run-live", data_dir=env.fed_dir, rounds=1, planned=5, status="running")
    at = env.app("viewer", "pages/live.py", run="run-old")
    assert at.selectbox[0].value == "run-old"
    assert at.progress[0].proto.text == "Round 3 of 3 · completed"
    assert button(at, "Cancel run") is None


# ---------------------------------------------------------------- runs
def test_runs_history_comparison_chart_and_downloads(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    fake_run(env.store, "run-b", data_dir=env.fed_dir, rounds=4)
    at = env.app("viewer", "pages/runs.py")
    history = at.dataframe[0].value
    assert list(history["run"]) == ["run-b", "run-a"]
    assert len(charts(at)) == 1  # the two newest runs are compared by default
    assert [b.label for b in at.download_button] == ["Rounds (CSV)", "Per-hospital rounds (CSV)"]
    assert button(at, "Train baselines and compare") is None
    assert "Ask an analyst" in texts(at)
    at.multiselect[0].set_value(["run-a"]).run()
    assert "Pick two or more runs" in texts(at)


def test_analysts_compute_the_pooled_local_federated_table(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    at = env.app("analyst", "pages/runs.py")
    button(at, "Train baselines and compare").click().run(timeout=120)
    assert not at.error and not at.exception
    table = at.dataframe[-1].value
    assert {"pooled (reference)", "local only", "federated (fedavg)"} <= set(table["method"])
    assert "personalised (fine-tuned)" in set(table["method"])  # the fourth method, on Runs too
    assert not env.store.frame("SELECT * FROM comparisons WHERE run_id = 'run-a'").is_empty()


# ---------------------------------------------------------------- model
def test_model_page_curves_and_risk_calculator(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    at = env.app("viewer", "pages/model.py")
    assert len(charts(at)) == 3  # ROC, calibration, per-hospital AUC
    labels = [w.label for w in at.number_input]
    assert "Age (years)" in labels and "BMI (kg/m²)" in labels
    next(w for w in at.number_input if w.label == "Age (years)").set_value(70.0)
    button(at, "Estimate risk").click().run()
    assert not at.exception
    assert at.metric[0].label == "Predicted risk of diabetes within 5 years"
    assert at.metric[0].value.endswith("%")


def test_model_page_without_a_saved_model(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    at = env.app("viewer", "pages/model.py")
    assert "No model to score with" in texts(at)


# ---------------------------------------------------------------- admin
def test_admin_adds_a_user_and_sees_the_password_once(env):
    at = env.app("admin", "pages/admin.py")
    at.text_input[0].input("nina")
    button(at, "Add user").click().run()
    assert at.success[0].value == "Added nina as viewer."
    password = at.code[0].value
    assert env.users.verify("nina", password) == auth.User("nina", "viewer")
    at.run()
    assert not at.code  # shown once
    at.text_input[0].input("nina")
    button(at, "Add user").click().run()
    assert at.error[0].value == "User 'nina' already exists"


def test_admin_changes_role_resets_password_and_removes(env):
    env.users.add("nina", "viewer")
    at = env.app("admin", "pages/admin.py")
    at.selectbox(key="role_user").set_value("nina")
    at.selectbox(key="role_new").set_value("analyst")
    button(at, "Change role").click().run()
    assert env.users.get("nina").role == "analyst"
    at.selectbox(key="reset_user").set_value("nina")
    button(at, "Generate a new password").click().run()
    assert env.users.verify("nina", at.code[0].value)
    at.selectbox(key="remove_user").set_value("nina")
    button(at, "Remove user").click().run()
    assert "tick the box" in at.warning[0].value and env.users.get("nina")
    at.checkbox[0].check()
    button(at, "Remove user").click().run()
    assert env.users.get("nina") is None
    assert "admin-user" not in at.selectbox(key="remove_user").options  # never yourself


# ---------------------------------------------------------------- issue 14: roles and names
@pytest.mark.parametrize(
    ("role", "path"),
    [("viewer", "pages/launch.py"), ("viewer", "pages/admin.py"), ("analyst", "pages/admin.py")],
)
def test_a_page_the_role_may_not_open_says_so_instead_of_not_found(env, role, path):
    at = env.app(role)
    at.switch_page(path).run()
    assert [t.value for t in at.title] == ["Not available for your role"]


def test_the_comparison_table_names_hospitals_and_shows_no_none(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    names = {h.id: h.name for h in load_federation(env.fed_dir).hospitals}
    env.store.executemany(
        "INSERT INTO comparisons (comparison_id, created_at, data_dir, target, model, method,"
        " hospital, n, loss, auc, accuracy, brier, run_id, released)"
        " VALUES ('c1', now(), ?, 'diabetes', 'logreg', ?, ?, 40, 0.6, 0.7, 0.7, ?, 'run-a', true)",
        [
            [str(env.fed_dir), method, hospital, brier]
            for method, brier in (("local only", 0.2), ("federated (fedavg)", None))
            for hospital in ["overall", *names]
        ],
    )
    at = env.app("viewer", "pages/runs.py")
    assert not at.exception
    table = next(d.value for d in at.dataframe if "method" in d.value.columns)
    shown = set(table["hospital"])
    assert set(names.values()) <= shown and not shown & set(names)
    assert "None" not in table.astype(str).to_numpy().ravel().tolist()


def test_live_says_why_no_hospital_auc_is_shown_when_every_one_is_withheld(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    env.store.execute("UPDATE hospital_rounds SET auc = NULL, released = false")
    at = env.app("viewer", "pages/live.py")
    assert not at.exception
    assert any("No hospital's own AUC can be shown" in i.value for i in at.info)
    titles = [c.proto.spec for c in charts(at)]
    assert not any("AUC per hospital" in spec for spec in titles)
