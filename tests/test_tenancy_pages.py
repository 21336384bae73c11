"""Issue 15 in the app: stewards see their own hospital only; withdrawals are shown.

Each page a steward can open is run with AppTest, and the per-hospital data it
renders (chart datasets, tables, the CSV a download would give) is checked to
hold no other hospital's rows.
"""

from __future__ import annotations

import polars as pl
import pytest

from healthsync.cohort.facts import publish
from healthsync.data import load_federation
from healthsync.privacy import consent
from healthsync.privacy.consent import site_dir_of
from healthsync.runs import runlog
from healthsync.views import dashboard, tenancy
from tests.app_helpers import AppEnv, button, charts, fake_run, log_in, page_bytes, texts

OWN = "h0001"
OTHERS = {"h0000", "h0002"}
PAGES = ["overview", "how_it_works", "live", "runs", "model", "stress", "my_hospital"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    env.users.add("stew", "steward", "a-long-password", federation=env.fed_dir, hospital=OWN)
    return env


def steward_app(env: AppEnv, page: str | None = None, **query: str):
    from streamlit.testing.v1 import AppTest

    from tests.app_helpers import APP

    at = AppTest.from_file(str(APP), default_timeout=60)
    log_in(at, "stew")
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def _comparison(env: AppEnv, run_id: str) -> None:
    rows = [("federated (fedavg)", h, 0.7) for h in ("overall", "h0000", OWN, "h0002")]
    rows += [("local-only", h, 0.6) for h in ("overall", "h0000", OWN, "h0002")]
    env.store.executemany(
        "INSERT INTO comparisons (comparison_id, created_at, data_dir, target, model, method,"
        " hospital, n, loss, auc, accuracy, brier, run_id, released)"
        " VALUES ('cmp-1', ?, ?, 'diabetes', 'logreg', ?, ?, 40, 0.5, ?, 0.7, 0.2, ?, true)",
        [[runlog.now(), str(env.fed_dir), m, h, auc, run_id] for m, h, auc in rows],
    )


def _hospitals_in(at, fed_dir) -> set[str]:
    """Every hospital id or name in the page's chart datasets and tables."""
    federation = load_federation(fed_dir)
    names = {h.name: h.id for h in federation.hospitals}
    seen: set[str] = set()
    for chart in charts(at):
        for dataset in chart.proto.datasets:
            frame = pl.read_ipc_stream(dataset.data.data)
            for column in ("hospital", "name"):
                if column in frame.columns:
                    seen |= {names.get(v, v) for v in frame[column].drop_nulls().to_list()}
    for table in at.dataframe:
        value = table.value
        for column in ("hospital", "name"):
            if column in value.columns:
                seen |= {names.get(str(v), str(v)) for v in value[column].tolist()}
    return seen & (OTHERS | {OWN})


def test_a_steward_opens_the_viewer_pages_and_my_hospital_not_the_others(env):
    at = steward_app(env)
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, page
        assert "Not available" not in texts(at), page
    for page in ("launch", "cohort", "admin"):
        at.switch_page(f"pages/{page}.py").run()
        assert [t.value for t in at.title] == ["Not available for your role"], page
    viewer = env.app("viewer", "pages/my_hospital.py")
    assert [t.value for t in viewer.title] == ["Not available for your role"]


def test_every_page_shows_a_steward_only_their_own_hospital(env):
    publish(load_federation(env.fed_dir))
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    _comparison(env, "run-a")
    for page in ("overview", "live", "runs", "model"):
        at = steward_app(env, f"pages/{page}.py", run="run-a")
        assert not at.exception, page
        assert _hospitals_in(at, env.fed_dir) <= {OWN}, page
    # The same page shows every hospital to a viewer: the check above can fail.
    at = env.app("viewer", "pages/live.py", run="run-a")
    assert _hospitals_in(at, env.fed_dir) == OTHERS | {OWN}
    at = steward_app(env, "pages/live.py", run="run-a")
    assert at.selectbox(key="drill_hospital").options == [
        load_federation(env.fed_dir).hospital(OWN).name
    ]
    heat = [c for c in charts(at) if "hospital" in _columns(c)]
    assert heat, "the heatmap is drawn, with the steward's own row"


def _columns(chart) -> set[str]:
    return {c for d in chart.proto.datasets for c in pl.read_ipc_stream(d.data.data).columns}


def test_downloads_and_the_comparison_table_hold_only_the_stewards_rows(env):
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    fake_run(env.store, "run-b", data_dir="elsewhere/other")
    _comparison(env, "run-a")
    steward = env.users.get("stew")
    csv = pl.read_csv(
        dashboard.metrics_csv(env.store, ["run-a", "run-b"], "hospital_rounds", steward).encode()
    )
    assert set(csv["hospital"]) == {OWN} and set(csv["run_id"]) == {"run-a"}
    viewer_csv = dashboard.metrics_csv(env.store, ["run-a"], "hospital_rounds", None)
    assert set(pl.read_csv(viewer_csv.encode())["hospital"]) == OTHERS | {OWN}
    table = tenancy.own_hospital_only(
        dashboard.latest_comparison(env.store, "run-a"), steward, env.fed_dir
    )
    assert set(table["hospital"]) == {"overall", OWN}
    other = tenancy.own_hospital_only(dashboard.latest_comparison(env.store, "run-a"), steward, "x")
    assert set(other["hospital"]) == {"overall"}  # another federation: none of its hospitals


def test_my_hospital_shows_own_statistics_runs_privacy_and_withdraws(env):
    publish(load_federation(env.fed_dir))  # the hospitals compute their own statistics here
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    at = steward_app(env, "pages/my_hospital.py")
    assert not at.exception
    federation = load_federation(env.fed_dir)
    own = federation.hospital(OWN)
    assert at.title[0].value == f"My hospital: {own.name}"
    assert at.metric[0].value == f"{own.n_train + own.n_test:,}"  # exact: their own data
    text = texts(at)
    assert "takes part" in text
    spent = next(t.value for t in at.dataframe if "epsilon_spent" in t.value.columns)
    assert list(spent["user"]) == ["consortium"]  # Overview's facts, charged at this hospital
    runs = next(t.value for t in at.dataframe if "rounds_joined" in t.value.columns)
    assert runs["rounds_joined"].tolist() == [3]
    at.text_input[0].set_value("ethics board")
    button(at, "Withdraw my hospital").click().run()
    change = consent.withdrawal(site_dir_of(env.fed_dir, OWN))
    assert change is not None and change.by == "stew (steward)" and change.reason == "ethics board"
    assert "withdrew" in texts(at)
    button(at, "Rejoin the consortium").click().run()
    assert consent.withdrawal(site_dir_of(env.fed_dir, OWN)) is None


def test_my_hospital_policy_form_only_tightens(env):
    at = steward_app(env, "pages/my_hospital.py")
    at.number_input[0].set_value(20)
    button(at, "Tighten policy").click().run()
    assert not at.exception
    from healthsync.privacy.site import Site

    folder = env.fed_dir / "hospitals" / OWN
    assert Site(folder).policy.threshold == 20
    at.number_input[0].set_value(15)
    button(at, "Tighten policy").click().run()
    assert "may only tighten" in texts(at)
    assert Site(folder).policy.threshold == 20


def test_overview_launch_and_live_say_a_hospital_withdrew(env):
    consent.record(site_dir_of(env.fed_dir, "h0002"), "withdraw", "admin (admin)", "audit")
    name = load_federation(env.fed_dir).hospital("h0002").name
    for page in ("overview", "launch"):
        at = env.app("analyst", f"pages/{page}.py")
        warning = " ".join(w.value for w in at.warning)
        assert "withdrew their consent" in warning and name in warning and "audit" in warning
    fake_run(env.store, "run-w", data_dir=env.fed_dir)
    runlog.record_event(
        env.store, "run-w", "hospital_withdrawn", "hospital h0002 withdrew", hospital="h0002"
    )
    at = env.app("viewer", "pages/live.py", run="run-w")
    assert f"Left out because they withdrew consent: {name}" in texts(at)


def test_admin_adds_a_steward_on_the_users_page(env):
    at = env.app("admin", "pages/admin.py")
    at.text_input[0].set_value("stew2")
    at.selectbox[0].set_value("steward")
    at.text_input[1].set_value("h0002")
    button(at, "Add user").click().run()
    assert not at.exception
    added = env.users.get("stew2")
    assert added.role == "steward" and added.hospital == "h0002"
    assert added.federation == str(env.fed_dir.resolve())
    at.text_input[0].set_value("stew3")
    at.selectbox[0].set_value("steward")
    at.text_input[1].set_value("nope")
    button(at, "Add user").click().run()
    assert "no hospital 'nope'" in " ".join(e.value for e in at.error)


def _events_about_every_hospital(env: AppEnv, run_id: str) -> None:
    """Failures, a drop-out, an attacker and a withdrawal: each about another hospital."""
    for rnd in (1, 2, 3):
        runlog.record_event(
            env.store,
            run_id,
            "hospital_failed",
            "train: hospital h0002 partition unreadable",
            round=rnd,
            hospital="h0002",
        )
    runlog.record_event(
        env.store, run_id, "hospital_dropped", "dropout drill", round=2, hospital="h0000"
    )
    runlog.record_event(
        env.store, run_id, "adversary", "simulated attacker in every round: scale", hospital="h0002"
    )
    runlog.record_event(
        env.store, run_id, "hospital_withdrawn", "withdrawn: hospital h0000", hospital="h0000"
    )


def test_a_steward_sees_no_other_hospital_in_the_event_lines_of_live_and_runs(env):
    """Issue 15: failures, drop-outs, attackers and withdrawals named other hospitals' ids."""
    fake_run(env.store, "run-e", data_dir=env.fed_dir)
    _events_about_every_hospital(env, "run-e")
    federation = load_federation(env.fed_dir)
    hidden = [h.encode() for h in OTHERS] + [federation.hospital(h).name.encode() for h in OTHERS]
    for page in ("live", "runs"):
        at = steward_app(env, f"pages/{page}.py", run="run-e")
        assert not at.exception, page
        shown = page_bytes(at)
        assert [h for h in hidden if h in shown] == [], page
    # The consortium still hears that one hospital failed, without which one.
    assert "1 other hospital" in " ".join(w.value for w in at.warning)
    viewer = page_bytes(env.app("viewer", "pages/live.py", run="run-e"))
    assert all(h in viewer for h in (b"h0000", b"h0002")), "the same check catches a viewer's"
