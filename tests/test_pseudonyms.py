"""Issue 15, pseudonymous sites: non-stewards see other hospitals as "Site A, Site B…".

The label mapping and the frame helper are unit-tested; then each page an
analyst can open is run with AppTest on a federation with pseudonyms on, and
everything it sends the browser (text, tables, chart data, picker options) and
the CSV download are checked for every real name and every hospital id.
"""

from __future__ import annotations

import json
import stat

import polars as pl
import pytest

from healthsync import auth
from healthsync.cli import main
from healthsync.cohort.facts import publish
from healthsync.data import load_federation, pseudonyms
from healthsync.privacy import consent
from healthsync.privacy.consent import site_dir_of
from healthsync.runs import runlog
from healthsync.views import dashboard, tenancy
from tests.app_helpers import (
    APP,
    AppEnv,
    fake_run,
    log_in,
    make_federation,
    page_bytes,
    texts,
)
from tests.cohort_helpers import InProcess
from tests.test_tenancy_pages import _comparison, _events_about_every_hospital

IDS = ("h0000", "h0001", "h0002")


@pytest.fixture
def env(tmp_path, monkeypatch):
    return AppEnv(tmp_path, monkeypatch)


def _names(env: AppEnv) -> dict[str, str]:
    return {h.id: h.name for h in load_federation(env.fed_dir).hospitals}


# ---------------------------------------------------------------- the mapping
def test_pseudonyms_are_letters_in_hospital_id_order_then_double_letters():
    assert [pseudonyms.pseudonym(i) for i in (0, 1, 25, 26, 27, 51, 52, 701, 702)] == [
        "Site A",
        "Site B",
        "Site Z",
        "Site AA",
        "Site AB",
        "Site AZ",
        "Site BA",
        "Site ZZ",
        "Site AAA",
    ]
    assert pseudonyms.pseudonyms(["h9", "h10", "h2"]) == {
        "h10": "Site A",
        "h2": "Site B",
        "h9": "Site C",
    }
    with pytest.raises(ValueError, match="index"):
        pseudonyms.pseudonym(-1)


def test_the_setting_lives_in_the_federation_folder_written_privately(env):
    assert not pseudonyms.is_pseudonymous(env.fed_dir)
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="root (admin)")
    path = env.fed_dir / pseudonyms.SETTINGS_NAME
    assert pseudonyms.is_pseudonymous(env.fed_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pseudonyms.set_pseudonymous(env.fed_dir, False, by="root (admin)")
    assert not pseudonyms.is_pseudonymous(env.fed_dir)
    with pytest.raises(Exception, match="federation"):
        pseudonyms.set_pseudonymous(env.root / "nowhere", True, by="x")


def test_site_labels_for_each_role(env):
    names = _names(env)
    env.users.add("stew", "steward", "a-long-password", federation=env.fed_dir, hospital="h0001")
    role = {r: env.users.get(env.user(r)) for r in ("admin", "analyst", "viewer")}
    steward = env.users.get("stew")
    assert dict(tenancy.site_labels(env.fed_dir, role["analyst"])) == names  # off: real names
    assert dict(tenancy.site_labels(env.fed_dir, None)) == names  # the operator's CLI
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="admin")
    for who in ("analyst", "viewer"):
        labels = tenancy.site_labels(env.fed_dir, role[who])
        assert dict(labels) == {"h0000": "Site A", "h0001": "Site B", "h0002": "Site C"}
        assert labels.hide_ids and labels.label("h9999") is None  # unknown ids are not shown
        assert labels.label("overall") == "overall"
    admin = tenancy.site_labels(env.fed_dir, role["admin"])
    assert admin["h0002"] == f"{names['h0002']} (Site C)" and not admin.hide_ids
    own = tenancy.site_labels(env.fed_dir, steward)
    assert dict(own) == {"h0001": names["h0001"]} and own.label("h0002") is None
    assert dict(tenancy.site_labels(env.root / "gone", role["analyst"])) == {}
    assert tenancy.site_labels(env.root / "gone", role["analyst"]).label("h1") == "h1"


def test_the_frame_helper_replaces_ids_and_scrubs_text(env):
    names = _names(env)
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="admin")
    analyst = tenancy.site_labels(env.fed_dir, env.users.get(env.user("analyst")))
    frame = pl.DataFrame({"hospital": ["overall", "h0002", "h0000", "h7777"], "auc": [0.1] * 4})
    shown = tenancy.with_site_labels(frame, analyst)
    assert shown["hospital"].to_list() == ["overall", "Site C", "Site A", tenancy.OTHER_SITE]
    assert shown["name"].to_list() == shown["hospital"].to_list()
    text = f"withdrawn: hospital h0002 ({names['h0002']}) asked h0000"
    assert analyst.scrub(text) == "withdrawn: hospital Site C (Site C) asked Site A"
    admin = tenancy.site_labels(env.fed_dir, env.users.get(env.user("admin")))
    named = tenancy.with_site_labels(frame, admin)
    assert named["hospital"].to_list() == frame["hospital"].to_list()  # admins keep ids
    assert named["name"][1] == f"{names['h0002']} (Site C)"
    assert admin.scrub(text) == text
    env.users.add("stew", "steward", "a-long-password", federation=env.fed_dir, hospital="h0000")
    own = tenancy.site_labels(env.fed_dir, env.users.get("stew"))
    assert own.scrub(text) == (
        f"withdrawn: hospital {tenancy.OTHER_SITE} ({tenancy.OTHER_SITE}) asked h0000"
    )


def test_run_warnings_take_the_viewers_labels(env):
    fake_run(env.store, "run-e", data_dir=env.fed_dir)
    _events_about_every_hospital(env, "run-e")
    name = _names(env)["h0002"]
    assert runlog.run_warnings(env.store, "run-e") == [
        f"hospital {name!r} (h0002) failed 3 of 3 round(s): train: hospital h0002 partition "
        "unreadable"
    ]
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="admin")
    labels = tenancy.site_labels(env.fed_dir, env.users.get(env.user("viewer")))
    assert runlog.run_warnings(env.store, "run-e", labels) == [
        "hospital 'Site C' failed 3 of 3 round(s): train: hospital Site C partition unreadable"
    ]


def test_the_cli_turns_pseudonyms_on_and_off(env, capsys):
    assert main(["federations", "pseudonymise", str(env.fed_dir), "--on"]) == 0
    assert pseudonyms.is_pseudonymous(env.fed_dir)
    assert "Site A" in capsys.readouterr().out
    assert main(["federations", "pseudonymise", str(env.fed_dir), "--off"]) == 0
    assert not pseudonyms.is_pseudonymous(env.fed_dir)
    assert main(["federations", "pseudonymise", str(env.root / "nowhere"), "--on"]) != 0
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------- the pages
def _world(env: AppEnv) -> None:
    """Facts, a run with a model, a comparison, events and a withdrawal, pseudonyms on."""
    publish(load_federation(env.fed_dir))
    fake_run(env.store, "run-a", data_dir=env.fed_dir, model=True)
    _comparison(env, "run-a")
    _events_about_every_hospital(env, "run-a")
    consent.record(site_dir_of(env.fed_dir, "h0002"), "withdraw", "admin (admin)", "audit")
    env.store.execute("UPDATE runs SET reason = 'hospital h0002 stopped' WHERE run_id = 'run-a'")
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="admin")


def _leaks(shown: bytes, env: AppEnv) -> list[str]:
    names = _names(env)
    return [v for v in (*IDS, *names.values()) if v.encode() in shown]


def test_an_analyst_sees_no_real_name_and_no_id_anywhere(env):
    from healthsync.cohort import explore

    _world(env)
    for page in ("overview", "launch", "how_it_works", "model", "runs", "live"):
        at = env.app("analyst", f"pages/{page}.py", run="run-a")
        assert not at.exception, page
        assert _leaks(page_bytes(at), env) == [], page
        assert b"Site C" in page_bytes(at), page  # hospitals are shown, by pseudonym
    drill = next(s for s in at.selectbox if s.label == "Hospital")
    assert drill.options == ["Site A", "Site B", "Site C"]
    drill.set_value("h0002").run()
    assert _leaks(page_bytes(at), env) == [] and "Site C" in texts(at)
    analyst = env.users.get(env.user("analyst"))
    csv = dashboard.metrics_csv(env.store, ["run-a"], "hospital_rounds", analyst)
    assert _leaks(csv.encode(), env) == []
    assert set(pl.read_csv(csv.encode())["hospital_name"]) == {"Site A", "Site B", "Site C"}
    # The cohort explorer's answer by hospital, filtered on one hospital.
    federation = load_federation(env.fed_dir)
    where = ["hospital != h0001"]
    result = explore(
        env.fed_dir,
        db=env.db,
        user="analyst-user",
        executor=InProcess(federation),
        where=where,
        group_by=["hospital"],
    )
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP.parent / "pages" / "cohort.py"), default_timeout=60)
    env.log_in(at, "analyst")
    at.session_state["cohort_result"] = (str(env.fed_dir), result, where)
    at.run()
    assert not at.exception
    assert _leaks(page_bytes(at), env) == []
    assert set(at.dataframe[0].value["hospital"]) == {"Site A"}  # h0001 filtered out
    assert "withdrawn hospital(s): Site C" in texts(at)  # h0002 withdrew
    assert "not shown: it names a hospital" in texts(at)  # the command line would


def test_an_admin_sees_names_with_their_pseudonyms_and_turns_them_on(env):
    names = _names(env)
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    at = env.app("admin", "pages/admin.py")
    toggle = next(t for t in at.toggle if t.label.startswith("Pseudonymous sites"))
    assert not toggle.value
    toggle.set_value(True).run()
    assert not at.exception and pseudonyms.is_pseudonymous(env.fed_dir)
    at = env.app("admin", "pages/live.py", run="run-a")
    assert f"{names['h0002']} (Site C)".encode() in page_bytes(at)


def test_a_steward_sees_their_own_name_under_pseudonyms(env):
    from streamlit.testing.v1 import AppTest

    env.users.add("stew", "steward", "a-long-password", federation=env.fed_dir, hospital="h0001")
    fake_run(env.store, "run-a", data_dir=env.fed_dir)
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="admin")
    at = AppTest.from_file(str(APP), default_timeout=60)
    log_in(at, "stew")
    at.query_params["run"] = "run-a"
    at.run()
    at.switch_page("pages/live.py").run()
    shown = page_bytes(at)
    names = _names(env)
    assert names["h0001"].encode() in shown
    assert [
        v for v in (names["h0000"], names["h0002"], "Site A", "Site C") if v.encode() in shown
    ] == []


# ---------------------------------------------------------------- the CLI with credentials
def _runs_cli(capsys, monkeypatch, user: str, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", "a-long-password")
    code = main(["runs", *args, "--user", user])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_runs_cli_with_credentials_shows_what_the_app_shows(env, capsys, monkeypatch):
    """Issue 15: "CLI output their credentials can reach" names no hospital they may not see."""
    _world(env)
    env.store.execute(
        'UPDATE runs SET config = json_merge_patch(config, \'{"fail_hospitals": ["h0001"]}\')'
    )
    db = str(env.store.path)
    # Without credentials: the operator's whole view (the check below can fail).
    assert main(["runs", "show", "run-a", "--db", db, "--json"]) == 0
    assert _leaks(capsys.readouterr().out.encode(), env)
    # An analyst on a pseudonymous federation: letters only, in rows, events, reason, config.
    code, out = _runs_cli(
        capsys, monkeypatch, env.user("analyst"), "show", "run-a", "--db", db, "--json"
    )
    assert code == 0 and _leaks(out.encode(), env) == [] and '"Site B"' in out
    # A steward of h0001: their own rows by id and name, no other hospital's.
    env.users.add("stew", "steward", "a-long-password", federation=env.fed_dir, hospital="h0001")
    code, out = _runs_cli(capsys, monkeypatch, "stew", "show", "run-a", "--db", db, "--json")
    assert code == 0, out
    detail = json.loads(out.splitlines()[-1])
    assert {r["hospital"] for r in detail["hospitals"]} <= {"h0001", "overall"}
    assert {e["hospital"] for e in detail["events"]} <= {"h0001", None}
    names = _names(env)
    assert not [v for v in ("h0000", "h0002", names["h0000"], names["h0002"]) if v in out]
    # A wrong password is refused in one line, exit 2.
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", "wrong-password")
    assert main(["runs", "list", "--db", db, "--user", "stew"]) == 2
    assert "wrong user name or password for 'stew'" in capsys.readouterr().err


def test_runs_cli_hides_a_data_set_the_analyst_was_not_granted(env, capsys, monkeypatch):
    private = env.data_root / "private"
    make_federation(private)
    fake_run(env.store, "run-private", data_dir=private)
    fake_run(env.store, "run-demo", data_dir=env.fed_dir)
    name = env.user("analyst")
    auth.AccessLists(env.home).revoke(private, name, env.users)
    db = str(env.store.path)
    code, out = _runs_cli(capsys, monkeypatch, name, "list", "--db", db, "--json")
    assert code == 0 and "run-demo" in out and "run-private" not in out
    code, out = _runs_cli(capsys, monkeypatch, name, "show", "run-private", "--db", db)
    assert code == 2 and f"{name} has no access to the data set private" in out


def test_the_cohort_cli_of_an_analyst_shows_sites_and_refuses_ids(env, capsys, monkeypatch):
    """An analyst's own ``healthsync cohort`` shows what the explorer shows them."""
    from healthsync.cohort import explorer

    federation = load_federation(env.fed_dir)
    executor = InProcess(federation)
    executor.started = False  # nothing to stop after the query, as a warm service
    monkeypatch.setattr(explorer, "FlowerExecutor", lambda *a, **k: executor)
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", "a-long-password")
    name = env.user("analyst")
    base = ["cohort", "--data", str(env.fed_dir), "--db", str(env.db), "--user", name]
    # Pseudonyms off: ids, as before (the check below can fail).
    assert main([*base, "--group-by", "hospital", "--json"]) == 0
    assert _leaks(capsys.readouterr().out.encode(), env)
    pseudonyms.set_pseudonymous(env.fed_dir, True, by="admin")
    for output in ([], ["--json"]):
        assert main([*base, "--group-by", "hospital", *output]) == 0
        out = capsys.readouterr().out
        assert _leaks(out.encode(), env) == [] and "Site B" in out
    # "Site B" is understood (it is h0001); the answer names no id either.
    assert main([*base, "--where", "hospital == Site B", "--group-by", "hospital", "--json"]) == 0
    out = capsys.readouterr().out
    assert [cell["hospital"] for cell in json.loads(out)["cells"]] == ["Site B"]
    assert _leaks(out.encode(), env) == []
    assert main([*base, "--where", "hospital == h0001"]) == 2
    err = capsys.readouterr().err
    assert "filter on one of those names, not 'h0001'" in err and err.count("\n") == 1
