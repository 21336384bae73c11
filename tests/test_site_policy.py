"""Issue 15, site policy: a steward tightens their hospital's policy; loosening is refused
or, for an admin who forces it, recorded; the hospital's own gate enforces it for everyone."""

from __future__ import annotations

import numpy as np
import pytest

from healthsync import auth
from healthsync.cli import main
from healthsync.errors import HealthSyncError
from healthsync.privacy.site import Measure, Site, SiteRefusal, change_policy, policy_history
from tests.engine_helpers import make_federation

PASSWORD = "correct-horse-1"


@pytest.fixture
def fed(tmp_path):
    return make_federation(tmp_path, "fed", hospitals=2, patients=40)


@pytest.fixture
def home(tmp_path, monkeypatch, fed):
    home = tmp_path / "home"
    monkeypatch.setenv("HEALTHSYNC_HOME", str(home))
    monkeypatch.setenv("HEALTHSYNC_PASSWORD", PASSWORD)
    store = auth.UserStore(home, rounds=4)
    store.ensure()
    store.set_password("admin", PASSWORD)
    store.add("stew", "steward", PASSWORD, federation=fed, hospital="h0000")
    return home


def _policy(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["hospitals", "policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _count(site: Site, user: str, key: str, epsilon: float | None = None):
    return site.release(user, [Measure([key], np.array([50]))], query="test", epsilon=epsilon)


def test_a_steward_tightens_and_the_hospitals_gate_enforces_it_for_admins(fed, home, capsys):
    folder = fed / "hospitals" / "h0000"
    code, out, err = _policy(
        capsys,
        "h0000",
        "--data",
        str(fed),
        "--user",
        "stew",
        "--min-cell",
        "20",
        "--epsilon-per-query",
        "0.1",
        "--epsilon-total",
        "0.25",
    )
    assert code == 0, err
    assert "min_cell 20" in out
    site = Site(folder)
    assert site.policy.threshold == 20
    answer = _count(site, "admin", "k1", epsilon=5.0)  # an admin asks for more: capped
    assert answer.charged == pytest.approx(0.1) and answer.threshold == 20
    _count(site, "admin", "k2")
    with pytest.raises(SiteRefusal, match="budget exhausted"):
        _count(site, "admin", "k3")  # 0.3 > the steward's 0.25 per analyst
    [change] = policy_history(folder)
    assert change["by"] == "stew" and change["role"] == "steward" and change["loosened"] == []


def test_a_steward_cannot_loosen_nor_go_below_eleven(fed, home, capsys):
    args = ["h0000", "--data", str(fed), "--user", "stew"]
    assert _policy(capsys, *args, "--min-cell", "20")[0] == 0
    code, _, err = _policy(capsys, *args, "--min-cell", "15")
    assert code == 2 and "may only tighten" in err and "min_cell" in err
    code, _, err = _policy(capsys, *args, "--epsilon-per-query", "1.0")
    assert code == 2 and "may only tighten" in err
    code, _, err = _policy(
        capsys, "h0001", "--data", str(fed), "--user", "stew", "--min-cell", "30"
    )
    assert code == 2 and "may not govern hospital h0001" in err  # not their hospital
    code, _, err = _policy(
        capsys,
        "h0000",
        "--data",
        str(fed),
        "--user",
        "admin",
        "--min-cell",
        "5",
        "--force",
        "--reason",
        "x",
    )
    assert code == 2 and "at least 11" in err
    assert Site(fed / "hospitals" / "h0000").policy.threshold == 20
    assert len(policy_history(fed / "hospitals" / "h0000")) == 1  # refusals change nothing


def test_an_admin_loosens_only_with_force_and_a_recorded_reason(fed, home, capsys):
    folder = fed / "hospitals" / "h0000"
    args = ["h0000", "--data", str(fed), "--user", "stew"]
    assert _policy(capsys, *args, "--min-cell", "25")[0] == 0
    admin = ["h0000", "--data", str(fed), "--user", "admin", "--min-cell", "15"]
    code, _, err = _policy(capsys, *admin)
    assert code == 2 and "--force and --reason" in err
    code, _, err = _policy(capsys, *admin, "--force")
    assert code == 2 and "--force and --reason" in err
    code, out, err = _policy(capsys, *admin, "--force", "--reason", "board approved 2026-11")
    assert code == 0, err
    assert "loosened min_cell" in out
    assert Site(folder).policy.threshold == 15
    last = policy_history(folder)[-1]
    assert last["by"] == "admin" and last["loosened"] == ["min_cell"]
    assert last["reason"] == "board approved 2026-11"
    assert last["before"]["min_cell"] == 25 and last["after"]["min_cell"] == 15
    code, _, err = _policy(capsys, *args, "--min-cell", "20", "--force", "--reason", "x")
    assert code == 2 and "--force is for admins only" in err


def test_change_policy_keeps_per_user_budgets_and_needs_a_setting(tmp_path):
    folder = tmp_path / "h"
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "policy.yaml").write_text("budgets: {ana: 1.0}\n")
    with pytest.raises(HealthSyncError, match="nothing to change"):
        change_policy(folder, by="a", role="admin", settings={})
    change_policy(folder, by="a", role="admin", settings={"epsilon_per_query": 0.2})
    policy = Site(folder).policy
    assert policy.budget_for("ana") == 1.0 and policy.epsilon_per_query == 0.2
