"""Issue 15, consortium tenants: analysts and viewers see only the data sets granted to them."""

from __future__ import annotations

import pytest

from healthsync import auth
from healthsync.cli import main
from healthsync.cohort import explore
from healthsync.data import load_federation
from healthsync.errors import HealthSyncError
from tests.app_helpers import AppEnv, button, fake_run, make_federation, texts
from tests.cohort_helpers import InProcess


@pytest.fixture
def env(tmp_path, monkeypatch):
    env = AppEnv(tmp_path, monkeypatch)
    make_federation(env.data_root / "private")
    return env


def test_lists_start_from_everyone_and_bind_only_analysts_and_viewers(env):
    access = auth.AccessLists(env.home)
    ana, vic = env.users.get(env.user("analyst")), env.users.get(env.user("viewer"))
    private = env.data_root / "private"
    assert access.allowed(ana, private) and access.allowed(vic, private)  # no list: open
    access.revoke(private, vic.name, env.users)
    assert access.allowed(ana, private) and not access.allowed(vic, private)
    assert access.allowed(vic, env.fed_dir)  # other data sets stay open
    access.grant(private, vic.name, env.users)
    assert access.allowed(vic, private)
    env.users.add("late", "viewer", "a-long-password")
    assert not access.allowed(env.users.get("late"), private)  # restricted from now on
    with pytest.raises(HealthSyncError, match="admins see every data set"):
        access.grant(private, "admin", env.users)
    with pytest.raises(HealthSyncError, match="unknown user"):
        access.grant(private, "ghost", env.users)


def test_cli_grant_revoke_and_list(env, capsys):
    name = env.user("analyst")
    private = str(env.data_root / "private")
    assert main(["federations", "revoke", private, name]) == 0
    assert main(["federations", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert name not in out.splitlines()[-1]
    assert main(["federations", "grant", private, name]) == 0
    assert main(["federations", "grant", str(env.root / "nowhere"), name]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_an_analyst_without_a_grant_sees_none_of_its_runs_or_data(env, tmp_path):
    private = env.data_root / "private"
    fake_run(env.store, "run-private", data_dir=private)
    fake_run(env.store, "run-demo", data_dir=env.fed_dir)
    name = env.user("analyst")
    env.user("viewer")  # exists before the first restriction, so keeps access
    auth.AccessLists(env.home).revoke(private, name, env.users)
    for page in ("runs", "live", "model"):
        at = env.app("analyst", f"pages/{page}.py", run="run-private")
        assert not at.exception, page
        shown = " ".join(str(o) for s in at.selectbox for o in s.options)
        shown += " ".join(str(v) for t in at.dataframe for v in t.value.get("run", []))
        assert "run-private" not in shown and "run-demo" in shown, page
    at = env.app("analyst", "pages/overview.py")
    assert at.selectbox[0].options == ["demo"]  # the data-set picker
    at = env.app("viewer", "pages/runs.py")  # the viewer kept access: the check can fail
    assert "run-private" in " ".join(at.dataframe[0].value["run"])
    with pytest.raises(HealthSyncError, match="no access to the data set private"):
        explore(
            private,
            db=tmp_path / "m.duckdb",
            user=name,
            home=env.home,
            executor=InProcess(load_federation(private)),
        )


def test_admin_grants_and_revokes_on_the_users_page(env):
    name = env.user("viewer")
    at = env.app("admin", "pages/admin.py")
    at.selectbox(key="grant_user").set_value(name)
    at.selectbox(key="grant_data").set_value(env.data_root / "private")
    button(at, "Revoke access").click().run()
    assert not at.exception
    access = auth.AccessLists(env.home)
    assert not access.allowed(env.users.get(name), env.data_root / "private")
    assert f"{name} may no longer see private" in texts(at)
